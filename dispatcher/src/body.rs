//! How a JSON request body becomes a typed value, in one place for every endpoint.
//!
//! Two rules serde's own `serde_json::from_*` does not keep, enforced by a deserializer
//! over a parsed [`Value`]:
//! - **No NUL character** in any string or object key, at any depth. Postgres stores
//!   neither `text` nor `jsonb` with `\u0000`; every request string may reach one
//!   (document text and metadata, configuration, plan names, key names, webhook URLs),
//!   so a body that holds one is refused whole (422 naming the field) before any handler
//!   runs, instead of failing at the database as a 500.
//! - **An object where a struct is expected.** serde's derived structs also accept a
//!   JSON array, field by field in declaration order (`["text"]` as `{"text": "text"}`,
//!   `"options": [600, 0, "FIXED"]`): that is an accident of the data model, not a
//!   contract, and it lets a body skip `deny_unknown_fields`. Here a struct is read from
//!   an object only, nested structs too.
//!
//! Errors carry the path of the offending value (`serde_path_to_error`).

use serde::de::value::StringDeserializer;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    Unexpected, VariantAccess, Visitor,
};
use serde_json::{Map, Value};

/// Why a body does not fit the type it is read into.
#[derive(Debug)]
pub struct BodyError {
    /// Where, as `serde_path_to_error` writes it (`options.chunk_size`, `documents[0]`);
    /// `.` at the top.
    pub path: String,
    pub message: String,
}

/// Reads `T` from a parsed body with the rules above. The body is consumed: its strings
/// move into `T` rather than being copied (a document's text is most of a request).
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, BodyError> {
    serde_path_to_error::deserialize(Strict(value)).map_err(|e| {
        let path = e.path().to_string();
        // A key that could not be read is written `?`: name the object holding it.
        let path = match path.strip_suffix('?') {
            Some(holder) => holder.strip_suffix('.').unwrap_or(holder).to_owned(),
            None => path,
        };
        BodyError {
            path: if path.is_empty() {
                ".".to_owned()
            } else {
                path
            },
            message: e.into_inner().to_string(),
        }
    })
}

/// A string value or an object key, checked for NUL.
fn checked(s: &str) -> Result<&str, serde_json::Error> {
    if s.contains('\0') {
        Err(de::Error::custom(
            "strings and keys must not contain the NUL character (\\u0000)",
        ))
    } else {
        Ok(s)
    }
}

fn unexpected(value: &Value) -> Unexpected<'_> {
    match value {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(_) => Unexpected::Other("number"),
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

/// A deserializer over a parsed [`Value`] that keeps the rules of this module.
struct Strict(Value);

impl<'de> de::Deserializer<'de> for Strict {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Number(n) => de::Deserializer::deserialize_any(n, visitor),
            Value::String(s) => {
                checked(&s)?;
                visitor.visit_string(s)
            }
            Value::Array(items) => visitor.visit_seq(Items(items.into_iter())),
            Value::Object(map) => visitor.visit_map(Entries::new(map)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) => visitor.visit_map(Entries::new(map)),
            other => Err(de::Error::invalid_type(
                unexpected(&other),
                &"a JSON object",
            )),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::String(s) => {
                checked(&s)?;
                visitor.visit_enum(s.into_deserializer())
            }
            Value::Object(map) if map.len() == 1 => {
                let (name, value) = map
                    .into_iter()
                    .next()
                    .ok_or_else(|| de::Error::invalid_length(0, &"an object with one variant"))?;
                checked(&name)?;
                visitor.visit_enum(Variant { name, value })
            }
            other => Err(de::Error::invalid_type(
                unexpected(&other),
                &"a string or an object with one key",
            )),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
    }
}

struct Items(std::vec::IntoIter<Value>);

impl<'de> SeqAccess<'de> for Items {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(Strict(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Entries {
    entries: serde_json::map::IntoIter,
    value: Option<Value>,
}

impl Entries {
    fn new(map: Map<String, Value>) -> Self {
        Self {
            entries: map.into_iter(),
            value: None,
        }
    }
}

impl<'de> MapAccess<'de> for Entries {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        checked(&key)?;
        self.value = Some(value);
        seed.deserialize(StringDeserializer::new(key)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        match self.value.take() {
            Some(value) => seed.deserialize(Strict(value)),
            None => Err(de::Error::custom("value requested before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// An enum written as `{"variant": value}`.
struct Variant {
    name: String,
    value: Value,
}

impl<'de> EnumAccess<'de> for Variant {
    type Error = serde_json::Error;
    type Variant = Strict;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), Self::Error> {
        let name = seed.deserialize(StringDeserializer::new(self.name))?;
        Ok((name, Strict(self.value)))
    }
}

impl<'de> VariantAccess<'de> for Strict {
    type Error = serde_json::Error;

    fn unit_variant(self) -> Result<(), Self::Error> {
        match self.0 {
            Value::Null => Ok(()),
            other => Err(de::Error::invalid_type(unexpected(&other), &"null")),
        }
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, Self::Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        de::Deserializer::deserialize_seq(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        de::Deserializer::deserialize_struct(self, "", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Options {
        size: u32,
        #[serde(default)]
        mode: Option<Mode>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    enum Mode {
        Fixed,
        Sized(u32),
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Body {
        text: String,
        #[serde(default)]
        options: Option<Options>,
        #[serde(default)]
        extra: Option<Value>,
    }

    #[test]
    fn objects_read_as_serde_would() {
        let body: Body = from_value(json!({
            "text": "hi",
            "options": {"size": 7, "mode": {"Sized": 3}},
            "extra": {"a": [1, -2, 2.5, null, true, "s"]},
        }))
        .unwrap();
        assert_eq!(body.text, "hi");
        assert_eq!(
            body.options,
            Some(Options {
                size: 7,
                mode: Some(Mode::Sized(3))
            })
        );
        assert_eq!(
            body.extra,
            Some(json!({"a": [1, -2, 2.5, null, true, "s"]}))
        );
        let fixed: Options = from_value(json!({"size": 1, "mode": "Fixed"})).unwrap();
        assert_eq!(fixed.mode, Some(Mode::Fixed));
    }

    #[test]
    fn arrays_are_not_structs_at_any_depth() {
        let top = from_value::<Body>(json!(["some text"])).unwrap_err();
        assert!(top.message.contains("expected a JSON object"), "{top:?}");
        let nested = from_value::<Body>(json!({"text": "x", "options": [600, null]})).unwrap_err();
        assert_eq!(nested.path, "options");
        // Arrays stay arrays where the type is one (a Value, a Vec).
        from_value::<Vec<u32>>(json!([1, 2])).unwrap();
    }

    #[test]
    fn nul_is_refused_in_values_and_keys_with_its_path() {
        let value = from_value::<Body>(json!({"text": "a\u{0}b"})).unwrap_err();
        assert_eq!(value.path, "text");
        assert!(value.message.contains("NUL"), "{value:?}");
        let deep =
            from_value::<Body>(json!({"text": "x", "extra": {"k": ["ok", "\u{0}"]}})).unwrap_err();
        assert_eq!(deep.path, "extra.k[1]");
        let key = from_value::<Value>(json!({"a": {"b\u{0}": 1}})).unwrap_err();
        assert!(key.message.contains("NUL"), "{key:?}");
        assert_eq!(key.path, "a");
        let top = from_value::<Value>(json!({"\u{0}": 1})).unwrap_err();
        assert_eq!(top.path, ".");
    }

    #[test]
    fn wrong_types_are_still_refused() {
        let e = from_value::<Body>(json!({"text": 42})).unwrap_err();
        assert_eq!(e.path, "text");
        let e = from_value::<Body>(json!({"text": "x", "turbo": true})).unwrap_err();
        assert!(e.message.contains("unknown field"), "{e:?}");
        let e = from_value::<Options>(json!({"size": -1})).unwrap_err();
        assert_eq!(e.path, "size");
    }
}
