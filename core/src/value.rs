//! Scalar values and data types carried by rows.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use crate::time;

/// The type of a schema field or an expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataType {
    Bool,
    Int,
    Float,
    String,
    /// Microseconds since the Unix epoch, UTC.
    Timestamp,
    /// A duration in microseconds; only produced by expressions (`ts - ts`, `INTERVAL '5' MINUTE`).
    Interval,
    /// The type of a bare `NULL` literal; unifies with every other type.
    Null,
}

impl DataType {
    /// Parses a type name as written in a job file's schema.
    pub fn parse(name: &str) -> Option<DataType> {
        Some(match name.to_ascii_lowercase().as_str() {
            "bool" | "boolean" => DataType::Bool,
            "int" | "integer" | "bigint" | "long" | "i64" => DataType::Int,
            "float" | "double" | "f64" | "real" => DataType::Float,
            "string" | "str" | "text" | "varchar" => DataType::String,
            "timestamp" | "datetime" => DataType::Timestamp,
            _ => return None,
        })
    }

    pub const NAMES: &'static str = "bool, int, float, string, timestamp";

    pub fn is_numeric(self) -> bool {
        matches!(self, DataType::Int | DataType::Float)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DataType::Bool => "bool",
            DataType::Int => "int",
            DataType::Float => "float",
            DataType::String => "string",
            DataType::Timestamp => "timestamp",
            DataType::Interval => "interval",
            DataType::Null => "null",
        })
    }
}

/// A float in the shortest form that reads back the same, with an exponent when that is
/// shorter (`1e-300`, `3.5e199`: JSON readers take neither for an integer), and without a
/// trailing `.0` (`1.0` is `1`). Non-finite floats as `NaN`, `inf`, `-inf`.
pub fn shortest_float(x: f64, buf: &mut ryu::Buffer) -> &str {
    let s = buf.format(x);
    s.strip_suffix(".0").unwrap_or(s)
}

/// One field value. Strings up to 24 bytes are stored inline (no allocation).
///
/// `repr(u8)` gives the enum a plain tag byte: without it the tag hides in a niche of
/// `CompactString`, and every `match` on a value pays to decode it (measured: ~2x on the hot path).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[repr(u8)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(CompactString),
    /// Microseconds since the Unix epoch, UTC.
    Ts(i64),
    /// Microseconds.
    Interval(i64),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) | Value::Ts(v) | Value::Interval(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(v) => Some(*v as f64),
            Value::Float(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) | Value::Float(_) => 2,
            Value::Str(_) => 3,
            Value::Ts(_) => 4,
            Value::Interval(_) => 5,
        }
    }

    /// Converts to JSON; timestamps become RFC 3339 strings.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Int(i) | Value::Interval(i) => (*i).into(),
            Value::Float(f) => serde_json::Number::from_f64(*f).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null),
            Value::Str(s) => serde_json::Value::String(s.to_string()),
            Value::Ts(t) => serde_json::Value::String(time::format_rfc3339(*t)),
        }
    }
}

impl PartialEq for Value {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        // Same-variant comparisons are the hot path (grouping keys); the rest follows `Ord`.
        match (self, other) {
            (Value::Int(a), Value::Int(b)) | (Value::Ts(a), Value::Ts(b)) => a == b,
            (Value::Str(a), Value::Str(b)) => a == b,
            _ => self.cmp(other) == Ordering::Equal,
        }
    }
}
impl Eq for Value {}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A total order (floats by `total_cmp`, ints and floats compared numerically) so values can
/// be grouped, sorted and used as keys deterministically.
impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        use Value::*;
        match (self, other) {
            (Null, Null) => Ordering::Equal,
            (Bool(a), Bool(b)) => a.cmp(b),
            (Int(a), Int(b)) | (Ts(a), Ts(b)) | (Interval(a), Interval(b)) => a.cmp(b),
            (Float(a), Float(b)) => a.total_cmp(b),
            (Int(a), Float(b)) => (*a as f64).total_cmp(b),
            (Float(a), Int(b)) => a.total_cmp(&(*b as f64)),
            (Str(a), Str(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Value::Null => state.write_u8(0),
            Value::Bool(b) => state.write_u8(2 + *b as u8),
            // Ints and integral floats compare equal, so they must hash equal.
            Value::Int(i) => state.write_i64(*i),
            Value::Float(f) => {
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    state.write_i64(*f as i64)
                } else {
                    state.write_u64(f.to_bits())
                }
            }
            Value::Str(s) => state.write(s.as_bytes()),
            Value::Ts(t) => state.write_i64(*t ^ 0x5a5a),
            Value::Interval(t) => state.write_i64(*t ^ 0x3c3c),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => f.write_str(shortest_float(*x, &mut ryu::Buffer::new())),
            Value::Str(s) => f.write_str(s),
            Value::Ts(t) => f.write_str(&time::format_rfc3339(*t)),
            Value::Interval(i) => f.write_str(&time::format_duration(*i)),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(CompactString::new(s))
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
