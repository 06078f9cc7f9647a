//! The configuration's keys in one table: it drives validation hints, `trainlint init` and
//! `trainlint schema`.
use serde_json::{json, Map, Value};
use trainlint_checks::ports::LossKind;
use trainlint_checks::{registry, Rule};

pub struct Key {
    pub name: &'static str,
    /// JSON-schema type: string, number, integer, boolean, array.
    pub kind: &'static str,
    /// The default as TOML text; empty when there is none.
    pub default: &'static str,
    pub choices: &'static [&'static str],
    pub doc: &'static str,
}

pub struct Section {
    pub name: &'static str,
    pub doc: &'static str,
    pub keys: &'static [Key],
}

const fn key(
    name: &'static str,
    kind: &'static str,
    default: &'static str,
    doc: &'static str,
) -> Key {
    Key {
        name,
        kind,
        default,
        choices: &[],
        doc,
    }
}

pub static SECTIONS: &[Section] = &[
    Section {
        name: "model",
        doc: "The TorchScript model (torch.jit.script(model).save(...) or torch.jit.trace)",
        keys: &[
            key("path", "string", "", "Path to the TorchScript file, relative to this file"),
            key("output", "string", "\"\"", "Which output is the prediction when forward returns a tuple (index) or dict (key); empty: the first"),
            key("device", "string", "\"cpu\"", "cpu, cuda or cuda:N"),
            key("threads", "integer", "0", "libtorch CPU threads; 0 = the machine's cores"),
        ],
    },
    Section {
        name: "data",
        doc: "A sample of training data: .npz, .npy or .safetensors, samples along dim 0 in loader order",
        keys: &[
            key("path", "string", "", "Path to the data sample, relative to this file"),
            key("inputs", "string", "\"inputs\"", "Name of the input array"),
            key("targets", "string", "\"targets\"", "Name of the target array (float: regression / image-to-image; integer: class indices)"),
            key("max_samples", "integer", "256", "Use at most this many samples (the first ones)"),
        ],
    },
    Section {
        name: "log",
        doc: "An optional loss log: CSV or JSONL with an optional `step` column",
        keys: &[
            key("path", "string", "", "Path to the loss log, relative to this file"),
            key("loss", "string", "\"loss\"", "The total-loss column"),
            key("terms", "array", "[]", "Loss-term columns; empty: every `loss_*` column"),
        ],
    },
    Section {
        name: "setup",
        doc: "How the model is trained",
        keys: &[
            Key {
                name: "task",
                kind: "string",
                default: "\"auto\"",
                choices: &["auto", "image-to-image", "classification", "regression"],
                doc: "auto: integer targets = classification; input shape = target shape = image-to-image; else regression",
            },
            Key {
                name: "loss",
                kind: "string",
                default: "",
                choices: &LossKind::NAMES,
                doc: "The training loss; unset: cross_entropy for classification, mse otherwise",
            },
            Key {
                name: "optimizer",
                kind: "string",
                default: "\"adam\"",
                choices: &["sgd", "adam", "adamw"],
                doc: "The optimizer",
            },
            key("lr", "number", "0.001", "Learning rate"),
            key("momentum", "number", "0.9", "SGD momentum"),
            key("weight_decay", "number", "0.0", "Weight decay"),
            key("batch_size", "integer", "32", "Batch size"),
            key("shuffle", "boolean", "true", "Whether the data loader shuffles"),
            key("temporal", "boolean", "false", "Whether the task needs the samples in order (optical flow, odometry)"),
        ],
    },
    Section {
        name: "run",
        doc: "Which checks run and what fails the run",
        keys: &[
            key("select", "array", "[\"ALL\"]", "Checks, finding kinds or groups to run (ALL = every check)"),
            key("ignore", "array", "[]", "Checks, finding kinds or groups to skip"),
            Key {
                name: "fail_on",
                kind: "string",
                default: "\"error\"",
                choices: &["error", "warning"],
                doc: "Exit 1 when a finding at or above this severity remains",
            },
            key("seed", "integer", "0", "Seed for everything random; the same seed gives the same report"),
        ],
    },
];

/// One option of a check, read from its options schema (so from the options struct's declaration).
pub struct CheckOption {
    pub name: String,
    pub doc: String,
    /// The default as TOML text.
    pub default: String,
    pub choices: Vec<String>,
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

/// A check's options with their docs, defaults and choices, in declaration order.
pub fn check_options(check: &dyn Rule) -> Vec<CheckOption> {
    let schema = check.options_schema();
    let defaults = check.default_options();
    let Some(props) = schema["properties"].as_object() else {
        return Vec::new();
    };
    let mut names: Vec<&String> = props.keys().collect();
    // Declaration order: the order the defaults serialise in (serde follows the struct's fields).
    let order: Vec<&String> = defaults
        .as_object()
        .map(|d| d.keys().collect())
        .unwrap_or_default();
    names.sort_by_key(|n| order.iter().position(|o| o == n).unwrap_or(usize::MAX));
    names
        .into_iter()
        .map(|name| {
            let prop = &props[name];
            let choices = match (&prop["enum"], &prop["oneOf"]) {
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
            CheckOption {
                name: name.clone(),
                doc: prop["description"].as_str().unwrap_or("").to_string(),
                default: toml_text(&defaults[name]),
                choices,
            }
        })
        .collect()
}

/// A commented `trainlint.toml` with every option at its default; `filled` overrides values by
/// `section.key` (e.g. `data.path`).
pub fn init_template(filled: &[(&str, String)]) -> String {
    let mut out = String::from(
        "# trainlint configuration. Every option is shown at its default; `trainlint schema` prints the\n\
         # JSON Schema, `trainlint rules` lists the checks and `trainlint explain ID` documents one.\n",
    );
    for section in SECTIONS {
        out.push_str(&format!("\n# {}\n[{}]\n", section.doc, section.name));
        for k in section.keys {
            let full = format!("{}.{}", section.name, k.name);
            let doc = if k.choices.is_empty() {
                k.doc.to_string()
            } else {
                format!("{} ({})", k.doc, k.choices.join(", "))
            };
            out.push_str(&format!("# {doc}\n"));
            match filled.iter().find(|(name, _)| *name == full) {
                Some((_, value)) => out.push_str(&format!("{} = {}\n", k.name, value)),
                None if k.default.is_empty() => out.push_str(&format!("# {} = \n", k.name)),
                None => out.push_str(&format!("{} = {}\n", k.name, k.default)),
            }
        }
    }
    out.push_str("\n# Per-check levels (allow, warn, deny) and options.\n");
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
            out.push_str(&format!("# {}\n{} = {}\n", o.doc, o.name, o.default));
        }
    }
    out.push_str(
        "\n# Silence a check, optionally at one location, with a reason:\n\
         # [[ignore]]\n# check = \"init-std/constant-weights\"\n# location = \"head.weight\"\n# reason = \"zero-initialised output layer, on purpose\"\n",
    );
    out
}

fn key_schema(k: &Key) -> Value {
    let mut s = Map::new();
    s.insert("description".into(), k.doc.into());
    if k.kind == "array" {
        s.insert("type".into(), "array".into());
        s.insert("items".into(), json!({"type": "string"}));
    } else {
        s.insert("type".into(), k.kind.into());
    }
    if !k.choices.is_empty() {
        s.insert("enum".into(), k.choices.into());
    }
    if let Ok(v) = format!("v = {}", k.default)
        .parse::<toml::Table>()
        .map(|t| t["v"].clone())
    {
        if let Ok(j) = serde_json::to_value(v) {
            s.insert("default".into(), j);
        }
    }
    Value::Object(s)
}

/// The JSON Schema of the configuration, for editors.
pub fn json_schema() -> Value {
    let mut props = Map::new();
    for section in SECTIONS {
        let keys: Map<String, Value> = section
            .keys
            .iter()
            .map(|k| (k.name.to_string(), key_schema(k)))
            .collect();
        props.insert(
            section.name.into(),
            json!({"type": "object", "description": section.doc, "properties": keys, "additionalProperties": false}),
        );
    }
    let mut checks = Map::new();
    for check in registry::all() {
        let info = check.info();
        let mut opts = Map::new();
        opts.insert(
            "level".into(),
            json!({"type": "string", "enum": ["allow", "warn", "deny"], "default": info.default_level.as_str()}),
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
        json!({"type": "array", "items": {"type": "object", "required": ["check", "reason"], "additionalProperties": false,
            "properties": {"check": {"type": "string", "description": "A check id or a finding-kind id"}, "location": {"type": "string"}, "reason": {"type": "string", "minLength": 1}}}}),
    );
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "trainlint configuration",
        "type": "object",
        "properties": props,
        "additionalProperties": false
    })
}
