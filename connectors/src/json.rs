//! Decoding JSON objects straight into typed rows: field names are matched against the schema
//! without allocating, values are checked against the declared types, unknown keys are skipped.

use std::fmt;

use compact_str::CompactString;
use foldhash::HashMap;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use tenantflow_core::{time, DataType, Schema, Value};

/// Decodes one JSON object per line into the declared fields of a row.
#[derive(Clone)]
pub struct JsonDecoder {
    fields: Fields,
}

#[derive(Clone)]
struct Fields {
    /// Declared fields in schema order: (name, row position, type).
    list: Vec<(String, usize, DataType)>,
    /// Name -> index into `list`.
    index: HashMap<String, usize>,
}

impl Fields {
    /// Finds a key, trying first the field after the previous one: producers write keys in the
    /// same order on every line, so this usually saves the hash lookup.
    #[inline]
    fn find(&self, key: &str, cursor: &mut usize) -> Option<&(String, usize, DataType)> {
        let i = match self.list.get(*cursor) {
            Some((name, ..)) if name == key => *cursor,
            _ => *self.index.get(key)?,
        };
        *cursor = i + 1;
        self.list.get(i)
    }
}

impl JsonDecoder {
    /// `schema` holds the declared fields at their row positions.
    pub fn new(schema: &Schema) -> JsonDecoder {
        let list: Vec<(String, usize, DataType)> =
            schema.fields().iter().zip(schema.positions()).map(|((n, t), &p)| (n.clone(), p, *t)).collect();
        let index = list.iter().enumerate().map(|(i, (n, ..))| (n.clone(), i)).collect();
        JsonDecoder { fields: Fields { list, index } }
    }

    /// Fills `row` from `line`; on error the row content is unspecified and the reason returned.
    pub fn decode(&self, line: &[u8], row: &mut [Value]) -> Result<(), String> {
        let mut de = serde_json::Deserializer::from_slice(line);
        de::Deserializer::deserialize_any(&mut de, RowVisitor { fields: &self.fields, row }).map_err(|e| e.to_string())?;
        de.end().map_err(|e| e.to_string())
    }
}

struct RowVisitor<'a> {
    fields: &'a Fields,
    row: &'a mut [Value],
}

impl<'de> Visitor<'de> for RowVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut cursor = 0;
        while let Some(slot) = map.next_key_seed(KeySeed(self.fields, &mut cursor))? {
            match slot {
                Some((pos, ty, name)) => self.row[pos] = map.next_value_seed(TypedSeed { ty, name })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

struct KeySeed<'a, 'c>(&'a Fields, &'c mut usize);

impl<'de, 'a> DeserializeSeed<'de> for KeySeed<'a, '_> {
    type Value = Option<(usize, DataType, &'a str)>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'a> Visitor<'de> for KeySeed<'a, '_> {
    type Value = Option<(usize, DataType, &'a str)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.find(v, self.1).map(|(name, p, t)| (*p, *t, name.as_str())))
    }
}

struct TypedSeed<'a> {
    ty: DataType,
    name: &'a str,
}

impl<'de> DeserializeSeed<'de> for TypedSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.ty == DataType::Timestamp {
            // Numbers are read from their digits as written, not through a float.
            let raw = <&serde_json::value::RawValue as serde::Deserialize>::deserialize(d)?;
            return self.timestamp(raw.get());
        }
        d.deserialize_any(self)
    }
}

impl TypedSeed<'_> {
    /// A timestamp field's JSON text: an RFC 3339 string, or epoch milliseconds as a number.
    fn timestamp<E: de::Error>(&self, text: &str) -> Result<Value, E> {
        match text.as_bytes().first() {
            Some(b'"') => {
                let s: std::borrow::Cow<str> = match text.get(1..text.len() - 1) {
                    Some(inner) if !inner.contains('\\') => inner.into(),
                    _ => serde_json::from_str::<String>(text).map_err(E::custom)?.into(),
                };
                time::parse_timestamp(&s).map(Value::Ts).ok_or_else(|| self.wrong(format_args!("string {s:?} (not RFC 3339)")))
            }
            Some(b'-' | b'0'..=b'9') => {
                time::micros_from_epoch_ms(text).map(Value::Ts).ok_or_else(|| self.wrong(format_args!("number {text} (out of range)")))
            }
            Some(b'n') => Ok(Value::Null),
            Some(b't' | b'f') => Err(self.wrong(format_args!("boolean {text}"))),
            Some(b'{') => Err(self.wrong("an object")),
            _ => Err(self.wrong("an array")),
        }
    }

    fn wrong<E: de::Error>(&self, found: impl fmt::Display) -> E {
        E::custom(format!("field `{}`: expected {}, found {found}", self.name, self.ty))
    }
}

impl<'de> Visitor<'de> for TypedSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a {} for field `{}`", self.ty, self.name)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        match self.ty {
            DataType::Bool => Ok(Value::Bool(v)),
            _ => Err(self.wrong(format_args!("boolean {v}"))),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        match self.ty {
            DataType::Int => Ok(Value::Int(v)),
            DataType::Float => Ok(Value::Float(v as f64)),
            _ => Err(self.wrong(format_args!("number {v}"))),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        match i64::try_from(v) {
            Ok(i) => self.visit_i64(i),
            Err(_) if self.ty == DataType::Float => Ok(Value::Float(v as f64)),
            Err(_) => Err(self.wrong(format_args!("out-of-range number {v}"))),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        match self.ty {
            DataType::Float => Ok(Value::Float(v)),
            DataType::Int if v.fract() == 0.0 && v.abs() < 9.0e18 => Ok(Value::Int(v as i64)),
            _ => Err(self.wrong(format_args!("number {v}"))),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        match self.ty {
            DataType::String => Ok(Value::Str(CompactString::new(v))),
            _ => Err(self.wrong(format_args!("string {v:?}"))),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Err(self.wrong("an object"))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Err(self.wrong("an array"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder() -> JsonDecoder {
        JsonDecoder::new(&Schema::new(vec![
            ("tenant".into(), DataType::String),
            ("n".into(), DataType::Int),
            ("ts".into(), DataType::Timestamp),
            ("x".into(), DataType::Float),
        ]))
    }

    #[test]
    fn decodes_and_rejects() {
        let d = decoder();
        let mut row = vec![Value::Null; 4];
        d.decode(br#"{"tenant":"a","n":3,"ts":"1970-01-01T00:00:01Z","x":1,"other":{"deep":[1]}}"#, &mut row).unwrap();
        assert_eq!(row, vec![Value::from("a"), Value::Int(3), Value::Ts(1_000_000), Value::Float(1.0)]);
        d.decode(br#"{"ts":1500}"#, &mut row).unwrap();
        assert_eq!(row[2], Value::Ts(1_500_000));
        let e = d.decode(br#"{"tenant":"a","n":"three"}"#, &mut row).unwrap_err();
        assert!(e.contains("field `n`: expected int, found string \"three\""), "{e}");
        assert!(d.decode(br#"{"tenant":"a""#, &mut row).is_err());
        assert!(d.decode(br#"[1,2]"#, &mut row).unwrap_err().contains("expected a JSON object"));
        assert!(d.decode(br#"{"n":1} trailing"#, &mut row).is_err());
    }

    /// Issue 17: floats read to the nearest double, impossible dates refused, numeric
    /// timestamps floored to the microsecond from their digits, as strings are.
    #[test]
    fn numbers_and_timestamps_read_exactly() {
        let d = decoder();
        let mut row = vec![Value::Null; 4];
        for (text, want) in
            [("3.5e+199", 3.5e199), ("9007199254740993.0", 9_007_199_254_740_992.0), ("2.2250738585072014e-308", f64::MIN_POSITIVE)]
        {
            d.decode(format!(r#"{{"x":{text}}}"#).as_bytes(), &mut row).unwrap();
            assert_eq!(row[3], Value::Float(want), "{text}");
        }
        let ts = |json: &str| {
            let mut row = vec![Value::Null; 4];
            decoder().decode(format!(r#"{{"ts":{json}}}"#).as_bytes(), &mut row).map(|()| row[2].clone())
        };
        assert_eq!(ts("1772150400000.0009"), Ok(Value::Ts(1_772_150_400_000_000)));
        assert_eq!(ts(r#""2026-02-27T00:00:00.0000009Z""#), Ok(Value::Ts(1_772_150_400_000_000)));
        assert_eq!(ts("1.0019"), Ok(Value::Ts(1001)));
        assert_eq!(ts(r#""1970-01-01T00:00:00.0010019Z""#), Ok(Value::Ts(1001)));
        assert_eq!(ts(r#""1970-01-01T00:00:01\u005a""#), Ok(Value::Ts(1_000_000)));
        assert_eq!(ts("null"), Ok(Value::Null));
        for (json, reason) in [
            (r#""2026-02-30T00:00:00Z""#, "string \"2026-02-30T00:00:00Z\" (not RFC 3339)"),
            (r#""2025-02-29""#, "not RFC 3339"),
            (r#""2026-02-27T23:59:60Z""#, "not RFC 3339"),
            ("1e400", "number 1e400 (out of range)"),
            ("true", "boolean true"),
            ("[1]", "an array"),
            (r#"{"a":1}"#, "an object"),
        ] {
            let e = ts(json).unwrap_err();
            assert!(e.contains("field `ts`: expected timestamp") && e.contains(reason), "{json}: {e}");
        }
    }
}
