//! Values and types of the SQL engine: what a column holds while a query runs.
//!
//! JSON is the wire format, but a row is a `Vec<Value>` indexed by column, so expressions
//! read columns without map lookups and numbers keep ksqlDB's integer/double distinction.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value as Json;

/// ksqlDB's column types. INT and BIGINT both hold an `i64` at run time; the type keeps the
/// declared name for DESCRIBE and casts.
#[derive(Debug, Clone, PartialEq)]
pub enum DataType {
    Boolean,
    Int,
    BigInt,
    Double,
    /// DECIMAL(precision, scale), computed as a double.
    Decimal(u8, u8),
    String,
    Bytes,
    /// Milliseconds since the epoch, UTC.
    Timestamp,
    Array(Box<DataType>),
    Map(Box<DataType>),
    Struct(Vec<(String, DataType)>),
    /// Any JSON value: the type of a field nobody declared, or of NULL.
    Any,
}

impl DataType {
    pub fn is_numeric(&self) -> bool {
        matches!(self, DataType::Int | DataType::BigInt | DataType::Double | DataType::Decimal(..))
    }

    /// The type two numeric operands combine to.
    pub fn widen(a: &DataType, b: &DataType) -> DataType {
        match (a, b) {
            (DataType::Int, DataType::Int) => DataType::Int,
            (DataType::Int | DataType::BigInt, DataType::Int | DataType::BigInt) => DataType::BigInt,
            (DataType::Any, _) | (_, DataType::Any) => DataType::Any,
            _ => DataType::Double,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataType::Boolean => f.write_str("BOOLEAN"),
            DataType::Int => f.write_str("INTEGER"),
            DataType::BigInt => f.write_str("BIGINT"),
            DataType::Double => f.write_str("DOUBLE"),
            DataType::Decimal(p, s) => write!(f, "DECIMAL({p}, {s})"),
            DataType::String => f.write_str("STRING"),
            DataType::Bytes => f.write_str("BYTES"),
            DataType::Timestamp => f.write_str("TIMESTAMP"),
            DataType::Array(t) => write!(f, "ARRAY<{t}>"),
            DataType::Map(t) => write!(f, "MAP<STRING, {t}>"),
            DataType::Struct(fields) => {
                f.write_str("STRUCT<")?;
                for (i, (name, t)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{name} {t}")?;
                }
                f.write_str(">")
            }
            DataType::Any => f.write_str("ANY"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Double(f64),
    String(String),
    Array(Vec<Value>),
    /// A STRUCT or MAP: field name → value.
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// Makes this an integer in place: a row slot that holds one already is only
    /// overwritten, with no drop and no move of a whole value (runs per field per record).
    #[inline]
    pub fn set_int(&mut self, i: i64) {
        match self {
            Value::Int(slot) => *slot = i,
            other => *other = Value::Int(i),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Double(d) => Some(*d),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Double(d) if d.fract() == 0.0 && d.abs() < 9.2e18 => Some(*d as i64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// SQL's three-valued truth: only TRUE passes a WHERE.
    pub fn is_true(&self) -> bool {
        matches!(self, Value::Bool(true))
    }

    /// Order for comparisons, MIN/MAX and ORDER BY: numbers by value across INT and DOUBLE,
    /// strings by bytes. None when the two cannot be compared (either is NULL, or the kinds
    /// differ).
    pub fn compare(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
            // First: what MIN and MAX of readings compare per record.
            (Value::Double(a), Value::Double(b)) => a.partial_cmp(b),
            (Value::Int(_) | Value::Double(_), Value::Int(_) | Value::Double(_)) => {
                self.as_f64()?.partial_cmp(&other.as_f64()?)
            }
            (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            (Value::Array(a), Value::Array(b)) => {
                for (x, y) in a.iter().zip(b) {
                    match x.compare(y)? {
                        Ordering::Equal => continue,
                        other => return Some(other),
                    }
                }
                Some(a.len().cmp(&b.len()))
            }
            _ => None,
        }
    }

    pub fn from_json(json: &Json) -> Value {
        match json {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => n.as_i64().map_or_else(|| Value::Double(n.as_f64().unwrap_or(f64::NAN)), Value::Int),
            Json::String(s) => Value::String(s.clone()),
            Json::Array(items) => Value::Array(items.iter().map(Value::from_json).collect()),
            Json::Object(map) => Value::Map(map.iter().map(|(k, v)| (k.clone(), Value::from_json(v))).collect()),
        }
    }

    pub fn to_json(&self) -> Json {
        match self {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Int(i) => Json::from(*i),
            // JSON has no NaN or infinity.
            Value::Double(d) => serde_json::Number::from_f64(*d).map_or(Json::Null, Json::Number),
            Value::String(s) => Json::String(s.clone()),
            Value::Array(items) => Json::Array(items.iter().map(Value::to_json).collect()),
            Value::Map(map) => Json::Object(map.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }
}

impl fmt::Display for Value {
    /// The text form used by `||`, CAST(… AS STRING) and record keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::String(s) => f.write_str(s),
            Value::Double(d) if d.fract() == 0.0 && d.abs() < 1e15 => write!(f, "{d:.1}"),
            other => write!(f, "{}", other.to_json()),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<f64> for Value {
    fn from(d: f64) -> Self {
        Value::Double(d)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

/// Checkpointed state holds values as JSON, which keeps integers and doubles apart.
impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Json::deserialize(deserializer).map(|json| Value::from_json(&json))
    }
}
