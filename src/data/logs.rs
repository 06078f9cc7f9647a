//! Loss logs: CSV with a header row, or JSONL with one object per line. An optional `step` column is
//! the x axis (the row number otherwise); the other numeric columns are losses.
use std::collections::BTreeMap;
use std::path::Path;

use trainlint_checks::LossLog;

use super::DataError;

fn line_err(path: &Path, line: usize, reason: impl Into<String>) -> DataError {
    DataError::Line {
        path: path.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

/// Rows of (column -> value), with each row's line number.
type Rows = Vec<(usize, BTreeMap<String, f64>)>;

fn parse_csv(path: &Path, text: &str) -> Result<(Vec<String>, Rows), DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| line_err(path, 1, format!("bad header: {e}")))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
            line_err(path, line, e.to_string())
        })?;
        let line = record.position().map(|p| p.line() as usize).unwrap_or(0);
        let mut row = BTreeMap::new();
        for (name, cell) in header.iter().zip(record.iter()) {
            let cell = cell.trim();
            if cell.is_empty() {
                continue;
            }
            let value = parse_number(cell).ok_or_else(|| {
                line_err(
                    path,
                    line,
                    format!("column `{name}`: {cell:?} is not a number"),
                )
            })?;
            row.insert(name.clone(), value);
        }
        rows.push((line, row));
    }
    Ok((header, rows))
}

fn parse_number(cell: &str) -> Option<f64> {
    match cell.to_ascii_lowercase().as_str() {
        "nan" => Some(f64::NAN),
        "inf" | "+inf" | "infinity" => Some(f64::INFINITY),
        "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        _ => cell.parse().ok(),
    }
}

fn parse_jsonl(path: &Path, text: &str) -> Result<(Vec<String>, Rows), DataError> {
    let mut columns: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| line_err(path, line_no, format!("invalid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| line_err(path, line_no, "expected a JSON object"))?;
        let mut row = BTreeMap::new();
        for (k, v) in obj {
            // Non-numeric fields (a phase name, a timestamp string) are not losses.
            let number = match v {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::String(s) => parse_number(s).filter(|x| !x.is_finite()),
                serde_json::Value::Null => Some(f64::NAN),
                _ => None,
            };
            if let Some(x) = number {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
                row.insert(k.clone(), x);
            }
        }
        rows.push((line_no, row));
    }
    Ok((columns, rows))
}

/// Load a loss log. `total`: the total-loss column (default `loss` when present); `terms`: the
/// loss-term columns (default every `loss_*` column).
pub fn load_log(path: &Path, total: Option<&str>, terms: &[String]) -> Result<LossLog, DataError> {
    if !path.is_file() {
        return Err(DataError::Missing(path.to_path_buf()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| DataError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (columns, rows) = match ext.as_str() {
        "jsonl" | "ndjson" | "json" => parse_jsonl(path, &text)?,
        "csv" | "tsv" | "txt" => parse_csv(path, &text)?,
        _ => {
            return Err(DataError::Log {
                path: path.to_path_buf(),
                reason: "unsupported loss-log format (use .csv or .jsonl)".into(),
            })
        }
    };
    let log_err = |reason: String| DataError::Log {
        path: path.to_path_buf(),
        reason,
    };
    if rows.is_empty() {
        return Err(log_err("the log has no rows".into()));
    }
    let has_step = columns.iter().any(|c| c == "step");
    let steps: Vec<f64> = rows
        .iter()
        .enumerate()
        .map(|(i, (_, r))| {
            if has_step {
                r.get("step").copied().unwrap_or(f64::NAN)
            } else {
                i as f64
            }
        })
        .collect();
    let loss_columns: Vec<&String> = columns.iter().filter(|c| *c != "step").collect();
    let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for c in &loss_columns {
        values.insert(
            (*c).clone(),
            rows.iter()
                .map(|(_, r)| r.get(*c).copied().unwrap_or(f64::NAN))
                .collect(),
        );
    }
    let present = || {
        loss_columns
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let total = match total {
        Some(name) if values.contains_key(name) => Some(name.to_string()),
        Some(name) => {
            return Err(log_err(format!(
                "no column `{name}` (columns: {})",
                present()
            )))
        }
        None if values.contains_key("loss") => Some("loss".to_string()),
        None if loss_columns.len() == 1 => Some(loss_columns[0].clone()),
        None => None,
    };
    let terms: Vec<String> = if terms.is_empty() {
        loss_columns
            .iter()
            .filter(|c| c.starts_with("loss_") && Some(c.as_str()) != total.as_deref())
            .map(|c| (*c).clone())
            .collect()
    } else {
        for t in terms {
            if !values.contains_key(t) {
                return Err(log_err(format!(
                    "no loss-term column `{t}` (columns: {})",
                    present()
                )));
            }
        }
        terms.to_vec()
    };
    if total.is_none() && terms.is_empty() {
        return Err(log_err(format!(
            "no loss column found: name it `loss` or `loss_<term>`, or set log.loss (columns: {})",
            present()
        )));
    }
    Ok(LossLog {
        path: path.display().to_string(),
        steps,
        columns: values,
        total,
        terms,
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
            "{\"loss\": 1.0, \"phase\": \"train\"}\n\n{\"loss\": 0.5}\n",
        );
        let log = load_log(&p, None, &[]).unwrap();
        assert_eq!(log.steps, vec![0.0, 1.0]);
        assert_eq!(log.columns["loss"], vec![1.0, 0.5]);
        assert!(!log.columns.contains_key("phase"));
    }

    #[test]
    fn malformed_lines_name_their_line_number() {
        let (_d, p) = write("log.csv", "step,loss\n0,1.0\n1,abc\n");
        let e = load_log(&p, None, &[]).unwrap_err().to_string();
        assert!(
            e.ends_with("log.csv:3: column `loss`: \"abc\" is not a number"),
            "{e}"
        );
        let (_d, p) = write("log.jsonl", "{\"loss\": 1.0}\n{\"loss\": 0.5,\n");
        let e = load_log(&p, None, &[]).unwrap_err().to_string();
        assert!(e.contains("log.jsonl:2: invalid JSON"), "{e}");
        let (_d, p) = write("log.csv", "step,loss\n0,1.0\n1,2.0,3.0\n");
        let e = load_log(&p, None, &[]).unwrap_err().to_string();
        assert!(e.contains("log.csv:3:"), "{e}");
    }
}
