//! What a check reports: a finding with its evidence, location and fix, and curves to plot.
use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// Where a problem sits, in the user's terms. Every part is optional; a finding sets what applies.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Location {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_key: Option<String>,
    /// Half-open sample range [start, end) in the data file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<(usize, usize)>,
    /// Inclusive step range in the loss log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_steps: Option<(f64, f64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_column: Option<String>,
    /// A key of the configuration (e.g. `batch_size`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_key: Option<String>,
}

impl Location {
    pub fn module(path: &str) -> Self {
        Location {
            module: Some(display_module(path)),
            ..Self::default()
        }
    }
    pub fn parameter(name: &str) -> Self {
        let module = name.rsplit_once('.').map(|(m, _)| m).unwrap_or("");
        Location {
            module: Some(display_module(module)),
            parameter: Some(name.to_string()),
            ..Self::default()
        }
    }
    pub fn data(key: &str, samples: Option<(usize, usize)>) -> Self {
        Location {
            data_key: Some(key.to_string()),
            samples,
            ..Self::default()
        }
    }
    pub fn log(column: &str, steps: (f64, f64)) -> Self {
        Location {
            log_column: Some(column.to_string()),
            log_steps: Some(steps),
            ..Self::default()
        }
    }
    pub fn config(key: &str) -> Self {
        Location {
            config_key: Some(key.to_string()),
            ..Self::default()
        }
    }
    pub fn is_empty(&self) -> bool {
        *self == Location::default()
    }
}

/// The root module has an empty path; show it as `<root>`.
pub fn display_module(path: &str) -> String {
    if path.is_empty() {
        "<root>".to_string()
    } else {
        path.to_string()
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(p) = &self.parameter {
            parts.push(format!("parameter {p}"));
        } else if let Some(b) = &self.buffer {
            parts.push(format!("buffer {b}"));
        } else if let Some(m) = &self.module {
            parts.push(format!("module {m}"));
        }
        if let Some(k) = &self.data_key {
            match self.samples {
                Some((a, b)) => parts.push(format!("data `{k}` samples {a}..{b}")),
                None => parts.push(format!("data `{k}`")),
            }
        }
        if let Some(c) = &self.log_column {
            match self.log_steps {
                Some((a, b)) => {
                    parts.push(format!("log `{c}` steps {}..{}", fmt_step(a), fmt_step(b)))
                }
                None => parts.push(format!("log `{c}`")),
            }
        }
        if let Some(k) = &self.config_key {
            parts.push(format!("config `{k}`"));
        }
        write!(f, "{}", parts.join(", "))
    }
}

fn fmt_step(s: f64) -> String {
    if s.fract() == 0.0 {
        format!("{}", s as i64)
    } else {
        format!("{s}")
    }
}

/// A series worth plotting: a training curve, a probe, or a loss-log column with a flagged window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Curve {
    pub name: String,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    /// A horizontal line the curve had to reach (e.g. the identity target).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
    /// A flagged x range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<(f64, f64)>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub log_scale: bool,
    /// A name per point (layers, channels), for categorical plots.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// An expected band per point: lower and upper bounds (same length as `y`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lower: Vec<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upper: Vec<f64>,
}

impl Curve {
    pub fn new(name: impl Into<String>, y: Vec<f64>) -> Self {
        let x = (0..y.len()).map(|i| i as f64).collect();
        Curve {
            name: name.into(),
            x,
            y,
            ..Self::default()
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub check: String,
    pub severity: Severity,
    pub message: String,
    pub location: Location,
    pub help: String,
    /// The numbers behind the message, by name, for JSON consumers and plots.
    pub evidence: Map<String, Value>,
}

impl Finding {
    pub fn new(check: &str, severity: Severity, message: impl Into<String>) -> Self {
        Finding {
            check: check.to_string(),
            severity,
            message: message.into(),
            location: Location::default(),
            help: String::new(),
            evidence: Map::new(),
        }
    }
    pub fn error(check: &str, message: impl Into<String>) -> Self {
        Self::new(check, Severity::Error, message)
    }
    pub fn warning(check: &str, message: impl Into<String>) -> Self {
        Self::new(check, Severity::Warning, message)
    }
    pub fn at(mut self, location: Location) -> Self {
        self.location = location;
        self
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = help.into();
        self
    }
    pub fn evidence(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.evidence.insert(key.to_string(), value.into());
        self
    }
}

/// Evidence that maps names (terms, init families) to numbers, as one JSON object.
pub fn named_numbers<S: ToString>(pairs: impl IntoIterator<Item = (S, f64)>) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect(),
    )
}

/// Format a number compactly for messages: 3 significant digits, scientific outside [1e-3, 1e4).
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let a = x.abs();
    if a == 0.0 {
        "0".to_string()
    } else if !(1e-3..1e4).contains(&a) {
        format!("{x:.2e}")
    } else {
        let digits = (2 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{x:.digits$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_compact_with_three_significant_digits() {
        assert_eq!(num(0.31234), "0.312");
        assert_eq!(num(12.5), "12.5");
        assert_eq!(num(1234.0), "1234");
        assert_eq!(num(0.0000123), "1.23e-5");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(2.0), "2");
    }

    #[test]
    fn location_reads_like_the_user_speaks() {
        let l = Location::parameter("encoder.0.weight");
        assert_eq!(l.module.as_deref(), Some("encoder.0"));
        assert_eq!(l.to_string(), "parameter encoder.0.weight");
        let l = Location::log("loss", (10.0, 250.0));
        assert_eq!(l.to_string(), "log `loss` steps 10..250");
        assert_eq!(Location::module("").to_string(), "module <root>");
    }
}
