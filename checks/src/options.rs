//! Typed per-check options: declared with their defaults where the check lives, validated by the
//! configuration loader, read by the check.
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum OptionValue {
    Float(f64),
    Int(i64),
    Bool(bool),
    Str(&'static str),
    String(String),
    List(Vec<String>),
}

impl OptionValue {
    pub fn type_name(&self) -> &'static str {
        match self {
            OptionValue::Float(_) => "number",
            OptionValue::Int(_) => "integer",
            OptionValue::Bool(_) => "boolean",
            OptionValue::Str(_) | OptionValue::String(_) => "string",
            OptionValue::List(_) => "list of strings",
        }
    }
    pub fn render(&self) -> String {
        match self {
            OptionValue::Float(x) => {
                let s = format!("{x}");
                if s.contains('.') || s.contains('e') || s.contains("inf") {
                    s
                } else {
                    format!("{s}.0")
                }
            }
            OptionValue::Int(x) => x.to_string(),
            OptionValue::Bool(b) => b.to_string(),
            OptionValue::Str(s) => format!("{s:?}"),
            OptionValue::String(s) => format!("{s:?}"),
            OptionValue::List(v) => format!("{v:?}"),
        }
    }
}

/// One option of a check: its name, default (which fixes its type), and documentation.
pub struct OptionSpec {
    pub name: &'static str,
    pub default: OptionValue,
    pub doc: &'static str,
    /// For string options: the accepted values (empty: any string).
    pub choices: &'static [&'static str],
}

impl OptionSpec {
    pub const fn float(name: &'static str, default: f64, doc: &'static str) -> Self {
        OptionSpec {
            name,
            default: OptionValue::Float(default),
            doc,
            choices: &[],
        }
    }
    pub const fn int(name: &'static str, default: i64, doc: &'static str) -> Self {
        OptionSpec {
            name,
            default: OptionValue::Int(default),
            doc,
            choices: &[],
        }
    }
    pub const fn boolean(name: &'static str, default: bool, doc: &'static str) -> Self {
        OptionSpec {
            name,
            default: OptionValue::Bool(default),
            doc,
            choices: &[],
        }
    }
    pub const fn choice(
        name: &'static str,
        default: &'static str,
        choices: &'static [&'static str],
        doc: &'static str,
    ) -> Self {
        OptionSpec {
            name,
            default: OptionValue::Str(default),
            doc,
            choices,
        }
    }
    pub const fn list(name: &'static str, doc: &'static str) -> Self {
        OptionSpec {
            name,
            default: OptionValue::List(Vec::new()),
            doc,
            choices: &[],
        }
    }
}

/// The options a check runs with: the user's values over the declared defaults.
#[derive(Clone, Debug, Default)]
pub struct Options {
    values: BTreeMap<String, OptionValue>,
}

impl Options {
    /// The defaults of `specs`, overridden by `user` (already validated against the specs).
    pub fn resolve(specs: &[OptionSpec], user: Option<&BTreeMap<String, OptionValue>>) -> Self {
        let mut values: BTreeMap<String, OptionValue> = specs
            .iter()
            .map(|s| (s.name.to_string(), s.default.clone()))
            .collect();
        if let Some(user) = user {
            for (k, v) in user {
                values.insert(k.clone(), v.clone());
            }
        }
        Options { values }
    }

    /// Check a user value against its spec; ints are accepted where floats are declared.
    pub fn coerce(spec: &OptionSpec, value: OptionValue) -> Result<OptionValue, String> {
        match (&spec.default, value) {
            (OptionValue::Float(_), OptionValue::Int(i)) => Ok(OptionValue::Float(i as f64)),
            (OptionValue::Float(_), v @ OptionValue::Float(_)) => Ok(v),
            (OptionValue::Int(_), v @ OptionValue::Int(_)) => Ok(v),
            (OptionValue::Bool(_), v @ OptionValue::Bool(_)) => Ok(v),
            (OptionValue::List(_), v @ OptionValue::List(_)) => Ok(v),
            (OptionValue::Str(_), OptionValue::String(s)) => {
                if spec.choices.is_empty() || spec.choices.contains(&s.as_str()) {
                    Ok(OptionValue::String(s))
                } else {
                    Err(format!(
                        "expected one of {}, found {s:?}",
                        spec.choices.join(", ")
                    ))
                }
            }
            (d, v) => Err(format!(
                "expected a {}, found a {}",
                d.type_name(),
                v.type_name()
            )),
        }
    }

    pub fn f64(&self, name: &str) -> f64 {
        match self.values.get(name) {
            Some(OptionValue::Float(x)) => *x,
            Some(OptionValue::Int(i)) => *i as f64,
            other => panic!(
                "option {name} is not a number: {other:?} (a check read an undeclared option)"
            ),
        }
    }
    pub fn usize(&self, name: &str) -> usize {
        match self.values.get(name) {
            Some(OptionValue::Int(i)) => (*i).max(0) as usize,
            other => panic!(
                "option {name} is not an integer: {other:?} (a check read an undeclared option)"
            ),
        }
    }
    pub fn bool(&self, name: &str) -> bool {
        match self.values.get(name) {
            Some(OptionValue::Bool(b)) => *b,
            other => panic!(
                "option {name} is not a boolean: {other:?} (a check read an undeclared option)"
            ),
        }
    }
    pub fn str(&self, name: &str) -> &str {
        match self.values.get(name) {
            Some(OptionValue::Str(s)) => s,
            Some(OptionValue::String(s)) => s,
            other => panic!(
                "option {name} is not a string: {other:?} (a check read an undeclared option)"
            ),
        }
    }
    pub fn list(&self, name: &str) -> &[String] {
        match self.values.get(name) {
            Some(OptionValue::List(v)) => v,
            other => {
                panic!("option {name} is not a list: {other:?} (a check read an undeclared option)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[OptionSpec] = &[
        OptionSpec::float("ratio", 10.0, "a ratio"),
        OptionSpec::choice("mode", "fan-in", &["fan-in", "fixed"], "the mode"),
    ];

    #[test]
    fn user_values_override_defaults_and_ints_widen_to_floats() {
        let spec = &SPECS[0];
        let v = Options::coerce(spec, OptionValue::Int(3)).unwrap();
        let user = BTreeMap::from([("ratio".to_string(), v)]);
        let o = Options::resolve(SPECS, Some(&user));
        assert_eq!(o.f64("ratio"), 3.0);
        assert_eq!(o.str("mode"), "fan-in");
    }

    #[test]
    fn wrong_types_and_unknown_choices_are_rejected() {
        let err = Options::coerce(&SPECS[0], OptionValue::Bool(true)).unwrap_err();
        assert_eq!(err, "expected a number, found a boolean");
        let err = Options::coerce(&SPECS[1], OptionValue::String("nope".into())).unwrap_err();
        assert!(err.contains("fan-in, fixed"), "{err}");
    }
}
