//! Scalar functions: name → type rule and evaluation. The planner looks functions up here
//! and checks argument types before a query starts; a runtime error (a bad cast, a bad
//! format) fails only the record being processed.
//!
//! Semantics follow ksqlDB's function reference. Where its documentation and its behaviour
//! disagree, the behaviour wins, so a query moved from ksqlDB gives the same numbers: LOG(x)
//! is the natural logarithm (the reference says base 10, ksqlDB computes `Math.log`).
//! Deliberate differences, each for a reason:
//!
//! - INT, BIGINT and TIMESTAMP are all `i64` at run time and DECIMAL is a double, so a
//!   function that ksqlDB types by DECIMAL returns DOUBLE or BIGINT here, and TIMESTAMP
//!   functions also take BIGINT milliseconds (ROWTIME is one).
//! - An argument typed ANY (an undeclared JSON field) passes the plan-time check and is
//!   checked per record. A number or boolean given where a string is expected reads as its
//!   text, since JSON producers are loose about quoting.
//! - Strings are measured in characters (Unicode scalar values); Java counts UTF-16 units.
//! - Date patterns are Java `DateTimeFormatter` patterns, translated here letter by letter;
//!   letters outside the common subset (week-based fields, eras, optional sections) are an
//!   error rather than a silently different result.
//! - Time zones are IANA names (`Europe/London`), `UTC`/`GMT`/`Z`, or fixed offsets
//!   (`+02:00`, `GMT-5`). Without a zone the functions use UTC: ksqlDB's TIMESTAMPTOSTRING
//!   falls back to the server's zone, which would make results depend on the host.
//! - Regular expressions use Rust's `regex` syntax (no look-around or back-references);
//!   replacement strings keep Java's `$1` and `\$` forms.
//! - EXTRACTJSONFIELD returns NULL for a JSON `null` (ksqlDB returns the text "null").
//! - CAST to INT or BIGINT fails on a value out of range, where Java wraps or saturates.
//!
//! Not here: the lambda functions (TRANSFORM, FILTER, REDUCE) and those taking a unit
//! keyword (TIMESTAMPADD(SECONDS, …)), which the planner must handle; DATE, TIME and BYTES
//! functions, which have no value type yet; URL functions; RANDOM and UUID, which are not
//! deterministic and would make replays differ.

use std::borrow::Cow;
use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::format::{Fixed, Item, Numeric, Pad, Parsed, StrftimeItems};
use chrono::{
    DateTime, Datelike, FixedOffset, Months, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta, TimeZone, Timelike,
};
use chrono_tz::{OffsetName, Tz};
use regex::Regex;
use serde_json::Value as Json;

use super::value::{DataType, Value};
use crate::geo_fn::{geo_distance, DistanceUnit};

/// What a function returns for the given argument types, or why it cannot take them.
pub type TypeRule = fn(&[DataType]) -> Result<DataType, String>;
/// Evaluates a call. NULL arguments are handled by each function (most return NULL).
pub type Eval = fn(&[Value]) -> Result<Value, String>;

pub struct ScalarFunction {
    /// Upper case, as ksqlDB lists it.
    pub name: &'static str,
    pub min_args: usize,
    /// `usize::MAX` for variadic functions.
    pub max_args: usize,
    pub return_type: TypeRule,
    pub eval: Eval,
}

/// Looks a function up by name, case-insensitively.
pub fn lookup(name: &str) -> Option<&'static ScalarFunction> {
    FUNCTIONS.iter().find(|f| f.name.eq_ignore_ascii_case(name))
}

/// Every function the engine knows, for SHOW FUNCTIONS.
pub fn all() -> &'static [ScalarFunction] {
    FUNCTIONS
}

/// CAST(value AS type), with ksqlDB's rules (strings parse, doubles truncate toward zero
/// into integers, anything casts to STRING).
///
/// A TIMESTAMP value is bare milliseconds, so this casts it to STRING as a number; ksqlDB
/// writes `yyyy-MM-dd'T'HH:mm:ss.SSS`, which the caller, knowing the source type, gets from
/// FORMAT_TIMESTAMP.
pub fn cast(value: &Value, to: &DataType) -> Result<Value, String> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    let unsupported = || Err(format!("cannot cast {} to {to}", kind_of(value)));
    match to {
        DataType::Any => Ok(value.clone()),
        DataType::String => Ok(Value::String(value.to_string())),
        DataType::Boolean => match value {
            Value::Bool(b) => Ok(Value::Bool(*b)),
            Value::String(s) => Ok(Value::Bool(parse_sql_boolean(s.trim()))),
            _ => unsupported(),
        },
        DataType::Int => cast_to_integer(value, to, i32::MIN.into(), i32::MAX.into()),
        DataType::BigInt => cast_to_integer(value, to, i64::MIN, i64::MAX),
        DataType::Double => match value {
            Value::Int(i) => Ok(Value::Double(*i as f64)),
            Value::Double(d) => Ok(Value::Double(*d)),
            Value::String(s) => parse_double(s).map(Value::Double),
            _ => unsupported(),
        },
        DataType::Decimal(precision, scale) => {
            let d = match value {
                Value::Int(i) => *i as f64,
                Value::Double(d) => *d,
                Value::String(s) => parse_double(s)?,
                _ => return unsupported(),
            };
            let rounded = round_decimal(d, i64::from(*scale), Rounding::HalfAwayFromZero);
            // DECIMAL(p, s) holds p - s digits before the point.
            if rounded.abs() >= 10f64.powi(i32::from(*precision) - i32::from(*scale)) {
                return Err(format!("{value} is out of range for {to}"));
            }
            Ok(Value::Double(rounded))
        }
        DataType::Timestamp => match value {
            Value::Int(ms) => Ok(Value::Int(*ms)),
            Value::String(s) => parse_iso_timestamp(s.trim()).map(Value::Int),
            _ => unsupported(),
        },
        DataType::Array(element) => match value {
            Value::Array(items) => {
                items.iter().map(|item| cast(item, element)).collect::<Result<_, _>>().map(Value::Array)
            }
            _ => unsupported(),
        },
        DataType::Map(value_type) => match value {
            Value::Map(entries) => entries
                .iter()
                .map(|(k, v)| Ok((k.clone(), cast(v, value_type)?)))
                .collect::<Result<_, String>>()
                .map(Value::Map),
            _ => unsupported(),
        },
        // ksqlDB copies only the target's fields, matching names exactly; the rest are NULL.
        DataType::Struct(fields) => match value {
            Value::Map(entries) => fields
                .iter()
                .map(|(name, t)| Ok((name.clone(), cast(entries.get(name).unwrap_or(&Value::Null), t)?)))
                .collect::<Result<_, String>>()
                .map(Value::Map),
            _ => unsupported(),
        },
        DataType::Bytes => unsupported(),
    }
}

/// ksqlDB's string-to-boolean rule: a prefix of "true" or "yes" (any case) is true, anything
/// else false rather than an error.
fn parse_sql_boolean(s: &str) -> bool {
    let is_prefix_of = |word: &str| !s.is_empty() && s.len() <= word.len() && word[..s.len()].eq_ignore_ascii_case(s);
    is_prefix_of("true") || is_prefix_of("yes")
}

fn parse_double(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        // Like ksqlDB, "NaN" and "Infinity" are not numbers a user meant to write.
        Ok(d) if d.is_finite() => Ok(d),
        _ => Err(format!("cannot cast '{s}' to DOUBLE")),
    }
}

fn cast_to_integer(value: &Value, to: &DataType, min: i64, max: i64) -> Result<Value, String> {
    let out_of_range = || format!("{value} is out of range for {to}");
    let i = match value {
        Value::Int(i) => *i,
        Value::Double(d) => {
            let truncated = d.trunc();
            // i64::MAX as f64 rounds up to 2^63, so the upper bound is exclusive; NaN is outside.
            if !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&truncated) {
                return Err(out_of_range());
            }
            truncated as i64
        }
        Value::String(s) => s.trim().parse::<i64>().map_err(|_| format!("cannot cast '{s}' to {to}"))?,
        _ => return Err(format!("cannot cast {} to {to}", kind_of(value))),
    };
    if i < min || i > max {
        return Err(out_of_range());
    }
    Ok(Value::Int(i))
}

/// Parses CAST(… AS TIMESTAMP) input: ISO-8601 `yyyy-MM-dd'T'HH:mm:ss.SSS` with an optional
/// `Z` or numeric offset (UTC otherwise). As in ksqlDB, trailing parts may be left out
/// (`2020-05-26`, `2020-05-26T23:59`); a space may stand for the `T`.
fn parse_iso_timestamp(text: &str) -> Result<i64, String> {
    let invalid = || {
        format!(
            "cannot parse '{text}' as a TIMESTAMP: expected yyyy-MM-ddTHH:mm:ss.SSS with an optional offset, \
             e.g. 2020-05-26T23:59:58.000+02:00"
        )
    };
    let (date_text, rest) = text.split_once(['T', ' ']).unwrap_or((text, ""));
    let (time_text, offset_seconds) = if let Some(time) = rest.strip_suffix(['Z', 'z']) {
        (time, 0)
    } else if let Some(sign) = rest.find(['+', '-']) {
        (&rest[..sign], parse_offset(&rest[sign..]).ok_or_else(invalid)?)
    } else {
        (rest, 0)
    };

    let mut date_parts = date_text.split('-');
    let year = date_parts.next().and_then(parse_digits).ok_or_else(invalid)?;
    let month = date_parts.next().map_or(Some(1), parse_digits).ok_or_else(invalid)?;
    let day = date_parts.next().map_or(Some(1), parse_digits).ok_or_else(invalid)?;
    if date_parts.next().is_some() {
        return Err(invalid());
    }
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).map_err(|_| invalid())?, month, day).ok_or_else(invalid)?;

    let time = if time_text.is_empty() { Some(NaiveTime::MIN) } else { parse_iso_time(time_text) };
    let local = date.and_time(time.ok_or_else(invalid)?);
    let utc = local.checked_sub_signed(TimeDelta::seconds(offset_seconds.into())).ok_or_else(invalid)?;
    Ok(utc.and_utc().timestamp_millis())
}

/// `HH[:mm[:ss[.fraction]]]`, the fraction up to nanoseconds.
fn parse_iso_time(text: &str) -> Option<NaiveTime> {
    let (clock, fraction) = text.split_once('.').unwrap_or((text, ""));
    let mut clock_parts = clock.split(':');
    let hour = clock_parts.next().and_then(parse_digits)?;
    let minute = clock_parts.next().map_or(Some(0), parse_digits)?;
    let second = clock_parts.next().map_or(Some(0), parse_digits)?;
    if clock_parts.next().is_some() || fraction.len() > 9 || (!fraction.is_empty() && parse_digits(fraction).is_none())
    {
        return None;
    }
    let nanos = fraction.bytes().chain(std::iter::repeat(b'0')).take(9).fold(0, |n, b| n * 10 + u32::from(b - b'0'));
    NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)
}

/// A run of ASCII digits as a number; None for anything else, including the empty string.
fn parse_digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `+HH`, `+HHMM`, `+HH:MM` or `+HH:MM:SS` (either sign) as seconds east of UTC.
fn parse_offset(text: &str) -> Option<i32> {
    let sign = match text.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = text[1..].chars().filter(|&c| c != ':').collect();
    let field = |range: std::ops::Range<usize>| digits.get(range).and_then(parse_digits);
    let (hours, minutes, seconds) = match digits.len() {
        1 | 2 => (parse_digits(&digits)?, 0, 0),
        4 => (field(0..2)?, field(2..4)?, 0),
        6 => (field(0..2)?, field(2..4)?, field(4..6)?),
        _ => return None,
    };
    if hours > 18 || minutes > 59 || seconds > 59 {
        return None;
    }
    Some(sign * i32::try_from(hours * 3600 + minutes * 60 + seconds).ok()?)
}

// ---------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------

const VARIADIC: usize = usize::MAX;

/// One table row. The rule's and the evaluation's messages get the function's name in
/// front, so the small functions below need not repeat it.
///
/// `[params] -> type` checks the arguments against `params` (the last one repeats for
/// variadic functions) and returns `type`; `[params] => rule` checks them, then asks `rule`.
macro_rules! scalar {
    ($name:literal, $min:expr, $max:expr, [$($param:ident),*] -> $ret:expr, $eval:expr) => {
        scalar!(@row $name, $min, $max, |types: &[DataType]| {
            check(types, &[$(Param::$param),*])?;
            Ok($ret)
        }, $eval)
    };
    ($name:literal, $min:expr, $max:expr, [$($param:ident),*] => $rule:expr, $eval:expr) => {
        scalar!(@row $name, $min, $max, |types: &[DataType]| {
            check(types, &[$(Param::$param),*])?;
            ($rule)(types)
        }, $eval)
    };
    (@row $name:literal, $min:expr, $max:expr, $rule:expr, $eval:expr) => {
        ScalarFunction {
            name: $name,
            min_args: $min,
            max_args: $max,
            return_type: |types| ($rule)(types).map_err(|e: String| format!("{} {e}", $name)),
            eval: |args| ($eval)(args).map_err(|e: String| format!("{}: {e}", $name)),
        }
    };
}

static FUNCTIONS: &[ScalarFunction] = &[
    // Numbers
    scalar!("ABS", 1, 1, [Num] => same_as_first, abs),
    scalar!("CEIL", 1, 1, [Num] => same_as_first, |args| integral(args, f64::ceil)),
    scalar!("FLOOR", 1, 1, [Num] => same_as_first, |args| integral(args, f64::floor)),
    scalar!("ROUND", 1, 2, [Num, Int] => rounded_type, |args| round_or_trunc(args, Rounding::HalfUp)),
    scalar!("TRUNC", 1, 2, [Num, Int] => rounded_type, |args| round_or_trunc(args, Rounding::TowardZero)),
    scalar!("SIGN", 1, 1, [Num] -> DataType::Int, sign),
    scalar!("SQRT", 1, 1, [Num] -> DataType::Double, |args| unary(args, f64::sqrt)),
    scalar!("CBRT", 1, 1, [Num] -> DataType::Double, |args| unary(args, f64::cbrt)),
    scalar!("EXP", 1, 1, [Num] -> DataType::Double, |args| unary(args, f64::exp)),
    scalar!("LN", 1, 1, [Num] -> DataType::Double, |args| unary(args, f64::ln)),
    scalar!("LOG", 1, 2, [Num] -> DataType::Double, log),
    scalar!("POWER", 2, 2, [Num] -> DataType::Double, |args| binary(args, f64::powf)),
    scalar!("PI", 0, 0, [] -> DataType::Double, |_| Ok(Value::Double(std::f64::consts::PI))),
    scalar!("DEGREES", 1, 1, [Num] -> DataType::Double, |args| unary(args, f64::to_degrees)),
    scalar!("RADIANS", 1, 1, [Num] -> DataType::Double, |args| unary(args, f64::to_radians)),
    scalar!("SIN", 1, 1, [Num] -> DataType::Double, |args| unary(args, f64::sin)),
    scalar!("COS", 1, 1, [Num] -> DataType::Double, |args| unary(args, f64::cos)),
    scalar!("TAN", 1, 1, [Num] -> DataType::Double, |args| unary(args, f64::tan)),
    scalar!("COT", 1, 1, [Num] -> DataType::Double, |args| unary(args, |x| 1.0 / x.tan())),
    scalar!("ASIN", 1, 1, [Num] -> DataType::Double, |args| unary(args, f64::asin)),
    scalar!("ACOS", 1, 1, [Num] -> DataType::Double, |args| unary(args, f64::acos)),
    scalar!("ATAN", 1, 1, [Num] -> DataType::Double, |args| unary(args, f64::atan)),
    scalar!("ATAN2", 2, 2, [Num] -> DataType::Double, |args| binary(args, f64::atan2)),
    scalar!("SINH", 1, 1, [Num] -> DataType::Double, |args| unary(args, f64::sinh)),
    scalar!("COSH", 1, 1, [Num] -> DataType::Double, |args| unary(args, f64::cosh)),
    scalar!("TANH", 1, 1, [Num] -> DataType::Double, |args| unary(args, f64::tanh)),
    scalar!("GREATEST", 1, VARIADIC, [Scalar] => common_type, |args| extreme(args, Ordering::Greater)),
    scalar!("LEAST", 1, VARIADIC, [Scalar] => common_type, |args| extreme(args, Ordering::Less)),
    scalar!("GEO_DISTANCE", 4, 5, [Num, Num, Num, Num, Str] -> DataType::Double, geo_distance_fn),
    scalar!("BEARING", 4, 4, [Num, Num, Num, Num] -> DataType::Double, bearing_fn),
    // Strings
    scalar!("UCASE", 1, 1, [Str] -> DataType::String, |args| map_text(args, str::to_uppercase)),
    scalar!("UPPER", 1, 1, [Str] -> DataType::String, |args| map_text(args, str::to_uppercase)),
    scalar!("LCASE", 1, 1, [Str] -> DataType::String, |args| map_text(args, str::to_lowercase)),
    scalar!("LOWER", 1, 1, [Str] -> DataType::String, |args| map_text(args, str::to_lowercase)),
    scalar!("TRIM", 1, 1, [Str] -> DataType::String, |args| map_text(args, trim)),
    scalar!("LTRIM", 1, 1, [Str] -> DataType::String, |args| map_text(args, ltrim)),
    scalar!("RTRIM", 1, 1, [Str] -> DataType::String, |args| map_text(args, rtrim)),
    scalar!("INITCAP", 1, 1, [Str] -> DataType::String, |args| map_text(args, initcap)),
    scalar!("LEN", 1, 1, [Str] -> DataType::Int, len),
    scalar!("LENGTH", 1, 1, [Str] -> DataType::Int, len),
    scalar!("SUBSTRING", 2, 3, [Str, Int, Int] -> DataType::String, substring),
    scalar!("SUBSTR", 2, 3, [Str, Int, Int] -> DataType::String, substring),
    scalar!("CONCAT", 1, VARIADIC, [Str] -> DataType::String, concat),
    scalar!("CONCAT_WS", 2, VARIADIC, [Str] -> DataType::String, concat_ws),
    scalar!("REPLACE", 3, 3, [Str] -> DataType::String, replace),
    scalar!("SPLIT", 2, 2, [Str] -> array_of_strings(), split),
    scalar!("SPLIT_TO_MAP", 3, 3, [Str] -> DataType::Map(Box::new(DataType::String)), split_to_map),
    scalar!("LPAD", 3, 3, [Str, Int, Str] -> DataType::String, |args| pad(args, Side::Left)),
    scalar!("RPAD", 3, 3, [Str, Int, Str] -> DataType::String, |args| pad(args, Side::Right)),
    scalar!("INSTR", 2, 4, [Str, Str, Int, Int] -> DataType::Int, instr),
    scalar!("CHR", 1, 1, [Scalar] -> DataType::String, chr),
    scalar!("ELT", 1, VARIADIC, [Int, Str] -> DataType::String, elt),
    scalar!("FIELD", 1, VARIADIC, [Str] -> DataType::Int, field),
    scalar!("MASK", 1, 5, [Str] -> DataType::String, |args| mask(args, MaskSpan::All)),
    scalar!("MASK_LEFT", 2, 6, [Str, Int, Str] -> DataType::String, |args| mask(args, MaskSpan::Left)),
    scalar!("MASK_RIGHT", 2, 6, [Str, Int, Str] -> DataType::String, |args| mask(args, MaskSpan::Right)),
    scalar!("MASK_KEEP_LEFT", 2, 6, [Str, Int, Str] -> DataType::String, |args| mask(args, MaskSpan::KeepLeft)),
    scalar!("MASK_KEEP_RIGHT", 2, 6, [Str, Int, Str] -> DataType::String, |args| mask(args, MaskSpan::KeepRight)),
    scalar!("REGEXP_EXTRACT", 2, 3, [Str, Str, Int] -> DataType::String, regexp_extract),
    scalar!("REGEXP_EXTRACT_ALL", 2, 3, [Str, Str, Int] -> array_of_strings(), regexp_extract_all),
    scalar!("REGEXP_REPLACE", 3, 3, [Str] -> DataType::String, regexp_replace),
    scalar!("REGEXP_SPLIT_TO_ARRAY", 2, 2, [Str] -> array_of_strings(), regexp_split_to_array),
    // Nulls
    scalar!("COALESCE", 1, VARIADIC, [Any] => common_type, coalesce),
    scalar!("IFNULL", 2, 2, [Any] => common_type, coalesce),
    scalar!("NULLIF", 2, 2, [Any] => same_as_first, nullif),
    // JSON
    scalar!("EXTRACTJSONFIELD", 2, 2, [Any, Str] -> DataType::String, extract_json_field),
    scalar!("JSON_VALUE", 2, 2, [Any, Str] -> DataType::String, json_value),
    scalar!("IS_JSON_STRING", 1, 1, [Str] -> DataType::Boolean, is_json_string),
    scalar!("JSON_ARRAY_LENGTH", 1, 1, [Str] -> DataType::Int, json_array_length),
    scalar!("JSON_ARRAY_CONTAINS", 2, 2, [Str, Any] -> DataType::Boolean, json_array_contains),
    scalar!("JSON_KEYS", 1, 1, [Str] -> array_of_strings(), json_keys),
    scalar!("TO_JSON_STRING", 1, 1, [Any] -> DataType::String, to_json_string),
    // Collections
    scalar!("ARRAY_LENGTH", 1, 1, [Array] -> DataType::Int, array_length),
    scalar!("ARRAY_CONTAINS", 2, 2, [Array, Any] -> DataType::Boolean, array_contains),
    scalar!("ARRAY_JOIN", 1, 2, [Array, Str] -> DataType::String, array_join),
    scalar!("ARRAY_MAX", 1, 1, [Array] => element_type, |args| array_extreme(args, Ordering::Greater)),
    scalar!("ARRAY_MIN", 1, 1, [Array] => element_type, |args| array_extreme(args, Ordering::Less)),
    scalar!("ARRAY_SORT", 1, 2, [Array, Str] => same_as_first, array_sort),
    scalar!("ARRAY_DISTINCT", 1, 1, [Array] => same_as_first, array_distinct),
    scalar!("ARRAY_REMOVE", 2, 2, [Array, Any] => same_as_first, array_remove),
    scalar!("ARRAY_CONCAT", 2, 2, [Array] => common_type, array_concat),
    scalar!("ARRAY_UNION", 2, 2, [Array] => common_type, |args| array_set_op(args, SetOp::Union)),
    scalar!("ARRAY_INTERSECT", 2, 2, [Array] => common_type, |args| array_set_op(args, SetOp::Intersect)),
    scalar!("ARRAY_EXCEPT", 2, 2, [Array] => common_type, |args| array_set_op(args, SetOp::Except)),
    scalar!("SLICE", 3, 3, [Array, Int] => same_as_first, slice),
    scalar!("MAP_KEYS", 1, 1, [Map] -> array_of_strings(), map_keys),
    scalar!("MAP_VALUES", 1, 1, [Map] => map_values_type, map_values),
    scalar!("MAP_UNION", 2, 2, [Map] => common_type, map_union),
    // Date and time
    scalar!("UNIX_TIMESTAMP", 0, 1, [Time] -> DataType::BigInt, unix_timestamp),
    scalar!("UNIX_DATE", 0, 0, [] -> DataType::Int, |_| Ok(Value::Int(now_millis().div_euclid(MILLIS_PER_DAY)))),
    scalar!("FROM_UNIXTIME", 1, 1, [Int] -> DataType::Timestamp, unix_timestamp),
    scalar!("TIMESTAMPTOSTRING", 2, 3, [Time, Str] -> DataType::String, format_timestamp),
    scalar!("FORMAT_TIMESTAMP", 2, 3, [Time, Str] -> DataType::String, format_timestamp),
    scalar!("STRINGTOTIMESTAMP", 2, 3, [Str] -> DataType::BigInt, parse_timestamp),
    scalar!("PARSE_TIMESTAMP", 2, 3, [Str] -> DataType::Timestamp, parse_timestamp),
    scalar!("DATETOSTRING", 2, 2, [Int, Str] -> DataType::String, date_to_string),
    scalar!("STRINGTODATE", 2, 2, [Str] -> DataType::Int, string_to_date),
    scalar!("CONVERT_TZ", 3, 3, [Time, Str] -> DataType::Timestamp, convert_tz),
    // Time buckets: Druid's TIME_FLOOR(time, 'PT1M'[, origin]) and DATE_BIN(stride, time[, origin])
    // of PostgreSQL and InfluxDB 3, the stride an INTERVAL, milliseconds or a period.
    scalar!("TIME_FLOOR", 2, 3, [Time, Any, Time] -> DataType::Timestamp, |args: &[Value]| {
        time_bucket(arg(args, 0), arg(args, 1), args.get(2))
    }),
    scalar!("DATE_BIN", 2, 3, [Any, Time, Time] -> DataType::Timestamp, |args: &[Value]| {
        time_bucket(arg(args, 1), arg(args, 0), args.get(2))
    }),
];

// ---------------------------------------------------------------------------------------
// Plan-time type rules
// ---------------------------------------------------------------------------------------

/// What a parameter accepts. ANY arguments pass every check; their values are checked per
/// record.
#[derive(Clone, Copy)]
enum Param {
    Str,
    /// INT or BIGINT.
    Int,
    /// Any numeric type.
    Num,
    /// TIMESTAMP, or BIGINT milliseconds.
    Time,
    Array,
    /// A MAP or a STRUCT.
    Map,
    /// Anything but a collection.
    Scalar,
    Any,
}

impl Param {
    fn accepts(self, t: &DataType) -> bool {
        match (self, t) {
            (_, DataType::Any) | (Param::Any, _) => true,
            (Param::Str, t) => *t == DataType::String,
            (Param::Int, t) => matches!(t, DataType::Int | DataType::BigInt),
            (Param::Num, t) => t.is_numeric(),
            (Param::Time, t) => matches!(t, DataType::Timestamp | DataType::Int | DataType::BigInt),
            (Param::Array, t) => matches!(t, DataType::Array(_)),
            (Param::Map, t) => matches!(t, DataType::Map(_) | DataType::Struct(_)),
            (Param::Scalar, t) => !matches!(t, DataType::Array(_) | DataType::Map(_) | DataType::Struct(_)),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Param::Str => "a STRING",
            Param::Int => "an INTEGER or BIGINT",
            Param::Num => "a number",
            Param::Time => "a TIMESTAMP or BIGINT milliseconds",
            Param::Array => "an ARRAY",
            Param::Map => "a MAP or STRUCT",
            Param::Scalar => "a primitive value",
            Param::Any => "any value",
        }
    }
}

/// Checks each argument type against its parameter; the last parameter repeats.
fn check(types: &[DataType], params: &[Param]) -> Result<(), String> {
    for (i, t) in types.iter().enumerate() {
        let Some(param) = params.get(i).or(params.last()) else { break };
        if !param.accepts(t) {
            return Err(if types.len() == 1 {
                format!("expects {}, got {t}", param.describe())
            } else {
                format!("expects {} as argument {}, got {t}", param.describe(), i + 1)
            });
        }
    }
    Ok(())
}

fn array_of_strings() -> DataType {
    DataType::Array(Box::new(DataType::String))
}

fn same_as_first(types: &[DataType]) -> Result<DataType, String> {
    Ok(types.first().cloned().unwrap_or(DataType::Any))
}

/// ROUND and TRUNC: an integer without a scale (BIGINT, as in ksqlDB), the input's type
/// with one (DOUBLE for integers, whose value rounds like a double).
fn rounded_type(types: &[DataType]) -> Result<DataType, String> {
    Ok(match types {
        [_] => DataType::BigInt,
        [DataType::Decimal(p, s), _] => DataType::Decimal(*p, *s),
        _ => DataType::Double,
    })
}

/// The one type all arguments share, ignoring ANY ones; numbers widen to each other.
fn common_type(types: &[DataType]) -> Result<DataType, String> {
    let mut common = DataType::Any;
    for t in types.iter().filter(|t| **t != DataType::Any) {
        common = match (&common, t) {
            (DataType::Any, t) => t.clone(),
            (a, b) if a == b => a.clone(),
            (a, b) if a.is_numeric() && b.is_numeric() => DataType::widen(a, b),
            (a, b) => return Err(format!("expects arguments of one type, got {a} and {b}")),
        };
    }
    Ok(common)
}

fn element_type(types: &[DataType]) -> Result<DataType, String> {
    Ok(match types.first() {
        Some(DataType::Array(element)) => (**element).clone(),
        _ => DataType::Any,
    })
}

fn map_values_type(types: &[DataType]) -> Result<DataType, String> {
    let value_type = match types.first() {
        Some(DataType::Map(value_type)) => (**value_type).clone(),
        _ => DataType::Any,
    };
    Ok(DataType::Array(Box::new(value_type)))
}

// ---------------------------------------------------------------------------------------
// Reading arguments at run time
// ---------------------------------------------------------------------------------------

/// The i-th argument; an absent optional one reads as NULL.
fn arg(args: &[Value], i: usize) -> &Value {
    args.get(i).unwrap_or(&Value::Null)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "NULL",
        Value::Bool(_) => "BOOLEAN",
        Value::Int(_) => "BIGINT",
        Value::Double(_) => "DOUBLE",
        Value::String(_) => "STRING",
        Value::Array(_) => "ARRAY",
        Value::Map(_) => "MAP",
    }
}

fn expected(what: &str, got: &Value) -> String {
    format!("expected {what}, got {} {got}", kind_of(got))
}

/// A string argument, None for NULL. Numbers and booleans (from ANY arguments) read as text.
fn text(args: &[Value], i: usize) -> Result<Option<Cow<'_, str>>, String> {
    match arg(args, i) {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(Cow::Borrowed(s))),
        v @ (Value::Int(_) | Value::Double(_) | Value::Bool(_)) => Ok(Some(Cow::Owned(v.to_string()))),
        other => Err(expected("a STRING", other)),
    }
}

/// An integer argument, None for NULL. A double with no fraction (JSON has one number type)
/// counts as an integer.
fn int(args: &[Value], i: usize) -> Result<Option<i64>, String> {
    match arg(args, i) {
        Value::Null => Ok(None),
        v => v.as_i64().map(Some).ok_or_else(|| expected("an integer", v)),
    }
}

fn num(args: &[Value], i: usize) -> Result<Option<f64>, String> {
    match arg(args, i) {
        Value::Null => Ok(None),
        v => v.as_f64().map(Some).ok_or_else(|| expected("a number", v)),
    }
}

fn array(args: &[Value], i: usize) -> Result<Option<&[Value]>, String> {
    match arg(args, i) {
        Value::Null => Ok(None),
        Value::Array(items) => Ok(Some(items)),
        other => Err(expected("an ARRAY", other)),
    }
}

fn map(args: &[Value], i: usize) -> Result<Option<&BTreeMap<String, Value>>, String> {
    match arg(args, i) {
        Value::Null => Ok(None),
        Value::Map(entries) => Ok(Some(entries)),
        other => Err(expected("a MAP", other)),
    }
}

/// Converts a length or position to `usize`, saturating: a huge count means "all of it".
fn clamp_to_usize(n: i64) -> usize {
    usize::try_from(n.max(0)).unwrap_or(usize::MAX)
}

/// Equality for ARRAY_CONTAINS, NULLIF and the set functions: numbers compare by value
/// across BIGINT and DOUBLE; NULL equals NULL, as Java's `List.contains(null)` has it.
fn same_value(a: &Value, b: &Value) -> bool {
    a == b || a.compare(b) == Some(Ordering::Equal)
}

// ---------------------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------------------

fn not_a_number(value: &Value) -> Result<Value, String> {
    if value.is_null() {
        Ok(Value::Null)
    } else {
        Err(expected("a number", value))
    }
}

fn abs(args: &[Value]) -> Result<Value, String> {
    match arg(args, 0) {
        Value::Int(i) => i.checked_abs().map(Value::Int).ok_or_else(|| format!("{i} has no BIGINT absolute value")),
        Value::Double(d) => Ok(Value::Double(d.abs())),
        other => not_a_number(other),
    }
}

/// CEIL and FLOOR: integers are already integral; doubles stay doubles, as in ksqlDB.
fn integral(args: &[Value], f: fn(f64) -> f64) -> Result<Value, String> {
    match arg(args, 0) {
        Value::Int(i) => Ok(Value::Int(*i)),
        Value::Double(d) => Ok(Value::Double(f(*d))),
        other => not_a_number(other),
    }
}

fn unary(args: &[Value], f: fn(f64) -> f64) -> Result<Value, String> {
    Ok(num(args, 0)?.map_or(Value::Null, |x| Value::Double(f(x))))
}

fn binary(args: &[Value], f: fn(f64, f64) -> f64) -> Result<Value, String> {
    Ok(match (num(args, 0)?, num(args, 1)?) {
        (Some(x), Some(y)) => Value::Double(f(x, y)),
        _ => Value::Null,
    })
}

/// LOG(value) is the natural logarithm (what ksqlDB computes); LOG(base, value) is NaN for
/// a base that is not positive or is 1, as documented.
fn log(args: &[Value]) -> Result<Value, String> {
    if args.len() < 2 {
        return unary(args, f64::ln);
    }
    binary(args, |base, x| if base <= 0.0 || base == 1.0 { f64::NAN } else { x.ln() / base.ln() })
}

fn sign(args: &[Value]) -> Result<Value, String> {
    match arg(args, 0) {
        Value::Int(i) => Ok(Value::Int(i.signum())),
        // f64::signum gives 1 for 0.0 and NaN for NaN; ksqlDB gives 0 for both.
        Value::Double(d) => Ok(Value::Int(if *d > 0.0 {
            1
        } else if *d < 0.0 {
            -1
        } else {
            0
        })),
        other => not_a_number(other),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Rounding {
    /// ROUND: halves go toward positive infinity (2.5 → 3, -2.5 → -2), as ksqlDB documents.
    HalfUp,
    /// CAST to DECIMAL: halves go away from zero (Java's `RoundingMode.HALF_UP`).
    HalfAwayFromZero,
    /// TRUNC.
    TowardZero,
}

fn round_or_trunc(args: &[Value], mode: Rounding) -> Result<Value, String> {
    let x = arg(args, 0);
    if args.len() < 2 {
        return match x {
            Value::Int(i) => Ok(Value::Int(*i)),
            // `as` saturates and maps NaN to 0, which is what Java's Math.round does.
            Value::Double(d) => Ok(Value::Int(round_decimal(*d, 0, mode) as i64)),
            other => not_a_number(other),
        };
    }
    let Some(places) = int(args, 1)? else { return Ok(Value::Null) };
    Ok(num(args, 0)?.map_or(Value::Null, |x| Value::Double(round_decimal(x, places, mode))))
}

/// Rounds to `places` decimal places (negative: to tens, hundreds, …). Works on the shortest
/// decimal text of `x`, as ksqlDB's `BigDecimal.valueOf` does, so ROUND(1.005, 2) is 1.01
/// and not 1.0 as rounding the binary value would give.
fn round_decimal(x: f64, places: i64, mode: Rounding) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let scientific = format!("{:e}", x.abs()); // e.g. "1.005e0"
    let Some((mantissa, exponent)) = scientific.split_once('e') else { return x };
    let Ok(exponent) = exponent.parse::<i64>() else { return x };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let Ok(significand) = digits.parse::<u128>() else { return x };
    // |x| = significand × 10^(exponent - digits after the first)
    let scale = exponent - (digits.len() as i64 - 1);
    let places = places.clamp(-400, 400);
    let dropped = -(scale + places);
    if dropped <= 0 {
        return x;
    }
    // 17 significant digits at most, so dropping more than 38 leaves nothing, not even a half.
    let (kept, rest, half) = match 10u128.checked_pow(u32::try_from(dropped).unwrap_or(u32::MAX)) {
        Some(unit) => (significand / unit, significand % unit, unit / 2),
        None => (0, 0, 1),
    };
    let negative = x < 0.0;
    let round_up = match mode {
        Rounding::TowardZero => false,
        Rounding::HalfAwayFromZero => rest >= half,
        Rounding::HalfUp => rest > half || (rest == half && !negative),
    };
    let magnitude: f64 = format!("{}e{}", kept + u128::from(round_up), -places).parse().unwrap_or(f64::NAN);
    if negative && magnitude != 0.0 {
        -magnitude
    } else {
        magnitude
    }
}

/// GREATEST and LEAST: NULLs are skipped; all NULL gives NULL. If any argument is a DOUBLE
/// the result is one, so the value matches the widened type.
fn extreme(args: &[Value], wanted: Ordering) -> Result<Value, String> {
    let mut best: Option<&Value> = None;
    for value in args.iter().filter(|v| !v.is_null()) {
        best = match best {
            None => Some(value),
            Some(current) => match value.compare(current) {
                Some(order) if order == wanted => Some(value),
                Some(_) => Some(current),
                None => return Err(format!("cannot compare {} with {}", kind_of(value), kind_of(current))),
            },
        };
    }
    let any_double = args.iter().any(|v| matches!(v, Value::Double(_)));
    Ok(match best {
        None => Value::Null,
        Some(Value::Int(i)) if any_double => Value::Double(*i as f64),
        Some(value) => value.clone(),
    })
}

/// (lat1, lon1, lat2, lon2) from the first four arguments, checked; None if one is NULL.
fn two_positions(args: &[Value]) -> Result<Option<[f64; 4]>, String> {
    let mut coordinates = [0.0; 4];
    for (i, slot) in coordinates.iter_mut().enumerate() {
        let Some(x) = num(args, i)? else { return Ok(None) };
        *slot = x;
    }
    let [lat1, lon1, lat2, lon2] = coordinates;
    if !(-90.0..=90.0).contains(&lat1) || !(-90.0..=90.0).contains(&lat2) {
        return Err("latitudes must be between -90 and 90 degrees".to_string());
    }
    if !(-180.0..=180.0).contains(&lon1) || !(-180.0..=180.0).contains(&lon2) {
        return Err("longitudes must be between -180 and 180 degrees".to_string());
    }
    Ok(Some(coordinates))
}

/// `BEARING(lat1, lon1, lat2, lon2)`: initial great-circle course from the first position
/// to the second, degrees clockwise from north in [0, 360).
fn bearing_fn(args: &[Value]) -> Result<Value, String> {
    use geo::Bearing;
    let Some([lat1, lon1, lat2, lon2]) = two_positions(args)? else { return Ok(Value::Null) };
    Ok(Value::Double(geo::Haversine.bearing(geo::Point::new(lon1, lat1), geo::Point::new(lon2, lat2))))
}

fn geo_distance_fn(args: &[Value]) -> Result<Value, String> {
    let Some([lat1, lon1, lat2, lon2]) = two_positions(args)? else { return Ok(Value::Null) };
    let unit = match text(args, 4)? {
        None => DistanceUnit::Km,
        Some(name) if name.trim().is_empty() => DistanceUnit::Km,
        // ksqlDB also takes the singular forms.
        Some(name) => match name.trim().to_ascii_lowercase().as_str() {
            "mile" => DistanceUnit::Mi,
            "kilometer" | "kilometre" => DistanceUnit::Km,
            other => {
                DistanceUnit::parse(other).ok_or_else(|| format!("unknown unit '{name}', expected 'km' or 'mi'"))?
            }
        },
    };
    Ok(Value::Double(geo_distance(lat1, lon1, lat2, lon2, unit)))
}

// ---------------------------------------------------------------------------------------
// Strings
// ---------------------------------------------------------------------------------------

/// Java's `String.trim` removes every control character and space, not Unicode spaces.
fn is_java_space(c: char) -> bool {
    c <= ' '
}

fn trim(s: &str) -> String {
    s.trim_matches(is_java_space).to_string()
}

fn ltrim(s: &str) -> String {
    s.trim_start_matches(is_java_space).to_string()
}

fn rtrim(s: &str) -> String {
    s.trim_end_matches(is_java_space).to_string()
}

fn map_text(args: &[Value], f: fn(&str) -> String) -> Result<Value, String> {
    Ok(text(args, 0)?.map_or(Value::Null, |s| Value::String(f(&s))))
}

/// Each word's first letter upper case, the rest lower case; words are split by whitespace.
fn initcap(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut at_word_start = true;
    for c in s.chars() {
        if at_word_start {
            out.extend(c.to_uppercase());
        } else {
            out.extend(c.to_lowercase());
        }
        at_word_start = c.is_whitespace();
    }
    out
}

fn len(args: &[Value]) -> Result<Value, String> {
    Ok(text(args, 0)?.map_or(Value::Null, |s| Value::Int(s.chars().count() as i64)))
}

/// SUBSTRING(str, pos[, len]): 1-based; a negative position counts from the end; positions
/// and lengths past either end are clipped, never an error.
fn substring(args: &[Value]) -> Result<Value, String> {
    let (Some(s), Some(pos)) = (text(args, 0)?, int(args, 1)?) else { return Ok(Value::Null) };
    let length = match args.len() {
        2 => None,
        _ => match int(args, 2)? {
            Some(length) => Some(length),
            None => return Ok(Value::Null),
        },
    };
    let chars: Vec<char> = s.chars().collect();
    let total = chars.len() as i64;
    let start = if pos < 0 { total.saturating_add(pos).max(0) } else { (pos - 1).clamp(0, total) };
    let end = length.map_or(total, |length| start.saturating_add(length).min(total).max(start));
    Ok(Value::String(chars[clamp_to_usize(start)..clamp_to_usize(end)].iter().collect()))
}

/// CONCAT skips NULLs (ksqlDB treats them as empty strings).
fn concat(args: &[Value]) -> Result<Value, String> {
    let mut out = String::new();
    for i in 0..args.len() {
        if let Some(s) = text(args, i)? {
            out.push_str(&s);
        }
    }
    Ok(Value::String(out))
}

/// CONCAT_WS(separator, …): NULL separator gives NULL; NULL parts are skipped.
fn concat_ws(args: &[Value]) -> Result<Value, String> {
    let Some(separator) = text(args, 0)? else { return Ok(Value::Null) };
    let mut parts = Vec::with_capacity(args.len());
    for i in 1..args.len() {
        if let Some(s) = text(args, i)? {
            parts.push(s);
        }
    }
    Ok(Value::String(parts.join(&separator)))
}

fn replace(args: &[Value]) -> Result<Value, String> {
    Ok(match (text(args, 0)?, text(args, 1)?, text(args, 2)?) {
        (Some(s), Some(old), Some(new)) => Value::String(s.replace(&*old, &new)),
        _ => Value::Null,
    })
}

/// SPLIT keeps empty pieces; an empty delimiter splits into characters.
fn split(args: &[Value]) -> Result<Value, String> {
    let (Some(s), Some(delimiter)) = (text(args, 0)?, text(args, 1)?) else { return Ok(Value::Null) };
    let pieces: Vec<Value> = if delimiter.is_empty() {
        if s.is_empty() {
            vec![Value::from("")]
        } else {
            s.chars().map(|c| Value::String(c.to_string())).collect()
        }
    } else {
        s.split(&*delimiter).map(Value::from).collect()
    };
    Ok(Value::Array(pieces))
}

/// SPLIT_TO_MAP('a=1/b=2', '/', '='): entries without the key-value delimiter are skipped;
/// a repeated key keeps its last value; empty or equal delimiters give NULL.
fn split_to_map(args: &[Value]) -> Result<Value, String> {
    let (Some(s), Some(entry_delimiter), Some(kv_delimiter)) = (text(args, 0)?, text(args, 1)?, text(args, 2)?) else {
        return Ok(Value::Null);
    };
    if entry_delimiter.is_empty() || kv_delimiter.is_empty() || entry_delimiter == kv_delimiter {
        return Ok(Value::Null);
    }
    let entries = s
        .split(&*entry_delimiter)
        .filter_map(|entry| {
            let mut parts = entry.split(&*kv_delimiter);
            let key = parts.next()?;
            let value = parts.next()?;
            Some((key.to_string(), Value::from(value)))
        })
        .collect();
    Ok(Value::Map(entries))
}

/// LPAD and RPAD build the whole string, so a typo'd length must not exhaust memory.
const MAX_PADDED_CHARS: i64 = 10_000_000;

#[derive(Clone, Copy)]
enum Side {
    Left,
    Right,
}

/// LPAD/RPAD(input, length, padding): pads with the padding repeated, or truncates, to
/// exactly `length` characters. Empty padding or a negative length gives NULL.
fn pad(args: &[Value], side: Side) -> Result<Value, String> {
    let (Some(input), Some(length), Some(padding)) = (text(args, 0)?, int(args, 1)?, text(args, 2)?) else {
        return Ok(Value::Null);
    };
    if padding.is_empty() || length < 0 {
        return Ok(Value::Null);
    }
    if length > MAX_PADDED_CHARS {
        return Err(format!("cannot pad to {length} characters; the limit is {MAX_PADDED_CHARS}"));
    }
    let length = clamp_to_usize(length);
    let input_length = input.chars().count();
    let fill = padding.chars().cycle().take(length.saturating_sub(input_length));
    Ok(Value::String(match side {
        Side::Left => fill.chain(input.chars()).take(length).collect(),
        Side::Right => input.chars().chain(fill).take(length).collect(),
    }))
}

/// INSTR(string, substring[, position[, occurrence]]): the 1-based position of the n-th
/// occurrence, 0 if none. A negative position searches backwards from that many characters
/// before the end.
fn instr(args: &[Value]) -> Result<Value, String> {
    let (Some(s), Some(needle)) = (text(args, 0)?, text(args, 1)?) else { return Ok(Value::Int(0)) };
    let position = if args.len() > 2 { int(args, 2)? } else { Some(1) };
    let occurrence = if args.len() > 3 { int(args, 3)? } else { Some(1) };
    let (Some(position), Some(occurrence)) = (position, occurrence) else { return Ok(Value::Null) };
    let mut haystack: Vec<char> = s.chars().collect();
    let mut needle: Vec<char> = needle.chars().collect();
    let total = haystack.len() as i64;
    if position == 0 || position.unsigned_abs() > total.unsigned_abs() || occurrence < 1 {
        return Ok(Value::Int(0));
    }
    let from = clamp_to_usize(position.abs() - 1);
    if position < 0 {
        haystack.reverse();
        needle.reverse();
    }
    let Some(found) = nth_occurrence(&haystack[from..], &needle, clamp_to_usize(occurrence)) else {
        return Ok(Value::Int(0));
    };
    let found = found as i64;
    Ok(Value::Int(if position < 0 {
        // Where the match starts, counted from the front of the unreversed string.
        total - position.abs() - found - needle.len() as i64 + 2
    } else {
        found + position
    }))
}

/// Index of the n-th (1-based) occurrence; occurrences may overlap, as in Apache Commons'
/// `ordinalIndexOf`, which ksqlDB uses.
fn nth_occurrence(haystack: &[char], needle: &[char], n: usize) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).enumerate().filter(|(_, window)| *window == needle).nth(n - 1).map(|(i, _)| i)
}

/// CHR(75) or CHR('\u004b'): the character for a code point; NULL for an invalid one.
fn chr(args: &[Value]) -> Result<Value, String> {
    let character = match arg(args, 0) {
        Value::Null => None,
        Value::String(escaped) => decode_java_unicode_escapes(escaped),
        code => {
            let code = code.as_i64().ok_or_else(|| expected("a code point or a \\uXXXX string", code))?;
            u32::try_from(code).ok().and_then(char::from_u32).map(String::from)
        }
    };
    Ok(character.map_or(Value::Null, Value::String))
}

/// `\uXXXX` sequences (surrogate pairs included) to text; None unless the whole input is
/// such sequences.
fn decode_java_unicode_escapes(escaped: &str) -> Option<String> {
    let mut units = Vec::new();
    let mut rest = escaped;
    while !rest.is_empty() {
        let hex = rest.strip_prefix("\\u")?.get(..4)?;
        units.push(u16::from_str_radix(hex, 16).ok()?);
        rest = &rest[6..];
    }
    if units.is_empty() {
        return None;
    }
    String::from_utf16(&units).ok()
}

/// ELT(n, s1, s2, …): the n-th string, NULL when n is out of range.
fn elt(args: &[Value]) -> Result<Value, String> {
    let Some(n) = int(args, 0)? else { return Ok(Value::Null) };
    if n < 1 || n >= args.len() as i64 {
        return Ok(Value::Null);
    }
    Ok(text(args, clamp_to_usize(n))?.map_or(Value::Null, |s| Value::String(s.into_owned())))
}

/// FIELD(s, s1, s2, …): the 1-based position of s among the rest, 0 if absent or NULL.
fn field(args: &[Value]) -> Result<Value, String> {
    let Some(wanted) = text(args, 0)? else { return Ok(Value::Int(0)) };
    for i in 1..args.len() {
        if text(args, i)?.is_some_and(|candidate| candidate == wanted) {
            return Ok(Value::Int(i as i64));
        }
    }
    Ok(Value::Int(0))
}

#[derive(Clone, Copy)]
enum MaskSpan {
    All,
    /// The first n characters.
    Left,
    /// The last n characters.
    Right,
    /// All but the first n characters.
    KeepLeft,
    /// All but the last n characters.
    KeepRight,
}

/// MASK(s[, upper, lower, digit, other]) and its variants with a character count: upper
/// case letters become 'X', lower case 'x', digits 'n', others '-', unless replaced; a NULL
/// replacement leaves that kind of character alone.
fn mask(args: &[Value], span: MaskSpan) -> Result<Value, String> {
    let (count, first_mask) = match span {
        MaskSpan::All => (0, 1),
        _ => match int(args, 1)? {
            Some(n) if n < 0 => return Err("the number of characters must not be negative".to_string()),
            Some(n) => (clamp_to_usize(n), 2),
            None => return Ok(Value::Null),
        },
    };
    let mut replacements = ['X', 'x', 'n', '-'].map(Some);
    for (i, replacement) in replacements.iter_mut().enumerate() {
        let position = first_mask + i;
        if position >= args.len() {
            break;
        }
        *replacement = match text(args, position)? {
            None => None,
            Some(s) => {
                let mut chars = s.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => Some(c),
                    _ => return Err(format!("a mask must be a single character, got '{s}'")),
                }
            }
        };
    }
    let [upper, lower, digit, other] = replacements;
    let Some(s) = text(args, 0)? else { return Ok(Value::Null) };
    let total = s.chars().count();
    let masked_range = match span {
        MaskSpan::All => 0..total,
        MaskSpan::Left => 0..count.min(total),
        MaskSpan::Right => total.saturating_sub(count)..total,
        MaskSpan::KeepLeft => count.min(total)..total,
        MaskSpan::KeepRight => 0..total.saturating_sub(count),
    };
    let masked = s
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if !masked_range.contains(&i) {
                return c;
            }
            let replacement = if c.is_uppercase() {
                upper
            } else if c.is_lowercase() {
                lower
            } else if c.is_numeric() {
                digit
            } else {
                other
            };
            replacement.unwrap_or(c)
        })
        .collect();
    Ok(Value::String(masked))
}

thread_local! {
    /// Compiled patterns by their text: a query passes the same few patterns for every
    /// record, and compiling costs far more than matching.
    static REGEX_CACHE: RefCell<HashMap<String, Regex>> = RefCell::new(HashMap::new());
}

fn regex(pattern: &str) -> Result<Regex, String> {
    const CACHE_LIMIT: usize = 64;
    REGEX_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(regex) = cache.get(pattern) {
            return Ok(regex.clone());
        }
        let regex = Regex::new(pattern).map_err(|e| format!("invalid regular expression '{pattern}': {e}"))?;
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(pattern.to_string(), regex.clone());
        Ok(regex)
    })
}

/// REGEXP_EXTRACT(pattern, input[, group]): note the pattern comes first, as in ksqlDB.
/// NULL when nothing matches, the group does not exist, or it took no part in the match.
fn regexp_extract(args: &[Value]) -> Result<Value, String> {
    let (Some(pattern), Some(input)) = (text(args, 0)?, text(args, 1)?) else { return Ok(Value::Null) };
    let group = if args.len() > 2 { int(args, 2)? } else { Some(0) };
    let Some(group) = group else { return Ok(Value::Null) };
    let regex = regex(&pattern)?;
    let found = regex
        .captures(&input)
        .and_then(|captures| captures.get(usize::try_from(group).ok()?))
        .map(|m| Value::from(m.as_str()));
    Ok(found.unwrap_or(Value::Null))
}

/// REGEXP_EXTRACT_ALL(pattern, input[, group]): the group of every match (NULL where it
/// took no part); NULL if the group does not exist.
fn regexp_extract_all(args: &[Value]) -> Result<Value, String> {
    let (Some(pattern), Some(input)) = (text(args, 0)?, text(args, 1)?) else { return Ok(Value::Null) };
    let group = if args.len() > 2 { int(args, 2)? } else { Some(0) };
    let Some(group) = group else { return Ok(Value::Null) };
    let regex = regex(&pattern)?;
    let group = match usize::try_from(group) {
        Ok(group) if group < regex.captures_len() => group,
        _ => return Ok(Value::Null),
    };
    let matches = regex
        .captures_iter(&input)
        .map(|captures| captures.get(group).map_or(Value::Null, |m| Value::from(m.as_str())))
        .collect();
    Ok(Value::Array(matches))
}

/// REGEXP_REPLACE(input, pattern, replacement): every match replaced; `$1` in the
/// replacement is a group and `\$` a dollar sign, as in Java.
fn regexp_replace(args: &[Value]) -> Result<Value, String> {
    let (Some(input), Some(pattern), Some(replacement)) = (text(args, 0)?, text(args, 1)?, text(args, 2)?) else {
        return Ok(Value::Null);
    };
    let regex = regex(&pattern)?;
    let replacement = java_replacement(&replacement, regex.captures_len())?;
    Ok(Value::String(regex.replace_all(&input, replacement.as_str()).into_owned()))
}

/// Translates a Java `Matcher.replaceAll` replacement to the `regex` crate's syntax: Java
/// reads `$12` as group 12 only if that group exists (else group 1 then '2'), and `\x` as
/// a literal x.
fn java_replacement(java: &str, group_count: usize) -> Result<String, String> {
    let mut out = String::with_capacity(java.len());
    let mut chars = java.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('$') => out.push_str("$$"),
                Some(escaped) => out.push(escaped),
                None => return Err("the replacement ends with a lone backslash".to_string()),
            },
            '$' => {
                if chars.peek() == Some(&'{') {
                    let name: String = chars.by_ref().skip(1).take_while(|&c| c != '}').collect();
                    out.push_str(&format!("${{{name}}}"));
                    continue;
                }
                let Some(mut group) = chars.peek().and_then(|c| c.to_digit(10)).map(|d| d as usize) else {
                    return Err(format!("illegal group reference in replacement '{java}'"));
                };
                chars.next();
                while let Some(longer) = chars.peek().and_then(|c| c.to_digit(10)).map(|d| group * 10 + d as usize) {
                    if longer >= group_count {
                        break;
                    }
                    group = longer;
                    chars.next();
                }
                out.push_str(&format!("${{{group}}}"));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// REGEXP_SPLIT_TO_ARRAY(input, pattern): empty pieces are kept; a pattern that matches the
/// empty string splits into characters.
fn regexp_split_to_array(args: &[Value]) -> Result<Value, String> {
    let (Some(input), Some(pattern)) = (text(args, 0)?, text(args, 1)?) else { return Ok(Value::Null) };
    let regex = regex(&pattern)?;
    if regex.is_match("") {
        return split(&[Value::from(&*input), Value::from("")]);
    }
    Ok(Value::Array(regex.split(&input).map(Value::from).collect()))
}

// ---------------------------------------------------------------------------------------
// Nulls
// ---------------------------------------------------------------------------------------

fn coalesce(args: &[Value]) -> Result<Value, String> {
    Ok(args.iter().find(|v| !v.is_null()).cloned().unwrap_or(Value::Null))
}

fn nullif(args: &[Value]) -> Result<Value, String> {
    let (first, second) = (arg(args, 0), arg(args, 1));
    Ok(if same_value(first, second) { Value::Null } else { first.clone() })
}

// ---------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------

/// The steps of a JSONPath such as `$.log.cloud`, `$.items[0].id` or `$['odd key']`: names
/// and indexes only. Each step stays text: on an array it is read as an index, on an object
/// as a key, which is how ksqlDB walks.
fn json_path(path: &str) -> Result<Vec<String>, String> {
    let invalid = || format!("invalid JSON path '{path}'");
    let mut rest = path.trim().strip_prefix('$').ok_or_else(invalid)?;
    let mut steps = Vec::new();
    while let Some(first) = rest.chars().next() {
        rest = &rest[1..];
        let step = match first {
            '.' => {
                let end = rest.find(|c: char| c == '.' || c == '[' || c.is_whitespace()).unwrap_or(rest.len());
                let (name, after) = rest.split_at(end);
                rest = after;
                name.to_string()
            }
            '[' => {
                let (step, after) = match rest.chars().next() {
                    Some(quote @ ('"' | '\'')) => quoted_step(&rest[1..], quote).ok_or_else(invalid)?,
                    _ => {
                        let (inside, after) = rest.split_at(rest.find(']').ok_or_else(invalid)?);
                        (inside.trim().to_string(), after)
                    }
                };
                rest = after.strip_prefix(']').ok_or_else(invalid)?;
                step
            }
            _ => return Err(invalid()),
        };
        if step.is_empty() || step == "*" {
            return Err(format!("invalid JSON path '{path}': only names and indexes are supported"));
        }
        steps.push(step);
    }
    Ok(steps)
}

/// A quoted path step up to its closing quote, with `\"`, `\'` and `\\` escapes; the text
/// after the closing quote.
fn quoted_step(s: &str, quote: char) -> Option<(String, &str)> {
    let mut step = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => step.push(chars.next()?.1),
            c if c == quote => return Some((step, &s[i + c.len_utf8()..])),
            c => step.push(c),
        }
    }
    None
}

fn walk_json<'a>(mut node: &'a Json, steps: &[String]) -> Option<&'a Json> {
    for step in steps {
        node = match node {
            Json::Object(fields) => fields.get(step)?,
            Json::Array(items) => items.get(step.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

fn walk_value<'a>(mut node: &'a Value, steps: &[String]) -> Option<&'a Value> {
    for step in steps {
        node = match node {
            Value::Map(fields) => fields.get(step)?,
            Value::Array(items) => items.get(step.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

/// The value at `path` inside a JSON string or an already parsed map or array, as JSON.
/// Ok(None) when the path leads nowhere; Err for a string that is not JSON.
fn json_at(args: &[Value]) -> Result<Option<Json>, String> {
    let Some(path) = text(args, 1)? else { return Ok(None) };
    let steps = json_path(&path)?;
    match arg(args, 0) {
        Value::Null => Ok(None),
        Value::String(s) => {
            let document: Json = serde_json::from_str(s).map_err(|e| format!("invalid JSON: {e}"))?;
            Ok(walk_json(&document, &steps).cloned())
        }
        other => Ok(walk_value(other, &steps).map(Value::to_json)),
    }
}

/// EXTRACTJSONFIELD(json, path): the text of a string, the JSON text of anything else.
fn extract_json_field(args: &[Value]) -> Result<Value, String> {
    Ok(match json_at(args)? {
        None | Some(Json::Null) => Value::Null,
        Some(Json::String(s)) => Value::String(s),
        Some(other) => Value::String(other.to_string()),
    })
}

/// JSON_VALUE(json, path), Flink's: the text of a scalar; NULL for a missing path, an
/// object or array, or input that is not JSON (Flink's default NULL ON ERROR).
fn json_value(args: &[Value]) -> Result<Value, String> {
    if let Some(path) = text(args, 1)? {
        json_path(&path)?; // a bad path is the query's fault, not the record's
    }
    Ok(match json_at(args) {
        Ok(Some(Json::String(s))) => Value::String(s),
        Ok(Some(scalar @ (Json::Number(_) | Json::Bool(_)))) => Value::String(scalar.to_string()),
        _ => Value::Null,
    })
}

fn parse_json_text(args: &[Value]) -> Result<Option<Json>, String> {
    Ok(text(args, 0)?.and_then(|s| serde_json::from_str(&s).ok()))
}

fn is_json_string(args: &[Value]) -> Result<Value, String> {
    Ok(Value::Bool(parse_json_text(args)?.is_some()))
}

fn json_array_length(args: &[Value]) -> Result<Value, String> {
    Ok(match parse_json_text(args)? {
        Some(Json::Array(items)) => Value::Int(items.len() as i64),
        _ => Value::Null,
    })
}

fn json_keys(args: &[Value]) -> Result<Value, String> {
    Ok(match parse_json_text(args)? {
        Some(Json::Object(fields)) => Value::Array(fields.keys().map(|k| Value::from(k.as_str())).collect()),
        _ => Value::Null,
    })
}

fn to_json_string(args: &[Value]) -> Result<Value, String> {
    Ok(Value::String(arg(args, 0).to_json().to_string()))
}

/// JSON_ARRAY_CONTAINS(json, value): false unless the text is a JSON array holding the value
/// as a scalar of the same kind (1 does not match 1.0, as in ksqlDB).
fn json_array_contains(args: &[Value]) -> Result<Value, String> {
    let wanted = arg(args, 1);
    let found = match parse_json_text(args)? {
        Some(Json::Array(items)) => {
            items.iter().any(|item| !item.is_array() && !item.is_object() && Value::from_json(item) == *wanted)
        }
        _ => false,
    };
    Ok(Value::Bool(found))
}

// ---------------------------------------------------------------------------------------
// Collections
// ---------------------------------------------------------------------------------------

fn array_length(args: &[Value]) -> Result<Value, String> {
    Ok(array(args, 0)?.map_or(Value::Null, |items| Value::Int(items.len() as i64)))
}

fn array_contains(args: &[Value]) -> Result<Value, String> {
    let wanted = arg(args, 1);
    Ok(Value::Bool(array(args, 0)?.is_some_and(|items| items.iter().any(|item| same_value(item, wanted)))))
}

/// ARRAY_JOIN(array[, delimiter]): elements' text joined by the delimiter (',' by default,
/// '' if NULL); NULL elements read "null", as in ksqlDB; nested collections are an error.
fn array_join(args: &[Value]) -> Result<Value, String> {
    let Some(items) = array(args, 0)? else { return Ok(Value::Null) };
    let delimiter = if args.len() > 1 { text(args, 1)?.unwrap_or_default() } else { Cow::Borrowed(",") };
    let mut parts = Vec::with_capacity(items.len());
    for item in items {
        if matches!(item, Value::Array(_) | Value::Map(_)) {
            return Err(format!("cannot join an element of type {}", kind_of(item)));
        }
        parts.push(item.to_string());
    }
    Ok(Value::String(parts.join(&delimiter)))
}

/// ARRAY_MAX and ARRAY_MIN: NULL elements are skipped; an empty or all-NULL array gives NULL.
fn array_extreme(args: &[Value], wanted: Ordering) -> Result<Value, String> {
    let Some(items) = array(args, 0)? else { return Ok(Value::Null) };
    let mut best: Option<&Value> = None;
    for item in items.iter().filter(|v| !v.is_null()) {
        if matches!(item, Value::Array(_) | Value::Map(_)) {
            return Err(format!("cannot compare elements of type {}", kind_of(item)));
        }
        best = match best {
            None => Some(item),
            Some(current) => match item.compare(current) {
                Some(order) if order == wanted => Some(item),
                Some(_) => Some(current),
                None => return Err(format!("cannot compare {} with {}", kind_of(item), kind_of(current))),
            },
        };
    }
    Ok(best.cloned().unwrap_or(Value::Null))
}

/// ARRAY_SORT(array[, 'ASC'|'DESC']): NULLs last either way; an unknown direction gives NULL.
fn array_sort(args: &[Value]) -> Result<Value, String> {
    let Some(items) = array(args, 0)? else { return Ok(Value::Null) };
    let direction = if args.len() > 1 { text(args, 1)? } else { Some(Cow::Borrowed("ASC")) };
    let Some(direction) = direction else { return Ok(Value::Null) };
    let descending = match direction.to_ascii_uppercase().as_str() {
        "ASC" | "ASCENDING" => false,
        "DESC" | "DESCENDING" => true,
        _ => return Ok(Value::Null),
    };
    let (mut sorted, nulls): (Vec<Value>, Vec<Value>) = items.iter().cloned().partition(|v| !v.is_null());
    if let Some(pair) = sorted.windows(2).find(|pair| pair[0].compare(&pair[1]).is_none()) {
        return Err(format!("cannot compare {} with {}", kind_of(&pair[0]), kind_of(&pair[1])));
    }
    // Elements compare pairwise, so every pair does; the fallback is never used.
    sorted.sort_by(|a, b| a.compare(b).unwrap_or(Ordering::Equal));
    if descending {
        sorted.reverse();
    }
    sorted.extend(nulls);
    Ok(Value::Array(sorted))
}

fn distinct(items: impl IntoIterator<Item = Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for item in items {
        if !out.iter().any(|seen| same_value(seen, &item)) {
            out.push(item);
        }
    }
    out
}

fn array_distinct(args: &[Value]) -> Result<Value, String> {
    Ok(array(args, 0)?.map_or(Value::Null, |items| Value::Array(distinct(items.iter().cloned()))))
}

fn array_remove(args: &[Value]) -> Result<Value, String> {
    let unwanted = arg(args, 1);
    Ok(array(args, 0)?.map_or(Value::Null, |items| {
        Value::Array(items.iter().filter(|v| !same_value(v, unwanted)).cloned().collect())
    }))
}

/// ARRAY_CONCAT: NULL only if both are; a NULL side counts as empty.
fn array_concat(args: &[Value]) -> Result<Value, String> {
    Ok(match (array(args, 0)?, array(args, 1)?) {
        (None, None) => Value::Null,
        (first, second) => Value::Array(first.into_iter().chain(second).flatten().cloned().collect()),
    })
}

#[derive(Clone, Copy)]
enum SetOp {
    Union,
    Intersect,
    Except,
}

/// ARRAY_UNION, ARRAY_INTERSECT, ARRAY_EXCEPT: distinct elements in first-seen order; NULL
/// if either array is.
fn array_set_op(args: &[Value], op: SetOp) -> Result<Value, String> {
    let (Some(first), Some(second)) = (array(args, 0)?, array(args, 1)?) else { return Ok(Value::Null) };
    let in_second = |item: &Value| second.iter().any(|other| same_value(item, other));
    let items = match op {
        SetOp::Union => distinct(first.iter().chain(second).cloned()),
        SetOp::Intersect => distinct(first.iter().filter(|item| in_second(item)).cloned()),
        SetOp::Except => distinct(first.iter().filter(|item| !in_second(item)).cloned()),
    };
    Ok(Value::Array(items))
}

/// SLICE(array, from, to): 1-based and inclusive; NULL if either end is outside the array.
fn slice(args: &[Value]) -> Result<Value, String> {
    let Some(items) = array(args, 0)? else { return Ok(Value::Null) };
    // A NULL end means the array's own end, as in ksqlDB.
    let from = int(args, 1)?.unwrap_or(1);
    let to = int(args, 2)?.unwrap_or(items.len() as i64);
    if from < 1 || to > items.len() as i64 || from - 1 > to {
        return Ok(Value::Null);
    }
    Ok(Value::Array(items[clamp_to_usize(from - 1)..clamp_to_usize(to)].to_vec()))
}

fn map_keys(args: &[Value]) -> Result<Value, String> {
    Ok(map(args, 0)?
        .map_or(Value::Null, |entries| Value::Array(entries.keys().map(|k| Value::from(k.as_str())).collect())))
}

fn map_values(args: &[Value]) -> Result<Value, String> {
    Ok(map(args, 0)?.map_or(Value::Null, |entries| Value::Array(entries.values().cloned().collect())))
}

/// MAP_UNION: the second map's value wins for a key in both; NULL only if both are NULL.
fn map_union(args: &[Value]) -> Result<Value, String> {
    Ok(match (map(args, 0)?, map(args, 1)?) {
        (None, None) => Value::Null,
        (first, second) => {
            let mut union = first.cloned().unwrap_or_default();
            union.extend(second.into_iter().flatten().map(|(k, v)| (k.clone(), v.clone())));
            Value::Map(union)
        }
    })
}

// ---------------------------------------------------------------------------------------
// Date and time
// ---------------------------------------------------------------------------------------

const MILLIS_PER_DAY: i64 = 86_400_000;

fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The start of the bucket `time` falls in: buckets `stride` long from `origin` (default the
/// Unix epoch). NULL in, NULL out.
fn time_bucket(time: &Value, stride: &Value, origin: Option<&Value>) -> Result<Value, String> {
    let ms = |v: &Value| -> Result<Option<i64>, String> {
        match v {
            Value::Null => Ok(None),
            Value::Int(i) => Ok(Some(*i)),
            Value::String(s) => duration_ms(s).map(Some),
            other => Err(format!("{other} is not a time or a period")),
        }
    };
    let (Some(t), Some(stride)) = (ms(time)?, ms(stride)?) else { return Ok(Value::Null) };
    if stride <= 0 {
        return Err(format!("a bucket of {stride} ms: give a period above zero"));
    }
    let origin = match origin {
        Some(o) => match ms(o)? {
            Some(o) => o,
            None => return Ok(Value::Null),
        },
        None => 0,
    };
    Ok(Value::Int(t - (t - origin).rem_euclid(stride)))
}

/// Milliseconds in a period: ISO 8601 (`PT1M`, `PT0.5S`, `P1D`, `P1W`) or an amount and a unit
/// (`5 minutes`, `30 SECOND`, `1 h`); months and years have no fixed length and are refused.
pub fn duration_ms(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let bad = || format!("{text:?} is not a period (PT1M, P1D, '5 minutes', …)");
    if let Some(iso) = t.strip_prefix(['P', 'p']) {
        let mut total = 0.0;
        let mut in_time = false;
        let mut number = String::new();
        for c in iso.chars() {
            match c.to_ascii_uppercase() {
                'T' if number.is_empty() => in_time = true,
                '0'..='9' | '.' => number.push(c),
                unit => {
                    let n: f64 = number.parse().map_err(|_| bad())?;
                    number.clear();
                    total += n * match (unit, in_time) {
                        ('W', false) => 7.0 * 86_400_000.0,
                        ('D', false) => 86_400_000.0,
                        ('H', true) => 3_600_000.0,
                        ('M', true) => 60_000.0,
                        ('S', true) => 1_000.0,
                        ('M' | 'Y', false) => return Err(format!("{text:?}: months and years have no fixed length")),
                        _ => return Err(bad()),
                    };
                }
            }
        }
        if !number.is_empty() || total <= 0.0 {
            return Err(bad());
        }
        return Ok(total.round() as i64);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let n: f64 = t[..split].parse().map_err(|_| bad())?;
    let unit = t[split..].trim().to_ascii_lowercase();
    let ms = match unit.as_str() {
        "" | "ms" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000.0,
        "h" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        "w" | "week" | "weeks" => 7.0 * 86_400_000.0,
        _ => return Err(bad()),
    };
    Ok((n * ms).round() as i64)
}

/// UNIX_TIMESTAMP() is now; UNIX_TIMESTAMP(ts) and FROM_UNIXTIME(ms) change only the type.
fn unix_timestamp(args: &[Value]) -> Result<Value, String> {
    if args.is_empty() {
        return Ok(Value::Int(now_millis()));
    }
    Ok(int(args, 0)?.map_or(Value::Null, Value::Int))
}

/// A time zone argument.
#[derive(Clone, Copy)]
enum Zone {
    Fixed(FixedOffset),
    Named(Tz),
}

const UTC: Zone = Zone::Fixed(match FixedOffset::east_opt(0) {
    Some(utc) => utc,
    None => unreachable!(),
});

impl Zone {
    /// `UTC`, `GMT`, `Z`, an offset (`+02:00`, `-0530`, `UTC+2`) or an IANA name.
    fn parse(name: &str) -> Result<Zone, String> {
        let name = name.trim();
        let unknown = || format!("unknown time zone '{name}'");
        if ["UTC", "GMT", "UT", "Z"].iter().any(|utc| name.eq_ignore_ascii_case(utc)) {
            return Ok(UTC);
        }
        let offset = ["UTC", "GMT", "UT", ""].iter().find_map(|prefix| {
            let rest = name.get(prefix.len()..)?;
            name[..prefix.len()].eq_ignore_ascii_case(prefix).then_some(rest).filter(|r| r.starts_with(['+', '-']))
        });
        if let Some(offset) = offset {
            let seconds = parse_offset(offset).ok_or_else(unknown)?;
            return FixedOffset::east_opt(seconds).map(Zone::Fixed).ok_or_else(unknown);
        }
        name.parse::<Tz>().map(Zone::Named).map_err(|_| unknown())
    }

    fn offset_at(&self, utc: &NaiveDateTime) -> FixedOffset {
        match self {
            Zone::Fixed(offset) => *offset,
            Zone::Named(tz) => tz.offset_from_utc_datetime(utc).fix(),
        }
    }

    /// The instant a wall-clock time names here. An ambiguous time (clocks going back) is
    /// the earlier instant; a time skipped by clocks going forward moves forward by the gap,
    /// as Java does (gaps are taken to be an hour, which all current ones are but Lord Howe's).
    fn instant_of(self, local: &NaiveDateTime) -> Result<NaiveDateTime, String> {
        let out_of_range = || "timestamp out of range".to_string();
        match self {
            Zone::Fixed(offset) => local.checked_sub_offset(offset).ok_or_else(out_of_range),
            Zone::Named(tz) => {
                let resolved = tz
                    .from_local_datetime(local)
                    .earliest()
                    .or_else(|| tz.from_local_datetime(&local.checked_add_signed(TimeDelta::hours(1))?).earliest());
                resolved.map(|t| t.naive_utc()).ok_or_else(out_of_range)
            }
        }
    }

    /// For the `z` pattern letter: an abbreviation such as CET where the zone has one.
    fn abbreviation(&self, utc: &NaiveDateTime) -> String {
        match self {
            Zone::Named(tz) => {
                let offset = tz.offset_from_utc_datetime(utc);
                offset
                    .abbreviation()
                    .map_or_else(|| format_offset(offset.fix().local_minus_utc(), true, true), String::from)
            }
            Zone::Fixed(offset) if offset.local_minus_utc() == 0 => "UTC".to_string(),
            Zone::Fixed(offset) => format_offset(offset.local_minus_utc(), true, true),
        }
    }

    /// For the `VV` pattern letters: the zone's ID.
    fn id(&self) -> String {
        match self {
            Zone::Named(tz) => tz.name().to_string(),
            Zone::Fixed(offset) if offset.local_minus_utc() == 0 => "Z".to_string(),
            Zone::Fixed(offset) => format_offset(offset.local_minus_utc(), true, true),
        }
    }
}

/// The optional time zone argument at `i`: UTC when absent, None when NULL.
fn zone_arg(args: &[Value], i: usize) -> Result<Option<Zone>, String> {
    if args.len() <= i {
        return Ok(Some(UTC));
    }
    text(args, i)?.map(|name| Zone::parse(&name)).transpose()
}

/// One element of a Java `DateTimeFormatter` pattern. The count is how many times the
/// letter was repeated, which picks width or text style.
#[derive(Debug, PartialEq)]
enum PatternPart {
    Literal(String),
    Year(usize),
    Month(usize),
    DayOfMonth(usize),
    DayOfYear(usize),
    DayOfWeek(usize),
    AmPm,
    Hour(usize),
    ClockHour(usize),
    Minute(usize),
    Second(usize),
    Fraction(usize),
    /// `X`/`x`/`Z` offsets; `X` writes 'Z' for zero.
    Offset(char, usize),
    ZoneId,
    ZoneName,
}

impl PatternPart {
    fn is_time_of_day(&self) -> bool {
        !matches!(
            self,
            PatternPart::Literal(_)
                | PatternPart::Year(_)
                | PatternPart::Month(_)
                | PatternPart::DayOfMonth(_)
                | PatternPart::DayOfYear(_)
                | PatternPart::DayOfWeek(_)
        )
    }
}

/// Splits a Java date-time pattern into parts: letters repeat to set width or style, text in
/// single quotes is literal, and '' is a quote.
fn parse_pattern(pattern: &str) -> Result<Vec<PatternPart>, String> {
    let mut parts = Vec::new();
    let mut chars = pattern.chars().peekable();
    let push_literal = |parts: &mut Vec<PatternPart>, s: &str| match parts.last_mut() {
        Some(PatternPart::Literal(previous)) => previous.push_str(s),
        _ => parts.push(PatternPart::Literal(s.to_string())),
    };
    while let Some(c) = chars.next() {
        if c == '\'' {
            if chars.peek() == Some(&'\'') {
                chars.next();
                push_literal(&mut parts, "'");
                continue;
            }
            let mut quoted = String::new();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quote in pattern '{pattern}'")),
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        quoted.push('\'');
                    }
                    Some('\'') => break,
                    Some(c) => quoted.push(c),
                }
            }
            push_literal(&mut parts, &quoted);
            continue;
        }
        if !c.is_ascii_alphabetic() {
            if matches!(c, '[' | ']' | '{' | '}' | '#') {
                return Err(format!("unsupported pattern character '{c}' in '{pattern}'"));
            }
            push_literal(&mut parts, c.encode_utf8(&mut [0; 4]));
            continue;
        }
        let mut count = 1;
        while chars.peek() == Some(&c) {
            chars.next();
            count += 1;
        }
        let too_many = || format!("too many pattern letters '{c}' in '{pattern}'");
        let at_most = |max: usize| if count <= max { Ok(count) } else { Err(too_many()) };
        parts.push(match c {
            'y' | 'u' => PatternPart::Year(count),
            'M' | 'L' => PatternPart::Month(at_most(4)?),
            'd' => PatternPart::DayOfMonth(at_most(2)?),
            'D' => PatternPart::DayOfYear(at_most(3)?),
            'E' => PatternPart::DayOfWeek(at_most(4)?),
            'a' => at_most(1).map(|_| PatternPart::AmPm)?,
            'H' => PatternPart::Hour(at_most(2)?),
            'h' => PatternPart::ClockHour(at_most(2)?),
            'm' => PatternPart::Minute(at_most(2)?),
            's' => PatternPart::Second(at_most(2)?),
            'S' => PatternPart::Fraction(at_most(9)?),
            'X' | 'x' | 'Z' => PatternPart::Offset(c, at_most(3)?),
            'V' if count == 2 => PatternPart::ZoneId,
            'z' => at_most(3).map(|_| PatternPart::ZoneName)?,
            other => return Err(format!("unsupported pattern letter '{other}' in '{pattern}'")),
        });
    }
    Ok(parts)
}

const MONTH_NAMES: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAY_NAMES: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// `+HH:MM` (with `colon`) or `+HHMM`, seconds only when non-zero; `with_minutes` false
/// writes `+HH` when the minutes are zero.
fn format_offset(seconds: i32, colon: bool, with_minutes: bool) -> String {
    let sign = if seconds < 0 { '-' } else { '+' };
    let (h, m, s) = (seconds.abs() / 3600, seconds.abs() / 60 % 60, seconds.abs() % 60);
    let separator = if colon { ":" } else { "" };
    let mut out = format!("{sign}{h:02}");
    if with_minutes || m != 0 || s != 0 {
        out.push_str(&format!("{separator}{m:02}"));
    }
    if s != 0 {
        out.push_str(&format!("{separator}{s:02}"));
    }
    out
}

/// Formats epoch milliseconds in `zone` with a Java pattern.
fn format_millis(millis: i64, pattern: &str, zone: Zone) -> Result<String, String> {
    let parts = parse_pattern(pattern)?;
    let utc = DateTime::from_timestamp_millis(millis).ok_or("timestamp out of range")?.naive_utc();
    let offset = zone.offset_at(&utc);
    let local = utc.checked_add_offset(offset).ok_or("timestamp out of range")?;
    let mut out = String::new();
    for part in &parts {
        let width = |n: u32, count: &usize| format!("{n:0width$}", width = *count);
        match part {
            PatternPart::Literal(s) => out.push_str(s),
            PatternPart::Year(2) => out.push_str(&format!("{:02}", local.year().rem_euclid(100))),
            PatternPart::Year(count) => out.push_str(&format!("{:0count$}", local.year())),
            PatternPart::Month(count @ (1 | 2)) => out.push_str(&width(local.month(), count)),
            PatternPart::Month(count) => {
                let name = MONTH_NAMES[local.month0() as usize];
                out.push_str(if *count == 3 { &name[..3] } else { name });
            }
            PatternPart::DayOfMonth(count) => out.push_str(&width(local.day(), count)),
            PatternPart::DayOfYear(count) => out.push_str(&width(local.ordinal(), count)),
            PatternPart::DayOfWeek(count) => {
                let name = DAY_NAMES[local.weekday().num_days_from_monday() as usize];
                out.push_str(if *count == 4 { name } else { &name[..3] });
            }
            PatternPart::AmPm => out.push_str(if local.hour() < 12 { "AM" } else { "PM" }),
            PatternPart::Hour(count) => out.push_str(&width(local.hour(), count)),
            PatternPart::ClockHour(count) => out.push_str(&width(local.hour12().1, count)),
            PatternPart::Minute(count) => out.push_str(&width(local.minute(), count)),
            PatternPart::Second(count) => out.push_str(&width(local.second(), count)),
            PatternPart::Fraction(count) => {
                // Java truncates to the requested digits; nanoseconds past 1e9 mark a leap second.
                let nanos = local.nanosecond() % 1_000_000_000;
                out.push_str(&format!("{nanos:09}")[..*count]);
            }
            PatternPart::Offset(letter, count) => {
                let seconds = offset.local_minus_utc();
                out.push_str(&match letter {
                    'X' if seconds == 0 => "Z".to_string(),
                    'X' | 'x' => format_offset(seconds, *count == 3, *count > 1),
                    _ => format_offset(seconds, false, true),
                });
            }
            PatternPart::ZoneId => out.push_str(&zone.id()),
            PatternPart::ZoneName => out.push_str(&zone.abbreviation(&utc)),
        }
    }
    Ok(out)
}

/// The chrono parser item for one pattern part.
fn parse_item(part: &PatternPart) -> Result<Item<'_>, String> {
    // The fixed-width fractions and the lenient offset have no public constructor; chrono's
    // strftime reader makes them.
    let strftime = |spec: &'static str| StrftimeItems::new(spec).next().unwrap_or(Item::Error);
    Ok(match part {
        PatternPart::Literal(s) => Item::Literal(s),
        PatternPart::Year(2) => Item::Numeric(Numeric::YearMod100, Pad::Zero),
        PatternPart::Year(_) => Item::Numeric(Numeric::Year, Pad::Zero),
        PatternPart::Month(1 | 2) => Item::Numeric(Numeric::Month, Pad::Zero),
        PatternPart::Month(3) => Item::Fixed(Fixed::ShortMonthName),
        PatternPart::Month(_) => Item::Fixed(Fixed::LongMonthName),
        PatternPart::DayOfMonth(_) => Item::Numeric(Numeric::Day, Pad::Zero),
        PatternPart::DayOfYear(_) => Item::Numeric(Numeric::Ordinal, Pad::Zero),
        PatternPart::DayOfWeek(4) => Item::Fixed(Fixed::LongWeekdayName),
        PatternPart::DayOfWeek(_) => Item::Fixed(Fixed::ShortWeekdayName),
        PatternPart::AmPm => Item::Fixed(Fixed::UpperAmPm),
        PatternPart::Hour(_) => Item::Numeric(Numeric::Hour, Pad::Zero),
        PatternPart::ClockHour(_) => Item::Numeric(Numeric::Hour12, Pad::Zero),
        PatternPart::Minute(_) => Item::Numeric(Numeric::Minute, Pad::Zero),
        PatternPart::Second(_) => Item::Numeric(Numeric::Second, Pad::Zero),
        PatternPart::Fraction(3) => strftime("%3f"),
        PatternPart::Fraction(6) => strftime("%6f"),
        PatternPart::Fraction(9) => strftime("%9f"),
        PatternPart::Fraction(n) => {
            return Err(format!("cannot parse a fraction of {n} digits; use SSS, SSSSSS or SSSSSSSSS"))
        }
        PatternPart::Offset(..) => strftime("%#z"),
        PatternPart::ZoneId | PatternPart::ZoneName => {
            return Err("cannot parse time zone names; use an offset (XXX)".to_string())
        }
    })
}

/// Parses `text` with a Java pattern into epoch milliseconds. Fields the pattern lacks
/// default to 1970-01-01T00:00:00.000, as in ksqlDB; without an offset in the text, the
/// time is read in `zone`.
fn parse_millis(text: &str, pattern: &str, zone: Zone) -> Result<i64, String> {
    let parts = parse_pattern(pattern)?;
    let items = parts.iter().map(parse_item).collect::<Result<Vec<_>, _>>()?;
    let mut parsed = Parsed::new();
    chrono::format::parse(&mut parsed, text, items.iter())
        .map_err(|e| format!("cannot parse '{text}' with pattern '{pattern}': {e}"))?;
    let invalid = || format!("'{text}' is not a valid date and time");
    // Java reads 'yy' as 2000-2099.
    let year = parsed.year().or(parsed.year_mod_100().map(|yy| 2000 + yy)).unwrap_or(1970);
    let date = match parsed.ordinal() {
        Some(ordinal) => NaiveDate::from_yo_opt(year, ordinal),
        None => {
            let (month, day) = (parsed.month().unwrap_or(1), parsed.day().unwrap_or(1));
            // Java's default resolver reads a day past the month's end as its last day
            // (June 31 is June 30), and ksqlDB's documentation shows it doing so.
            NaiveDate::from_ymd_opt(year, month, day).or_else(|| last_day_of_month(year, month))
        }
    }
    .ok_or_else(invalid)?;
    let hour = parsed.hour_div_12().unwrap_or(0) * 12 + parsed.hour_mod_12().unwrap_or(0);
    let time = NaiveTime::from_hms_nano_opt(
        hour,
        parsed.minute().unwrap_or(0),
        parsed.second().unwrap_or(0),
        parsed.nanosecond().unwrap_or(0),
    )
    .ok_or_else(invalid)?;
    let local = date.and_time(time);
    let utc = match parsed.offset() {
        Some(seconds) => local.checked_sub_signed(TimeDelta::seconds(seconds.into())).ok_or_else(invalid)?,
        None => zone.instant_of(&local)?,
    };
    Ok(utc.and_utc().timestamp_millis())
}

fn last_day_of_month(year: i32, month: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(year, month, 1)?.checked_add_months(Months::new(1))?.pred_opt()
}

/// TIMESTAMPTOSTRING / FORMAT_TIMESTAMP(ts, pattern[, zone]).
fn format_timestamp(args: &[Value]) -> Result<Value, String> {
    let (Some(millis), Some(pattern), Some(zone)) = (int(args, 0)?, text(args, 1)?, zone_arg(args, 2)?) else {
        return Ok(Value::Null);
    };
    format_millis(millis, &pattern, zone).map(Value::String)
}

/// STRINGTOTIMESTAMP / PARSE_TIMESTAMP(text, pattern[, zone]).
fn parse_timestamp(args: &[Value]) -> Result<Value, String> {
    let (Some(text), Some(pattern), Some(zone)) = (text(args, 0)?, text(args, 1)?, zone_arg(args, 2)?) else {
        return Ok(Value::Null);
    };
    parse_millis(&text, &pattern, zone).map(Value::Int)
}

/// DATETOSTRING(days since the epoch, pattern): date fields only, as with Java's LocalDate.
fn date_to_string(args: &[Value]) -> Result<Value, String> {
    let (Some(days), Some(pattern)) = (int(args, 0)?, text(args, 1)?) else { return Ok(Value::Null) };
    if parse_pattern(&pattern)?.iter().any(PatternPart::is_time_of_day) {
        return Err(format!("pattern '{pattern}' has time-of-day fields, which a date lacks"));
    }
    let millis = days.checked_mul(MILLIS_PER_DAY).ok_or("date out of range")?;
    format_millis(millis, &pattern, UTC).map(Value::String)
}

/// STRINGTODATE(text, pattern): days since the epoch.
fn string_to_date(args: &[Value]) -> Result<Value, String> {
    let (Some(text), Some(pattern)) = (text(args, 0)?, text(args, 1)?) else { return Ok(Value::Null) };
    Ok(Value::Int(parse_millis(&text, &pattern, UTC)?.div_euclid(MILLIS_PER_DAY)))
}

/// CONVERT_TZ(ts, from, to): shifts the wall-clock time in `ts` from one zone to another,
/// using both zones' offsets at `ts`, as ksqlDB does.
fn convert_tz(args: &[Value]) -> Result<Value, String> {
    let (Some(millis), Some(from), Some(to)) = (int(args, 0)?, text(args, 1)?, text(args, 2)?) else {
        return Ok(Value::Null);
    };
    let (from, to) = (Zone::parse(&from)?, Zone::parse(&to)?);
    let instant = DateTime::from_timestamp_millis(millis).ok_or("timestamp out of range")?.naive_utc();
    let shift = i64::from(to.offset_at(&instant).local_minus_utc() - from.offset_at(&instant).local_minus_utc());
    millis.checked_add(shift * 1000).map(Value::Int).ok_or_else(|| "timestamp out of range".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls a function as the engine would: looked up by name, arity checked first.
    fn call(name: &str, args: &[Value]) -> Result<Value, String> {
        let function = lookup(name).unwrap_or_else(|| panic!("no function {name}"));
        assert!(
            (function.min_args..=function.max_args).contains(&args.len()),
            "{name} does not take {} arguments",
            args.len()
        );
        (function.eval)(args)
    }

    fn eval(name: &str, args: &[Value]) -> Value {
        call(name, args).unwrap_or_else(|e| panic!("{name} failed: {e}"))
    }

    fn error(name: &str, args: &[Value]) -> String {
        match call(name, args) {
            Ok(value) => panic!("{name} gave {value:?}, expected an error"),
            Err(e) => e,
        }
    }

    fn type_of(name: &str, types: &[DataType]) -> Result<DataType, String> {
        (lookup(name).unwrap_or_else(|| panic!("no function {name}")).return_type)(types)
    }

    fn s(text: &str) -> Value {
        Value::from(text)
    }

    fn i(n: i64) -> Value {
        Value::Int(n)
    }

    fn d(x: f64) -> Value {
        Value::Double(x)
    }

    const NULL: Value = Value::Null;

    fn strings(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|item| s(item)).collect())
    }

    fn ints(items: &[i64]) -> Value {
        Value::Array(items.iter().map(|&n| i(n)).collect())
    }

    fn object(entries: &[(&str, Value)]) -> Value {
        Value::Map(entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    fn close_to(value: Value, expected: f64) -> bool {
        matches!(value, Value::Double(x) if (x - expected).abs() < 1e-9)
    }

    #[test]
    fn table_names_are_unique_upper_case_and_arities_are_ordered() {
        let mut seen = std::collections::HashSet::new();
        for function in all() {
            assert!(seen.insert(function.name), "{} is listed twice", function.name);
            assert_eq!(function.name, function.name.to_ascii_uppercase());
            assert!(function.min_args <= function.max_args, "{} has min_args > max_args", function.name);
            assert!(std::ptr::eq(lookup(&function.name.to_ascii_lowercase()).unwrap(), function));
        }
        assert!(lookup("NO_SUCH_FUNCTION").is_none());
    }

    #[test]
    fn every_function_survives_null_arguments() {
        for function in all() {
            let nulls = vec![NULL; function.min_args.max(1).min(function.max_args)];
            assert!((function.eval)(&nulls).is_ok(), "{} fails on NULL arguments", function.name);
        }
    }

    #[test]
    fn null_in_null_out() {
        let null_preserving = [
            "ABS",
            "CEIL",
            "FLOOR",
            "ROUND",
            "TRUNC",
            "SIGN",
            "SQRT",
            "LN",
            "LOG",
            "UCASE",
            "LCASE",
            "TRIM",
            "LEN",
            "SUBSTRING",
            "REPLACE",
            "SPLIT",
            "LPAD",
            "RPAD",
            "INITCAP",
            "MASK",
            "REGEXP_EXTRACT",
            "REGEXP_REPLACE",
            "EXTRACTJSONFIELD",
            "JSON_VALUE",
            "JSON_ARRAY_LENGTH",
            "JSON_KEYS",
            "ARRAY_LENGTH",
            "ARRAY_MAX",
            "ARRAY_SORT",
            "MAP_KEYS",
            "TIMESTAMPTOSTRING",
            "FORMAT_TIMESTAMP",
            "PARSE_TIMESTAMP",
            "FROM_UNIXTIME",
            "CONVERT_TZ",
            "GEO_DISTANCE",
            "COALESCE",
            "NULLIF",
            "GREATEST",
        ];
        for name in null_preserving {
            let function = lookup(name).unwrap();
            let nulls = vec![NULL; function.min_args.max(1)];
            assert_eq!(eval(name, &nulls), NULL, "{name}");
        }
        // Where ksqlDB gives a value for NULL input.
        assert_eq!(eval("CONCAT", &[NULL, NULL]), s(""));
        assert_eq!(eval("INSTR", &[NULL, s("a")]), i(0));
        assert_eq!(eval("FIELD", &[NULL, s("a")]), i(0));
        assert_eq!(eval("IS_JSON_STRING", &[NULL]), Value::Bool(false));
        assert_eq!(eval("ARRAY_CONTAINS", &[NULL, i(1)]), Value::Bool(false));
        assert_eq!(eval("TO_JSON_STRING", &[NULL]), s("null"));
    }

    #[test]
    fn type_rules_name_the_function_and_the_argument() {
        assert_eq!(type_of("UCASE", &[DataType::Double]), Err("UCASE expects a STRING, got DOUBLE".to_string()));
        assert_eq!(
            type_of("SUBSTRING", &[DataType::String, DataType::String]),
            Err("SUBSTRING expects an INTEGER or BIGINT as argument 2, got STRING".to_string())
        );
        assert!(type_of("ABS", &[DataType::String]).is_err());
        assert!(type_of("CONCAT", &[DataType::String, DataType::Int]).is_err());
        assert!(type_of("ARRAY_LENGTH", &[DataType::String]).is_err());
        assert!(type_of("FORMAT_TIMESTAMP", &[DataType::String, DataType::String]).is_err());
        assert!(type_of("COALESCE", &[DataType::String, DataType::Int]).is_err());
    }

    #[test]
    fn type_rules_accept_any_and_compute_results() {
        use DataType::*;
        assert_eq!(type_of("UCASE", &[Any]), Ok(String));
        assert_eq!(type_of("CONCAT", &[String, Any, String]), Ok(String));
        assert_eq!(type_of("ABS", &[Int]), Ok(Int));
        assert_eq!(type_of("ABS", &[Double]), Ok(Double));
        assert_eq!(type_of("ROUND", &[Double]), Ok(BigInt));
        assert_eq!(type_of("ROUND", &[Double, Int]), Ok(Double));
        assert_eq!(type_of("ROUND", &[Decimal(5, 2), Int]), Ok(Decimal(5, 2)));
        assert_eq!(type_of("SIGN", &[Double]), Ok(Int));
        assert_eq!(type_of("GREATEST", &[Int, Double]), Ok(Double));
        assert_eq!(type_of("GREATEST", &[Int, BigInt, Any]), Ok(BigInt));
        assert_eq!(type_of("COALESCE", &[Any, String, String]), Ok(String));
        assert_eq!(type_of("COALESCE", &[Any, Any]), Ok(Any));
        assert_eq!(type_of("IFNULL", &[Int, BigInt]), Ok(BigInt));
        assert_eq!(type_of("NULLIF", &[Double, Double]), Ok(Double));
        assert_eq!(type_of("SPLIT", &[String, String]), Ok(Array(Box::new(String))));
        assert_eq!(type_of("ARRAY_MAX", &[Array(Box::new(Double))]), Ok(Double));
        assert_eq!(type_of("MAP_VALUES", &[Map(Box::new(Int))]), Ok(Array(Box::new(Int))));
        assert_eq!(type_of("TIMESTAMPTOSTRING", &[BigInt, String]), Ok(String));
        assert_eq!(type_of("FORMAT_TIMESTAMP", &[Timestamp, String, String]), Ok(String));
        assert_eq!(type_of("PARSE_TIMESTAMP", &[String, String]), Ok(Timestamp));
        assert_eq!(type_of("STRINGTOTIMESTAMP", &[String, String]), Ok(BigInt));
        assert_eq!(type_of("EXTRACTJSONFIELD", &[Map(Box::new(Any)), String]), Ok(String));
        assert_eq!(type_of("PI", &[]), Ok(Double));
    }

    #[test]
    fn runtime_errors_name_the_function() {
        assert_eq!(error("UCASE", &[ints(&[1])]), "UCASE: expected a STRING, got ARRAY [1]");
        // ANY-typed numbers read as text where a string is expected.
        assert_eq!(eval("UCASE", &[d(1.5)]), s("1.5"));
        assert!(error("ABS", &[s("x")]).starts_with("ABS: expected a number"));
    }

    #[test]
    fn cast_to_string_uses_the_text_form() {
        assert_eq!(cast(&i(5), &DataType::String), Ok(s("5")));
        assert_eq!(cast(&d(1.0), &DataType::String), Ok(s("1.0")));
        assert_eq!(cast(&d(2.5), &DataType::String), Ok(s("2.5")));
        assert_eq!(cast(&Value::Bool(true), &DataType::String), Ok(s("true")));
        assert_eq!(cast(&ints(&[1, 2]), &DataType::String), Ok(s("[1,2]")));
        assert_eq!(cast(&NULL, &DataType::String), Ok(NULL));
    }

    #[test]
    fn cast_to_integers_parses_truncates_and_checks_range() {
        assert_eq!(cast(&s(" 42 "), &DataType::Int), Ok(i(42)));
        assert_eq!(cast(&s("-7"), &DataType::BigInt), Ok(i(-7)));
        assert!(cast(&s("4.2"), &DataType::Int).is_err());
        assert!(cast(&s("abc"), &DataType::BigInt).is_err());
        assert_eq!(cast(&d(3.9), &DataType::Int), Ok(i(3)));
        assert_eq!(cast(&d(-3.9), &DataType::BigInt), Ok(i(-3)));
        assert!(cast(&Value::Bool(true), &DataType::Int).is_err());
        assert!(cast(&i(3_000_000_000), &DataType::Int).is_err());
        assert_eq!(cast(&i(3_000_000_000), &DataType::BigInt), Ok(i(3_000_000_000)));
        assert!(cast(&s("9999999999"), &DataType::Int).is_err());
        assert!(cast(&d(1e19), &DataType::BigInt).is_err());
        assert!(cast(&d(f64::NAN), &DataType::BigInt).is_err());
    }

    #[test]
    fn cast_to_double_and_decimal() {
        assert_eq!(cast(&i(3), &DataType::Double), Ok(d(3.0)));
        assert_eq!(cast(&s("2.5"), &DataType::Double), Ok(d(2.5)));
        assert!(cast(&s("NaN"), &DataType::Double).is_err());
        assert!(cast(&s("abc"), &DataType::Double).is_err());
        assert!(cast(&Value::Bool(false), &DataType::Double).is_err());
        assert_eq!(cast(&d(1.2345), &DataType::Decimal(5, 2)), Ok(d(1.23)));
        assert_eq!(cast(&d(1.235), &DataType::Decimal(5, 2)), Ok(d(1.24)));
        assert_eq!(cast(&d(-1.235), &DataType::Decimal(5, 2)), Ok(d(-1.24)));
        assert_eq!(cast(&s("999.99"), &DataType::Decimal(5, 2)), Ok(d(999.99)));
        assert!(cast(&d(1000.0), &DataType::Decimal(5, 2)).is_err());
    }

    #[test]
    fn cast_to_boolean_follows_ksqldb() {
        assert_eq!(cast(&s("TRUE"), &DataType::Boolean), Ok(Value::Bool(true)));
        assert_eq!(cast(&s(" false "), &DataType::Boolean), Ok(Value::Bool(false)));
        assert_eq!(cast(&s("yes"), &DataType::Boolean), Ok(Value::Bool(true)));
        assert_eq!(cast(&s("t"), &DataType::Boolean), Ok(Value::Bool(true)));
        assert_eq!(cast(&s("banana"), &DataType::Boolean), Ok(Value::Bool(false)));
        assert!(cast(&i(1), &DataType::Boolean).is_err());
    }

    #[test]
    fn cast_to_timestamp_reads_iso_8601_and_partials() {
        let ts = |text: &str| cast(&s(text), &DataType::Timestamp);
        assert_eq!(ts("2020-05-26T23:59:58.000"), Ok(i(1_590_537_598_000)));
        assert_eq!(ts("2020-05-26T23:59:58Z"), Ok(i(1_590_537_598_000)));
        assert_eq!(ts("2020-05-26T23:59:58.5"), Ok(i(1_590_537_598_500)));
        assert_eq!(ts("2020-05-27T01:59:58.000+0200"), Ok(i(1_590_537_598_000)));
        assert_eq!(ts("2020-05-26T20:59:58-03:00"), Ok(i(1_590_537_598_000)));
        assert_eq!(ts("2020-05-26 23:59:58"), Ok(i(1_590_537_598_000)));
        assert_eq!(ts("2020-05-26T23:59"), Ok(i(1_590_537_540_000)));
        assert_eq!(ts("1970-01-02"), Ok(i(MILLIS_PER_DAY)));
        assert_eq!(ts("1970-02"), Ok(i(31 * MILLIS_PER_DAY)));
        assert!(ts("2020-13-01").is_err());
        assert!(ts("yesterday").is_err());
        assert!(ts("2020-05-26T25:00").is_err());
        assert_eq!(cast(&i(123), &DataType::Timestamp), Ok(i(123)));
    }

    #[test]
    fn cast_collections_converts_elements() {
        use DataType::*;
        assert_eq!(cast(&strings(&["1", "2"]), &Array(Box::new(Int))), Ok(ints(&[1, 2])));
        assert!(cast(&strings(&["x"]), &Array(Box::new(Int))).is_err());
        assert!(cast(&s("[1]"), &Array(Box::new(Int))).is_err());
        assert_eq!(cast(&object(&[("a", i(1))]), &Map(Box::new(Double))), Ok(object(&[("a", d(1.0))])));
        let target = Struct(vec![("A".to_string(), Int), ("B".to_string(), String)]);
        assert_eq!(cast(&object(&[("A", s("1")), ("C", i(2))]), &target), Ok(object(&[("A", i(1)), ("B", NULL)])));
        assert!(cast(&ints(&[1]), &target).is_err());
        assert!(cast(&s("x"), &Bytes).is_err());
    }

    #[test]
    fn abs_ceil_floor_sign() {
        assert_eq!(eval("ABS", &[i(-3)]), i(3));
        assert_eq!(eval("ABS", &[d(-2.5)]), d(2.5));
        assert!(call("ABS", &[i(i64::MIN)]).is_err());
        assert_eq!(eval("CEIL", &[d(1.2)]), d(2.0));
        assert_eq!(eval("CEIL", &[i(5)]), i(5));
        assert_eq!(eval("FLOOR", &[d(-1.2)]), d(-2.0));
        assert_eq!(eval("SIGN", &[i(-5)]), i(-1));
        assert_eq!(eval("SIGN", &[d(0.0)]), i(0));
        assert_eq!(eval("SIGN", &[d(2.5)]), i(1));
    }

    #[test]
    fn round_goes_half_up_toward_positive_infinity() {
        assert_eq!(eval("ROUND", &[d(2.5)]), i(3));
        assert_eq!(eval("ROUND", &[d(-2.5)]), i(-2));
        assert_eq!(eval("ROUND", &[d(-2.6)]), i(-3));
        assert_eq!(eval("ROUND", &[d(0.499_999_999_999_999_94)]), i(0));
        assert_eq!(eval("ROUND", &[i(7)]), i(7));
        // The decimal text is rounded, not the binary value just below 1.005.
        assert_eq!(eval("ROUND", &[d(1.005), i(2)]), d(1.01));
        assert_eq!(eval("ROUND", &[d(-1.005), i(2)]), d(-1.0));
        assert_eq!(eval("ROUND", &[d(-1.006), i(2)]), d(-1.01));
        assert_eq!(eval("ROUND", &[d(1234.5678), i(-2)]), d(1200.0));
        assert_eq!(eval("ROUND", &[d(1234.5678), i(1)]), d(1234.6));
        assert_eq!(eval("ROUND", &[i(1250), i(-2)]), d(1300.0));
        assert_eq!(eval("ROUND", &[d(0.004), i(2)]), d(0.0));
        assert_eq!(eval("ROUND", &[d(1e-300), i(2)]), d(0.0));
        assert_eq!(eval("ROUND", &[d(2.5), NULL]), NULL);
    }

    #[test]
    fn trunc_goes_toward_zero() {
        assert_eq!(eval("TRUNC", &[d(12345.67), i(-3)]), d(12000.0)); // the documented example
        assert_eq!(eval("TRUNC", &[d(-1.9)]), i(-1));
        assert_eq!(eval("TRUNC", &[d(1.239), i(2)]), d(1.23));
        assert_eq!(eval("TRUNC", &[d(-1.239), i(2)]), d(-1.23));
    }

    #[test]
    fn logarithms_and_powers() {
        assert_eq!(eval("SQRT", &[i(16)]), d(4.0));
        assert_eq!(eval("EXP", &[i(0)]), d(1.0));
        assert!(close_to(eval("LN", &[d(std::f64::consts::E)]), 1.0));
        // ksqlDB's own test: LOG of one argument is the natural logarithm.
        assert!(close_to(eval("LOG", &[i(13)]), 2.564_949_357_461_536_7));
        assert!(close_to(eval("LOG", &[i(2), i(8)]), 3.0));
        assert!(matches!(eval("LOG", &[i(1), i(8)]), Value::Double(x) if x.is_nan()));
        assert_eq!(eval("LOG", &[i(0)]), d(f64::NEG_INFINITY));
        assert_eq!(eval("POWER", &[i(2), i(10)]), d(1024.0));
        assert!(close_to(eval("DEGREES", &[d(std::f64::consts::PI)]), 180.0));
        assert!(close_to(eval("ATAN2", &[i(1), i(1)]), std::f64::consts::FRAC_PI_4));
        assert_eq!(eval("PI", &[]), d(std::f64::consts::PI));
    }

    #[test]
    fn greatest_and_least_skip_nulls() {
        assert_eq!(eval("GREATEST", &[i(1), i(5), NULL, i(3)]), i(5));
        assert_eq!(eval("LEAST", &[i(1), d(2.5)]), d(1.0));
        assert_eq!(eval("GREATEST", &[s("apple"), s("banana")]), s("banana"));
        assert_eq!(eval("LEAST", &[NULL, NULL]), NULL);
        assert!(call("GREATEST", &[i(1), s("a")]).is_err());
    }

    #[test]
    fn geo_distance_defaults_to_km() {
        let london_paris = [d(51.5074), d(-0.1278), d(48.8566), d(2.3522)];
        let Value::Double(km) = eval("GEO_DISTANCE", &london_paris) else { panic!("not a double") };
        assert!((km - 343.5).abs() < 1.0, "{km}");
        let mut in_miles = london_paris.to_vec();
        in_miles.push(s("MI"));
        let Value::Double(miles) = eval("GEO_DISTANCE", &in_miles) else { panic!("not a double") };
        assert!((miles - km / 1.609).abs() < 1.0, "{miles}");
        // London to Paris heads south-south-east: 148.1° by the haversine formula.
        let Value::Double(bearing) = eval("BEARING", &london_paris[..4]) else { panic!("not a double") };
        assert!((bearing - 148.1).abs() < 0.1, "{bearing}");
        let mut in_km = london_paris.to_vec();
        in_km.push(s("kilometer"));
        assert_eq!(eval("GEO_DISTANCE", &in_km), d(km));
        let mut unknown = london_paris.to_vec();
        unknown.push(s("furlongs"));
        assert!(error("GEO_DISTANCE", &unknown).contains("furlongs"));
        assert!(call("GEO_DISTANCE", &[d(91.0), d(0.0), d(0.0), d(0.0)]).is_err());
    }

    #[test]
    fn case_and_trimming() {
        assert_eq!(eval("UCASE", &[s("Hello")]), s("HELLO"));
        assert_eq!(eval("UPPER", &[s("Hello")]), s("HELLO"));
        assert_eq!(eval("LCASE", &[s("Hello")]), s("hello"));
        assert_eq!(eval("LOWER", &[s("Hello")]), s("hello"));
        assert_eq!(eval("TRIM", &[s(" \t a b \n")]), s("a b"));
        assert_eq!(eval("LTRIM", &[s("  a ")]), s("a "));
        assert_eq!(eval("RTRIM", &[s("  a ")]), s("  a"));
        assert_eq!(eval("INITCAP", &[s("hello wORLD  foo")]), s("Hello World  Foo"));
        assert_eq!(eval("LEN", &[s("héllo")]), i(5));
        assert_eq!(eval("LENGTH", &[s("")]), i(0));
    }

    #[test]
    fn substring_is_one_based_and_clips() {
        assert_eq!(eval("SUBSTRING", &[s("stream"), i(1), i(4)]), s("stre")); // the documented example
        assert_eq!(eval("SUBSTRING", &[s("stream"), i(3)]), s("ream"));
        assert_eq!(eval("SUBSTRING", &[s("stream"), i(-3)]), s("eam"));
        assert_eq!(eval("SUBSTRING", &[s("stream"), i(-10), i(2)]), s("st"));
        assert_eq!(eval("SUBSTRING", &[s("stream"), i(10)]), s(""));
        assert_eq!(eval("SUBSTRING", &[s("stream"), i(2), i(-1)]), s(""));
        assert_eq!(eval("SUBSTRING", &[s("stream"), i(0), i(2)]), s("st"));
        assert_eq!(eval("SUBSTR", &[s("héllo"), i(2), i(3)]), s("éll"));
        assert_eq!(eval("SUBSTRING", &[s("stream"), i(2), NULL]), NULL);
    }

    #[test]
    fn concatenation() {
        assert_eq!(eval("CONCAT", &[s("a"), NULL, s("b")]), s("ab"));
        assert_eq!(eval("CONCAT_WS", &[s(", "), s("apple"), s("banana"), NULL, s("date")]), s("apple, banana, date"));
        assert_eq!(eval("CONCAT_WS", &[NULL, s("a")]), NULL);
        assert_eq!(eval("REPLACE", &[s("foo bar foo"), s("foo"), s("baz")]), s("baz bar baz"));
        assert_eq!(eval("REPLACE", &[s("foo"), NULL, s("x")]), NULL);
    }

    #[test]
    fn splitting() {
        assert_eq!(eval("SPLIT", &[s("a,b,,c"), s(",")]), strings(&["a", "b", "", "c"]));
        assert_eq!(eval("SPLIT", &[s(",a,"), s(",")]), strings(&["", "a", ""]));
        assert_eq!(eval("SPLIT", &[s("abc"), s("-")]), strings(&["abc"]));
        assert_eq!(eval("SPLIT", &[s("abc"), s("")]), strings(&["a", "b", "c"]));
        assert_eq!(
            eval("SPLIT_TO_MAP", &[s("apple:=green/cherry:=red"), s("/"), s(":=")]),
            object(&[("apple", s("green")), ("cherry", s("red"))])
        );
        assert_eq!(eval("SPLIT_TO_MAP", &[s("a=1/b/a=2"), s("/"), s("=")]), object(&[("a", s("2"))]));
        assert_eq!(eval("SPLIT_TO_MAP", &[s("a=1"), s("="), s("=")]), NULL);
    }

    #[test]
    fn padding_matches_the_documented_examples() {
        assert_eq!(eval("LPAD", &[s("Foo"), i(7), s("Bar")]), s("BarBFoo"));
        assert_eq!(eval("LPAD", &[s("Foo"), i(2), s("Bar")]), s("Fo"));
        assert_eq!(eval("LPAD", &[s(""), i(2), s("Bar")]), s("Ba"));
        assert_eq!(eval("LPAD", &[s("123"), i(5), s("0")]), s("00123"));
        assert_eq!(eval("RPAD", &[s("Foo"), i(7), s("Bar")]), s("FooBarB"));
        assert_eq!(eval("RPAD", &[s("Foo"), i(2), s("Bar")]), s("Fo"));
        assert_eq!(eval("RPAD", &[s(""), i(2), s("Bar")]), s("Ba"));
        assert_eq!(eval("LPAD", &[s("Foo"), i(5), s("")]), NULL);
        assert_eq!(eval("RPAD", &[s("Foo"), i(-1), s("x")]), NULL);
        assert!(call("LPAD", &[s("Foo"), i(i64::MAX), s("x")]).is_err());
    }

    #[test]
    fn instr_matches_the_documented_examples() {
        let corporate = s("CORPORATE FLOOR");
        assert_eq!(eval("INSTR", &[corporate.clone(), s("OR")]), i(2));
        assert_eq!(eval("INSTR", &[corporate.clone(), s("OR"), i(3)]), i(5));
        assert_eq!(eval("INSTR", &[corporate.clone(), s("OR"), i(3), i(2)]), i(14));
        assert_eq!(eval("INSTR", &[corporate.clone(), s("OR"), i(-3)]), i(5));
        assert_eq!(eval("INSTR", &[corporate.clone(), s("OR"), i(-3), i(2)]), i(2));
        assert_eq!(eval("INSTR", &[corporate.clone(), s("MISSING")]), i(0));
        assert_eq!(eval("INSTR", &[corporate, s("OR"), i(100)]), i(0));
    }

    #[test]
    fn chr_elt_field() {
        assert_eq!(eval("CHR", &[i(75)]), s("K"));
        assert_eq!(eval("CHR", &[s("\\u004b")]), s("K"));
        assert_eq!(eval("CHR", &[i(22909)]), s("好"));
        assert_eq!(eval("CHR", &[s("\\u597d")]), s("好"));
        assert_eq!(eval("CHR", &[i(-1)]), NULL);
        assert_eq!(eval("CHR", &[s("K")]), NULL);
        assert_eq!(eval("ELT", &[i(2), s("a"), s("b")]), s("b"));
        assert_eq!(eval("ELT", &[i(3), s("a"), s("b")]), NULL);
        assert_eq!(eval("ELT", &[i(0), s("a")]), NULL);
        assert_eq!(eval("FIELD", &[s("b"), s("a"), s("b")]), i(2));
        assert_eq!(eval("FIELD", &[s("z"), s("a")]), i(0));
    }

    #[test]
    fn masks_match_the_documented_examples() {
        let text = s("My Test $123");
        assert_eq!(eval("MASK", std::slice::from_ref(&text)), s("Xx-Xxxx--nnn"));
        assert_eq!(eval("MASK", &[text.clone(), s("*"), NULL, s("1"), NULL]), s("*y *est $111"));
        assert_eq!(eval("MASK_KEEP_LEFT", &[text.clone(), i(4)]), s("My Txxx--nnn"));
        assert_eq!(eval("MASK_KEEP_RIGHT", &[text.clone(), i(4)]), s("Xx-Xxxx-$123"));
        assert_eq!(eval("MASK_LEFT", &[text.clone(), i(4)]), s("Xx-Xest $123"));
        assert_eq!(eval("MASK_RIGHT", &[text.clone(), i(4)]), s("My Test -nnn"));
        assert_eq!(eval("MASK_LEFT", &[text.clone(), i(100)]), s("Xx-Xxxx--nnn"));
        assert!(call("MASK", &[text.clone(), s("XX")]).is_err());
        assert!(call("MASK_LEFT", &[text, i(-1)]).is_err());
    }

    #[test]
    fn regular_expressions() {
        assert_eq!(eval("REGEXP_EXTRACT", &[s("(.*) (.*)"), s("hello there"), i(2)]), s("there"));
        assert_eq!(eval("REGEXP_EXTRACT", &[s("[0-9]+"), s("abc 123 45")]), s("123"));
        assert_eq!(eval("REGEXP_EXTRACT", &[s("x"), s("abc")]), NULL);
        assert_eq!(eval("REGEXP_EXTRACT", &[s("(a)"), s("abc"), i(2)]), NULL);
        assert_eq!(
            eval("REGEXP_EXTRACT_ALL", &[s("(\\w+) (\\w+)"), s("hello there nice day"), i(2)]),
            strings(&["there", "day"])
        );
        assert_eq!(eval("REGEXP_REPLACE", &[s("foo bar"), s("o+"), s("X")]), s("fX bar"));
        assert_eq!(eval("REGEXP_REPLACE", &[s("john smith"), s("(\\w+) (\\w+)"), s("$2, $1")]), s("smith, john"));
        // Java reads "$1x" as group 1 then 'x'; the regex crate alone would look for a group "1x".
        assert_eq!(eval("REGEXP_REPLACE", &[s("ab"), s("(a)"), s("$1x")]), s("axb"));
        assert_eq!(eval("REGEXP_REPLACE", &[s("ab"), s("a"), s("\\$")]), s("$b"));
        assert!(error("REGEXP_REPLACE", &[s("ab"), s("("), s("x")]).contains("invalid regular expression"));
        assert!(call("REGEXP_REPLACE", &[s("ab"), s("a"), s("$x")]).is_err());
        assert_eq!(eval("REGEXP_SPLIT_TO_ARRAY", &[s("a1b22c"), s("[0-9]+")]), strings(&["a", "b", "c"]));
        assert_eq!(eval("REGEXP_SPLIT_TO_ARRAY", &[s("1a1"), s("1")]), strings(&["", "a", ""]));
        assert_eq!(eval("REGEXP_SPLIT_TO_ARRAY", &[s("abc"), s("")]), strings(&["a", "b", "c"]));
    }

    #[test]
    fn null_functions() {
        assert_eq!(eval("COALESCE", &[NULL, NULL, i(3), i(4)]), i(3));
        assert_eq!(eval("COALESCE", &[NULL]), NULL);
        assert_eq!(eval("IFNULL", &[NULL, s("x")]), s("x"));
        assert_eq!(eval("IFNULL", &[s("a"), s("x")]), s("a"));
        assert_eq!(eval("NULLIF", &[i(1), i(1)]), NULL);
        assert_eq!(eval("NULLIF", &[i(1), d(1.0)]), NULL);
        assert_eq!(eval("NULLIF", &[i(1), i(2)]), i(1));
        assert_eq!(eval("NULLIF", &[s("a"), NULL]), s("a"));
    }

    const LOG_JSON: &str = r#"{"log": {"cloud": "gcp836Csd", "app": "ksProcessor", "instance": 4},
        "items": [{"id": "a"}, {"id": "b"}], "odd key": true, "nothing": null}"#;

    #[test]
    fn extractjsonfield_matches_the_documented_example() {
        let field = |path: &str| eval("EXTRACTJSONFIELD", &[s(LOG_JSON), s(path)]);
        assert_eq!(field("$.log.cloud"), s("gcp836Csd"));
        assert_eq!(field("$.log.instance"), s("4"));
        let Value::String(log) = field("$.log") else { panic!("not a string") };
        let log: Json = serde_json::from_str(&log).unwrap();
        assert_eq!(log, serde_json::json!({"cloud": "gcp836Csd", "app": "ksProcessor", "instance": 4}));
        assert_eq!(field("$.items[1].id"), s("b"));
        assert_eq!(field("$.items.0.id"), s("a"));
        assert_eq!(field("$['odd key']"), s("true"));
        assert_eq!(field("$[\"odd key\"]"), s("true"));
        assert_eq!(field("$.missing"), NULL);
        assert_eq!(field("$.items[5]"), NULL);
        assert_eq!(field("$.nothing"), NULL);
        assert!(call("EXTRACTJSONFIELD", &[s("{not json"), s("$.a")]).is_err());
        assert!(call("EXTRACTJSONFIELD", &[s(LOG_JSON), s("log.cloud")]).is_err());
        assert!(call("EXTRACTJSONFIELD", &[s(LOG_JSON), s("$.items[*]")]).is_err());
    }

    #[test]
    fn json_paths_walk_parsed_maps_too() {
        let parsed = object(&[("log", object(&[("cloud", s("gcp")), ("tags", strings(&["x", "y"]))]))]);
        assert_eq!(eval("EXTRACTJSONFIELD", &[parsed.clone(), s("$.log.cloud")]), s("gcp"));
        assert_eq!(eval("EXTRACTJSONFIELD", &[parsed.clone(), s("$.log.tags")]), s(r#"["x","y"]"#));
        assert_eq!(eval("JSON_VALUE", &[parsed.clone(), s("$.log.tags[1]")]), s("y"));
        assert_eq!(eval("JSON_VALUE", &[parsed, s("$.log")]), NULL);
    }

    #[test]
    fn json_value_returns_scalars_only() {
        let value = |path: &str| eval("JSON_VALUE", &[s(LOG_JSON), s(path)]);
        assert_eq!(value("$.log.cloud"), s("gcp836Csd"));
        assert_eq!(value("$.log.instance"), s("4"));
        assert_eq!(value("$['odd key']"), s("true"));
        assert_eq!(value("$.log"), NULL);
        assert_eq!(value("$.items"), NULL);
        assert_eq!(value("$.missing"), NULL);
        assert_eq!(value("$.nothing"), NULL);
        assert_eq!(eval("JSON_VALUE", &[s("{not json"), s("$.a")]), NULL);
        assert!(call("JSON_VALUE", &[s("{}"), s("a")]).is_err());
    }

    #[test]
    fn json_helpers_match_the_documented_examples() {
        for (text, valid) in [("[1, 2, 3]", true), ("{}", true), ("1", true), ("\"abc\"", true), ("null", true)]
            .into_iter()
            .chain([("", false), ("abc", false)])
        {
            assert_eq!(eval("IS_JSON_STRING", &[s(text)]), Value::Bool(valid), "{text}");
        }
        assert_eq!(eval("JSON_ARRAY_LENGTH", &[s("[1, [1, [2]], 3]")]), i(3));
        assert_eq!(eval("JSON_ARRAY_LENGTH", &[s("[]")]), i(0));
        assert_eq!(eval("JSON_ARRAY_LENGTH", &[s("{}")]), NULL);
        assert_eq!(eval("JSON_ARRAY_LENGTH", &[s("abc")]), NULL);
        assert_eq!(eval("JSON_KEYS", &[s(r#"{"a": "abc", "b": { "c": "a" }, "d": 1}"#)]), strings(&["a", "b", "d"]));
        assert_eq!(eval("JSON_KEYS", &[s("{}")]), strings(&[]));
        assert_eq!(eval("JSON_KEYS", &[s("[]")]), NULL);
        assert_eq!(eval("JSON_KEYS", &[s("")]), NULL);
        assert_eq!(eval("JSON_ARRAY_CONTAINS", &[s("[1, 2, 3]"), i(3)]), Value::Bool(true));
        assert_eq!(eval("JSON_ARRAY_CONTAINS", &[s("[1.0]"), i(1)]), Value::Bool(false));
        assert_eq!(eval("JSON_ARRAY_CONTAINS", &[s("[[3]]"), i(3)]), Value::Bool(false));
        assert_eq!(eval("JSON_ARRAY_CONTAINS", &[s("[null]"), NULL]), Value::Bool(true));
        assert_eq!(eval("JSON_ARRAY_CONTAINS", &[s("{}"), i(1)]), Value::Bool(false));
        assert_eq!(eval("TO_JSON_STRING", &[i(1)]), s("1"));
        assert_eq!(eval("TO_JSON_STRING", &[d(15.3)]), s("15.3"));
        assert_eq!(eval("TO_JSON_STRING", &[s("abc")]), s("\"abc\""));
        assert_eq!(eval("TO_JSON_STRING", &[Value::Bool(true)]), s("true"));
        assert_eq!(eval("TO_JSON_STRING", &[ints(&[1, 2, 3])]), s("[1,2,3]"));
    }

    #[test]
    fn arrays_match_the_documented_examples() {
        let fruit = || Value::Array(vec![s("apple"), s("apple"), NULL, s("cherry")]);
        assert_eq!(eval("ARRAY_CONCAT", &[ints(&[1, 2, 3, 1, 2]), ints(&[4, 1])]), ints(&[1, 2, 3, 1, 2, 4, 1]));
        assert_eq!(eval("ARRAY_CONCAT", &[NULL, ints(&[4])]), ints(&[4]));
        assert_eq!(eval("ARRAY_CONCAT", &[NULL, NULL]), NULL);
        assert_eq!(eval("ARRAY_DISTINCT", &[ints(&[1, 1, 2, 3, 1, 2])]), ints(&[1, 2, 3]));
        assert_eq!(eval("ARRAY_DISTINCT", &[fruit()]), Value::Array(vec![s("apple"), NULL, s("cherry")]));
        assert_eq!(eval("ARRAY_EXCEPT", &[ints(&[1, 2, 3, 1, 2]), ints(&[2, 3])]), ints(&[1]));
        assert_eq!(eval("ARRAY_EXCEPT", &[fruit(), strings(&["cherry"])]), Value::Array(vec![s("apple"), NULL]));
        assert_eq!(eval("ARRAY_INTERSECT", &[ints(&[1, 2, 3, 1, 2]), ints(&[2, 1])]), ints(&[1, 2]));
        assert_eq!(eval("ARRAY_INTERSECT", &[fruit(), strings(&["apple"])]), strings(&["apple"]));
        assert_eq!(eval("ARRAY_UNION", &[ints(&[1, 2, 3, 1, 2]), ints(&[4, 1])]), ints(&[1, 2, 3, 4]));
        assert_eq!(
            eval("ARRAY_UNION", &[fruit(), strings(&["cherry"])]),
            Value::Array(vec![s("apple"), NULL, s("cherry")])
        );
        assert_eq!(eval("ARRAY_UNION", &[ints(&[1]), NULL]), NULL);
        assert_eq!(eval("ARRAY_REMOVE", &[ints(&[1, 2, 3, 2, 1]), i(2)]), ints(&[1, 3, 1]));
        assert_eq!(
            eval("ARRAY_REMOVE", &[Value::Array(vec![s("Foo"), s("Bar"), NULL, s("baz")]), NULL]),
            strings(&["Foo", "Bar", "baz"])
        );
    }

    #[test]
    fn array_max_min_sort_match_the_documented_examples() {
        let numbers = || Value::Array(vec![i(-1), i(2), NULL, i(0)]);
        let flags = || Value::Array(vec![Value::Bool(false), NULL, Value::Bool(true)]);
        let words = || Value::Array(vec![s("Foo"), s("Bar"), NULL, s("baz")]);
        assert_eq!(eval("ARRAY_MAX", &[numbers()]), i(2));
        assert_eq!(eval("ARRAY_MAX", &[flags()]), Value::Bool(true));
        assert_eq!(eval("ARRAY_MAX", &[words()]), s("baz"));
        assert_eq!(eval("ARRAY_MIN", &[numbers()]), i(-1));
        assert_eq!(eval("ARRAY_MIN", &[flags()]), Value::Bool(false));
        assert_eq!(eval("ARRAY_MIN", &[words()]), s("Bar"));
        assert_eq!(eval("ARRAY_MAX", &[Value::Array(vec![NULL])]), NULL);
        assert_eq!(eval("ARRAY_SORT", &[numbers()]), Value::Array(vec![i(-1), i(0), i(2), NULL]));
        assert_eq!(eval("ARRAY_SORT", &[flags()]), Value::Array(vec![Value::Bool(false), Value::Bool(true), NULL]));
        assert_eq!(eval("ARRAY_SORT", &[words()]), Value::Array(vec![s("Bar"), s("Foo"), s("baz"), NULL]));
        assert_eq!(eval("ARRAY_SORT", &[numbers(), s("desc")]), Value::Array(vec![i(2), i(0), i(-1), NULL]));
        assert_eq!(eval("ARRAY_SORT", &[numbers(), s("sideways")]), NULL);
        assert!(call("ARRAY_SORT", &[Value::Array(vec![i(1), s("a")])]).is_err());
        assert!(call("ARRAY_MAX", &[Value::Array(vec![ints(&[1])])]).is_err());
    }

    #[test]
    fn other_collection_functions() {
        assert_eq!(eval("ARRAY_LENGTH", &[ints(&[1, 2, 3])]), i(3));
        assert_eq!(eval("ARRAY_CONTAINS", &[ints(&[1, 2, 3]), i(3)]), Value::Bool(true));
        assert_eq!(eval("ARRAY_CONTAINS", &[ints(&[1, 2, 3]), i(4)]), Value::Bool(false));
        assert_eq!(eval("ARRAY_JOIN", &[Value::Array(vec![i(1), s("a"), NULL, d(2.0)])]), s("1,a,null,2.0"));
        assert_eq!(eval("ARRAY_JOIN", &[strings(&["a", "b"]), s("-")]), s("a-b"));
        assert_eq!(eval("ARRAY_JOIN", &[strings(&["a", "b"]), NULL]), s("ab"));
        assert!(call("ARRAY_JOIN", &[Value::Array(vec![ints(&[1])])]).is_err());
        assert_eq!(eval("SLICE", &[ints(&[1, 2, 3, 4]), i(2), i(3)]), ints(&[2, 3]));
        assert_eq!(eval("SLICE", &[ints(&[1, 2, 3, 4]), NULL, i(2)]), ints(&[1, 2]));
        assert_eq!(eval("SLICE", &[ints(&[1, 2, 3, 4]), i(0), i(2)]), NULL);
        assert_eq!(eval("SLICE", &[ints(&[1, 2]), i(1), i(5)]), NULL);
        let fruit = object(&[("apple", i(10)), ("banana", i(20))]);
        assert_eq!(eval("MAP_KEYS", std::slice::from_ref(&fruit)), strings(&["apple", "banana"]));
        assert_eq!(eval("MAP_VALUES", std::slice::from_ref(&fruit)), ints(&[10, 20]));
        assert_eq!(
            eval("MAP_UNION", &[fruit.clone(), object(&[("cherry", i(99))])]),
            object(&[("apple", i(10)), ("banana", i(20)), ("cherry", i(99))])
        );
        assert_eq!(
            eval("MAP_UNION", &[fruit, object(&[("apple", i(50))])]),
            object(&[("apple", i(50)), ("banana", i(20))])
        );
        assert_eq!(eval("MAP_UNION", &[NULL, NULL]), NULL);
    }

    /// 2021-06-30T12:18:39.446Z, a Wednesday in summer time.
    const SUMMER: i64 = 1_625_055_519_446;

    #[test]
    fn time_buckets_floor_to_their_period() {
        let t = 1_558_218_743_123; // 2019-05-18T22:32:23.123Z
        assert_eq!(eval("TIME_FLOOR", &[i(t), s("PT1M")]), i(1_558_218_720_000));
        assert_eq!(eval("TIME_FLOOR", &[i(t), s("PT15M")]), i(1_558_218_600_000));
        assert_eq!(eval("DATE_BIN", &[i(60_000), i(t)]), i(1_558_218_720_000));
        assert_eq!(eval("DATE_BIN", &[s("1 hour"), i(t), i(45 * 60_000)]), i(1_558_215_900_000));
        assert_eq!(eval("DATE_BIN", &[s("P1D"), i(-1)]), i(-86_400_000), "before the origin too");
        assert_eq!(eval("TIME_FLOOR", &[Value::Null, s("PT1M")]), Value::Null);
        assert!(error("TIME_FLOOR", &[i(t), s("P1M")]).contains("months and years"));
        assert!(error("DATE_BIN", &[s("fortnight"), i(t)]).contains("not a period"));
        assert_eq!(duration_ms("PT0.5S"), Ok(500));
        assert_eq!(duration_ms("P1DT2H"), Ok(93_600_000));
        assert_eq!(duration_ms("30 SECOND"), Ok(30_000));
        assert_eq!(duration_ms("250"), Ok(250));
    }

    #[test]
    fn timestamps_format_with_java_patterns() {
        let format = |pattern: &str| eval("TIMESTAMPTOSTRING", &[i(SUMMER), s(pattern)]);
        assert_eq!(format("yyyy-MM-dd HH:mm:ss.SSS"), s("2021-06-30 12:18:39.446"));
        assert_eq!(format("yyyy-MM-dd'T'HH:mm:ssX"), s("2021-06-30T12:18:39Z"));
        assert_eq!(format("yyyy-MM-dd'T'HH:mm:ssxxx"), s("2021-06-30T12:18:39+00:00"));
        assert_eq!(format("EEE, d MMM yy"), s("Wed, 30 Jun 21"));
        assert_eq!(format("EEEE MMMM d"), s("Wednesday June 30"));
        assert_eq!(format("h:mm a"), s("12:18 PM"));
        assert_eq!(format("D 'day''s' SS"), s("181 day's 44"));
        assert_eq!(format("Z"), s("+0000"));
        assert_eq!(eval("TIMESTAMPTOSTRING", &[i(0), s("yyyy-MM-dd HH:mm:ss.SSS")]), s("1970-01-01 00:00:00.000"));
        assert_eq!(eval("TIMESTAMPTOSTRING", &[i(-1), s("yyyy-MM-dd HH:mm:ss.SSS")]), s("1969-12-31 23:59:59.999"));
    }

    #[test]
    fn timestamps_format_in_time_zones() {
        let format = |zone: &str| eval("FORMAT_TIMESTAMP", &[i(SUMMER), s("yyyy-MM-dd HH:mm:ssXXX z"), s(zone)]);
        assert_eq!(format("Europe/London"), s("2021-06-30 13:18:39+01:00 BST"));
        assert_eq!(format("America/Los_Angeles"), s("2021-06-30 05:18:39-07:00 PDT"));
        assert_eq!(format("UTC"), s("2021-06-30 12:18:39Z UTC"));
        assert_eq!(format("+05:30"), s("2021-06-30 17:48:39+05:30 +05:30"));
        assert_eq!(format("GMT-2"), s("2021-06-30 10:18:39-02:00 -02:00"));
        assert_eq!(
            eval("FORMAT_TIMESTAMP", &[i(SUMMER), s("HH:mm VV X"), s("Asia/Kolkata")]),
            s("17:48 Asia/Kolkata +0530")
        );
        assert!(error("FORMAT_TIMESTAMP", &[i(SUMMER), s("HH"), s("Mars/Olympus")]).contains("Mars/Olympus"));
        assert_eq!(eval("FORMAT_TIMESTAMP", &[i(SUMMER), s("HH"), NULL]), NULL);
    }

    #[test]
    fn unsupported_patterns_are_errors() {
        for pattern in ["YYYY-MM-dd", "yyyy-ww", "GGGG", "yyyy[-MM]", "ddd", "MMMMM", "'unterminated", "hh:mm aa"] {
            assert!(call("TIMESTAMPTOSTRING", &[i(0), s(pattern)]).is_err(), "{pattern}");
        }
        assert!(error("TIMESTAMPTOSTRING", &[i(0), s("YYYY")]).contains("unsupported pattern letter 'Y'"));
        assert!(call("PARSE_TIMESTAMP", &[s("12.3"), s("ss.S")]).is_err());
        assert!(call("PARSE_TIMESTAMP", &[s("UTC"), s("z")]).is_err());
    }

    #[test]
    fn timestamps_parse_with_java_patterns() {
        let parse = |text: &str, pattern: &str| eval("PARSE_TIMESTAMP", &[s(text), s(pattern)]);
        assert_eq!(parse("2021-06-30 12:18:39.446", "yyyy-MM-dd HH:mm:ss.SSS"), i(SUMMER));
        // The documented example: June 31 resolves to June 30.
        assert_eq!(parse("2021-06-31 12:18:39.446", "yyyy-MM-dd HH:mm:ss.SSS"), i(SUMMER));
        assert_eq!(parse("2021-06-30T14:18:39.446+02:00", "yyyy-MM-dd'T'HH:mm:ss.SSSXXX"), i(SUMMER));
        assert_eq!(parse("2021-06-30T12:18:39.446Z", "yyyy-MM-dd'T'HH:mm:ss.SSSX"), i(SUMMER));
        assert_eq!(parse("20210630121839446", "yyyyMMddHHmmssSSS"), i(SUMMER));
        assert_eq!(parse("30 jun 21 12:18:39.446 pm", "dd MMM yy hh:mm:ss.SSS a"), i(SUMMER));
        assert_eq!(parse("13:25", "HH:mm"), i((13 * 60 + 25) * 60_000));
        assert_eq!(parse("181 2021", "D yyyy"), i(SUMMER - 44_319_446));
        assert!(call("PARSE_TIMESTAMP", &[s("2021-06-30"), s("yyyy-MM-dd HH:mm")]).is_err());
        assert!(call("PARSE_TIMESTAMP", &[s("2021-06-30 12:00 extra"), s("yyyy-MM-dd HH:mm")]).is_err());
        assert!(call("PARSE_TIMESTAMP", &[s("2021-13-01"), s("yyyy-MM-dd")]).is_err());
        assert_eq!(parse("2021-02-30", "yyyy-MM-dd"), parse("2021-02-28", "yyyy-MM-dd"));
        assert_eq!(
            eval(
                "STRINGTOTIMESTAMP",
                &[s("2021-06-30 13:18:39.446"), s("yyyy-MM-dd HH:mm:ss.SSS"), s("Europe/London")]
            ),
            i(SUMMER)
        );
    }

    #[test]
    fn parsing_across_daylight_saving_changes_follows_java() {
        let london = |text: &str| eval("PARSE_TIMESTAMP", &[s(text), s("yyyy-MM-dd HH:mm"), s("Europe/London")]);
        // 01:30 does not exist on 2021-03-28; Java moves it forward by the hour: 02:30 BST.
        assert_eq!(london("2021-03-28 01:30"), i(1_616_895_000_000));
        // 01:30 happens twice on 2021-10-31; Java takes the earlier, still BST.
        assert_eq!(london("2021-10-31 01:30"), i(1_635_640_200_000));
    }

    #[test]
    fn formatting_then_parsing_gives_the_instant_back() {
        let pattern = s("yyyy-MM-dd'T'HH:mm:ss.SSSXXX");
        for millis in [0, SUMMER, -86_399_999, 4_102_444_800_123] {
            for zone in ["UTC", "Europe/Berlin", "America/New_York", "+13:45"] {
                let text = eval("FORMAT_TIMESTAMP", &[i(millis), pattern.clone(), s(zone)]);
                assert_eq!(eval("PARSE_TIMESTAMP", &[text.clone(), pattern.clone(), s(zone)]), i(millis), "{text:?}");
            }
        }
    }

    #[test]
    fn dates_and_clocks() {
        assert_eq!(eval("DATETOSTRING", &[i(18000), s("yyyy-MM-dd")]), s("2019-04-14"));
        assert_eq!(eval("STRINGTODATE", &[s("2019-04-14"), s("yyyy-MM-dd")]), i(18000));
        assert_eq!(eval("STRINGTODATE", &[s("1969-12-31"), s("yyyy-MM-dd")]), i(-1));
        assert!(call("DATETOSTRING", &[i(18000), s("yyyy-MM-dd HH")]).is_err());
        assert_eq!(eval("FROM_UNIXTIME", &[i(SUMMER)]), i(SUMMER));
        assert_eq!(eval("UNIX_TIMESTAMP", &[i(SUMMER)]), i(SUMMER));
        let before = now_millis();
        let Value::Int(now) = eval("UNIX_TIMESTAMP", &[]) else { panic!("not an integer") };
        assert!(before <= now && now <= now_millis());
        assert_eq!(eval("UNIX_DATE", &[]), i(now_millis().div_euclid(MILLIS_PER_DAY)));
        assert_eq!(eval("CONVERT_TZ", &[i(SUMMER), s("UTC"), s("America/Los_Angeles")]), i(SUMMER - 7 * 3_600_000));
        assert_eq!(eval("CONVERT_TZ", &[i(SUMMER), s("+02:00"), s("UTC")]), i(SUMMER - 2 * 3_600_000));
        assert!(call("CONVERT_TZ", &[i(SUMMER), s("nowhere"), s("UTC")]).is_err());
    }
}
