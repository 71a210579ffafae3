//! The REST API's JSON body parser (`api::body::parse`, what `serve` reads from a request body
//! on `/rest/...`) on arbitrary bytes: never panics, however deep or long the input; what it
//! accepts, serde_json reads the same way (it refuses only more, never reads otherwise), and
//! holds no object that names a field twice — the one thing it refuses beyond serde_json, which
//! a refusal of well-formed JSON must then be.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Whether any object in `text`'s JSON names a field twice, read with a plain `Value` per
/// object: serde_json keeps one entry per name, so a repeated name shows as fewer entries than
/// the object's raw fields. Counted with serde_json's own streaming visitor.
fn repeats_a_field(text: &[u8]) -> bool {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
    struct Repeats;
    impl<'de> Visitor<'de> for Repeats {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_str<E>(self, _: &str) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_unit<E>(self) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
            let mut any = false;
            while let Some(Found(r)) = seq.next_element()? {
                any |= r;
            }
            Ok(any)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut keys = std::collections::HashSet::new();
            let mut any = false;
            while let Some(key) = map.next_key::<String>()? {
                any |= !keys.insert(key);
                let Found(r) = map.next_value()?;
                any |= r;
            }
            Ok(any)
        }
    }
    struct Found(bool);
    impl<'de> serde::Deserialize<'de> for Found {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Found, D::Error> {
            d.deserialize_any(Repeats).map(Found)
        }
    }
    serde_json::from_slice::<Found>(text).is_ok_and(|f| f.0)
}

fuzz_target!(|data: &[u8]| {
    let strict = gitgate::api::body::parse(data);
    let plain = serde_json::from_slice::<Value>(data);
    match (strict, plain) {
        (Ok(s), Ok(p)) => {
            assert_eq!(s, p, "read otherwise than serde_json");
            assert!(!repeats_a_field(data), "a repeated field was accepted");
        }
        (Ok(_), Err(e)) => panic!("accepted what serde_json refuses: {e}"),
        (Err(e), Ok(_)) => {
            assert!(
                e.is_data() && e.to_string().contains("appears twice"),
                "{e}"
            );
            assert!(
                repeats_a_field(data),
                "refused without a repeated field: {e}"
            );
        }
        (Err(_), Err(_)) => {}
    }
});
