//! Typed per-check options: each check declares one struct (serde + schemars + doc comments) with its
//! defaults in `Default`. The JSON Schema, `trainlint init`'s template, `explain`'s option list and the
//! configuration's validation all derive from that one declaration.
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a check's options struct must be: (de)serialisable, described by a schema, with defaults.
/// Declare it with `#[serde(default, deny_unknown_fields)]` so that a partial table fills in defaults
/// and a misspelt key is an error.
pub trait CheckOptions: Serialize + DeserializeOwned + JsonSchema + Default + 'static {}

impl<T: Serialize + DeserializeOwned + JsonSchema + Default + 'static> CheckOptions for T {}

/// The options of a check that has none.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

/// The JSON Schema of `T` with every sub-schema inlined, so that tools walking it never chase `$ref`s.
pub fn schema_of<T: JsonSchema>() -> Value {
    let settings = schemars::generate::SchemaSettings::draft2020_12().with(|s| {
        s.inline_subschemas = true;
    });
    let schema = settings.into_generator().into_root_schema_for::<T>();
    let mut value = serde_json::to_value(schema).expect("a schema serialises");
    if let Some(o) = value.as_object_mut() {
        o.remove("$schema");
        o.remove("title");
    }
    value
}

/// Why a check's options do not deserialize: serde's message, and the option it is about (the first
/// key of its path), for the config loader to point at.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct OptionsError {
    pub key: Option<String>,
    pub message: String,
}

/// Parse a check's options from the user's table (a JSON object); defaults fill the rest.
pub fn parse<T: CheckOptions>(user: &Value) -> Result<T, OptionsError> {
    serde_path_to_error::deserialize(user.clone()).map_err(|e| OptionsError {
        key: e.path().iter().find_map(|s| match s {
            serde_path_to_error::Segment::Map { key } => Some(key.clone()),
            _ => None,
        }),
        message: e.into_inner().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Options of a test check.
    #[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        /// A ratio.
        #[schemars(range(min = 1))]
        ratio: f64,
        /// Names.
        names: Vec<String>,
    }

    impl Default for Demo {
        fn default() -> Self {
            Demo {
                ratio: 10.0,
                names: vec![],
            }
        }
    }

    #[test]
    fn user_values_override_defaults_and_unknown_keys_are_rejected() {
        let d: Demo = parse(&serde_json::json!({"ratio": 3})).unwrap();
        assert_eq!(d.ratio, 3.0);
        assert!(d.names.is_empty());
        let e = parse::<Demo>(&serde_json::json!({"ratoi": 3})).unwrap_err();
        assert!(e.message.contains("unknown field `ratoi`"), "{e}");
        assert_eq!(e.key.as_deref(), Some("ratoi"));
        let e = parse::<Demo>(&serde_json::json!({"names": ["a", 1]})).unwrap_err();
        assert!(e.message.contains("invalid type: integer `1`"), "{e}");
        assert_eq!(e.key.as_deref(), Some("names"));
    }

    #[test]
    fn the_schema_carries_docs_defaults_and_bounds() {
        let s = schema_of::<Demo>();
        assert_eq!(s["properties"]["ratio"]["description"], "A ratio.");
        assert_eq!(s["properties"]["ratio"]["default"], 10.0);
        assert_eq!(s["properties"]["ratio"]["minimum"], 1);
        assert_eq!(s["additionalProperties"], false);
    }
}
