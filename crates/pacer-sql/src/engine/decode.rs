//! Decodes a record's JSON value straight into a row's slots: only the fields the query
//! reads, each as its declared type, without building a JSON tree.
//!
//! Most values are one flat object of numbers, short strings and booleans, like
//! `{"device":"d-1","ts":1700000000000,"temp":21.5}`: a reader written for that shape takes
//! them in one pass. Anything it leaves (escapes, nested values, numbers out of 64-bit range,
//! malformed text) goes to serde_json, which reads every JSON value and words every error.
//! Both fill slots through [`Slots`], so they cannot disagree on what a field holds.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value as Json;

use super::plan::Field;
use super::value::{DataType, Value};

/// Fills `row` (one slot per field) from a JSON object: each non-key field the object has,
/// as its declared type; the others null. `filled` is scratch space. An error names why
/// the record cannot be read.
pub(crate) fn decode_fields(
    value: &[u8],
    fields: &[Field],
    row: &mut [Value],
    filled: &mut Vec<bool>,
) -> Result<(), String> {
    let mut slots = Slots { fields, row, filled, failed: None, next: 0 };
    slots.filled.clear();
    slots.filled.resize(fields.len(), false);
    if read_flat_object(value, |key, raw| slots.fill(key, raw)) {
        return slots.finish();
    }
    // Start again: serde_json sets every slot it reads afresh.
    slots.filled.fill(false);
    slots.failed = None;
    read_with_serde(value, slots)
}

fn read_with_serde(value: &[u8], mut slots: Slots<'_>) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_slice(value);
    match RowSeed(&mut slots).deserialize(&mut de).and_then(|()| de.end()) {
        Ok(()) => slots.finish(),
        Err(e) if e.is_data() => {
            Err(format!("value is not a JSON object: {}", truncate(&String::from_utf8_lossy(value))))
        }
        Err(e) => Err(not_json(value, &e)),
    }
}

pub(crate) fn not_json(value: &[u8], e: &serde_json::Error) -> String {
    format!("value is not JSON ({e}): {}", truncate(&String::from_utf8_lossy(value)))
}

/// At most 200 bytes of `s` (on a character boundary), for error messages.
pub(crate) fn truncate(s: &str) -> String {
    if s.len() <= 200 {
        return s.to_string();
    }
    let mut end = 200;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The row being filled from one record.
struct Slots<'a> {
    fields: &'a [Field],
    row: &'a mut [Value],
    /// Which slots this record set.
    filled: &'a mut Vec<bool>,
    /// The first field that did not fit its type: the record is rejected with it.
    failed: Option<String>,
    /// The field the next key most likely names.
    next: usize,
}

/// Equal byte strings. Keys are short: up to 16 bytes they are compared as two words
/// that may overlap, without a call to `memcmp` or a loop per byte.
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    fn word<const N: usize>(s: &[u8], at: usize) -> [u8; N] {
        s[at..at + N].try_into().expect("N bytes")
    }
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => word::<4>(a, 0) == word::<4>(b, 0) && word::<4>(a, n - 4) == word::<4>(b, n - 4),
        8..=16 => word::<8>(a, 0) == word::<8>(b, 0) && word::<8>(a, n - 8) == word::<8>(b, n - 8),
        _ => a == b,
    }
}

impl Slots<'_> {
    /// The field a JSON key fills: its exact name, else ignoring case (as ksqlDB matches
    /// unquoted names). Objects of one stream mostly list their keys in one order, so the
    /// field after the last one filled is tried first.
    #[inline(always)]
    fn slot(&mut self, key: &[u8]) -> Option<usize> {
        let value_field = |f: &Field| !f.key;
        let next = self.fields.get(self.next).filter(|f| value_field(f) && same_bytes(f.name.as_bytes(), key));
        let exact = next
            .map(|_| self.next)
            .or_else(|| self.fields.iter().position(|f| value_field(f) && same_bytes(f.name.as_bytes(), key)));
        let found = exact
            .or_else(|| self.fields.iter().position(|f| value_field(f) && f.name.as_bytes().eq_ignore_ascii_case(key)));
        if let Some(i) = found {
            self.next = i + 1;
        }
        found
    }

    fn fill(&mut self, key: &[u8], raw: Raw<'_>) {
        if let Some(i) = self.slot(key) {
            self.set(i, raw);
        }
    }

    #[inline(always)]
    fn set(&mut self, i: usize, raw: Raw<'_>) {
        if self.failed.is_some() {
            return;
        }
        self.filled[i] = true;
        match (&mut self.row[i], &raw, &self.fields[i].data_type) {
            // The string of the last record is reused: no allocation per record.
            (Value::String(buffer), Raw::Str(s), DataType::String) => {
                buffer.clear();
                buffer.push_str(s);
            }
            // Numbers as `coerce` makes them, written over the last record's in place.
            (Value::Double(slot), Raw::Float(x), DataType::Double) => *slot = *x,
            (Value::Int(slot), Raw::Int(i), DataType::Int | DataType::BigInt | DataType::Timestamp) => *slot = *i,
            (Value::Int(slot), Raw::UInt(u), DataType::Int | DataType::BigInt | DataType::Timestamp)
                if i64::try_from(*u).is_ok() =>
            {
                *slot = *u as i64
            }
            _ => self.set_coerced(i, raw),
        }
    }

    /// A value that does not fit the slot's last one in place: the first of a record
    /// stream, a type change, or a mismatch.
    #[cold]
    #[inline(never)]
    fn set_coerced(&mut self, i: usize, raw: Raw<'_>) {
        match coerce(raw, &self.fields[i]) {
            Ok(v) => self.row[i] = v,
            Err(e) => self.failed = Some(e),
        }
    }

    /// Slots this record did not set are null (they kept the last record's values, and
    /// string buffers, until now).
    fn finish(self) -> Result<(), String> {
        for (slot, filled) in self.row.iter_mut().zip(self.filled.iter()) {
            if !filled {
                *slot = Value::Null;
            }
        }
        self.failed.map_or(Ok(()), Err)
    }
}

/// Reads `b` as one flat JSON object, calling `visit` with each key and value in order.
/// False when it is anything else or needs what this reader leaves to serde_json (escapes,
/// nested values, integers out of 64-bit range, text that is not UTF-8); `visit` may have
/// been called for the keys before that point. Only strings are checked for UTF-8: anything
/// else outside ASCII is not JSON.
fn read_flat_object<'a>(b: &'a [u8], mut visit: impl FnMut(&'a [u8], Raw<'a>)) -> bool {
    let mut i = skip_space(b, 0);
    if b.get(i) != Some(&b'{') {
        return false;
    }
    i = skip_space(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return skip_space(b, i + 1) == b.len();
    }
    loop {
        let Some((key, next)) = plain_string(b, i) else { return false };
        if !key.is_ascii() && std::str::from_utf8(key).is_err() {
            return false;
        }
        i = skip_space(b, next);
        if b.get(i) != Some(&b':') {
            return false;
        }
        let Some((raw, next)) = scalar(b, skip_space(b, i + 1)) else { return false };
        visit(key, raw);
        i = skip_space(b, next);
        match b.get(i) {
            Some(b',') => i = skip_space(b, i + 1),
            Some(b'}') => return skip_space(b, i + 1) == b.len(),
            _ => return false,
        }
    }
}

fn skip_space(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// A string without escapes or control characters at `at` (its opening quote): its bytes
/// and where it ends.
#[inline(always)]
fn plain_string(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
    if b.get(at) != Some(&b'"') {
        return None;
    }
    let start = at + 1;
    let end = string_stop(b, start)?;
    (b[end] == b'"').then(|| (&b[start..end], end + 1))
}

/// Where the first quote, backslash or control character from `i` on is. Eight bytes at a
/// time, with the has-zero-byte trick: a byte that is not a match can only be flagged after
/// a byte that is (by a borrow), so the first flagged byte is the first match.
#[inline(always)]
fn string_stop(b: &[u8], mut i: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    let zero_bytes = |v: u64| v.wrapping_sub(ONES) & !v;
    while let Some(bytes) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(bytes.try_into().expect("eight bytes"));
        let quote = zero_bytes(x ^ (ONES * u64::from(b'"')));
        let backslash = zero_bytes(x ^ (ONES * u64::from(b'\\')));
        let control = x.wrapping_sub(ONES * 0x20) & !x;
        let found = (quote | backslash | control) & HIGH_BITS;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).map(|p| i + p)
}

/// A string, number, boolean or null at `at`, and where it ends.
#[inline(always)]
fn scalar(b: &[u8], at: usize) -> Option<(Raw<'_>, usize)> {
    let word = |w: &[u8], raw: Raw<'static>| b[at..].starts_with(w).then_some((raw, at + w.len()));
    match *b.get(at)? {
        b'"' => {
            let (s, end) = plain_string(b, at)?;
            Some((Raw::Str(Cow::Borrowed(std::str::from_utf8(s).ok()?)), end))
        }
        b't' => word(b"true", Raw::Bool(true)),
        b'f' => word(b"false", Raw::Bool(false)),
        b'n' => word(b"null", Raw::Null),
        b'-' | b'0'..=b'9' => number(b, at),
        _ => None,
    }
}

/// A number in JSON's grammar at `at`, as serde_json reads it: an integer as u64, or i64
/// when negative (-0 as a float); with a fraction or exponent as f64. Digits are summed
/// as they are checked; the standard parser takes only what that cannot do exactly.
#[inline(always)]
fn number(b: &[u8], at: usize) -> Option<(Raw<'_>, usize)> {
    // Only for what the sums cannot do: the slice is ASCII digits and signs.
    let standard = |from: usize, to: usize| std::str::from_utf8(&b[from..to]).ok();
    // Every digit, fraction included, summed into one integer; wrapping is caught by the
    // digit count.
    let mut mantissa = 0u64;
    let mut digits = 0usize;
    let negative = b[at] == b'-';
    let int_start = at + usize::from(negative);
    let mut i = match b.get(int_start) {
        Some(b'0') => int_start + 1,
        Some(b'1'..=b'9') => sum_digits(b, int_start, &mut mantissa, &mut digits),
        _ => return None,
    };
    let mut fraction_digits = None;
    if b.get(i) == Some(&b'.') {
        let end = sum_digits(b, i + 1, &mut mantissa, &mut digits);
        if end == i + 1 {
            return None;
        }
        fraction_digits = Some(end - i - 1);
        i = end;
    }
    let mut exponent = None;
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
        let start = i + 1 + sign;
        let mut end = start;
        let mut e = 0i64;
        while let Some(d) = b.get(end).filter(|c| c.is_ascii_digit()) {
            e = e.saturating_mul(10).saturating_add(i64::from(d - b'0'));
            end += 1;
        }
        if end == start {
            return None;
        }
        exponent = Some(if b[i + 1] == b'-' { -e } else { e });
        i = end;
    }
    // At most 19 digits never wrap a u64.
    let exact = digits <= 19;
    let raw = match (fraction_digits, exponent) {
        (None, None) if !negative => Raw::UInt(if exact { mantissa } else { standard(int_start, i)?.parse().ok()? }),
        (None, None) => match (exact, mantissa) {
            (true, 0) => Raw::Float(-0.0),
            (true, m) if m <= 1 << 63 => Raw::Int((m as i64).wrapping_neg()),
            // Below i64::MIN: serde_json makes it a float.
            _ => return None,
        },
        (fraction, exponent) => {
            let scale = exponent.unwrap_or(0) - fraction.unwrap_or(0) as i64;
            let x = match exact_float(mantissa, scale).filter(|_| exact) {
                Some(x) if negative => -x,
                Some(x) => x,
                None => standard(at, i)?.parse::<f64>().ok()?,
            };
            // serde_json refuses numbers out of f64's range: leave those to it.
            Raw::Float(Some(x).filter(|x| x.is_finite())?)
        }
    };
    Some((raw, i))
}

/// Adds the digits from `i` on to `mantissa` and counts them; returns where they end.
/// Eight bytes at a time: how many digits a number has varies from record to record, and a
/// loop that stops at an unpredictable digit costs a mispredicted branch per number.
#[inline(always)]
fn sum_digits(b: &[u8], mut i: usize, mantissa: &mut u64, digits: &mut usize) -> usize {
    const POWERS: [u64; 9] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000];
    loop {
        // Digits become 0..=9; every other byte has a bit in its high half, alone or once 6
        // is added. A carry out of a byte only reaches later bytes, after a non-digit: the
        // first non-digit is found exactly.
        let x = eight_bytes(b, i) ^ 0x3030_3030_3030_3030;
        let non_digit = (x | x.wrapping_add(0x0606_0606_0606_0606)) & 0xF0F0_F0F0_F0F0_F0F0;
        let run = (non_digit.trailing_zeros() / 8) as usize;
        if run == 0 {
            return i;
        }
        // The run's digits moved to the top bytes, zeros (leading zeros) below them.
        let value = eight_digits(x << (8 * (8 - run)));
        *mantissa = mantissa.wrapping_mul(POWERS[run]).wrapping_add(value);
        *digits += run;
        i += run;
        if run < 8 {
            return i;
        }
    }
}

/// The eight bytes of `b` from `i` as a little-endian integer; past the end, zero bytes
/// (not digits).
#[inline(always)]
fn eight_bytes(b: &[u8], i: usize) -> u64 {
    match b.get(i..i + 8) {
        Some(bytes) => u64::from_le_bytes(bytes.try_into().expect("eight bytes")),
        None => {
            let rest = b.get(i..).unwrap_or_default();
            let mut bytes = [0u8; 8];
            bytes[..rest.len()].copy_from_slice(rest);
            u64::from_le_bytes(bytes)
        }
    }
}

/// The number eight digit values (0..=9, one per byte, the first the most significant)
/// spell, in three multiplications (as fast_float and simdjson do it).
#[inline(always)]
fn eight_digits(v: u64) -> u64 {
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 0x000F_4240_0000_0064; // 100 + (1_000_000 << 32)
    const MUL2: u64 = 0x0000_2710_0000_0001; // 1 + (10_000 << 32)
    let pairs = v.wrapping_mul(10).wrapping_add(v >> 8);
    let low = (pairs & MASK).wrapping_mul(MUL1);
    let high = ((pairs >> 16) & MASK).wrapping_mul(MUL2);
    u64::from(low.wrapping_add(high).wrapping_shr(32) as u32)
}

/// `mantissa × 10^scale` when both are small enough that one IEEE operation on exact
/// operands gives the correctly rounded result (Clinger's fast path), as the standard
/// parser would.
fn exact_float(mantissa: u64, scale: i64) -> Option<f64> {
    const POWERS: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19,
        1e20, 1e21, 1e22,
    ];
    if mantissa > 1 << 53 {
        return None;
    }
    let power = *POWERS.get(scale.unsigned_abs() as usize)?;
    Some(if scale < 0 { mantissa as f64 / power } else { mantissa as f64 * power })
}

/// serde_json's way in: the same slots, for values the flat reader leaves.
struct RowSeed<'s, 'a>(&'s mut Slots<'a>);

impl<'de> DeserializeSeed<'de> for RowSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(slot) = map.next_key_seed(FieldName(self.0))? {
            match slot {
                Some(i) if self.0.failed.is_none() => {
                    let raw = map.next_value_seed(RawSeed)?;
                    self.0.set(i, raw);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Maps a JSON key to the index of the field it fills, without allocating.
struct FieldName<'s, 'a>(&'s mut Slots<'a>);

impl<'de> DeserializeSeed<'de> for FieldName<'_, '_> {
    type Value = Option<usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldName<'_, '_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.slot(key.as_bytes()))
    }
}

/// A JSON value as the decoder met it: scalars without building a JSON tree.
#[derive(Debug)]
pub(crate) enum Raw<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    /// Boxed: rare, and the other kinds stay small to move around.
    Json(Box<Json>),
}

impl<'a> From<&'a Json> for Raw<'a> {
    fn from(json: &'a Json) -> Self {
        match json {
            Json::Null => Raw::Null,
            Json::Bool(b) => Raw::Bool(*b),
            Json::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Raw::Int(i),
                (None, Some(u)) => Raw::UInt(u),
                _ => Raw::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Json::String(s) => Raw::Str(Cow::Borrowed(s)),
            other => Raw::Json(Box::new(other.clone())),
        }
    }
}

impl fmt::Display for Raw<'_> {
    /// JSON text, for error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Raw::Null => f.write_str("null"),
            Raw::Bool(b) => write!(f, "{b}"),
            Raw::Int(i) => write!(f, "{i}"),
            Raw::UInt(u) => write!(f, "{u}"),
            Raw::Float(x) => write!(f, "{}", Json::from(*x)),
            Raw::Str(s) => write!(f, "{}", Json::from(s.as_ref())),
            Raw::Json(j) => write!(f, "{j}"),
        }
    }
}

/// A JSON field as the declared type; a mismatch rejects the record, as ksqlDB's JSON
/// deserializer does.
pub(crate) fn coerce(raw: Raw<'_>, field: &Field) -> Result<Value, String> {
    let mismatch = |raw: &Raw<'_>| {
        Err(format!("field {}: expected {}, got {}", field.name, field.data_type, truncate(&raw.to_string())))
    };
    Ok(match (&field.data_type, raw) {
        (_, Raw::Null) => Value::Null,
        (DataType::Any | DataType::Array(_) | DataType::Map(_) | DataType::Struct(_), raw) => match raw {
            Raw::Bool(b) => Value::Bool(b),
            Raw::Int(i) => Value::Int(i),
            Raw::UInt(u) => i64::try_from(u).map_or(Value::Double(u as f64), Value::Int),
            Raw::Float(x) => Value::Double(x),
            Raw::Str(s) => Value::String(s.into_owned()),
            Raw::Json(j) => Value::from_json(&j),
            Raw::Null => Value::Null,
        },
        (DataType::Double | DataType::Decimal(..), Raw::Float(x)) => Value::Double(x),
        (DataType::Double | DataType::Decimal(..), Raw::Int(i)) => Value::Double(i as f64),
        (DataType::Double | DataType::Decimal(..), Raw::UInt(u)) => Value::Double(u as f64),
        (DataType::Double | DataType::Decimal(..), raw @ Raw::Str(_)) => match &raw {
            Raw::Str(s) => match s.trim().parse() {
                Ok(d) => Value::Double(d),
                Err(_) => return mismatch(&raw),
            },
            _ => unreachable!(),
        },
        (DataType::Int | DataType::BigInt | DataType::Timestamp, Raw::Int(i)) => Value::Int(i),
        (DataType::Int | DataType::BigInt | DataType::Timestamp, raw @ (Raw::UInt(_) | Raw::Float(_))) => match raw {
            Raw::UInt(u) if i64::try_from(u).is_ok() => Value::Int(u as i64),
            Raw::Float(x) if x.fract() == 0.0 && x.abs() < 9.2e18 => Value::Int(x as i64),
            raw => return mismatch(&raw),
        },
        (DataType::Int | DataType::BigInt, raw @ Raw::Str(_)) => match &raw {
            Raw::Str(s) => match s.trim().parse() {
                Ok(i) => Value::Int(i),
                Err(_) => return mismatch(&raw),
            },
            _ => unreachable!(),
        },
        (DataType::Timestamp, raw @ Raw::Str(_)) => match &raw {
            Raw::Str(s) => match pacer_core::parse_time(s) {
                Ok(ms) => Value::Int(ms),
                Err(_) => return mismatch(&raw),
            },
            _ => unreachable!(),
        },
        (DataType::String | DataType::Bytes, Raw::Str(s)) => Value::String(s.into_owned()),
        // An object or array in a VARCHAR column is its JSON text, as Flink's JSON format reads
        // it: JSON_VALUE(payload, '$.location.city') then finds its way in.
        (DataType::String, Raw::Json(j)) => Value::String(j.to_string()),
        (DataType::String, raw @ (Raw::Int(_) | Raw::UInt(_) | Raw::Float(_) | Raw::Bool(_))) => {
            Value::String(raw.to_string())
        }
        (DataType::Boolean, Raw::Bool(b)) => Value::Bool(b),
        (DataType::Boolean, raw @ Raw::Str(_)) => match &raw {
            Raw::Str(s) if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") => {
                Value::Bool(s.eq_ignore_ascii_case("true"))
            }
            _ => return mismatch(&raw),
        },
        (_, raw) => return mismatch(&raw),
    })
}

struct RawSeed;

impl<'de> DeserializeSeed<'de> for RawSeed {
    type Value = Raw<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Raw::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Raw::Bool(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Self::Value, E> {
        Ok(Raw::Int(i))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Self::Value, E> {
        Ok(Raw::UInt(u))
    }

    fn visit_f64<E>(self, x: f64) -> Result<Self::Value, E> {
        Ok(Raw::Float(x))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Raw::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Raw::Str(Cow::Owned(s.to_string())))
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(Raw::Str(Cow::Owned(s)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Json::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(|j| Raw::Json(Box::new(j)))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Json::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(|j| Raw::Json(Box::new(j)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Vec<Field> {
        [("name", DataType::String), ("n", DataType::BigInt), ("x", DataType::Double), ("ok", DataType::Boolean)]
            .into_iter()
            .map(|(name, data_type)| Field { name: name.into(), data_type, key: false })
            .chain([Field { name: "id".into(), data_type: DataType::String, key: true }])
            .collect()
    }

    /// The outcome of `value` and the row it fills (rejected records: none), read by
    /// `decode_fields` (and so by the flat reader when it can), or by serde_json alone;
    /// rows start from another record's values.
    fn read(value: &[u8], serde_only: bool) -> (Result<(), String>, Vec<Value>) {
        let fields = fields();
        let mut row = vec![Value::String("before".into()), Value::Int(7), Value::Double(1.5), Value::Null, Value::Null];
        let mut filled = Vec::new();
        let result = if serde_only {
            filled.resize(fields.len(), false);
            read_with_serde(value, Slots { fields: &fields, row: &mut row, filled: &mut filled, failed: None, next: 0 })
        } else {
            decode_fields(value, &fields, &mut row, &mut filled)
        };
        if result.is_err() {
            row.clear();
        }
        (result, row)
    }

    /// A repeatable stream of pseudo-random numbers (xorshift64).
    fn xorshift(mut x: u64) -> impl Iterator<Item = u64> {
        std::iter::repeat_with(move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
    }

    fn flat(text: &str) -> bool {
        read_flat_object(text.as_bytes(), |_, _| {})
    }

    #[test]
    fn the_flat_reader_reads_what_serde_json_reads() {
        let samples = [
            r#"{"name":"d-1","n":42,"x":21.5,"ok":true}"#,
            " {\t\"name\" : \"a b\" ,\n\"x\":-2.5e3 , \"other\":\"skipped\"}\r\n",
            "{}",
            r#"{"NAME":"upper","X":1}"#,
            r#"{"n":1,"n":2}"#,
            r#"{"x":-0,"n":0}"#,
            r#"{"x":1E+2,"n":-9223372036854775808}"#,
            r#"{"n":18446744073709551615}"#,
            r#"{"n":"12","x":"3.25","ok":"TRUE","name":7}"#,
            r#"{"name":"é ü 😀","ok":null,"id":"in the value, not the key"}"#,
            r#"{"n":"twelve","x":1}"#,
            r#"{"n":1.5}"#,
        ];
        for sample in samples {
            assert!(flat(sample), "the flat reader should take {sample}");
            assert_eq!(read(sample.as_bytes(), false), read(sample.as_bytes(), true), "{sample}");
        }
    }

    #[test]
    fn what_the_flat_reader_leaves_serde_json_reads_or_rejects() {
        let samples = [
            r#"{"name":"say \"hi\"","n":1}"#,
            r#"{"name":"a\u0041"}"#,
            "{\"name\":\"tab\there\"}",
            r#"{"n":{"nested":1},"x":2}"#,
            r#"{"name":[1,2],"x":2}"#,
            r#"{"n":18446744073709551616}"#,
            r#"{"n":-9223372036854775809}"#,
            r#"{"x":1e400}"#,
            r#"{"n":01}"#,
            r#"{"x":1.}"#,
            r#"{"x":.5}"#,
            r#"{"x":+1}"#,
            r#"{"x":1e}"#,
            r#"{"n":1,}"#,
            r#"{"n":1} x"#,
            r#"{"n":tru}"#,
            r#"{"n" 1}"#,
            r#"{"n":1"#,
            "[1]",
            r#""text""#,
            "",
        ];
        for sample in samples {
            assert!(!flat(sample), "the flat reader should leave {sample}");
            assert_eq!(read(sample.as_bytes(), false), read(sample.as_bytes(), true), "{sample}");
        }
        // Not UTF-8: in a field read, in a value skipped, in a key. serde_json decides.
        for invalid_utf8 in [&b"{\"name\":\"\xff\"}"[..], b"{\"other\":\"\xc3\",\"n\":1}", b"{\"\xff\":1}"] {
            assert!(!read_flat_object(invalid_utf8, |_, _| {}));
            assert_eq!(read(invalid_utf8, false), read(invalid_utf8, true));
        }
        assert!(read(b"{\"name\":\"\xff\"}", false).0.unwrap_err().contains("not JSON"));
    }

    #[test]
    fn numbers_are_read_exactly_as_the_standard_parser_reads_them() {
        let mut samples: Vec<String> = [
            "0",
            "-0",
            "7",
            "-7",
            "0.5",
            "-0.0",
            "1e0",
            "1E+2",
            "2e-3",
            "123.456e-7",
            "9007199254740993",
            "9007199254740993.0",
            "0.1",
            "0.30000000000000004",
            "1e22",
            "1e23",
            "4.35e-3",
            "18446744073709551615",
            "18446744073709551616",
            "9223372036854775807",
            "-9223372036854775808",
            "-9223372036854775809",
            "12345678901234567890.5",
            "0.000000000000000000000000001",
            "1e-400",
            "1e308",
            "1e309",
            "5e-324",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Readings as devices send them: a spread of magnitudes, signs and digit counts.
        for x in xorshift(0x2545_f491_4f6c_dd1d).take(20_000) {
            let digits = (x % 19) as u32;
            let value = (x >> 8) % 10u64.pow(digits + 1);
            let sign = if x & 1 == 1 { "-" } else { "" };
            samples.push(match (x >> 5) % 3 {
                0 => format!("{sign}{value}"),
                1 => format!("{sign}{}.{:0>width$}", value / 1000, value % 1000, width = (x % 4) as usize + 1),
                _ => format!("{sign}{value}e{}", ((x >> 3) % 60) as i64 - 30),
            });
        }
        for sample in &samples {
            let expected = match sample.parse::<u64>() {
                Ok(u) => Some(Raw::UInt(u)),
                Err(_) if sample.contains(['.', 'e', 'E']) => {
                    sample.parse::<f64>().ok().filter(|x| x.is_finite()).map(Raw::Float)
                }
                Err(_) => match sample.parse::<i64>() {
                    Ok(0) => Some(Raw::Float(-0.0)),
                    Ok(i) => Some(Raw::Int(i)),
                    Err(_) => None,
                },
            };
            // Alone (its digits run to the end of the value) and followed by more fields.
            let read = number(sample.as_bytes(), 0).map(|(raw, end)| {
                assert_eq!(end, sample.len(), "{sample}");
                raw
            });
            let followed = format!("{sample},\"n\":12345678}}");
            let read_followed = number(followed.as_bytes(), 0).map(|(raw, end)| {
                assert_eq!(end, sample.len(), "{sample} followed");
                raw
            });
            assert_eq!(format!("{read:?}"), format!("{read_followed:?}"), "{sample}");
            match (read, expected) {
                (Some(Raw::Float(a)), Some(Raw::Float(b))) => assert_eq!(a.to_bits(), b.to_bits(), "{sample}"),
                (Some(Raw::Int(a)), Some(Raw::Int(b))) => assert_eq!(a, b, "{sample}"),
                (Some(Raw::UInt(a)), Some(Raw::UInt(b))) => assert_eq!(a, b, "{sample}"),
                (None, None) => {}
                (read, expected) => panic!("{sample}: read {read:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn a_string_stops_where_a_byte_by_byte_scan_stops() {
        // Mostly letters, with quotes, backslashes, control characters and bytes past ASCII
        // (which must not stop it) at every place relative to the eight-byte steps.
        const BYTES: [u8; 8] = [b'"', b'\\', 0x00, 0x1f, b' ', 0x7f, 0x80, 0xff];
        for x in xorshift(0x9e37_79b9_7f4a_7c15).take(20_000) {
            let len = (x % 40) as usize;
            let text: Vec<u8> = (0..len)
                .map(|k| {
                    let pick = x.rotate_left(k as u32 * 7);
                    if pick.is_multiple_of(6) {
                        BYTES[(pick >> 8) as usize % BYTES.len()]
                    } else {
                        b'a' + (pick >> 16) as u8 % 26
                    }
                })
                .collect();
            for start in 0..len.min(9) {
                let expected =
                    text[start..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).map(|p| start + p);
                assert_eq!(string_stop(&text, start), expected, "{text:?} from {start}");
            }
        }
    }

    #[test]
    fn keys_compare_equal_only_when_every_byte_is() {
        for n in 0..24usize {
            let key: Vec<u8> = (0..n as u8).map(|i| b'a' + i).collect();
            assert!(same_bytes(&key, &key.clone()), "{n} bytes");
            if n > 0 {
                assert!(!same_bytes(&key, &key[..n - 1]), "{n} bytes against one fewer");
            }
            for at in 0..n {
                let mut other = key.clone();
                other[at] ^= 0x20;
                assert!(!same_bytes(&key, &other), "{n} bytes, differing at {at}");
            }
        }
    }

    #[test]
    fn fields_are_typed_and_missing_ones_are_null() {
        let (result, row) = read(br#"{"name":"d-1","n":42,"x":21,"other":[1]}"#, false);
        assert_eq!(result, Ok(()));
        assert_eq!(row, [Value::String("d-1".into()), Value::Int(42), Value::Double(21.0), Value::Null, Value::Null]);
        let (result, _) = read(br#"{"n":"twelve"}"#, false);
        assert_eq!(result, Err(r#"field n: expected BIGINT, got "twelve""#.to_string()));
        let (result, _) = read(br#"[1]"#, false);
        assert_eq!(result, Err("value is not a JSON object: [1]".to_string()));
    }

    /// Pieces JSON objects are made of, and some of what breaks them.
    const PIECES: &[&str] = &[
        "{",
        "}",
        "\"",
        ":",
        ",",
        " ",
        "\t",
        "\n",
        "\"name\"",
        "\"n\"",
        "\"x\"",
        "\"ok\"",
        "\"id\"",
        "\"NAME\"",
        "\"other\"",
        "0",
        "7",
        "-",
        "+",
        ".",
        "e",
        "E",
        "123456789",
        "18446744073709551615",
        "1e400",
        "true",
        "false",
        "null",
        "tru",
        "\\",
        "\\\"",
        "\\u0041",
        "\\ud83d",
        "é",
        "😀",
        "[",
        "]",
        "\"s\"",
        "\u{0}",
        "\u{7f}",
    ];

    fn fuzz_cases() -> u32 {
        std::env::var("PACER_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: fuzz_cases(), failure_persistence: None, ..Default::default() })]

        /// Differential fuzzing: whatever the bytes (objects made of JSON's pieces, or broken
        /// ones, or bytes that are not UTF-8), the fast flat reader and serde_json agree on
        /// the outcome and the row, and neither panics.
        #[test]
        fn the_flat_reader_and_serde_json_agree_on_any_bytes(
            pieces in proptest::collection::vec(0usize..PIECES.len(), 0..40),
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..3),
            at in 0usize..64,
        ) {
            let mut bytes: Vec<u8> = pieces.iter().flat_map(|&p| PIECES[p].bytes()).collect();
            let at = at.min(bytes.len());
            bytes.splice(at..at, raw);
            proptest::prop_assert_eq!(read(&bytes, false), read(&bytes, true), "{:?}", String::from_utf8_lossy(&bytes));
        }

        /// Well-formed objects with the fields' names and values of every kind read the same too.
        #[test]
        fn well_formed_objects_read_the_same_both_ways(
            entries in proptest::collection::vec((0usize..7, proptest::num::f64::ANY, proptest::num::i64::ANY, ".{0,8}", 0u8..6), 0..8),
        ) {
            let names = ["name", "n", "x", "ok", "id", "other", "NAME"];
            let members: Vec<String> = entries
                .iter()
                .map(|(name, f, i, text, kind)| {
                    let value = match kind {
                        0 if f.is_finite() => serde_json::json!(f),
                        1 => serde_json::json!(i),
                        2 => serde_json::json!(text),
                        3 => serde_json::json!(i % 2 == 0),
                        4 => serde_json::Value::Null,
                        _ => serde_json::json!({"inner": text}),
                    };
                    format!("{}:{}", serde_json::json!(names[*name]), value)
                })
                .collect();
            let object = format!("{{{}}}", members.join(","));
            proptest::prop_assert_eq!(read(object.as_bytes(), false), read(object.as_bytes(), true), "{}", object);
        }
    }
}
