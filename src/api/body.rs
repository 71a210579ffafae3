//! Request bodies as JSON in which no object names a field twice.
//!
//! JSON parsers disagree about `{"a":1,"a":2}`: serde_json keeps the last, many others the
//! first. A proxy or validator in front of gitgate that reads the first `expiryDays` would see
//! another request than the one gitgate carries out, so a repeated field is refused (400), as an
//! unknown one is.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parse `bytes` as JSON, refusing any object that names a field twice (at any depth).
pub fn parse(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    // A UTF-8 byte-order mark, which some Windows clients (PowerShell, .NET) put first and
    // Bitbucket's parser skips, is skipped here too.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    serde_json::from_slice::<Strict>(bytes).map(|s| s.0)
}

/// A [`Value`] read by [`StrictVisitor`].
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

/// serde_json's own `Value` visitor, but for the repeated field.
struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Strict::deserialize(d).map(|s| s.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "field {} appears twice",
                    Value::from(key)
                )));
            }
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_read_as_serde_json_reads_them() {
        for text in [
            r#"{"name":"ci","permissions":["REPO_READ"],"expiryDays":30,"x":null}"#,
            r#"{"a":{"b":[1,-2,3.5,1e2,true,false,"\u00e9"]},"c":18446744073709551615}"#,
            "[]",
            "\"s\"",
            "0",
        ] {
            let expected: Value = serde_json::from_str(text).unwrap();
            assert_eq!(parse(text.as_bytes()).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn a_field_named_twice_is_refused_at_any_depth() {
        for text in [
            r#"{"name":"a","name":"b"}"#,
            r#"{"expiryDays":5,"expiryDays":null}"#,
            r#"{"outer":{"x":1,"x":1}}"#,
            r#"[{"k":1,"k":2}]"#,
        ] {
            let e = parse(text.as_bytes()).unwrap_err();
            assert!(e.to_string().contains("appears twice"), "{text}: {e}");
            assert!(e.is_data(), "{text}: {e}");
        }
        assert_eq!(
            parse(br#"{"a":1,"b":{"a":2}}"#).unwrap(),
            json!({"a":1,"b":{"a":2}})
        );
        // Malformed JSON stays a syntax error.
        assert!(parse(b"{\"a\":").unwrap_err().is_eof());
        assert!(parse(b"{a:1}").unwrap_err().is_syntax());
    }
}
