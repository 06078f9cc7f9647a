//! `trainlint.toml` or `[tool.trainlint]` in `pyproject.toml`, plus CLI overrides, into one validated
//! [`Settings`]. Errors point at `file:line:col` with the offending text.
mod schema;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{ImDocument, Item, TableLike, Value};
use trainlint_checks::ports::{LossKind, OptimizerKind, Task};
use trainlint_checks::registry::{self, Selector};
use trainlint_checks::{Group, Level, Setup, Severity};

pub use schema::{check_options, init_template, json_schema, SECTIONS};

/// A configuration error: a message, and where it points when it comes from a file.
#[derive(Debug)]
pub struct ConfigError {
    pub message: String,
    pub file: Option<PathBuf>,
    pub line: usize,
    pub column: usize,
    /// The offending source line and the caret under it.
    pub snippet: Option<(String, usize, usize)>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.file {
            Some(file) => write!(
                f,
                "{}:{}:{}: {}",
                file.display(),
                self.line,
                self.column,
                self.message
            ),
            None => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub fn plain(message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
            file: None,
            line: 0,
            column: 0,
            snippet: None,
        }
    }

    /// The source line with a caret under the offending text, as cargo-deny shows it.
    pub fn render_snippet(&self) -> Option<String> {
        let (text, start, len) = self.snippet.as_ref()?;
        let gutter = self.line.to_string().len();
        Some(format!(
            "{:gutter$} |\n{} | {}\n{:gutter$} | {}{}",
            "",
            self.line,
            text,
            "",
            " ".repeat(*start),
            "^".repeat((*len).max(1)),
        ))
    }
}

/// Per-check configuration: a level and the user's option values (validated against the check's
/// options schema; the check's defaults fill the rest).
#[derive(Clone, Debug, Default)]
pub struct CheckConfig {
    pub level: Option<Level>,
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// An `[[ignore]]` entry: silence a check's (or one finding kind's) findings, optionally at one
/// location, with a reason.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Ignore {
    /// A check id or a kind id.
    pub check: String,
    pub location: Option<String>,
    pub reason: String,
    pub line: usize,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub config_path: Option<PathBuf>,
    pub model: Option<PathBuf>,
    pub output: String,
    pub device: String,
    pub threads: usize,
    pub data: Option<PathBuf>,
    pub inputs: String,
    pub targets: String,
    pub max_samples: usize,
    pub log: Option<PathBuf>,
    pub log_loss: Option<String>,
    pub log_terms: Vec<String>,
    pub setup: Setup,
    pub select: Vec<String>,
    pub ignore: Vec<String>,
    pub fail_on: Severity,
    pub checks: BTreeMap<String, CheckConfig>,
    pub ignores: Vec<Ignore>,
    /// The config line of every key read from the file (`setup.lr`, `checks.init-std`, …).
    pub key_lines: BTreeMap<String, usize>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            config_path: None,
            model: None,
            output: String::new(),
            device: "cpu".into(),
            threads: 0,
            data: None,
            inputs: "inputs".into(),
            targets: "targets".into(),
            max_samples: 256,
            log: None,
            log_loss: None,
            log_terms: Vec::new(),
            setup: Setup::default(),
            select: vec!["ALL".into()],
            ignore: Vec::new(),
            fail_on: Severity::Error,
            checks: BTreeMap::new(),
            ignores: Vec::new(),
            key_lines: BTreeMap::new(),
        }
    }
}

impl Settings {
    /// The level a check runs at: the config's, else its default.
    pub fn level(&self, id: &str, default: Level) -> Level {
        self.checks.get(id).and_then(|c| c.level).unwrap_or(default)
    }

    /// The user's options for a check, as a JSON object (empty: every default).
    pub fn options(&self, id: &str) -> serde_json::Value {
        serde_json::Value::Object(
            self.checks
                .get(id)
                .map(|c| c.options.clone())
                .unwrap_or_default(),
        )
    }

    fn selectors(list: &[String]) -> impl Iterator<Item = Selector> + '_ {
        list.iter().filter_map(|s| Selector::parse(s))
    }

    /// Whether `select` / `ignore` (ALL, groups, check ids or kind ids) let a check run: some selector
    /// reaches it, and no ignore names the whole check.
    pub fn selected(&self, id: &str, group: Group) -> bool {
        Self::selectors(&self.select).any(|s| s.touches_check(id, group))
            && !Self::selectors(&self.ignore).any(|s| s.covers_check(id, group))
    }

    /// Whether a finding of `kind` from check `id` is kept by `select` / `ignore`.
    pub fn kind_selected(&self, kind: &str, id: &str, group: Group) -> bool {
        Self::selectors(&self.select).any(|s| s.covers_kind(kind, id, group))
            && !Self::selectors(&self.ignore).any(|s| s.covers_kind(kind, id, group))
    }
}

/// Find the configuration from `start` (a directory or a config file) upwards, like ruff.
pub fn discover(start: &Path) -> Result<Option<PathBuf>, ConfigError> {
    if start.is_file() {
        return Ok(Some(start.to_path_buf()));
    }
    if !start.exists() {
        return Err(ConfigError::plain(format!(
            "{} does not exist",
            start.display()
        )));
    }
    let start = start.canonicalize().unwrap_or_else(|_| start.to_path_buf());
    for dir in start.ancestors() {
        let toml = dir.join("trainlint.toml");
        if toml.is_file() {
            return Ok(Some(toml));
        }
        let pyproject = dir.join("pyproject.toml");
        if pyproject.is_file() {
            let text = std::fs::read_to_string(&pyproject).unwrap_or_default();
            if text.contains("[tool.trainlint") {
                return Ok(Some(pyproject));
            }
        }
    }
    Ok(None)
}

/// Turns byte spans into file:line:col errors.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        let span = span.unwrap_or(0..0);
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        let line_text = self.text[line_start..]
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        let len = self.text[span.clone()]
            .lines()
            .next()
            .map(|l| l.chars().count())
            .unwrap_or(1);
        ConfigError {
            message: message.into(),
            file: Some(self.path.to_path_buf()),
            line,
            column,
            snippet: Some((line_text, column - 1, len)),
        }
    }

    fn line_of(&self, span: Option<Range<usize>>) -> usize {
        span.map(|s| self.text[..s.start].matches('\n').count() + 1)
            .unwrap_or(1)
    }
}

fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn unknown_key(
    src: &Source,
    table: &dyn TableLike,
    key: &str,
    section: &str,
    known: &[&str],
) -> ConfigError {
    let span = table.key(key).and_then(|k| k.span());
    let place = if section.is_empty() {
        String::new()
    } else {
        format!(" in [{section}]")
    };
    let hint = match closest(key, known.iter().copied()) {
        Some(s) => format!("; did you mean `{s}`?"),
        None => format!(" (expected one of: {})", known.join(", ")),
    };
    src.error(span, format!("unknown key `{key}`{place}{hint}"))
}

struct Reader<'a> {
    src: Source<'a>,
}

impl Reader<'_> {
    fn value<'i>(&self, item: &'i Item, what: &str) -> Result<&'i Value, ConfigError> {
        item.as_value().ok_or_else(|| {
            self.src.error(
                item.span(),
                format!("{what}: expected a value, found a table"),
            )
        })
    }
    fn string(&self, item: &Item, what: &str) -> Result<String, ConfigError> {
        let v = self.value(item, what)?;
        v.as_str().map(str::to_string).ok_or_else(|| {
            self.src.error(
                v.span(),
                format!("{what}: expected a string, found {}", v.type_name()),
            )
        })
    }
    fn choice(&self, item: &Item, what: &str, choices: &[&str]) -> Result<String, ConfigError> {
        let s = self.string(item, what)?;
        if choices.contains(&s.as_str()) {
            return Ok(s);
        }
        let hint = closest(&s, choices.iter().copied())
            .map(|c| format!("; did you mean {c:?}?"))
            .unwrap_or_default();
        Err(self.src.error(
            self.value(item, what)?.span(),
            format!("{what}: {s:?} is not one of {}{hint}", choices.join(", ")),
        ))
    }
    fn float(&self, item: &Item, what: &str, positive: bool) -> Result<f64, ConfigError> {
        let v = self.value(item, what)?;
        let x = v
            .as_float()
            .or_else(|| v.as_integer().map(|i| i as f64))
            .ok_or_else(|| {
                self.src.error(
                    v.span(),
                    format!("{what}: expected a number, found {}", v.type_name()),
                )
            })?;
        if !x.is_finite() {
            return Err(self.src.error(
                v.span(),
                format!("{what}: must be a finite number, found {x}"),
            ));
        }
        if positive && x <= 0.0 {
            return Err(self.src.error(
                v.span(),
                format!("{what}: must be a positive number, found {x}"),
            ));
        }
        Ok(x)
    }
    fn bounded(&self, item: &Item, what: &str, lo: f64, hi: f64) -> Result<f64, ConfigError> {
        let x = self.float(item, what, false)?;
        if x < lo || x > hi {
            let range = if hi == f64::MAX {
                format!("at least {lo}")
            } else {
                format!("within [{lo}, {hi}]")
            };
            return Err(self.src.error(
                self.value(item, what)?.span(),
                format!("{what}: must be {range}, found {x}"),
            ));
        }
        Ok(x)
    }
    fn uint(&self, item: &Item, what: &str, min: i64) -> Result<usize, ConfigError> {
        let v = self.value(item, what)?;
        let i = v.as_integer().ok_or_else(|| {
            self.src.error(
                v.span(),
                format!("{what}: expected an integer, found {}", v.type_name()),
            )
        })?;
        if i < min {
            return Err(self.src.error(
                v.span(),
                format!("{what}: must be at least {min}, found {i}"),
            ));
        }
        Ok(i as usize)
    }
    fn boolean(&self, item: &Item, what: &str) -> Result<bool, ConfigError> {
        let v = self.value(item, what)?;
        v.as_bool().ok_or_else(|| {
            self.src.error(
                v.span(),
                format!("{what}: expected true or false, found {}", v.type_name()),
            )
        })
    }
    fn strings(&self, item: &Item, what: &str) -> Result<Vec<String>, ConfigError> {
        let v = self.value(item, what)?;
        let arr = v.as_array().ok_or_else(|| {
            self.src.error(
                v.span(),
                format!(
                    "{what}: expected a list of strings, found {}",
                    v.type_name()
                ),
            )
        })?;
        arr.iter()
            .map(|e| {
                e.as_str().map(str::to_string).ok_or_else(|| {
                    self.src.error(
                        e.span(),
                        format!("{what}: expected a string, found {}", e.type_name()),
                    )
                })
            })
            .collect()
    }
    fn path(&self, item: &Item, what: &str, base: &Path) -> Result<PathBuf, ConfigError> {
        Ok(base.join(self.string(item, what)?))
    }
    fn table<'i>(&self, item: &'i Item, what: &str) -> Result<&'i dyn TableLike, ConfigError> {
        item.as_table_like().ok_or_else(|| {
            self.src
                .error(item.span(), format!("[{what}] must be a table"))
        })
    }
}

fn known_check_ids() -> Vec<&'static str> {
    registry::all().iter().map(|c| c.info().id).collect()
}

/// Load a config file into `settings`. Relative paths resolve against the file's folder.
pub fn load_file(path: &Path, settings: &mut Settings) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::plain(format!("cannot read {}: {e}", path.display())))?;
    let src = Source { path, text: &text };
    let doc = ImDocument::parse(text.as_str()).map_err(|e| {
        let msg = e.message().trim().to_string();
        src.error(e.span(), format!("invalid TOML: {msg}"))
    })?;
    let is_pyproject = path.file_name().is_some_and(|n| n == "pyproject.toml");
    let root: &dyn TableLike = if is_pyproject {
        match doc
            .get("tool")
            .and_then(|t| t.get("trainlint"))
            .and_then(Item::as_table_like)
        {
            Some(t) => t,
            None => {
                return Err(ConfigError::plain(format!(
                    "{} has no [tool.trainlint] table",
                    path.display()
                )))
            }
        }
    } else {
        doc.as_table()
    };
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let r = Reader { src };
    settings.config_path = Some(path.to_path_buf());
    let mut section_names: Vec<&str> = SECTIONS.iter().map(|s| s.name).collect();
    section_names.extend(["checks", "ignore"]);
    record_key_lines(&r, root, settings);
    for (key, item) in root.iter() {
        match key {
            "model" => read_model(&r, r.table(item, "model")?, settings, &base)?,
            "data" => read_data(&r, r.table(item, "data")?, settings, &base)?,
            "log" => read_log(&r, r.table(item, "log")?, settings, &base)?,
            "setup" => read_setup(&r, r.table(item, "setup")?, &mut settings.setup)?,
            "run" => read_run(&r, r.table(item, "run")?, settings)?,
            "checks" => read_checks(&r, r.table(item, "checks")?, settings)?,
            "ignore" => read_ignores(&r, item, settings)?,
            _ => return Err(unknown_key(&r.src, root, key, "", &section_names)),
        }
    }
    Ok(())
}

/// Remember the line of each `section.key` (and of each `[checks.ID]` table) for report locations.
fn record_key_lines(r: &Reader, root: &dyn TableLike, settings: &mut Settings) {
    for (section, item) in root.iter() {
        let Some(table) = item.as_table_like() else {
            continue;
        };
        for (key, _) in table.iter() {
            let line = r.src.line_of(table.key(key).and_then(|k| k.span()));
            settings.key_lines.insert(format!("{section}.{key}"), line);
        }
    }
}

fn keys_of(section: &str) -> Vec<&'static str> {
    SECTIONS
        .iter()
        .find(|s| s.name == section)
        .map(|s| s.keys.iter().map(|k| k.name).collect())
        .unwrap_or_default()
}

fn read_model(
    r: &Reader,
    t: &dyn TableLike,
    s: &mut Settings,
    base: &Path,
) -> Result<(), ConfigError> {
    for (key, item) in t.iter() {
        match key {
            "path" => s.model = Some(r.path(item, "model.path", base)?),
            "output" => {
                let v = r.value(item, "model.output")?;
                s.output = match (v.as_str(), v.as_integer()) {
                    (Some(k), _) => k.to_string(),
                    (_, Some(i)) if i >= 0 => i.to_string(),
                    _ => {
                        return Err(r.src.error(
                            v.span(),
                            "model.output: expected a tuple index or a dict key",
                        ))
                    }
                };
            }
            "device" => {
                let d = r.string(item, "model.device")?;
                crate::model::parse_device(&d)
                    .map_err(|e| r.src.error(item.span(), format!("model.device: {e}")))?;
                s.device = d;
            }
            "threads" => s.threads = r.uint(item, "model.threads", 0)?,
            _ => return Err(unknown_key(&r.src, t, key, "model", &keys_of("model"))),
        }
    }
    Ok(())
}

fn read_data(
    r: &Reader,
    t: &dyn TableLike,
    s: &mut Settings,
    base: &Path,
) -> Result<(), ConfigError> {
    for (key, item) in t.iter() {
        match key {
            "path" => s.data = Some(r.path(item, "data.path", base)?),
            "inputs" => s.inputs = r.string(item, "data.inputs")?,
            "targets" => s.targets = r.string(item, "data.targets")?,
            "max_samples" => s.max_samples = r.uint(item, "data.max_samples", 1)?,
            _ => return Err(unknown_key(&r.src, t, key, "data", &keys_of("data"))),
        }
    }
    Ok(())
}

fn read_log(
    r: &Reader,
    t: &dyn TableLike,
    s: &mut Settings,
    base: &Path,
) -> Result<(), ConfigError> {
    for (key, item) in t.iter() {
        match key {
            "path" => s.log = Some(r.path(item, "log.path", base)?),
            "loss" => s.log_loss = Some(r.string(item, "log.loss")?),
            "terms" => s.log_terms = r.strings(item, "log.terms")?,
            _ => return Err(unknown_key(&r.src, t, key, "log", &keys_of("log"))),
        }
    }
    Ok(())
}

pub const TASKS: [&str; 4] = ["auto", "image-to-image", "classification", "regression"];
pub const OPTIMIZERS: [&str; 3] = ["sgd", "adam", "adamw"];

pub fn parse_task(s: &str) -> Option<Task> {
    Some(match s {
        "auto" => Task::Auto,
        "image-to-image" => Task::ImageToImage,
        "classification" => Task::Classification,
        "regression" => Task::Regression,
        _ => return None,
    })
}

fn read_setup(r: &Reader, t: &dyn TableLike, setup: &mut Setup) -> Result<(), ConfigError> {
    for (key, item) in t.iter() {
        match key {
            "task" => {
                setup.task = parse_task(&r.choice(item, "setup.task", &TASKS)?).expect("validated")
            }
            "loss" => {
                setup.loss = LossKind::parse(&r.choice(item, "setup.loss", &LossKind::NAMES)?)
            }
            "optimizer" => {
                setup.optimizer =
                    OptimizerKind::parse(&r.choice(item, "setup.optimizer", &OPTIMIZERS)?)
                        .expect("validated")
            }
            "lr" => setup.lr = r.float(item, "setup.lr", true)?,
            "momentum" => setup.momentum = r.bounded(item, "setup.momentum", 0.0, 1.0)?,
            "weight_decay" => {
                setup.weight_decay = r.bounded(item, "setup.weight_decay", 0.0, f64::MAX)?
            }
            "batch_size" => setup.batch_size = r.uint(item, "setup.batch_size", 1)?,
            "shuffle" => setup.shuffle = r.boolean(item, "setup.shuffle")?,
            "temporal" => setup.temporal = r.boolean(item, "setup.temporal")?,
            _ => return Err(unknown_key(&r.src, t, key, "setup", &keys_of("setup"))),
        }
    }
    Ok(())
}

fn read_run(r: &Reader, t: &dyn TableLike, s: &mut Settings) -> Result<(), ConfigError> {
    for (key, item) in t.iter() {
        match key {
            "select" | "ignore" => {
                let list = r.strings(item, &format!("run.{key}"))?;
                validate_selectors(&list)
                    .map_err(|m| r.src.error(item.span(), format!("run.{key}: {m}")))?;
                if key == "select" {
                    s.select = list;
                } else {
                    s.ignore = list;
                }
            }
            "fail_on" => {
                s.fail_on = match r
                    .choice(item, "run.fail_on", &["error", "warning"])?
                    .as_str()
                {
                    "warning" => Severity::Warning,
                    _ => Severity::Error,
                }
            }
            "seed" => s.setup.seed = r.uint(item, "run.seed", 0)? as u64,
            _ => return Err(unknown_key(&r.src, t, key, "run", &keys_of("run"))),
        }
    }
    Ok(())
}

/// Selectors are `ALL`, group names, check ids or finding-kind ids.
pub fn validate_selectors(list: &[String]) -> Result<(), String> {
    for s in list {
        if Selector::parse(s).is_none() {
            let hint = closest(s, Selector::vocabulary())
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            return Err(format!("unknown check, kind or group `{s}`{hint}"));
        }
    }
    Ok(())
}

/// A check option's TOML value checked against its schema (type, choices, bounds), as JSON.
fn option_value(
    r: &Reader,
    item: &Item,
    what: &str,
    schema: &serde_json::Value,
) -> Result<serde_json::Value, ConfigError> {
    use serde_json::json;
    let v = r.value(item, what)?;
    let err = |message: String| r.src.error(v.span(), format!("{what}: {message}"));
    let types: Vec<&str> = match &schema["type"] {
        serde_json::Value::String(t) => vec![t.as_str()],
        serde_json::Value::Array(ts) => ts.iter().filter_map(|t| t.as_str()).collect(),
        _ => Vec::new(),
    };
    let choices: Vec<&str> = match (&schema["enum"], &schema["oneOf"]) {
        (serde_json::Value::Array(e), _) => e.iter().filter_map(|c| c.as_str()).collect(),
        (_, serde_json::Value::Array(o)) => o.iter().filter_map(|c| c["const"].as_str()).collect(),
        _ => Vec::new(),
    };
    let value = if !choices.is_empty() {
        let s = r.choice(item, what, &choices)?;
        json!(s)
    } else if types.contains(&"number") {
        let x = r.float(item, what, false)?;
        json!(x)
    } else if types.contains(&"integer") {
        let i = v
            .as_integer()
            .ok_or_else(|| err(format!("expected an integer, found {}", v.type_name())))?;
        json!(i)
    } else if types.contains(&"boolean") {
        json!(r.boolean(item, what)?)
    } else if types.contains(&"array") {
        json!(r.strings(item, what)?)
    } else {
        json!(r.string(item, what)?)
    };
    if let Some(x) = value.as_f64() {
        let bound = |key: &str| schema[key].as_f64();
        if let Some(min) = bound("minimum").filter(|m| x < *m) {
            return Err(err(format!("must be at least {min}, found {x}")));
        }
        if let Some(min) = bound("exclusiveMinimum").filter(|m| x <= *m) {
            return Err(err(format!("must be greater than {min}, found {x}")));
        }
        if let Some(max) = bound("maximum").filter(|m| x > *m) {
            return Err(err(format!("must be at most {max}, found {x}")));
        }
    }
    Ok(value)
}

fn read_checks(r: &Reader, t: &dyn TableLike, s: &mut Settings) -> Result<(), ConfigError> {
    let ids = known_check_ids();
    for (id, item) in t.iter() {
        let Some(check) = registry::find(id) else {
            let span = t.key(id).and_then(|k| k.span());
            let hint = closest(id, ids.iter().copied())
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            return Err(r
                .src
                .error(span, format!("unknown check `{id}` in [checks]{hint}")));
        };
        let table = r.table(item, &format!("checks.{id}"))?;
        let schema = check.options_schema();
        let props = schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let mut cfg = CheckConfig::default();
        for (key, item) in table.iter() {
            let what = format!("checks.{id}.{key}");
            if key == "level" {
                let level = r.choice(item, &what, &["allow", "warn", "deny"])?;
                cfg.level = Level::parse(&level);
                continue;
            }
            let Some(prop) = props.get(key) else {
                let mut known: Vec<&str> = props.keys().map(String::as_str).collect();
                known.push("level");
                return Err(unknown_key(
                    &r.src,
                    table,
                    key,
                    &format!("checks.{id}"),
                    &known,
                ));
            };
            let value = option_value(r, item, &what, prop)?;
            cfg.options.insert(key.to_string(), value);
        }
        check
            .validate_options(&serde_json::Value::Object(cfg.options.clone()))
            .map_err(|m| r.src.error(item.span(), format!("checks.{id}: {m}")))?;
        s.checks.insert(id.to_string(), cfg);
    }
    Ok(())
}

fn read_ignores(r: &Reader, item: &Item, s: &mut Settings) -> Result<(), ConfigError> {
    let tables: Vec<&dyn TableLike> = match item {
        Item::ArrayOfTables(a) => a.iter().map(|t| t as &dyn TableLike).collect(),
        Item::Value(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_inline_table()
                    .map(|t| t as &dyn TableLike)
                    .ok_or_else(|| r.src.error(v.span(), "ignore: expected a table"))
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(r
                .src
                .error(item.span(), "ignore: expected [[ignore]] tables"))
        }
    };
    let mut ids = known_check_ids();
    ids.extend(registry::kinds().iter().map(|k| k.id));
    for t in tables {
        let line = r.src.line_of(
            t.iter()
                .next()
                .and_then(|(k, _)| t.key(k))
                .and_then(|k| k.span()),
        );
        let (mut check, mut location, mut reason) = (None, None, None);
        for (key, item) in t.iter() {
            match key {
                "check" => {
                    let id = r.string(item, "ignore.check")?;
                    if !ids.contains(&id.as_str()) {
                        let hint = closest(&id, ids.iter().copied())
                            .map(|c| format!("; did you mean `{c}`?"))
                            .unwrap_or_default();
                        return Err(r.src.error(
                            item.span(),
                            format!("ignore.check: unknown check or kind `{id}`{hint}"),
                        ));
                    }
                    check = Some(id);
                }
                "location" => location = Some(r.string(item, "ignore.location")?),
                "reason" => {
                    let text = r.string(item, "ignore.reason")?;
                    if text.trim().is_empty() {
                        return Err(r.src.error(item.span(), "ignore.reason: must not be empty"));
                    }
                    reason = Some(text)
                }
                _ => {
                    return Err(unknown_key(
                        &r.src,
                        t,
                        key,
                        "ignore",
                        &["check", "location", "reason"],
                    ))
                }
            }
        }
        let missing = |what: &str| ConfigError {
            message: format!("[[ignore]] needs `{what}`"),
            file: Some(r.src.path.to_path_buf()),
            line,
            column: 1,
            snippet: None,
        };
        s.ignores.push(Ignore {
            check: check.ok_or_else(|| missing("check"))?,
            location,
            reason: reason.ok_or_else(|| missing("reason = \"why this is fine\""))?,
            line,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("trainlint.toml");
        std::fs::write(&p, text).unwrap();
        let mut s = Settings::default();
        load_file(&p, &mut s).map(|_| s)
    }

    #[test]
    fn reads_every_section_and_resolves_paths_against_the_file() {
        let s = load(
            "[model]\npath = \"m.pt\"\n[data]\npath = \"d.npz\"\ninputs = \"x\"\n[setup]\nlr = 1\nshuffle = false\n\
             loss = \"bce\"\n[run]\nselect = [\"model\"]\n[checks.init-std]\nlevel = \"warn\"\nband_factor = 4\n",
        )
        .unwrap();
        assert!(s.model.as_ref().unwrap().ends_with("m.pt"));
        assert_eq!(s.inputs, "x");
        assert_eq!(s.setup.lr, 1.0);
        assert!(!s.setup.shuffle);
        assert_eq!(s.setup.loss, Some(LossKind::Bce));
        assert_eq!(s.level("init-std", Level::Deny), Level::Warn);
        assert_eq!(s.options("init-std")["band_factor"], 4.0);
        assert!(s.selected("init-std", Group::Model));
    }

    #[test]
    fn misspelled_key_points_at_line_and_column_with_a_suggestion() {
        let e = load("[setup]\nlr = 0.1\nbatch_sise = 4\n").unwrap_err();
        assert_eq!((e.line, e.column), (3, 1));
        assert!(
            e.message
                .contains("unknown key `batch_sise` in [setup]; did you mean `batch_size`?"),
            "{}",
            e.message
        );
        assert!(e.render_snippet().unwrap().contains("^^^^^^^^^^"));
    }

    #[test]
    fn bad_values_point_at_the_value() {
        let e = load("[setup]\nlr = \"fast\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 6));
        assert!(
            e.message
                .contains("setup.lr: expected a number, found string"),
            "{}",
            e.message
        );
        let e = load("[setup]\noptimizer = \"adan\"\n").unwrap_err();
        assert!(
            e.message.contains("did you mean \"adam\"?"),
            "{}",
            e.message
        );
        let e = load("[checks.init-std]\nband_factor = true\n").unwrap_err();
        assert!(
            e.message
                .contains("checks.init-std.band_factor: expected a number, found boolean"),
            "{}",
            e.message
        );
        // Bounds come from the options struct's schema; NaN never passes.
        let e = load("[checks.overfit-batch]\nsteps = 0\n").unwrap_err();
        assert!(
            e.message.contains("must be at least 1, found 0"),
            "{}",
            e.message
        );
        assert_eq!((e.line, e.column), (2, 9));
        let e = load("[checks.identity-overfit]\nlr = -0.1\n").unwrap_err();
        assert!(
            e.message.contains("must be greater than 0"),
            "{}",
            e.message
        );
        let e = load("[checks.init-std]\nmode = \"fixd\"\n").unwrap_err();
        assert!(
            e.message.contains("did you mean \"fixed\"?"),
            "{}",
            e.message
        );
        let e = load("[setup]\nmomentum = nan\n").unwrap_err();
        assert!(
            e.message.contains("must be a finite number"),
            "{}",
            e.message
        );
        let e = load("[setup]\nweight_decay = -1.0\n").unwrap_err();
        assert!(e.message.contains("must be at least 0"), "{}", e.message);
        let e = load("[checks.init-stdd]\n").unwrap_err();
        assert!(
            e.message.contains("did you mean `init-std`?"),
            "{}",
            e.message
        );
    }

    #[test]
    fn ignores_need_a_reason() {
        let e = load("[[ignore]]\ncheck = \"init-std\"\n").unwrap_err();
        assert!(e.message.contains("needs `reason"), "{}", e.message);
        let s = load("[[ignore]]\ncheck = \"init-std\"\nreason = \"zero-init head\"\n").unwrap();
        assert_eq!(s.ignores[0].check, "init-std");
    }
}
