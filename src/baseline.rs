//! `--write-baseline FILE` records today's findings; `--baseline FILE` then reports only new ones and
//! lists recorded findings that no longer occur (stale entries).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::run::{CheckRun, Status};

/// Version 2 keys findings by kind.
const VERSION: u32 = 2;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// The finding's kind id (`check/kind`; `check-failed:CHECK` for a check that failed).
    pub kind: String,
    /// The finding's location as the text report shows it (empty when it has none).
    pub location: String,
    pub count: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Baseline {
    pub version: u32,
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BaselineOutcome {
    /// Findings present in the baseline, not reported again.
    pub hidden: usize,
    /// Baseline entries (with the count) that no longer occur: fixed, worth removing from the baseline.
    pub stale: Vec<Entry>,
}

/// A finding's identity in a baseline: its kind (a `check-failed` names the check that failed) and its
/// location, as [`trainlint_checks::Finding::identity`] gives it.
fn key(f: &trainlint_checks::Finding) -> (String, String) {
    f.identity()
}

/// The baseline file's text for today's findings, and how many findings it records.
pub fn render(runs: &[CheckRun]) -> (String, usize) {
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in runs {
        for f in &r.findings {
            *counts.entry(key(f)).or_default() += 1;
        }
    }
    let total = counts.values().sum();
    let baseline = Baseline {
        version: VERSION,
        entries: counts
            .into_iter()
            .map(|((kind, location), count)| Entry {
                kind,
                location,
                count,
            })
            .collect(),
    };
    let text = serde_json::to_string_pretty(&baseline).expect("baseline serialises") + "\n";
    (text, total)
}

/// The largest baseline file read: tens of thousands of entries take a few MiB.
pub const MAX_BASELINE_BYTES: u64 = 64 << 20;

/// Why a `--baseline` file cannot be used (the CLI's exit 2).
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// The file cannot be opened or read; `reason` in the data readers' words.
    #[error("cannot read baseline {}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("cannot read baseline {}: it is larger than {} MiB, the most trainlint reads of a baseline", path.display(), MAX_BASELINE_BYTES >> 20)]
    TooLarge { path: PathBuf },
    /// Not JSON of a baseline: serde's reason, cut to one short printable line.
    #[error("{} is not a trainlint baseline: {reason}", path.display())]
    NotABaseline { path: PathBuf, reason: String },
    #[error("{}: baseline version {version} is not {VERSION} (version 1 keyed findings by check, not by kind): rewrite it with --write-baseline", path.display())]
    Version { path: PathBuf, version: u32 },
}

pub fn read(path: &Path) -> Result<Baseline, BaselineError> {
    use std::io::Read;
    let cannot = |reason: String| BaselineError::Unreadable {
        path: path.to_path_buf(),
        reason,
    };
    // A FIFO would block the run and a device (`/dev/zero`) never ends: only a regular file is read.
    let file =
        crate::data::paths::open_regular(path, "the --baseline file").map_err(|e| match e {
            crate::data::DataError::Unreadable { reason, .. } => cannot(reason),
            crate::data::DataError::Missing(_) => cannot("it does not exist".into()),
            other => cannot(other.to_string()),
        })?;
    let mut text = String::new();
    file.take(MAX_BASELINE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| cannot(crate::data::paths::describe_io(&e)))?;
    if text.len() as u64 > MAX_BASELINE_BYTES {
        return Err(BaselineError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let b: Baseline = serde_json::from_str(&text).map_err(|e| {
        // serde quotes the offending value: keep the message one short line.
        let why = e.to_string();
        let why = match why.char_indices().nth(200) {
            Some((cut, _)) => format!("{}…", &why[..cut]),
            None => why,
        };
        BaselineError::NotABaseline {
            path: path.to_path_buf(),
            reason: crate::data::paths::printable(&why),
        }
    })?;
    if b.version != VERSION {
        return Err(BaselineError::Version {
            path: path.to_path_buf(),
            version: b.version,
        });
    }
    Ok(b)
}

/// Remove the findings the baseline knows (up to its count per check and location).
pub fn apply(baseline: &Baseline, runs: &mut [CheckRun]) -> BaselineOutcome {
    let mut left: BTreeMap<(String, String), usize> = baseline
        .entries
        .iter()
        .map(|e| ((e.kind.clone(), e.location.clone()), e.count))
        .collect();
    let mut hidden = 0;
    for r in runs.iter_mut() {
        let mut kept = Vec::new();
        for f in std::mem::take(&mut r.findings) {
            let k = key(&f);
            match left.get_mut(&k) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    hidden += 1;
                }
                _ => kept.push(f),
            }
        }
        r.findings = kept;
        if r.status == Status::Findings && r.findings.is_empty() {
            r.status = Status::Passed;
        }
    }
    let stale = left
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|((kind, location), count)| Entry {
            kind,
            location,
            count,
        })
        .collect();
    BaselineOutcome { hidden, stale }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::fuzz::{config, corpus, fuzz_one, mutated, one_line};

    #[test]
    fn the_seed_baselines_read_or_say_why() {
        for (name, bytes) in corpus("baseline") {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join(&name);
            std::fs::write(&p, &bytes).unwrap();
            let r = super::read(&p);
            assert_eq!(r.is_ok(), name != "version1.json", "{name}: {:?}", r.err());
        }
    }

    #[test]
    fn a_huge_value_in_a_baseline_is_not_echoed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.json");
        let text = format!(
            "{{\"version\": \"{}\", \"entries\": []}}",
            "v".repeat(100_000)
        );
        std::fs::write(&p, text).unwrap();
        let e = super::read(&p).unwrap_err().to_string();
        assert!(
            e.len() < 400 && e.contains("is not a trainlint baseline: invalid type"),
            "{e}"
        );
    }

    proptest! {
        #![proptest_config(config(1500))]

        /// The `--baseline` parser: mutated seeds end in Ok or a one-line Err.
        #[test]
        fn fuzz_baseline((seed, edits) in mutated()) {
            fuzz_one("baseline", seed, &edits, |p| one_line(super::read(p)))?;
        }
    }
}
