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
        d.deserialize_any(self)
    }
}

impl TypedSeed<'_> {
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
            // Numeric timestamps are epoch milliseconds, the common convention of event producers.
            DataType::Timestamp => v.checked_mul(1000).map(Value::Ts).ok_or_else(|| self.wrong(format_args!("out-of-range number {v}"))),
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
            DataType::Timestamp if v.is_finite() && v.abs() < 9.0e15 => Ok(Value::Ts((v * 1000.0).round() as i64)),
            _ => Err(self.wrong(format_args!("number {v}"))),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        match self.ty {
            DataType::String => Ok(Value::Str(CompactString::new(v))),
            DataType::Timestamp => {
                time::parse_timestamp(v).map(Value::Ts).ok_or_else(|| self.wrong(format_args!("string {v:?} (not RFC 3339)")))
            }
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
}
