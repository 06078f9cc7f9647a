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

/// How a kind grades its findings: one severity always, or a base severity raised once the
/// finding's measure passes a threshold option. [`Violation::severity`] grades a finding with it,
/// and `explain`, the docs and the rules tables describe it, so the two cannot disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grade {
    Fixed(Severity),
    /// `below` up to the value of the option `option`, `above` past it.
    Past {
        below: Severity,
        above: Severity,
        option: &'static str,
    },
}

impl Grade {
    /// The severity of a finding whose measure is `measure`, against the threshold option's
    /// configured value `limit` (a fixed grade ignores both).
    pub fn of(self, measure: f64, limit: f64) -> Severity {
        match self {
            Grade::Fixed(s) => s,
            Grade::Past { below, above, .. } => {
                if measure > limit {
                    above
                } else {
                    below
                }
            }
        }
    }

    /// The severity reported when nothing raises it (SARIF's default level, the tables' column).
    pub fn base(self) -> Severity {
        match self {
            Grade::Fixed(s) | Grade::Past { below: s, .. } => s,
        }
    }

    /// In words: "warning", or "warning, error past `error_ratio`".
    pub fn describe(self) -> String {
        match self {
            Grade::Fixed(s) => s.as_str().to_string(),
            Grade::Past {
                below,
                above,
                option,
            } => format!("{}, {} past `{option}`", below.as_str(), above.as_str()),
        }
    }
}

/// Where a problem sits, in the user's terms. Every part is optional; a finding sets what applies.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Location {
    pub module: Option<String>,
    pub parameter: Option<String>,
    pub buffer: Option<String>,
    pub data_key: Option<String>,
    /// Half-open sample range [start, end) in the data file.
    pub samples: Option<(usize, usize)>,
    /// Inclusive step range in the loss log.
    pub log_steps: Option<(f64, f64)>,
    pub log_column: Option<String>,
    /// A key of the configuration (e.g. `batch_size`).
    pub config_key: Option<String>,
    /// The type of the module a parameter belongs to, given where its path alone does not say what it
    /// is: a layer of an `nn.Sequential` is named by its index (`0.weight`).
    pub module_kind: Option<String>,
}

impl Location {
    pub fn module(path: &str) -> Self {
        Location {
            module: Some(display_module(path)),
            ..Self::default()
        }
    }
    /// A parameter of a module of type `kind`; the type is shown when the module's own name is an index
    /// (`0.weight` in an `nn.Sequential` reads as "parameter 0.weight (Linear)").
    pub fn parameter_of(name: &str, kind: &str) -> Self {
        let module = name.rsplit_once('.').map(|(m, _)| m).unwrap_or("");
        let indexed = module
            .rsplit('.')
            .next()
            .is_some_and(|last| !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()));
        Location {
            module_kind: (indexed && !kind.is_empty()).then(|| kind.to_string()),
            ..Self::parameter(name)
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

/// The first `n` items, comma-separated, and a count of the rest ("a, b and 3 more"): a message
/// names what a long list holds without growing a line per item.
pub fn first_of<T: std::fmt::Display>(items: &[T], n: usize) -> String {
    let shown: Vec<String> = items.iter().take(n).map(T::to_string).collect();
    let rest = items.len().saturating_sub(n);
    if rest > 0 {
        format!("{} and {rest} more", shown.join(", "))
    } else {
        shown.join(", ")
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
            match &self.module_kind {
                Some(kind) => parts.push(format!("parameter {p} ({kind})")),
                None => parts.push(format!("parameter {p}")),
            }
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
#[skip_serializing_none]
#[derive(Clone, Debug, Default, Serialize)]
pub struct Curve {
    pub name: String,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    /// A horizontal line the curve had to reach (e.g. the identity target).
    pub target: Option<f64>,
    /// A flagged x range.
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
    /// At most `max` points (LTTB), for reports: a 10M-row log plots as well from 2,000 points, and the
    /// statistics behind the findings have already used every row. Per-point bands and labels (one
    /// point per layer or channel) are never thinned.
    pub fn downsampled(mut self, max: usize) -> Self {
        if self.y.len() <= max || !self.labels.is_empty() || !self.lower.is_empty() {
            return self;
        }
        let keep = crate::stats::lttb(&self.x, &self.y, max);
        self.x = keep.iter().map(|&i| self.x[i]).collect();
        self.y = keep.iter().map(|&i| self.y[i]).collect();
        self
    }

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

/// A documented example of a kind: the `trainlint check` arguments (relative to the repository root)
/// that produce it on the project's fixtures, and the message it prints there. A test runs every
/// example and compares the messages, so the docs cannot drift from the code.
#[derive(Clone, Copy, Debug)]
pub struct Example {
    /// The severity the documented run reports (tests/kinds.rs runs it): a kind graded by its
    /// measure (loss-scale's ratio) may report more than its `KindInfo::severity`.
    pub severity: Severity,
    pub args: &'static str,
    pub message: &'static str,
}

/// What one kind of problem is, in fixed sections; `trainlint explain KIND` and SARIF render it.
#[derive(Debug)]
pub struct KindInfo {
    /// Stable id, `check-id/kind-name` (kebab-case); what users select, ignore and baseline.
    pub id: &'static str,
    /// The severity it is reported with (a `warn` level caps it at warning).
    pub grade: Grade,
    /// One line: what the finding says is wrong.
    pub summary: &'static str,
    /// Why it matters.
    pub why: &'static str,
    /// How the check decides, with its thresholds (option names in backticks).
    pub how: &'static str,
    /// How to fix it.
    pub fix: &'static str,
    /// A real finding of this kind; `None` only for kinds no fixture can produce (`check-failed`).
    pub example: Option<Example>,
}

impl KindInfo {
    /// The check id: the part of the kind id before the `/`.
    pub fn check(&self) -> &'static str {
        self.id.split_once('/').map(|(c, _)| c).unwrap_or(self.id)
    }
}

/// A kind's documentation: `#[derive(ViolationMetadata)]` reads it from the type's doc comment and
/// its `#[kind(..)]` attribute (see the `trainlint-derive` crate), as ruff derives a rule's.
pub trait ViolationMetadata {
    const KIND: KindInfo;
}

pub use trainlint_derive::{skip_serializing_none, ViolationMetadata};

/// One kind of problem, as a type: its fields are the numbers behind the finding; its message, help and
/// JSON evidence are derived from them (evidence = the fields, serialised; `#[serde(skip)]` keeps a
/// field out of it); its documentation is [`ViolationMetadata::KIND`], derived from its doc comment.
pub trait Violation: ViolationMetadata + Serialize {
    /// The one-line message, with the evidence numbers.
    fn message(&self) -> String;
    /// The fix, in one line.
    fn help(&self) -> String;
    /// The finding's measure and the configured threshold its kind's [`Grade::Past`] compares it
    /// with (loss-scale's ratio against `error_ratio`); `None` for kinds with a fixed grade.
    fn measure(&self) -> Option<(f64, f64)> {
        None
    }
    /// The severity: the kind's grade applied to the measure.
    fn severity(&self) -> Severity {
        match self.measure() {
            Some((measure, limit)) => Self::KIND.grade.of(measure, limit),
            None => Self::KIND.grade.base(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub check: String,
    /// The kind id (`check/kind`), what `--select`, `--ignore`, `[[ignore]]` and baselines name.
    pub kind: &'static str,
    pub severity: Severity,
    pub message: String,
    pub location: Location,
    pub help: String,
    /// The numbers behind the message, by name, for JSON consumers and plots.
    pub evidence: Map<String, Value>,
}

impl Finding {
    /// A finding of kind `V` at `location`, with its message, help and evidence from `violation`.
    pub fn new<V: Violation>(violation: &V, location: Location) -> Self {
        let evidence = match serde_json::to_value(violation) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        Finding {
            check: V::KIND.check().to_string(),
            kind: V::KIND.id,
            severity: violation.severity(),
            message: violation.message(),
            location,
            help: violation.help(),
            evidence,
        }
    }

    /// The identity of a finding across runs: its kind and where it sits. Baselines, SARIF
    /// fingerprints and `[[ignore]]` all use it.
    pub fn identity(&self) -> (String, String) {
        let kind = if self.kind == CheckFailed::KIND.id {
            format!("{}:{}", self.kind, self.check)
        } else {
            self.kind.to_string()
        };
        (kind, self.location.to_string())
    }
}

/// A check failed to run (an internal error, not a verdict on the setup)
///
/// # Why
/// A check that cannot run cannot vouch for the setup: the gate fails instead of passing silently. The other
/// checks still run and report.
///
/// # How
/// Any error a check returns (the model raised an exception in forward, a libtorch error, an unexpected
/// shape) or a panic inside it is caught and reported as this kind, with the cause; so is a check that runs
/// past `--timeout` ("check ID timed out after N s").
///
/// # Fix
/// Read the cause: usually the model rejects the sample batch in train mode, or the data does not fit the
/// configured loss. Select the check away (`--ignore ID`) if it cannot apply to this model.
#[derive(Serialize, ViolationMetadata)]
#[kind(id = "check-failed", grade = error)]
pub struct CheckFailed {
    #[serde(skip)]
    pub check: String,
    pub cause: String,
    /// The time limit the check ran past, in seconds (`--timeout`), when that is why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
}

impl Violation for CheckFailed {
    fn message(&self) -> String {
        match self.timeout_s {
            Some(limit) => format!("check {} timed out after {} s", self.check, num(limit)),
            None => format!("check {} failed: {}", self.check, self.cause),
        }
    }
    fn help(&self) -> String {
        match self.timeout_s {
            Some(_) => "the check was abandoned at the time limit (libtorch work cannot be stopped); raise \
--timeout for a slow model, or --ignore the check; the other checks still ran"
                .to_string(),
            None => "this is a problem running the check, not a verdict on your setup; the other checks \
still ran"
                .to_string(),
        }
    }
}

/// Serialise named numbers (terms, init families) as one JSON object: `#[serde(serialize_with = "as_map")]`.
pub fn as_map<S: serde::Serializer, K: AsRef<str>>(
    pairs: &[(K, f64)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(pairs.len()))?;
    for (k, v) in pairs {
        map.serialize_entry(k.as_ref(), v)?;
    }
    map.end()
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
    fn evidence_and_locations_leave_out_what_they_lack() {
        // `#[skip_serializing_none]`: an absent Option is no key, a present one is its value.
        assert_eq!(serde_json::to_string(&Location::default()).unwrap(), "{}");
        let loc = Location {
            samples: Some((0, 8)),
            ..Location::default()
        };
        assert_eq!(serde_json::to_string(&loc).unwrap(), r#"{"samples":[0,8]}"#);
        let curve = Curve {
            name: "loss".into(),
            target: Some(0.5),
            ..Curve::default()
        };
        assert_eq!(
            serde_json::to_string(&curve).unwrap(),
            r#"{"name":"loss","x":[],"y":[],"target":0.5}"#
        );
    }

    #[test]
    fn a_parameter_of_an_indexed_layer_says_its_type() {
        // Issue 22, 13: `nn.Sequential`'s first layer is named `0`: the type says what it is.
        assert_eq!(
            Location::parameter_of("0.weight", "Linear").to_string(),
            "parameter 0.weight (Linear)"
        );
        assert_eq!(
            Location::parameter_of("features.3.bias", "Conv2d").to_string(),
            "parameter features.3.bias (Conv2d)"
        );
        // A named layer says what it is already.
        assert_eq!(
            Location::parameter_of("encoder.fc.weight", "Linear").to_string(),
            "parameter encoder.fc.weight"
        );
    }

    #[test]
    fn a_long_list_shows_its_first_items_and_counts_the_rest() {
        let names = ["a", "b", "c", "d"];
        assert_eq!(first_of(&names, 2), "a, b and 2 more");
        assert_eq!(first_of(&names, 4), "a, b, c, d");
        assert_eq!(first_of(&names[..1], 8), "a");
    }

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
