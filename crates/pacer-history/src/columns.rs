//! Records as Arrow columns and back: the shape of a history segment.
//!
//! A record becomes a row: `ROWTIME` (timestamp, UTC), `ROWKEY`, `ROWPARTITION`,
//! `ROWOFFSET`, then a column per field of its JSON value, typed by what the values are
//! (integers, doubles, booleans, text; anything else, or a field whose values disagree, as
//! JSON text). Values that are not JSON objects, or that use a reserved name, are kept
//! whole in `ROWVALUE`; headers in `ROWHEADERS` (JSON). Reading a row back gives the same
//! record, so every query runs over history exactly as over the log.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::StringDictionaryBuilder;
use arrow_array::types::Int32Type;
use arrow_array::{
    Array, ArrayRef, BooleanArray, DictionaryArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use bytes::Bytes;
use pacer_core::Record;
use serde_json::{Map, Value};

pub const ROWTIME: &str = "ROWTIME";
pub const ROWKEY: &str = "ROWKEY";
pub const ROWPARTITION: &str = "ROWPARTITION";
pub const ROWOFFSET: &str = "ROWOFFSET";
pub const ROWVALUE: &str = "ROWVALUE";
pub const ROWHEADERS: &str = "ROWHEADERS";
const RESERVED: &[&str] = &[ROWTIME, ROWKEY, ROWPARTITION, ROWOFFSET, ROWVALUE, ROWHEADERS];

/// Schema metadata naming the columns that hold JSON text (nested values).
pub const JSON_COLUMNS: &str = "pacer.json_columns";

/// The Arrow type of a column of timestamps in milliseconds, as Parquet readers expect.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The values of one column, typed by what they have been so far.
#[derive(Debug)]
pub enum Cells {
    /// Only nulls (or absent) yet.
    Null(usize),
    Bool(Vec<Option<bool>>),
    Int(Vec<Option<i64>>),
    Double(Vec<Option<f64>>),
    Text(Vec<Option<String>>),
    /// Nested values, or values of several types: JSON text.
    Json(Vec<Option<String>>),
}

impl Cells {
    pub fn len(&self) -> usize {
        match self {
            Cells::Null(n) => *n,
            Cells::Bool(v) => v.len(),
            Cells::Int(v) => v.len(),
            Cells::Double(v) => v.len(),
            Cells::Text(v) | Cells::Json(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a value (None: null), widening the column when the value needs it.
    pub fn push(&mut self, value: Option<&Value>) {
        let value = value.filter(|v| !v.is_null());
        let Some(v) = value else {
            match self {
                Cells::Null(n) => *n += 1,
                Cells::Bool(c) => c.push(None),
                Cells::Int(c) => c.push(None),
                Cells::Double(c) => c.push(None),
                Cells::Text(c) | Cells::Json(c) => c.push(None),
            }
            return;
        };
        if let Cells::Null(n) = *self {
            *self = match v {
                Value::Bool(_) => Cells::Bool(vec![None; n]),
                Value::Number(x) if x.is_i64() => Cells::Int(vec![None; n]),
                Value::Number(_) => Cells::Double(vec![None; n]),
                Value::String(_) => Cells::Text(vec![None; n]),
                _ => Cells::Json(vec![None; n]),
            };
        }
        match (&mut *self, v) {
            (Cells::Bool(c), Value::Bool(b)) => c.push(Some(*b)),
            (Cells::Int(c), Value::Number(x)) if x.is_i64() => c.push(x.as_i64()),
            (Cells::Int(c), Value::Number(x)) => {
                // An integer column meets a fraction: doubles from here on.
                let mut doubles: Vec<Option<f64>> = c.iter().map(|i| i.map(|i| i as f64)).collect();
                doubles.push(x.as_f64());
                *self = Cells::Double(doubles);
            }
            (Cells::Double(c), Value::Number(x)) => c.push(x.as_f64()),
            (Cells::Text(c), Value::String(s)) => c.push(Some(s.clone())),
            (Cells::Json(c), v) => c.push(Some(v.to_string())),
            (_, v) => {
                let mut texts = self.json_texts();
                texts.push(Some(v.to_string()));
                *self = Cells::Json(texts);
            }
        }
    }

    /// Every cell as JSON text: what a column becomes when its values disagree.
    fn json_texts(&self) -> Vec<Option<String>> {
        let json = |v: Option<Value>| v.map(|v| v.to_string());
        match self {
            Cells::Null(n) => vec![None; *n],
            Cells::Bool(c) => c.iter().map(|b| json(b.map(Value::Bool))).collect(),
            Cells::Int(c) => c.iter().map(|i| json(i.map(Value::from))).collect(),
            Cells::Double(c) => c.iter().map(|x| json(x.map(Value::from))).collect(),
            Cells::Text(c) => c.iter().map(|s| json(s.clone().map(Value::String))).collect(),
            Cells::Json(c) => c.clone(),
        }
    }

    /// The column as an Arrow array (None for a column of nulls only) and its type; text
    /// is dictionary-encoded, as device names and statuses repeat.
    pub fn into_array(self) -> Option<(DataType, ArrayRef)> {
        Some(match self {
            Cells::Null(_) => return None,
            Cells::Bool(c) => (DataType::Boolean, Arc::new(BooleanArray::from(c))),
            Cells::Int(c) => (DataType::Int64, Arc::new(Int64Array::from(c))),
            Cells::Double(c) => (DataType::Float64, Arc::new(Float64Array::from(c))),
            Cells::Text(c) => {
                let mut builder = StringDictionaryBuilder::<Int32Type>::new();
                for s in &c {
                    builder.append_option(s.as_deref());
                }
                (dictionary_type(), Arc::new(builder.finish()))
            }
            Cells::Json(c) => (DataType::Utf8, Arc::new(StringArray::from(c))),
        })
    }
}

fn dictionary_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// Records turned into one batch of rows.
pub fn to_batch(records: &[Record]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let n = records.len();
    let mut fields: BTreeMap<String, Cells> = BTreeMap::new();
    let mut whole: Vec<Option<String>> = Vec::new();
    let mut headers: Vec<Option<String>> = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let object = match serde_json::from_slice::<Value>(&record.value) {
            Ok(Value::Object(map)) if !map.keys().any(|k| is_reserved(k)) => Some(map),
            _ => None,
        };
        match object {
            Some(map) => {
                for (name, value) in &map {
                    let cells = fields.entry(name.clone()).or_insert(Cells::Null(i));
                    cells.push(Some(value));
                }
            }
            None => {
                whole.resize(i, None);
                whole.push(Some(String::from_utf8_lossy(&record.value).into_owned()));
            }
        }
        // Fields this record lacks are null in its row.
        for cells in fields.values_mut() {
            if cells.len() == i {
                cells.push(None);
            }
        }
        if !record.headers.is_empty() {
            let object: Map<String, Value> = record
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(String::from_utf8_lossy(v).into_owned())))
                .collect();
            headers.resize(i, None);
            headers.push(Some(Value::Object(object).to_string()));
        }
    }
    let mut schema_fields = vec![
        Field::new(ROWTIME, timestamp_type(), false),
        Field::new(ROWKEY, dictionary_type(), true),
        Field::new(ROWPARTITION, DataType::Int32, false),
        Field::new(ROWOFFSET, DataType::Int64, false),
    ];
    let mut key_builder = StringDictionaryBuilder::<Int32Type>::new();
    for r in records {
        key_builder.append_option(r.key.as_ref().map(|k| String::from_utf8_lossy(k)));
    }
    let mut arrays: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from_iter_values(records.iter().map(|r| r.timestamp)).with_timezone("UTC")),
        Arc::new(key_builder.finish()),
        Arc::new(Int32Array::from_iter_values(records.iter().map(|r| r.partition as i32))),
        Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.offset as i64))),
    ];
    let mut json_columns = Vec::new();
    for (name, cells) in fields {
        if matches!(cells, Cells::Json(_)) {
            json_columns.push(Value::String(name.clone()));
        }
        if let Some((data_type, array)) = cells.into_array() {
            schema_fields.push(Field::new(name, data_type, true));
            arrays.push(array);
        }
    }
    for (name, mut column) in [(ROWVALUE, whole), (ROWHEADERS, headers)] {
        if column.iter().any(Option::is_some) {
            column.resize(n, None);
            schema_fields.push(Field::new(name, DataType::Utf8, true));
            arrays.push(Arc::new(StringArray::from(column)));
        }
    }
    let metadata = [(JSON_COLUMNS.to_string(), Value::Array(json_columns).to_string())].into();
    RecordBatch::try_new(Arc::new(Schema::new_with_metadata(schema_fields, metadata)), arrays)
}

fn is_reserved(name: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// The records of a batch, as they were written: the way back for queries that read rows.
pub fn to_records(batch: &RecordBatch) -> Result<Vec<Record>, String> {
    let schema = batch.schema();
    let json_columns: Vec<String> =
        schema.metadata().get(JSON_COLUMNS).and_then(|text| serde_json::from_str(text).ok()).unwrap_or_default();
    let column = |name: &str| batch.column_by_name(name).ok_or_else(|| format!("history segment has no {name} column"));
    let times = column(ROWTIME)?
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .ok_or("ROWTIME is not a timestamp in ms")?;
    let partitions = column(ROWPARTITION)?.as_any().downcast_ref::<Int32Array>().ok_or("ROWPARTITION is not INT32")?;
    let offsets = column(ROWOFFSET)?.as_any().downcast_ref::<Int64Array>().ok_or("ROWOFFSET is not INT64")?;
    let keys = column(ROWKEY)?;
    let text_of = |array: &ArrayRef, i: usize| -> Option<String> { text_at(array.as_ref(), i) };
    let whole = batch.column_by_name(ROWVALUE);
    let headers = batch.column_by_name(ROWHEADERS);
    let value_columns: Vec<(usize, &str, bool)> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !is_reserved(f.name()))
        .map(|(i, f)| (i, f.name().as_str(), json_columns.iter().any(|j| j == f.name())))
        .collect();
    let mut records = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let value = match whole.and_then(|w| text_of(w, i)) {
            Some(text) => Bytes::from(text),
            None => {
                let mut object = Map::new();
                for &(c, name, json) in &value_columns {
                    if let Some(v) = json_at(batch.column(c).as_ref(), i, json)? {
                        object.insert(name.to_string(), v);
                    }
                }
                Bytes::from(Value::Object(object).to_string())
            }
        };
        let headers = match headers.and_then(|h| text_of(h, i)) {
            Some(text) => match serde_json::from_str::<Map<String, Value>>(&text) {
                Ok(map) => map
                    .into_iter()
                    .map(|(k, v)| (k, Bytes::from(v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))))
                    .collect(),
                Err(e) => return Err(format!("ROWHEADERS of row {i}: {e}")),
            },
            None => Vec::new(),
        };
        records.push(Record {
            partition: partitions.value(i) as u32,
            offset: offsets.value(i) as u64,
            timestamp: times.value(i),
            key: text_of(keys, i).map(Bytes::from),
            value,
            headers,
        });
    }
    Ok(records)
}

/// A text cell of a plain or dictionary-encoded string column.
pub fn text_at(array: &dyn Array, i: usize) -> Option<String> {
    if array.is_null(i) {
        return None;
    }
    if let Some(strings) = array.as_any().downcast_ref::<StringArray>() {
        return Some(strings.value(i).to_string());
    }
    let dict = array.as_any().downcast_ref::<DictionaryArray<Int32Type>>()?;
    let values = dict.values().as_any().downcast_ref::<StringArray>()?;
    Some(values.value(dict.keys().value(i) as usize).to_string())
}

/// A cell as the JSON value it was written from.
fn json_at(array: &dyn Array, i: usize, json: bool) -> Result<Option<Value>, String> {
    if array.is_null(i) {
        return Ok(None);
    }
    let any = array.as_any();
    Ok(Some(if let Some(a) = any.downcast_ref::<Int64Array>() {
        Value::from(a.value(i))
    } else if let Some(a) = any.downcast_ref::<Float64Array>() {
        Value::from(a.value(i))
    } else if let Some(a) = any.downcast_ref::<BooleanArray>() {
        Value::Bool(a.value(i))
    } else if let Some(text) = text_at(array, i) {
        if json {
            serde_json::from_str(&text).map_err(|e| format!("a JSON cell does not parse: {e}"))?
        } else {
            Value::String(text)
        }
    } else {
        return Err(format!("a history column of type {} Pacer did not write", array.data_type()));
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: u64, key: Option<&str>, value: &str) -> Record {
        Record {
            partition: (offset % 2) as u32,
            offset,
            timestamp: 1_700_000_000_000 + offset as i64,
            key: key.map(|k| Bytes::from(k.to_string())),
            value: Bytes::from(value.to_string()),
            headers: if offset == 1 { vec![("mqtt_topic".into(), Bytes::from("a/b"))] } else { Vec::new() },
        }
    }

    #[test]
    fn records_come_back_as_they_went_in() {
        let records = vec![
            record(0, Some("d-1"), r#"{"speed":3,"name":"a","ok":true}"#),
            record(1, None, r#"{"speed":3.5,"pos":{"lat":47.1,"lon":8.5},"name":"b"}"#),
            record(2, Some("d-2"), r#"{"name":7,"extra":null}"#),
            record(3, Some("d-1"), "not json"),
            record(4, Some("d-1"), r#"{"ROWKEY":"clash"}"#),
            record(5, Some("d-3"), "[1,2]"),
        ];
        let batch = to_batch(&records).unwrap();
        let schema = batch.schema();
        let type_of = |name: &str| schema.field_with_name(name).unwrap().data_type().clone();
        assert_eq!(type_of("speed"), DataType::Float64, "integers widen to doubles when a fraction comes");
        assert_eq!(type_of("name"), DataType::Utf8, "text and a number: JSON text");
        assert_eq!(type_of("ok"), DataType::Boolean);
        assert!(schema.field_with_name("extra").is_err(), "a column of nulls is left out");
        let back = to_records(&batch).unwrap();
        for (a, b) in records.iter().zip(&back) {
            assert_eq!(
                (a.partition, a.offset, a.timestamp, &a.key, &a.headers),
                (b.partition, b.offset, b.timestamp, &b.key, &b.headers)
            );
            match serde_json::from_slice::<Value>(&a.value) {
                Ok(Value::Object(mut map)) if !map.contains_key("ROWKEY") => {
                    map.retain(|_, v| !v.is_null());
                    let got: Map<String, Value> = serde_json::from_slice(&b.value).unwrap();
                    assert_eq!(got.len(), map.len(), "{got:?}");
                    for (name, want) in &map {
                        // 3 comes back as 3.0 in a column of doubles: equal as numbers.
                        match (want.as_f64(), got[name].as_f64()) {
                            (Some(x), Some(y)) => assert_eq!(x, y),
                            _ => assert_eq!(want, &got[name]),
                        }
                    }
                }
                _ => assert_eq!(a.value, b.value, "kept whole"),
            }
        }
    }
}
