//! Loss logs: CSV with a header row, or JSONL with one object per line, read as a stream. An
//! optional `step` column is the x axis (the row number otherwise) and must increase row by row;
//! the losses are the `loss` column (or `log.loss`) and the `loss_*` term columns (or `log.terms`).
//! Other numeric columns are kept alongside.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use trainlint_checks::LossLog;

use super::budget::bytes_text;
use super::paths::{describe_io, excerpt, metadata, open_regular, printable};
use super::DataError;

/// The most columns a log may have (`step` included): far more than any logger writes per step,
/// few enough that a header or a key per line cannot blow up memory or time.
pub const MAX_COLUMNS: usize = 4096;
/// The longest line (a CSV record, a JSONL object) read.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// The most values a log may hold: every cell written, plus one per row for its step. Each costs
/// 12 bytes as read (a row index and the value), and the loss columns 8 bytes per row once filled.
pub const MAX_VALUES: usize = 16 << 20;

fn line_err(path: &Path, line: usize, reason: impl Into<String>) -> DataError {
    DataError::Line {
        path: path.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

fn parse_number(cell: &str) -> Option<f64> {
    match cell.to_ascii_lowercase().as_str() {
        "nan" => Some(f64::NAN),
        "inf" | "+inf" | "infinity" => Some(f64::INFINITY),
        "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        _ => cell.parse().ok(),
    }
}

/// A column as read: only the rows that have a value, with their row numbers; a log where each
/// column fills a few rows costs its values, not its rows times its columns.
#[derive(Default)]
struct Column {
    rows: Vec<u32>,
    values: Vec<f64>,
    /// The rows whose cell the file wrote as NaN or ±Inf (an empty cell or a JSON null is a missing
    /// value, not listed).
    non_finite: Vec<usize>,
}

impl Column {
    /// The value in `row`, NaN when missing; only the last row is asked for while reading.
    fn last_value(&self, row: usize) -> f64 {
        match (self.rows.last(), self.values.last()) {
            (Some(&r), Some(&v)) if r as usize == row => v,
            _ => f64::NAN,
        }
    }

    /// Every row's value, NaN where missing.
    fn dense(&self, rows: usize) -> Vec<f64> {
        let mut out = vec![f64::NAN; rows];
        for (&r, &v) in self.rows.iter().zip(&self.values) {
            out[r as usize] = v;
        }
        out
    }
}

/// The log's columns as they stream in, one row at a time.
struct Columns<'a> {
    path: &'a Path,
    names: Vec<String>,
    index: HashMap<String, usize>,
    columns: Vec<Column>,
    rows: usize,
    /// Values held so far (cells and steps), against [`MAX_VALUES`].
    values: usize,
    /// The `step` of each row, while every row so far has one.
    steps: Vec<f64>,
    /// The step and line of the last row, to check that steps increase.
    last_step: Option<(f64, usize)>,
    /// The first row without a step, an error once another row has one.
    first_without_step: Option<usize>,
}

impl<'a> Columns<'a> {
    fn new(path: &'a Path) -> Self {
        Columns {
            path,
            names: Vec::new(),
            index: HashMap::new(),
            columns: Vec::new(),
            rows: 0,
            values: 0,
            steps: Vec::new(),
            last_step: None,
            first_without_step: None,
        }
    }

    /// The column's slot, added if it is new; a column past [`MAX_COLUMNS`] is refused at `line`.
    fn column(&mut self, name: &str, line: usize) -> Result<usize, DataError> {
        if let Some(&i) = self.index.get(name) {
            return Ok(i);
        }
        // `step` is a column of the file too, kept apart.
        if self.names.len() + 1 >= MAX_COLUMNS {
            return Err(line_err(
                self.path,
                line,
                format!(
                    "column `{}` would be column {} of the log; trainlint reads at most {MAX_COLUMNS} columns",
                    excerpt(name),
                    self.names.len() + 2
                ),
            ));
        }
        self.names.push(name.to_string());
        self.columns.push(Column::default());
        self.index.insert(name.to_string(), self.names.len() - 1);
        Ok(self.names.len() - 1)
    }

    /// Count `n` more values held, refusing a log past [`MAX_VALUES`].
    fn count(&mut self, line: usize, n: usize) -> Result<(), DataError> {
        self.values += n;
        if self.values > MAX_VALUES {
            return Err(line_err(
                self.path,
                line,
                format!("the log holds more than {MAX_VALUES} values (cells and steps); trainlint reads at most that many"),
            ));
        }
        Ok(())
    }

    /// Add a row of (column, value); `step` goes to the x axis.
    fn push(
        &mut self,
        line: usize,
        cells: Vec<(usize, f64)>,
        step: Option<f64>,
    ) -> Result<(), DataError> {
        let err = |reason: String| Err(line_err(self.path, line, reason));
        match step {
            Some(step) if !step.is_finite() => {
                return err(format!("step {step} is not a finite number"))
            }
            Some(step) => {
                if let Some(first) = self.first_without_step {
                    return Err(line_err(
                        self.path,
                        first,
                        "this row has no `step`, but other rows do",
                    ));
                }
                if let Some((last, last_line)) = self.last_step {
                    // Loggers such as Lightning's CSVLogger write train and validation metrics as
                    // separate rows of one step: rows of a step merge while they fill different columns.
                    if step == last && self.rows > 0 {
                        let row = self.rows - 1;
                        let known = |i: usize| self.columns[i].last_value(row);
                        if let Some((i, _)) = cells
                            .iter()
                            .find(|(i, v)| !v.is_nan() && !known(*i).is_nan() && known(*i) != *v)
                        {
                            return err(format!(
                                "step {step} gives `{}` a second value (line {last_line} has another); steps must increase row by row",
                                excerpt(&self.names[*i])
                            ));
                        }
                        if !cells.iter().any(|(i, v)| !v.is_nan() && known(*i).is_nan()) {
                            return err(format!(
                                "step {step} repeats line {last_line} (a duplicate row); steps must increase row by row"
                            ));
                        }
                        self.count(line, cells.len())?;
                        for (i, value) in cells {
                            let column = &mut self.columns[i];
                            let has_row = column.rows.last() == Some(&(row as u32));
                            let was_missing = column.last_value(row).is_nan();
                            if !has_row {
                                column.rows.push(row as u32);
                                column.values.push(value);
                            } else if !value.is_nan() || was_missing {
                                *column.values.last_mut().expect("the row's value") = value;
                            }
                            if !value.is_finite()
                                && was_missing
                                && column.non_finite.last() != Some(&row)
                            {
                                column.non_finite.push(row);
                            }
                        }
                        return Ok(());
                    }
                    if step <= last {
                        return err(format!(
                            "step {step} does not increase (line {last_line} has step {last}); steps must increase row by row"
                        ));
                    }
                }
                self.last_step = Some((step, line));
                self.steps.push(step);
            }
            None if self.last_step.is_some() => {
                return err("this row has no `step`, but other rows do".into())
            }
            None => {
                self.first_without_step.get_or_insert(line);
            }
        }
        self.count(line, cells.len() + 1)?;
        let row = self.rows;
        for (i, value) in cells {
            let column = &mut self.columns[i];
            if column.rows.last() == Some(&(row as u32)) {
                // The same column twice in one row: the last value stands.
                *column.values.last_mut().expect("the row's value") = value;
                column.non_finite.retain(|&r| r != row);
            } else {
                column.rows.push(row as u32);
                column.values.push(value);
            }
            if !value.is_finite() {
                column.non_finite.push(row);
            }
        }
        self.rows += 1;
        Ok(())
    }
}

/// A reader that refuses a line (outside CSV quotes) longer than [`MAX_LINE_BYTES`], so one huge
/// line cannot make the CSV reader buffer it whole. Quotes are tracked as RFC 4180 writes them
/// (`""` inside a quoted field toggles twice).
struct LineLimit<R> {
    inner: R,
    since_newline: usize,
    in_quotes: bool,
    /// The line being read (1-based; a quoted field's line breaks do not count, so this is where
    /// the record starts).
    line: usize,
    /// The line that passed the limit.
    too_long: Option<usize>,
}

impl<R: Read> Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            match b {
                b'"' => self.in_quotes = !self.in_quotes,
                b'\n' if !self.in_quotes => {
                    self.line += 1;
                    self.since_newline = 0;
                    continue;
                }
                _ => {}
            }
            self.since_newline += 1;
            if self.since_newline > MAX_LINE_BYTES {
                self.too_long = Some(self.line);
                return Err(io::Error::other("line too long"));
            }
        }
        Ok(n)
    }
}

fn too_long(path: &Path, line: usize) -> DataError {
    line_err(
        path,
        line,
        format!(
            "the line is longer than {}, the most trainlint reads in one line of a log",
            bytes_text(MAX_LINE_BYTES as u64)
        ),
    )
}

fn read_csv(path: &Path, file: File, tabs: bool, log: &mut Columns) -> Result<(), DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .delimiter(if tabs { b'\t' } else { b',' })
        .from_reader(LineLimit {
            inner: BufReader::new(file),
            since_newline: 0,
            in_quotes: false,
            line: 1,
            too_long: None,
        });
    let header: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(|h| h.trim().to_string()).collect(),
        Err(e) => {
            return Err(match reader.get_ref().too_long {
                Some(line) => too_long(path, line),
                None => line_err(
                    path,
                    1,
                    format!("bad header: {}", printable(&e.to_string())),
                ),
            })
        }
    };
    if header.len() > MAX_COLUMNS {
        return Err(line_err(
            path,
            1,
            format!(
                "the header has {} columns; trainlint reads at most {MAX_COLUMNS}",
                header.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    let mut slots = Vec::new(); // None: the step column
    for name in &header {
        if !seen.insert(name.as_str()) {
            return Err(line_err(
                path,
                1,
                format!("column `{}` appears twice in the header", excerpt(name)),
            ));
        }
        slots.push(if name == "step" {
            None
        } else {
            Some(log.column(name, 1)?)
        });
    }
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(e) => {
                if let Some(line) = reader.get_ref().too_long {
                    return Err(too_long(path, line));
                }
                let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
                return Err(line_err(path, line, printable(&e.to_string())));
            }
        }
        let line = record.position().map(|p| p.line() as usize).unwrap_or(0);
        let mut cells = Vec::new();
        let mut step = None;
        for ((name, slot), cell) in header.iter().zip(&slots).zip(record.iter()) {
            let cell = cell.trim();
            if cell.is_empty() {
                continue;
            }
            let value = parse_number(cell).ok_or_else(|| {
                line_err(
                    path,
                    line,
                    format!(
                        "column `{}`: \"{}\" is not a number",
                        excerpt(name),
                        excerpt(cell)
                    ),
                )
            })?;
            match slot {
                Some(i) => cells.push((*i, value)),
                None => step = Some(value),
            }
        }
        log.push(line, cells, step)?;
    }
}

fn read_jsonl(path: &Path, file: File, log: &mut Columns) -> Result<(), DataError> {
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| line_err(path, line_no + 1, describe_io(&e)))?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if body.len() > MAX_LINE_BYTES {
            return Err(too_long(path, line_no));
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let value: serde_json::Value = serde_json::from_slice(&buf)
            .or_else(|e| {
                // Python's json.dumps writes NaN, Infinity and -Infinity bare (not JSON): read them
                // as the strings "NaN", … which the number parser below accepts.
                quote_bare_non_finite(&buf)
                    .and_then(|fixed| serde_json::from_slice(&fixed).ok())
                    .ok_or(e)
            })
            .map_err(|e| line_err(path, line_no, format!("invalid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| line_err(path, line_no, "expected a JSON object"))?;
        let mut cells = Vec::new();
        let mut step = None;
        for (k, v) in obj {
            // Non-numeric fields (a phase name, a timestamp string) are not losses.
            let number = match v {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::String(s) => parse_number(s).filter(|x| !x.is_finite()),
                // A JSON null is a missing value (pandas writes NaN as null): the column, no cell.
                serde_json::Value::Null => {
                    if k != "step" {
                        log.column(k, line_no)?;
                    }
                    None
                }
                _ => None,
            };
            match number {
                Some(x) if k == "step" => step = Some(x),
                Some(x) => cells.push((log.column(k, line_no)?, x)),
                None => {}
            }
        }
        log.push(line_no, cells, step)?;
    }
}

/// The line with Python's bare `NaN`, `Infinity` and `-Infinity` tokens (outside strings) quoted, or
/// None when it holds none.
fn quote_bare_non_finite(line: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(line.len() + 8);
    let (mut in_string, mut escaped, mut changed) = (false, false, false);
    let mut i = 0;
    while i < line.len() {
        let c = line[i];
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
            out.push(c);
            i += 1;
            continue;
        }
        let token = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|t| line[i..].starts_with(t));
        match token {
            Some(t) => {
                out.push(b'"');
                out.extend_from_slice(t);
                out.push(b'"');
                i += t.len();
                changed = true;
            }
            None => {
                out.push(c);
                i += 1;
            }
        }
    }
    changed.then_some(out)
}

/// Load a loss log. `total`: the total-loss column (default `loss` when present); `terms`: the
/// loss-term columns (default every `loss_*` column). One of them must exist and every loss column
/// needs a value (NaN and ±Inf count: the `nonfinite` check reports them, the other checks judge the
/// finite rows); a `step` column must increase row by row.
pub fn load_log(path: &Path, total: Option<&str>, terms: &[String]) -> Result<LossLog, DataError> {
    let log_err = |reason: String| DataError::Log {
        path: path.to_path_buf(),
        reason,
    };
    if metadata(path)?.is_dir() {
        return Err(log_err("is a folder, not a loss log (CSV or JSONL)".into()));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut log = Columns::new(path);
    let open = || open_regular(path, "the loss log");
    match ext.as_str() {
        "jsonl" | "ndjson" | "json" => read_jsonl(path, open()?, &mut log)?,
        "csv" | "txt" => read_csv(path, open()?, false, &mut log)?,
        "tsv" => read_csv(path, open()?, true, &mut log)?,
        _ => {
            return Err(log_err(
                "unsupported loss-log format (use .csv or .jsonl)".into(),
            ))
        }
    }
    if log.rows == 0 {
        return Err(log_err("the log has no rows".into()));
    }
    let rows = log.rows;
    let steps = if log.last_step.is_some() {
        log.steps
    } else {
        (0..rows).map(|i| i as f64).collect()
    };
    let present = {
        const SHOWN: usize = 12;
        let mut shown: Vec<String> = log
            .names
            .iter()
            .take(SHOWN)
            .map(|c| format!("`{}`", excerpt(c)))
            .collect();
        if log.names.len() > SHOWN {
            shown.push(format!("… {} more", log.names.len() - SHOWN));
        }
        shown.join(", ")
    };
    let total = match total {
        Some(name) if log.index.contains_key(name) => Some(name.to_string()),
        Some(name) => {
            return Err(log_err(format!(
                "no column `{}` (columns: {present})",
                excerpt(name)
            )))
        }
        None if log.index.contains_key("loss") => Some("loss".to_string()),
        None => None,
    };
    let terms: Vec<String> = if terms.is_empty() {
        log.names
            .iter()
            .filter(|c| c.starts_with("loss_") && Some(c.as_str()) != total.as_deref())
            .cloned()
            .collect() // in file order
    } else {
        for t in terms {
            if !log.index.contains_key(t) {
                return Err(log_err(format!(
                    "no loss-term column `{}` (columns: {present})",
                    excerpt(t)
                )));
            }
        }
        terms.to_vec()
    };
    if total.is_none() && terms.is_empty() {
        return Err(log_err(format!(
            "no loss column found: name it `loss` or `loss_<term>`, or set log.loss (columns: {present})"
        )));
    }
    // Only the loss columns are handed on (the checks judge nothing else), each filled to every row.
    let loss_columns: Vec<&String> = {
        let mut seen = HashSet::new();
        total
            .iter()
            .chain(&terms)
            .filter(|c| seen.insert(c.as_str()))
            .collect()
    };
    if loss_columns.len().saturating_mul(rows) > MAX_VALUES {
        return Err(log_err(format!(
            "{} loss columns of {rows} rows are more than {MAX_VALUES} values; trainlint reads at most that many (name fewer columns in log.loss_terms)",
            loss_columns.len()
        )));
    }
    let mut columns = BTreeMap::new();
    let mut non_finite = BTreeMap::new();
    for name in loss_columns {
        let column = &log.columns[log.index[name.as_str()]];
        if column.values.is_empty() {
            return Err(log_err(format!("column `{}` has no value", excerpt(name))));
        }
        if !column.values.iter().any(|v| v.is_finite()) {
            return Err(log_err(format!(
                "column `{}` has no finite value (its {} values are NaN or ±Inf): the run diverged before its first logged step, so there is no loss curve to audit",
                excerpt(name),
                column.values.len()
            )));
        }
        columns.insert(name.clone(), column.dense(rows));
        if !column.non_finite.is_empty() {
            non_finite.insert(name.clone(), column.non_finite.clone());
        }
    }
    Ok(LossLog {
        path: path.display().to_string(),
        steps,
        columns,
        total,
        terms,
        non_finite,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    fn error(name: &str, text: &str) -> String {
        let (_d, p) = write(name, text);
        load_log(&p, None, &[]).err().unwrap().to_string()
    }

    /// Each (file name, text, what the error says) is refused with that message.
    fn refused(cases: &[(&str, &str, &str)]) {
        for (name, text, says) in cases {
            let e = error(name, text);
            assert!(e.contains(says), "{name} {text:?}: {e}");
        }
    }

    #[test]
    fn csv_with_steps_and_terms() {
        let (_d, p) = write(
            "log.csv",
            "step,loss,loss_mse,loss_feat\n0,2.5,0.5,2.0\n10,1.5,0.25,1.25\n",
        );
        let log = load_log(&p, None, &[]).unwrap();
        assert_eq!(log.steps, vec![0.0, 10.0]);
        assert_eq!(log.total.as_deref(), Some("loss"));
        assert_eq!(
            log.terms,
            vec!["loss_mse".to_string(), "loss_feat".to_string()],
            "file order"
        );
        assert_eq!(log.columns["loss_mse"], vec![0.5, 0.25]);
    }

    #[test]
    fn jsonl_without_steps_uses_row_numbers_and_skips_text_fields() {
        let (_d, p) = write(
            "log.jsonl",
            "{\"loss\": 1.0, \"phase\": \"train\"}\n\n{\"loss\": 0.5, \"loss_b\": 0.1, \"lr\": 0.1}\n",
        );
        let log = load_log(&p, None, &[]).unwrap();
        assert_eq!(log.steps, vec![0.0, 1.0]);
        assert_eq!(log.columns["loss"], vec![1.0, 0.5]);
        assert!(
            log.columns["loss_b"][0].is_nan(),
            "a column that starts late"
        );
        assert_eq!(log.columns["loss_b"][1], 0.1);
        assert!(!log.columns.contains_key("phase"));
        assert!(
            !log.columns.contains_key("lr"),
            "only loss columns are handed on"
        );
    }

    #[test]
    fn tab_separated_logs_split_on_tabs() {
        let (_d, p) = write("log.tsv", "step\tloss\n0\t1.0\n1\t0.5\n");
        assert_eq!(
            load_log(&p, None, &[]).unwrap().columns["loss"],
            vec![1.0, 0.5]
        );
    }

    #[test]
    fn malformed_lines_name_their_line_number() {
        refused(&[
            (
                "log.csv",
                "step,loss\n0,1.0\n1,abc\n",
                "log.csv:3: column `loss`: \"abc\" is not a number",
            ),
            (
                "log.jsonl",
                "{\"loss\": 1.0}\n{\"loss\": 0.5,\n",
                "log.jsonl:2: invalid JSON",
            ),
            ("log.csv", "step,loss\n0,1.0\n1,2.0,3.0\n", "log.csv:3:"),
            (
                "log.csv",
                "step,loss,loss\n0,1.0,2.0\n",
                "log.csv:1: column `loss` appears twice",
            ),
        ]);
    }

    #[test]
    fn another_single_column_is_not_taken_for_the_loss() {
        let e = error("log.csv", "step,accuracy\n0,0.5\n1,0.6\n");
        assert!(e.contains("no loss column found"), "{e}");
        let (_d, p) = write("log.csv", "step,accuracy\n0,0.5\n1,0.6\n");
        let log = load_log(&p, Some("accuracy"), &[]).unwrap();
        assert_eq!(log.total.as_deref(), Some("accuracy"), "named in log.loss");
        let (_d, p) = write("log.csv", "step,loss_a,loss_b\n0,0.5,1\n1,0.6,2\n");
        let log = load_log(&p, None, &[]).unwrap();
        assert_eq!((log.total, log.terms.len()), (None, 2));
    }

    #[test]
    fn loss_columns_need_a_value_but_nan_and_inf_are_values() {
        refused(&[
            (
                "log.csv",
                "step,loss\n0,\n1,\n",
                "log.csv: column `loss` has no value",
            ),
            (
                "log.jsonl",
                "{\"loss\": null}\n{\"loss\": null}\n",
                "column `loss` has no value",
            ),
        ]);
        // Written NaN / Inf load, listed by row; empty cells and nulls are missing, not listed.
        let (_d, p) = write(
            "log.csv",
            "step,loss,loss_a\n0,nan,1\n1,inf,\n2,,-inf\n3,1.5,2\n",
        );
        let log = load_log(&p, None, &[]).unwrap();
        assert_eq!(log.non_finite["loss"], vec![0, 1]);
        assert_eq!(log.non_finite["loss_a"], vec![2]);
        assert_eq!(log.columns["loss"][3], 1.5);
        let (_d, p) = write(
            "log.jsonl",
            "{\"loss\": null}\n{\"loss\": \"NaN\"}\n{\"loss\": 0.5}\n",
        );
        let log = load_log(&p, None, &[]).unwrap();
        assert_eq!(log.non_finite["loss"], vec![1]);
    }

    #[test]
    fn python_json_dumps_bare_nan_and_infinity_are_read() {
        let (_d, p) = write(
            "log.jsonl",
            "{\"step\": 0, \"loss\": 1.5, \"tag\": \"NaN in a string\"}\n{\"step\": 1, \"loss\": NaN}\n{\"step\": 2, \"loss\": -Infinity}\n",
        );
        let log = load_log(&p, None, &[]).unwrap();
        assert_eq!(log.non_finite["loss"], vec![1, 2]);
        assert_eq!(log.columns["loss"][2], f64::NEG_INFINITY);
        let e = error("log.jsonl", "{\"loss\": NaNa}\n");
        assert!(e.contains("log.jsonl:1: invalid JSON"), "{e}");
    }

    #[test]
    fn rows_of_one_step_merge_when_they_fill_different_columns() {
        // Lightning's CSVLogger: a train row and a validation row per step.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.csv");
        std::fs::write(
            &p,
            "epoch,step,train_loss,val_loss\n0,0,1.5,\n0,0,,1.7\n0,1,1.2,\n0,1,,1.4\n0,2,0.9,\n",
        )
        .unwrap();
        let log = load_log(&p, Some("train_loss"), &["val_loss".to_string()]).unwrap();
        assert_eq!(log.steps, vec![0.0, 1.0, 2.0]);
        assert_eq!(log.columns["train_loss"], vec![1.5, 1.2, 0.9]);
        assert_eq!(log.columns["val_loss"][..2], [1.7, 1.4]);
        assert!(log.columns["val_loss"][2].is_nan());
    }

    #[test]
    fn steps_must_increase_from_row_to_row() {
        refused(&[
            (
                "log.csv",
                "step,loss\n0,1\n1,1\n1,1\n",
                "log.csv:4: step 1 repeats line 3 (a duplicate row)",
            ),
            (
                "log.csv",
                "step,loss\n0,1\n1,1\n1,2\n",
                "log.csv:4: step 1 gives `loss` a second value",
            ),
            (
                "log.csv",
                "step,loss\n0,1\n5,1\n3,1\n",
                "log.csv:4: step 3 does not increase (line 3 has step 5)",
            ),
            (
                "log.csv",
                "step,loss\n0,1\n,1\n2,1\n",
                "log.csv:3: this row has no `step`",
            ),
            (
                "log.jsonl",
                "{\"loss\": 1}\n{\"step\": 1, \"loss\": 1}\n",
                "log.jsonl:1: this row has no `step`",
            ),
            (
                "log.csv",
                "step,loss\n0,1\nnan,1\n",
                "log.csv:3: step NaN is not a finite number",
            ),
        ]);
    }
}
