//! `trainlint.toml` or `[tool.trainlint]` in `pyproject.toml`, plus CLI overrides, into one validated
//! [`Settings`]. Errors point at `file:line:col` with the offending text.
//!
//! serde reads every table into its one declaration: the sections into [`ConfigFile`], each
//! `[checks.ID]` into its check's options struct, `[[ignore]]` into [`Ignore`]. What serde cannot check,
//! a number's declared bounds (`#[schemars(range(..))]`), is one pass over the numbers; the schema the
//! declarations derive also words an error serde found ([`typed_value`] on the offending value), so that
//! messages say "expected a number, found string" and "did you mean", not serde's type names.
mod file;
#[cfg(test)]
mod fuzz_corpus;
pub mod init;
mod overrides;
mod schema;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::json;
use toml_edit::{ImDocument, Item, TableLike, Value};
use trainlint_checks::registry::{self, Selector};
use trainlint_checks::{Group, Level, Setup};

pub use file::{
    ConfigFile, DataSection, FailOn, Ignore, LogSection, ModelSection, OutputSelector, RunSection,
};
pub use overrides::{resolve, Overrides, ResolveError};
pub use schema::{
    check_options, config_schema, init_template, json_schema, levels, quoted_levels,
    reference_markdown,
};

/// A configuration error: a message, and where it points when it comes from a file.
#[derive(Clone, Debug)]
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

    /// The source line with a caret under the offending text, as cargo-deny shows it. Control
    /// characters in the line print as their symbols (`␀`, `␛`): one column each, so the caret stays
    /// under its character, and the terminal gets no raw NUL or escape sequence.
    pub fn render_snippet(&self) -> Option<String> {
        let (text, start, len) = self.snippet.as_ref()?;
        let gutter = self.line.to_string().len();
        let text: String = text.chars().map(control_picture).collect();
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

/// A character as one printable column: C0 controls and DEL as their Unicode control pictures
/// (U+2400..U+2421), other characters a report would escape as U+FFFD; tab and the rest as they are.
fn control_picture(c: char) -> char {
    match c as u32 {
        0x09 => c,
        u @ 0..=0x1f => char::from_u32(0x2400 + u).unwrap_or('\u{fffd}'),
        0x7f => '\u{2421}',
        _ if crate::escape::is_hidden_char(c) => '\u{fffd}',
        _ => c,
    }
}

/// Why toml_edit refused `text`, in one line: its message (some span lines, some are empty), led by the
/// character it stopped at when that is a control character, which TOML allows nowhere raw.
fn toml_reason(text: &str, span: Option<Range<usize>>, message: &str) -> String {
    let message = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let at = span
        .and_then(|s| text.get(s.start..))
        .and_then(|rest| rest.chars().next());
    let culprit = match at {
        Some('\0') => Some("NUL character (U+0000) not allowed".to_string()),
        Some(c) if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => {
            Some(format!("control character U+{:04X} not allowed", c as u32))
        }
        _ => None,
    };
    match (culprit, message.is_empty()) {
        (Some(c), true) => c,
        (Some(c), false) => format!("{c}; {message}"),
        (None, true) => "syntax error".to_string(),
        (None, false) => message,
    }
}

/// Per-check configuration: a level and the user's option values (validated against the check's
/// options schema; the check's defaults fill the rest).
#[derive(Clone, Debug, Default)]
pub struct CheckConfig {
    pub level: Option<Level>,
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// The settings of one run: the config file's sections (its relative paths resolved against its
/// folder, the command line's values over them), its `[checks]` and `[[ignore]]` tables and the line
/// of every key read.
#[derive(Clone, Debug)]
pub struct Settings {
    pub config_path: Option<PathBuf>,
    pub model: ModelSection,
    pub data: DataSection,
    pub log: LogSection,
    /// `[setup]`, carrying `[run]`'s seed and check budget: what the checks see.
    pub setup: Setup,
    pub run: RunSection,
    pub checks: BTreeMap<String, CheckConfig>,
    pub ignores: Vec<Ignore>,
    /// The config line of every key read from the file (`setup.lr`, `checks.init-std`, …).
    pub key_lines: BTreeMap<String, usize>,
}

impl Default for Settings {
    /// The config file's defaults: declared once, in `file.rs`.
    fn default() -> Self {
        Settings::from_file(ConfigFile::default())
    }
}

impl Settings {
    /// The settings a parsed config file gives (no `[checks]` or `[[ignore]]` yet).
    fn from_file(f: ConfigFile) -> Settings {
        let mut settings = Settings {
            config_path: None,
            model: f.model,
            data: f.data,
            log: f.log,
            setup: f.setup,
            run: f.run,
            checks: BTreeMap::new(),
            ignores: Vec::new(),
            key_lines: BTreeMap::new(),
        };
        settings.run_into_setup();
        settings
    }

    /// `[run]`'s seed and check budget into the [`Setup`] the checks see.
    fn run_into_setup(&mut self) {
        self.setup.seed = self.run.seed;
        self.setup.check_budget = self.run.check_budget;
    }

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
        Self::selectors(&self.run.select).any(|s| s.touches_check(id, group))
            && !Self::selectors(&self.run.ignore).any(|s| s.covers_check(id, group))
    }

    /// Whether a finding of `kind` from check `id` is kept by `select` / `ignore`.
    pub fn kind_selected(&self, kind: &str, id: &str, group: Group) -> bool {
        Self::selectors(&self.run.select).any(|s| s.covers_kind(kind, id, group))
            && !Self::selectors(&self.run.ignore).any(|s| s.covers_kind(kind, id, group))
    }
}

/// Find the configuration from `start` (a directory or a config file) upwards, like ruff. A config
/// path that is no regular file (`/dev/zero`, a pipe) is refused, not read nor searched above.
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
    if !start.is_dir() {
        return Err(not_a_regular_file(start));
    }
    let start = start.canonicalize().unwrap_or_else(|_| start.to_path_buf());
    for dir in start.ancestors() {
        let toml = dir.join("trainlint.toml");
        if toml.is_file() {
            return Ok(Some(toml));
        }
        if toml.exists() {
            return Err(not_a_regular_file(&toml));
        }
        let pyproject = dir.join("pyproject.toml");
        if pyproject.exists() && !pyproject.is_file() {
            return Err(not_a_regular_file(&pyproject));
        }
        if pyproject.is_file() && has_trainlint_table(&pyproject) {
            return Ok(Some(pyproject));
        }
    }
    Ok(None)
}

fn not_a_regular_file(path: &Path) -> ConfigError {
    let what = if path.is_dir() {
        "a folder"
    } else {
        "a device, a pipe or a socket"
    };
    ConfigError::plain(format!(
        "{} is not a regular file ({what}); a config is a trainlint.toml or a pyproject.toml",
        path.display()
    ))
}

/// Whether a pyproject.toml configures trainlint: it has a `[tool.trainlint]` table (one named in a
/// comment or a string does not count, and the search goes on upwards). A file that does not parse
/// but names the table is taken, so that loading it reports the TOML error with its line.
fn has_trainlint_table(pyproject: &Path) -> bool {
    let text = std::fs::read_to_string(pyproject).unwrap_or_default();
    match ImDocument::parse(text.as_str()) {
        Ok(doc) => doc
            .get("tool")
            .and_then(|t| t.get("trainlint"))
            .is_some_and(Item::is_table_like),
        Err(_) => text.contains("[tool.trainlint"),
    }
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
    unknown_key_at(src, span, key, section, known)
}

/// An unknown `key` at `span`, with the closest known key or the list of them.
fn unknown_key_at(
    src: &Source,
    span: Option<Range<usize>>,
    key: &str,
    section: &str,
    known: &[&str],
) -> ConfigError {
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

/// What an `[[ignore]]` may name: a check id or a finding-kind id.
fn check_and_kind_ids() -> Vec<&'static str> {
    let mut ids = known_check_ids();
    ids.extend(registry::kinds().iter().map(|k| k.id));
    ids
}

/// Whether `path` is read as a pyproject.toml (the config under `[tool.trainlint]`).
fn is_pyproject(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "pyproject.toml")
}

/// Load a config file into `settings`. Relative paths resolve against the file's folder.
pub fn load_file(path: &Path, settings: &mut Settings) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::plain(format!("cannot read {}: {e}", path.display())))?;
    let src = Source { path, text: &text };
    let doc = ImDocument::parse(text.as_str()).map_err(|e| {
        let reason = toml_reason(&text, e.span(), e.message());
        src.error(e.span(), format!("invalid TOML: {reason}"))
    })?;
    let root: &dyn TableLike = if is_pyproject(path) {
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
    let base = path.parent().unwrap_or(Path::new("."));
    let r = Reader { src };
    settings.config_path = Some(path.to_path_buf());
    record_key_lines(&r, root, settings);
    // Four readers, each stopping at its first error: the sections (serde), their numbers' bounds,
    // `[checks.*]` and `[[ignore]]`. The error reported is the first in the document.
    let file = read_sections(&r, doc.clone(), root);
    let bounds = check_bounds(&r, root);
    let checks = match root.get("checks") {
        Some(item) => r
            .table(item, "checks")
            .and_then(|t| read_checks(&r, t, settings)),
        None => Ok(()),
    };
    let ignores = match root.get("ignore") {
        Some(item) => read_ignores(&r, doc.clone(), item, settings),
        None => Ok(()),
    };
    let first = [bounds.err(), checks.err(), ignores.err()]
        .into_iter()
        .flatten()
        .chain(file.as_ref().err().cloned())
        .min_by_key(|e| (e.line, e.column));
    if let Some(e) = first {
        return Err(e);
    }
    let mut file = file?;
    file.resolve_paths(base);
    // The tables read above (checks, ignores, key lines) join the sections' values.
    *settings = Settings {
        config_path: settings.config_path.take(),
        checks: std::mem::take(&mut settings.checks),
        ignores: std::mem::take(&mut settings.ignores),
        key_lines: std::mem::take(&mut settings.key_lines),
        ..Settings::from_file(file)
    };
    Ok(())
}

/// `trainlint.toml` as serde reads it: the sections, at the root or under `[tool.trainlint]` of a
/// pyproject.toml (whose other keys are not ours).
#[derive(serde::Deserialize)]
struct Tool<T> {
    tool: Trainlint<T>,
}
#[derive(serde::Deserialize)]
struct Trainlint<T> {
    trainlint: T,
}

/// The five sections, deserialized into [`ConfigFile`] (their one declaration) from the document
/// already parsed, so that toml_edit's errors carry spans; an error is put in the loader's words at
/// the key or value it is about ([`section_error`]).
fn read_sections(
    r: &Reader,
    doc: ImDocument<&str>,
    root: &dyn TableLike,
) -> Result<ConfigFile, ConfigError> {
    deserialize_config(r, doc).map_err(|e| section_error(r, root, &e))
}

/// `T` deserialized from the config's table: the document's root, or a pyproject.toml's
/// `[tool.trainlint]`; the error with its path and toml_edit's span.
fn deserialize_config<T: serde::de::DeserializeOwned>(
    r: &Reader,
    doc: ImDocument<&str>,
) -> Result<T, serde_path_to_error::Error<toml_edit::de::Error>> {
    let doc = toml_edit::de::Deserializer::from(doc);
    if is_pyproject(r.src.path) {
        serde_path_to_error::deserialize::<_, Tool<T>>(doc).map(|t| t.tool.trainlint)
    } else {
        serde_path_to_error::deserialize(doc)
    }
}

/// The key of serde's "unknown field `KEY`, expected …" (or "…`, there are no fields"); the key may
/// hold backticks, the list after "expected" does hold "`, ".
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once("`, expected")
        .map(|(key, _)| key)
        .or_else(|| rest.strip_suffix("`, there are no fields"))
}

/// A deserialization error of a section in the loader's words: an unknown key with the closest known
/// one; a value of the wrong type, or not one of its choices, described by [`typed_value`] from the
/// key's schema; else (a device or a selector the field's own check refused) serde's message after
/// the key's name, at the value.
fn section_error(
    r: &Reader,
    root: &dyn TableLike,
    e: &serde_path_to_error::Error<toml_edit::de::Error>,
) -> ConfigError {
    use serde_path_to_error::Segment;
    let (message, span) = (e.inner().message(), e.inner().span());
    let mut keys = e.path().iter().filter_map(|s| match s {
        Segment::Map { key } => Some(key.as_str()),
        _ => None,
    });
    if is_pyproject(r.src.path) {
        keys.nth(1); // tool.trainlint
    }
    let (section, key) = (keys.next(), keys.next());
    let schema = config_schema();
    let props = |of: &serde_json::Value| -> Vec<String> {
        of["properties"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .collect()
    };
    if let Some(unknown) = unknown_field(message) {
        let (place, mut known) = match (section, key) {
            (Some(section), Some(_)) => (section, props(&schema["properties"][section])),
            _ => ("", props(&schema)),
        };
        if place.is_empty() {
            known.extend(["checks".to_string(), "ignore".to_string()]);
        }
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        return unknown_key_at(&r.src, span, unknown, place, &known);
    }
    let Some(section) = section else {
        return r.src.error(span, message);
    };
    let Some(item) = root.get(section) else {
        return r.src.error(span, format!("{section}: {message}"));
    };
    let table = match r.table(item, section) {
        Ok(t) => t,
        Err(e) => return e,
    };
    let Some((key, item)) = key.and_then(|k| table.get(k).map(|i| (k, i))) else {
        return r.src.error(span, format!("[{section}]: {message}"));
    };
    let what = format!("{section}.{key}");
    let prop = &schema["properties"][section]["properties"][key];
    match typed_value(r, item, &what, prop) {
        Err(described) => described,
        Ok(_) => r.src.error(item.span(), format!("{what}: {message}")),
    }
}

/// What serde does not check in the sections: every number finite and within the bounds its
/// declaration gives (`#[schemars(range(..))]`), in document order.
fn check_bounds(r: &Reader, root: &dyn TableLike) -> Result<(), ConfigError> {
    let schema = config_schema();
    for (section, item) in root.iter() {
        let (Some(table), Some(props)) = (
            item.as_table_like(),
            schema["properties"][section]["properties"].as_object(),
        ) else {
            continue;
        };
        numbers_in_bounds(r, table, props, section)?;
    }
    Ok(())
}

/// Every number of `table` (its keys' schemas `props`) finite and within its declared bounds, in
/// document order: the first that is not, as [`typed_value`] words it.
fn numbers_in_bounds(
    r: &Reader,
    table: &dyn TableLike,
    props: &serde_json::Map<String, serde_json::Value>,
    section: &str,
) -> Result<(), ConfigError> {
    for (key, item) in table.iter() {
        if let Some(prop) = props.get(key).filter(|_| is_number(item)) {
            typed_value(r, item, &format!("{section}.{key}"), prop)?;
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

/// A selector that names nothing.
#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    #[error("an empty selector; name a check, a finding kind, a group, or ALL (`trainlint rules` lists them)")]
    Empty,
    #[error("unknown check, kind or group `{selector}`{}", hint.as_ref().map(|c| format!("; did you mean `{c}`?")).unwrap_or_default())]
    Unknown {
        selector: String,
        /// The closest name there is.
        hint: Option<String>,
    },
}

/// Selectors are `ALL`, group names, check ids or finding-kind ids.
pub fn validate_selectors(list: &[String]) -> Result<(), SelectorError> {
    for s in list {
        if s.trim().is_empty() {
            return Err(SelectorError::Empty);
        }
        if Selector::parse(s).is_none() {
            return Err(SelectorError::Unknown {
                selector: s.clone(),
                hint: closest(s, Selector::vocabulary()).map(String::from),
            });
        }
    }
    Ok(())
}

/// The branches of a schema: those of an `anyOf` / `oneOf` (without `null`), or the schema itself.
fn branches(schema: &serde_json::Value) -> Vec<&serde_json::Value> {
    for key in ["anyOf", "oneOf"] {
        if let Some(list) = schema[key].as_array() {
            return list.iter().filter(|b| b["type"] != "null").collect();
        }
    }
    vec![schema]
}

fn types_of(schema: &serde_json::Value) -> Vec<&str> {
    match &schema["type"] {
        serde_json::Value::String(t) => vec![t.as_str()],
        serde_json::Value::Array(ts) => ts.iter().filter_map(|t| t.as_str()).collect(),
        _ => Vec::new(),
    }
}

/// A TOML value checked against its schema (from a typed struct's declaration), as JSON: its type,
/// its choices (with a "did you mean"), its bounds, and never NaN or ±Inf. The loader calls it to word
/// an error serde found, and for the bounds.
fn typed_value(
    r: &Reader,
    item: &Item,
    what: &str,
    schema: &serde_json::Value,
) -> Result<serde_json::Value, ConfigError> {
    let v = r.value(item, what)?;
    let err = |message: String| r.src.error(v.span(), format!("{what}: {message}"));
    let accepts = |b: &&serde_json::Value| {
        let types = types_of(b);
        match v {
            Value::Integer(_) => types.contains(&"integer") || types.contains(&"number"),
            Value::Float(_) => types.contains(&"number"),
            Value::String(_) => types.contains(&"string"),
            Value::Boolean(_) => types.contains(&"boolean"),
            Value::Array(_) => types.contains(&"array"),
            _ => false,
        }
    };
    let options = branches(schema);
    let Some(branch) = options.iter().copied().find(|b| accepts(b)) else {
        let mut wanted: Vec<&str> = options.iter().flat_map(|b| types_of(b)).collect();
        wanted.retain(|t| *t != "null");
        wanted.dedup();
        let wanted: Vec<String> = wanted
            .iter()
            .map(|t| match *t {
                "integer" => "an integer".to_string(),
                "array" => "a list of strings".to_string(),
                "boolean" => "true or false".to_string(),
                other => format!("a {other}"),
            })
            .collect();
        return Err(err(format!(
            "expected {}, found {}",
            wanted.join(" or "),
            v.type_name()
        )));
    };
    let value = match v {
        Value::Integer(i) if types_of(branch).contains(&"integer") => json!(*i.value()),
        Value::Integer(_) | Value::Float(_) => json!(r.float(item, what, false)?),
        Value::String(s) => {
            let choices = schema::choices(branch);
            if choices.is_empty() {
                json!(s.value())
            } else {
                json!(r.choice(item, what, &choices)?)
            }
        }
        Value::Boolean(b) => json!(*b.value()),
        _ => json!(r.strings(item, what)?),
    };
    if let Some(x) = value.as_f64() {
        let bound = |key: &str| branch[key].as_f64();
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
        let section = format!("checks.{id}");
        let table = r.table(item, &section)?;
        let schema = check.options_schema();
        let props = schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let what = |key: &str| format!("{section}.{key}");
        // `level`, which every check has.
        let levels = levels();
        let levels: Vec<&str> = levels.iter().map(String::as_str).collect();
        let level = table
            .get("level")
            .map(|item| r.choice(item, &what("level"), &levels))
            .transpose();
        // The options, deserialized by the check's options struct (their one declaration) from the
        // table less `level`; what serde cannot check, the numbers' bounds, is one pass over them.
        let mut user = serde_json::Map::new();
        for (key, item) in table.iter().filter(|(k, _)| *k != "level") {
            user.insert(key.to_string(), toml_as_json(item));
        }
        let options = check
            .validate_options(&serde_json::Value::Object(user.clone()))
            .map_err(|e| {
                let key = e.key.as_deref().unwrap_or_default();
                if unknown_field(&e.message).is_some() {
                    let mut known: Vec<&str> = props.keys().map(String::as_str).collect();
                    known.push("level");
                    return unknown_key(&r.src, table, key, &section, &known);
                }
                table
                    .get(key)
                    .and_then(|v| typed_value(r, v, &what(key), &props[key]).err())
                    .unwrap_or_else(|| r.src.error(item.span(), format!("{section}: {e}")))
            });
        let bounds = numbers_in_bounds(r, table, &props, &section);
        let first = [
            level.as_ref().err(),
            options.as_ref().err(),
            bounds.as_ref().err(),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|e| (e.line, e.column));
        if let Some(e) = first {
            return Err(e.clone());
        }
        let cfg = CheckConfig {
            level: level?.and_then(|l| Level::parse(&l)),
            options: user,
        };
        s.checks.insert(id.to_string(), cfg);
    }
    Ok(())
}

/// A TOML value as serde reads it, as JSON (what a check's options deserialize from). A datetime is
/// toml_edit's private map, which no option accepts; NaN and ±Inf become null, which no number accepts.
fn toml_as_json(item: &Item) -> serde_json::Value {
    use serde::de::IntoDeserializer;
    use serde::Deserialize;
    item.clone()
        .into_value()
        .ok()
        .and_then(|v| serde_json::Value::deserialize(v.into_deserializer()).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn is_number(item: &Item) -> bool {
    item.as_value()
        .is_some_and(|v| v.as_float().is_some() || v.as_integer().is_some())
}

/// The `[[ignore]]` entries, deserialized into [`Ignore`] (their one declaration) from the whole
/// document already parsed, so that toml_edit's errors carry spans; each error is put in the words
/// the loader has always used. `item` is the `ignore` key's item, for the lines of the entries and
/// the wording of a wrongly typed value.
fn read_ignores(
    r: &Reader,
    doc: ImDocument<&str>,
    item: &Item,
    s: &mut Settings,
) -> Result<(), ConfigError> {
    #[derive(serde::Deserialize)]
    struct Entries {
        ignore: Vec<Ignore>,
    }
    let mut entries = deserialize_config::<Entries>(r, doc)
        .map_err(|e| ignore_error(r, item, &e))?
        .ignore;
    for (entry, line) in entries.iter_mut().zip(first_key_lines(&r.src, item)) {
        entry.line = line;
    }
    s.ignores = entries;
    Ok(())
}

/// A deserialization error of `[[ignore]]` in the loader's words, pointing where toml_edit's span does.
fn ignore_error(
    r: &Reader,
    item: &Item,
    e: &serde_path_to_error::Error<toml_edit::de::Error>,
) -> ConfigError {
    use serde_path_to_error::Segment;
    let (message, span) = (e.inner().message(), e.inner().span());
    if let Some(key) = unknown_field(message) {
        let schema = trainlint_checks::options::schema_of::<Ignore>();
        let known: Vec<&str> = schema["properties"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        return unknown_key_at(&r.src, span, key, "ignore", &known);
    }
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        let what = match field {
            "reason" => "reason = \"why this is fine\"",
            other => other,
        };
        return r.src.error(span, format!("[[ignore]] needs `{what}`"));
    }
    // The path below `ignore`: nothing (the key itself), an entry's index, then a field.
    let mut below = e
        .path()
        .iter()
        .skip_while(|s| !matches!(s, Segment::Map { key } if key == "ignore"));
    below.next();
    let entry = match below.next() {
        Some(Segment::Seq { index }) => *index,
        _ => return r.src.error(span, "ignore: expected [[ignore]] tables"),
    };
    let Some(Segment::Map { key: field }) = below.next() else {
        return r.src.error(span, "ignore: expected a table");
    };
    let what = format!("ignore.{field}");
    // A wrongly typed value is described as the reader describes it; else it is a check of the
    // field's own (an unknown id, an empty reason), said in its words.
    entry_tables(item)
        .get(entry)
        .and_then(|t| t.get(field))
        .and_then(|v| r.string(v, &what).err())
        .unwrap_or_else(|| r.src.error(span, format!("{what}: {message}")))
}

/// The entries of `ignore`: `[[ignore]]` tables or the inline tables of `ignore = [...]`.
fn entry_tables(item: &Item) -> Vec<&dyn TableLike> {
    match item {
        Item::ArrayOfTables(a) => a.iter().map(|t| t as &dyn TableLike).collect(),
        _ => item
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_inline_table())
            .map(|t| t as &dyn TableLike)
            .collect(),
    }
}

/// The line of each entry's first key: where a report says the ignore is.
fn first_key_lines(src: &Source, item: &Item) -> Vec<usize> {
    entry_tables(item)
        .into_iter()
        .map(|t| {
            src.line_of(
                t.iter()
                    .next()
                    .and_then(|(k, _)| t.key(k))
                    .and_then(|k| k.span()),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainlint_checks::ports::LossKind;

    #[test]
    fn schema_defaults_are_the_code_defaults_and_the_init_template_reads_back_as_them() {
        let schema = config_schema();
        let defaults = serde_json::to_value(ConfigFile::default()).unwrap();
        for (section, object) in schema["properties"].as_object().unwrap() {
            for (key, prop) in object["properties"].as_object().unwrap() {
                assert_eq!(prop["default"], defaults[section][key], "{section}.{key}");
                assert!(
                    prop["description"].as_str().is_some_and(|d| d.len() > 5),
                    "{section}.{key} is undocumented"
                );
            }
        }
        // `trainlint init`'s template, read back, is exactly the defaults (and every check's options).
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("trainlint.toml");
        std::fs::write(&p, init_template(&[])).unwrap();
        let mut s = Settings::default();
        load_file(&p, &mut s).unwrap();
        let d = Settings::default();
        assert_eq!(
            format!("{:?}", (&s.model, &s.data, &s.log, &s.setup, &s.run)),
            format!("{:?}", (&d.model, &d.data, &d.log, &d.setup, &d.run))
        );
        for check in registry::all() {
            let id = check.info().id;
            assert_eq!(
                s.level(id, Level::Allow),
                check.info().default_level,
                "{id}"
            );
            let read = s.options(id);
            let read = read.as_object().unwrap();
            for (k, v) in check.default_options().as_object().unwrap() {
                let same = match (v.as_f64(), read[k].as_f64()) {
                    (Some(a), Some(b)) => (a - b).abs() <= 1e-12 * a.abs().max(1.0),
                    _ => *v == read[k],
                };
                assert!(same, "{id}.{k}: template {} vs default {v}", read[k]);
            }
        }
    }

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
        assert!(s.model.path.as_ref().unwrap().ends_with("m.pt"));
        assert_eq!(s.data.inputs, "x");
        assert_eq!(s.setup.lr, 1.0);
        assert!(!s.setup.shuffle);
        assert_eq!(s.setup.loss, Some(LossKind::Bce));
        assert_eq!(s.level("init-std", Level::Deny), Level::Warn);
        assert_eq!(s.options("init-std")["band_factor"], 4.0);
        assert!(s.selected("init-std", Group::Model));
    }

    /// Loading `text` fails with a message that contains `says`.
    fn refused(text: &str, says: &str) -> ConfigError {
        let e = load(text).unwrap_err();
        assert!(e.message.contains(says), "{text:?}: {}", e.message);
        e
    }

    /// As [`refused`], the error pointing at `line:column`.
    fn refused_at(text: &str, says: &str, at: (usize, usize)) -> ConfigError {
        let e = refused(text, says);
        assert_eq!((e.line, e.column), at, "{text:?}");
        e
    }

    #[test]
    fn the_unknown_key_is_read_out_of_serdes_message() {
        let list = "unknown field `batch_sise`, expected one of `lr`, `batch_size`";
        assert_eq!(unknown_field(list), Some("batch_sise"));
        let none = "unknown field `a`, b`, there are no fields";
        assert_eq!(unknown_field(none), Some("a`, b"));
        assert_eq!(
            unknown_field("invalid type: string \"x\", expected f64"),
            None
        );
    }

    #[test]
    fn misspelled_key_points_at_line_and_column_with_a_suggestion() {
        let key = "unknown key `batch_sise` in [setup]; did you mean `batch_size`?";
        let e = refused_at("[setup]\nlr = 0.1\nbatch_sise = 4\n", key, (3, 1));
        assert!(e.render_snippet().unwrap().contains("^^^^^^^^^^"));
    }

    #[test]
    fn bad_values_point_at_the_value() {
        let lr = "setup.lr: expected a number, found string";
        refused_at("[setup]\nlr = \"fast\"\n", lr, (2, 6));
        refused("[setup]\noptimizer = \"adan\"\n", "did you mean \"adam\"?");
        refused(
            "[checks.init-std]\nband_factor = true\n",
            "checks.init-std.band_factor: expected a number, found boolean",
        );
        // Bounds come from the options struct's schema; NaN never passes.
        let steps = "[checks.overfit-batch]\nsteps = 0\n";
        refused_at(steps, "must be at least 1, found 0", (2, 9));
        refused(
            "[checks.identity-overfit]\nlr = -0.1\n",
            "must be greater than 0",
        );
        refused(
            "[checks.init-std]\nmode = \"fixd\"\n",
            "did you mean \"fixed\"?",
        );
        refused("[setup]\nmomentum = nan\n", "must be a finite number");
        refused("[setup]\nweight_decay = -1.0\n", "must be at least 0");
        refused("[checks.init-stdd]\n", "did you mean `init-std`?");
    }

    #[test]
    fn an_empty_config_file_loads_as_the_defaults() {
        let s = load("").unwrap();
        assert!(s.config_path.is_some());
        assert_eq!((s.model.path, s.data.path, s.log.path), (None, None, None));
        assert_eq!(s.setup.lr, Settings::default().setup.lr);
    }

    #[test]
    fn a_pyproject_that_names_tool_trainlint_only_in_a_comment_does_not_stop_the_search() {
        let root = tempfile::tempdir().unwrap();
        let sub = root.path().join("pkg");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(
            root.path().join("pyproject.toml"),
            "[tool.trainlint]\nmodel = { path = \"m.pt\" }\n",
        )
        .unwrap();
        let pyproject = sub.join("pyproject.toml");
        std::fs::write(
            &pyproject,
            "# configure in the parent's [tool.trainlint]\n[project]\nname = \"x\"\n",
        )
        .unwrap();
        let parent = root.path().canonicalize().unwrap().join("pyproject.toml");
        assert_eq!(discover(&sub).unwrap(), Some(parent));
        // A real table is found where it is; a broken file that names it is reported, not skipped.
        let here = sub.canonicalize().unwrap().join("pyproject.toml");
        std::fs::write(&pyproject, "[tool.trainlint.model]\npath = \"m.pt\"\n").unwrap();
        assert_eq!(discover(&sub).unwrap(), Some(here.clone()));
        std::fs::write(&pyproject, "[tool.trainlint\n").unwrap();
        assert_eq!(discover(&sub).unwrap(), Some(here));
    }

    #[test]
    fn ignores_need_a_reason() {
        refused("[[ignore]]\ncheck = \"init-std\"\n", "needs `reason");
        let s = load("[[ignore]]\ncheck = \"init-std\"\nreason = \"zero-init head\"\n").unwrap();
        assert_eq!(s.ignores[0].check, "init-std");
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// Valid configs to mutate: `init`'s template (every section and check) and a dense one.
        fn seeds() -> Vec<String> {
            vec![
                init_template(&[]),
                "[model]\npath = \"m.pt\"\noutput = 0\n[data]\npath = \"d.npz\"\n[setup]\nlr = 1e-3\n\
                 loss = \"cross_entropy\"\n[run]\nselect = [\"ALL\"]\n[checks.init-std]\nlevel = \"warn\"\n\
                 [[ignore]]\ncheck = \"init-std\"\nlocation = \"fc1\"\nreason = \"why\"\n"
                    .to_string(),
            ]
        }

        /// Pieces of TOML that stress the parser and the reader: headers, quotes, odd numbers.
        const TOKENS: &[&str] = &[
            "[",
            "]",
            "[[",
            "]]",
            "=",
            "\"",
            "'''",
            "\n",
            "{",
            "}",
            ",",
            ".",
            "#",
            "\\u",
            "é",
            "\u{0}",
            "[checks.",
            "[[ignore]]",
            "[tool.trainlint]",
            "level = ",
            "nan",
            "inf",
            "-1",
            "0",
            "1e309",
            "99999999999999999999",
            "true",
            "[]",
            "{}",
            "\"x\"",
            "path = ",
            "select = ",
            "1979-05-27",
        ];

        fn mutated() -> impl Strategy<Value = String> {
            let edit = (
                any::<bool>(),
                any::<prop::sample::Index>(),
                0..8usize,
                0..TOKENS.len(),
            );
            (0..2usize, prop::collection::vec(edit, 1..10)).prop_map(|(seed, edits)| {
                let mut chars: Vec<char> = seeds()[seed].chars().collect();
                for (insert, at, len, token) in edits {
                    let at = at.index(chars.len() + 1);
                    if insert {
                        chars.splice(at..at, TOKENS[token].chars());
                    } else {
                        let end = (at + len).min(chars.len());
                        chars.drain(at..end);
                    }
                }
                chars.into_iter().collect()
            })
        }

        fn config_text() -> impl Strategy<Value = String> {
            prop_oneof![any::<String>(), "[ -~\n]{0,300}", mutated(), mutated()]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Whatever the file holds, loading it gives settings or a ConfigError, never a panic; and
            /// the error renders (its snippet slices the text at the error's span).
            #[test]
            fn arbitrary_and_mutated_configs_never_panic_the_loader(
                text in config_text(),
                as_pyproject in any::<bool>(),
            ) {
                let dir = tempfile::tempdir().unwrap();
                let (name, text) = if as_pyproject {
                    ("pyproject.toml", format!("[tool.trainlint]\n{text}"))
                } else {
                    ("trainlint.toml", text)
                };
                let path = dir.path().join(name);
                std::fs::write(&path, &text).unwrap();
                let _ = discover(dir.path());
                let mut settings = Settings::default();
                if let Err(e) = load_file(&path, &mut settings) {
                    prop_assert!(!e.to_string().is_empty());
                    let _ = e.render_snippet();
                }
            }
        }
    }
}
