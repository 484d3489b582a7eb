//! Top-level fields of a JSON object, read without building a map: the raw
//! text of each wanted field, every other value skipped without allocating.
//! Used per row (JSON columns of sources, `json_get`), where a map per row was
//! a large share of the engine's time.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Fills `found[i]` with the raw value of `names[i]` in the JSON object
/// `document` (`None`: absent). A repeated key counts as its last occurrence,
/// as when the object is read into a map. False when `document` is not
/// exactly one JSON object (then `found` is all `None`).
pub fn top_level<'a>(document: &'a [u8], names: &[&str], found: &mut [Option<&'a RawValue>]) -> bool {
    found.iter_mut().for_each(|f| *f = None);
    let mut deserializer = serde_json::Deserializer::from_slice(document);
    let complete = Fields { names, found: &mut *found }.deserialize(&mut deserializer).is_ok() && deserializer.end().is_ok();
    if !complete {
        found.iter_mut().for_each(|f| *f = None);
    }
    complete
}

struct Fields<'n, 'f, 'a> {
    names: &'n [&'n str],
    found: &'f mut [Option<&'a RawValue>],
}

impl<'de: 'a, 'a> DeserializeSeed<'de> for Fields<'_, '_, 'a> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for Fields<'_, '_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(wanted) = map.next_key_seed(KeyIndex(self.names))? {
            match wanted {
                Some(i) => self.found[i] = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Which wanted name an object key is, if any (the key is not allocated).
struct KeyIndex<'n>(&'n [&'n str]);

impl<'de> DeserializeSeed<'de> for KeyIndex<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIndex<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|name| *name == key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_wanted_field_and_skips_the_rest() {
        let doc = br#"{"a": 1, "skip": {"deep": [1, {"a": 9}]}, "b": "t\"x", "a": [2]}"#;
        let mut found = [None; 3];
        assert!(top_level(doc, &["a", "b", "c"], &mut found));
        let raw: Vec<Option<&str>> = found.iter().map(|f| f.map(RawValue::get)).collect();
        assert_eq!(raw, vec![Some("[2]"), Some(r#""t\"x""#), None]);
        for bad in [&b"[1]"[..], b"{\"a\": 1", b"{\"a\": 1} {}", b"nope"] {
            assert!(!top_level(bad, &["a"], &mut found[..1]));
            assert!(found[0].is_none());
        }
    }
}
