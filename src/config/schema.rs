//! The configuration's keys in one table: it drives validation hints, `trainlint init` and
//! `trainlint schema`.
use serde_json::{json, Map, Value};
use trainlint_checks::{registry, Level, Rule};

/// The JSON Schema of the config file's sections, from their typed declarations (`file.rs`).
pub fn config_schema() -> Value {
    trainlint_checks::options::schema_of::<super::ConfigFile>()
}

/// The level names a `[checks.ID] level` accepts (allow, warn, deny), from the one [`Level`] enum.
pub fn levels() -> Vec<String> {
    let schema = trainlint_checks::options::schema_of::<Level>();
    choices(&schema).into_iter().map(String::from).collect()
}

/// The level names quoted and joined by `sep`: `"allow" | "warn" | "deny"`.
pub fn quoted_levels(sep: &str) -> String {
    levels()
        .iter()
        .map(|l| format!("{l:?}"))
        .collect::<Vec<_>>()
        .join(sep)
}

/// One documented key of a schema object (a config section or a check's options), read from its typed
/// declaration: for the template, the reference and `explain`.
pub struct Documented {
    pub name: String,
    pub doc: String,
    /// The default as TOML text; empty when there is none (an unset path).
    pub default: String,
    pub choices: Vec<String>,
}

impl Documented {
    /// Its doc, followed by the accepted values when they are a list: `doc (a, b)`.
    pub fn doc_with_choices(&self) -> String {
        if self.choices.is_empty() {
            self.doc.clone()
        } else {
            format!("{} ({})", self.doc, self.choices.join(", "))
        }
    }
}

/// The accepted strings of a schema: its `enum`, or the `const`s of a `oneOf` (unit variants with docs).
pub fn choices(schema: &Value) -> Vec<&str> {
    match (&schema["enum"], &schema["oneOf"]) {
        (Value::Array(e), _) => e.iter().filter_map(|c| c.as_str()).collect(),
        (_, Value::Array(o)) => o.iter().filter_map(|c| c["const"].as_str()).collect(),
        _ => Vec::new(),
    }
}

fn documented(object: &Value) -> Vec<Documented> {
    let Some(props) = object["properties"].as_object() else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, prop)| {
            let branch = prop["anyOf"]
                .as_array()
                .and_then(|b| b.iter().find(|b| b["type"] != "null"))
                .unwrap_or(prop);
            let choices = match (&branch["enum"], &branch["oneOf"]) {
                (Value::Array(e), _) => e
                    .iter()
                    .filter_map(|c| c.as_str())
                    .map(String::from)
                    .collect(),
                (_, Value::Array(o)) => o
                    .iter()
                    .filter_map(|c| c["const"].as_str())
                    .map(String::from)
                    .collect(),
                _ => Vec::new(),
            };
            let default = match &prop["default"] {
                Value::Null => String::new(),
                v => toml_text(v),
            };
            Documented {
                name: name.clone(),
                doc: prop["description"].as_str().unwrap_or("").to_string(),
                default,
                choices,
            }
        })
        .collect()
}

/// A JSON default as TOML text (floats keep a decimal point, so the type reads right).
fn toml_text(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_f64() => {
            let s = format!("{}", n.as_f64().unwrap_or_default());
            if s.contains('.') || s.contains('e') {
                s
            } else {
                format!("{s}.0")
            }
        }
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(toml_text).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

/// A check's options with their docs, defaults and choices, in declaration order (serde_json keeps
/// the order schemars writes, the struct's).
pub fn check_options(check: &dyn Rule) -> Vec<Documented> {
    documented(&check.options_schema())
}

/// The configuration reference (docs/configuration.md, `schema --markdown`): every key of every section with its default, accepted
/// values and meaning, from the typed declarations (tests/kinds.rs and tests/docs.rs keep the page in sync).
pub fn reference_markdown() -> String {
    let mut out =
        String::from("| key | default | accepted | meaning |\n| --- | --- | --- | --- |\n");
    let schema = config_schema();
    for (section, object) in schema["properties"].as_object().into_iter().flatten() {
        let props = object["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for k in documented(object) {
            let prop = &props[&k.name];
            let default = if k.default.is_empty() {
                "unset".to_string()
            } else {
                format!("`{}`", k.default)
            };
            out.push_str(&format!(
                "| `{section}.{}` | {default} | {} | {} |\n",
                k.name,
                accepted(prop, &k.choices),
                k.doc.replace('|', "\\|")
            ));
        }
    }
    out
}

/// What a key accepts, in words: its choices, or its type with the bounds.
fn accepted(prop: &Value, choices: &[String]) -> String {
    if !choices.is_empty() {
        return choices
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ");
    }
    let branches: Vec<&Value> = match prop["anyOf"].as_array() {
        Some(b) => b.iter().filter(|b| b["type"] != "null").collect(),
        None => vec![prop],
    };
    branches
        .iter()
        .map(|b| {
            let types: Vec<&str> = match &b["type"] {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts
                    .iter()
                    .filter_map(|t| t.as_str())
                    .filter(|t| *t != "null")
                    .collect(),
                _ => Vec::new(),
            };
            let mut text = match types.first().copied() {
                Some("array") => "list of strings".to_string(),
                Some(t) => t.to_string(),
                None => String::new(),
            };
            match (
                b["minimum"].as_f64(),
                b["exclusiveMinimum"].as_f64(),
                b["maximum"].as_f64(),
            ) {
                (Some(lo), _, Some(hi)) => text.push_str(&format!(" in [{lo}, {hi}]")),
                (Some(lo), _, None) if lo != 0.0 || types.contains(&"number") => {
                    text.push_str(&format!(" ≥ {lo}"))
                }
                (_, Some(lo), _) => text.push_str(&format!(" > {lo}")),
                _ => {}
            }
            text
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

/// A commented `trainlint.toml` with every option at its default; `filled` overrides values by
/// `section.key` (e.g. `data.path`).
pub fn init_template(filled: &[(&str, String)]) -> String {
    let mut out = String::from(
        "# trainlint configuration. Every option is shown at its default; `trainlint schema` prints the\n\
         # JSON Schema, `trainlint rules` lists the checks and `trainlint explain ID` documents one.\n",
    );
    let schema = config_schema();
    for (section, object) in schema["properties"].as_object().into_iter().flatten() {
        let doc = object["description"].as_str().unwrap_or("");
        out.push_str(&format!("\n{}[{section}]\n", comment(doc)));
        for k in documented(object) {
            let full = format!("{section}.{}", k.name);
            out.push_str(&comment(&k.doc_with_choices()));
            match filled.iter().find(|(name, _)| *name == full) {
                Some((_, value)) => out.push_str(&format!("{} = {}\n", k.name, value)),
                None if k.default.is_empty() => out.push_str(&format!("# {} = \n", k.name)),
                None => out.push_str(&format!("{} = {}\n", k.name, k.default)),
            }
        }
    }
    out.push_str(&format!(
        "\n# Per-check levels ({}) and options.\n",
        levels().join(", ")
    ));
    for check in registry::all() {
        let info = check.info();
        out.push_str(&format!(
            "\n# {}: {}\n[checks.{}]\nlevel = \"{}\"\n",
            info.id,
            info.summary,
            info.id,
            info.default_level.as_str()
        ));
        for o in check_options(check.as_ref()) {
            out.push_str(&format!("{}{} = {}\n", comment(&o.doc), o.name, o.default));
        }
    }
    out.push_str(
        "\n# Silence a check, optionally at one location, with a reason:\n\
         # [[ignore]]\n# check = \"init-std/constant-weights\"\n# location = \"head.weight\"\n# reason = \"zero-initialised output layer, on purpose\"\n",
    );
    out
}

/// The JSON Schema of the configuration, for editors.
pub fn json_schema() -> Value {
    let mut props: Map<String, Value> = config_schema()["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut checks = Map::new();
    for check in registry::all() {
        let info = check.info();
        let mut opts = Map::new();
        opts.insert(
            "level".into(),
            json!({"type": "string", "enum": levels(), "default": info.default_level.as_str()}),
        );
        let schema = check.options_schema();
        if let Some(props) = schema["properties"].as_object() {
            for (name, prop) in props {
                opts.insert(name.clone(), prop.clone());
            }
        }
        checks.insert(
            info.id.into(),
            json!({"type": "object", "description": info.summary, "properties": opts, "additionalProperties": false}),
        );
    }
    props.insert(
        "checks".into(),
        json!({"type": "object", "properties": checks, "additionalProperties": false}),
    );
    props.insert(
        "ignore".into(),
        json!({"type": "array", "items": ignore_entry_schema()}),
    );
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "trainlint configuration",
        "type": "object",
        "properties": props,
        "additionalProperties": false
    })
}

/// The schema of one `[[ignore]]` entry, derived from [`super::Ignore`], its declaration; its keys (and
/// each property's, `type` first, no null default) in the order `trainlint schema` has always printed them; the entry's
/// own doc stays out.
fn ignore_entry_schema() -> Value {
    let derived = trainlint_checks::options::schema_of::<super::Ignore>();
    let properties: Map<String, Value> = derived["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, prop)| {
            let mut typed = Map::from_iter([("type".to_string(), prop["type"].clone())]);
            let rest = prop.as_object().into_iter().flatten();
            // An unset location has no default to show.
            typed.extend(
                rest.filter(|(k, v)| !(*k == "default" && v.is_null()))
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
            (name.clone(), Value::Object(typed))
        })
        .collect();
    json!({
        "type": derived["type"],
        "required": derived["required"],
        "additionalProperties": derived["additionalProperties"],
        "properties": properties,
    })
}

/// A TOML comment of `text`, every line of a multi-line doc commented.
fn comment(text: &str) -> String {
    if text.is_empty() {
        return "# \n".to_string();
    }
    text.lines().map(|l| format!("# {l}\n")).collect()
}
