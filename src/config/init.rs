//! `trainlint init`'s config: the template with what the given model and data fill in (their
//! paths as the config reads them back, the data's inputs and targets keys, and the task).
use std::path::{Path, PathBuf};

use crate::data;

/// Why the starting config cannot be written (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// A path could not be made absolute (the working directory is gone).
    #[error("{0}")]
    Absolute(#[from] std::io::Error),
}

/// The text of `trainlint.toml` for folder `dir`, filled from `model` and `data` where given.
pub fn starter(dir: &Path, model: Option<&Path>, data: Option<&Path>) -> Result<String, InitError> {
    // Paths on the command line mean what they mean to the shell (the working directory), as they do
    // for `check`; the config stores them relative to its own folder, which is how it reads them back.
    let mut filled: Vec<(&str, String)> = Vec::new();
    if let Some(m) = model {
        let written = path_for_config(m, dir)?;
        filled.push(("model.path", format!("{:?}", written.display().to_string())));
    }
    if let Some(d) = data {
        let arrays = data::read_arrays(d)?;
        let written = path_for_config(d, dir)?;
        filled.push(("data.path", format!("{:?}", written.display().to_string())));
        let pick = |preferred: &[&str], want_int: Option<bool>| -> Option<&data::Array> {
            preferred
                .iter()
                .find_map(|p| arrays.iter().find(|a| a.name == *p))
                .or_else(|| {
                    arrays
                        .iter()
                        .find(|a| want_int.is_none_or(|w| w != a.tensor.is_floating_point()))
                })
        };
        let inputs = pick(
            &["inputs", "input", "x", "images", "X", "features"],
            Some(false),
        );
        let targets = pick(&["targets", "target", "y", "labels", "Y", "label"], None)
            .filter(|t| inputs.is_none_or(|i| i.name != t.name))
            .or_else(|| {
                arrays
                    .iter()
                    .find(|a| inputs.is_none_or(|i| i.name != a.name))
            });
        if let Some(i) = inputs {
            filled.push(("data.inputs", format!("{:?}", i.name)));
        }
        if let Some(t) = targets {
            filled.push(("data.targets", format!("{:?}", t.name)));
        }
        if let (Some(i), Some(t)) = (inputs, targets) {
            // Float rows of class probabilities (one-hot, label-smoothed, mixup) are classification
            // too, as `task = "auto"` reads them (checked before the image-to-image shape rule).
            let probabilities = t.tensor.is_floating_point()
                && t.tensor.dim() >= 2
                && t.tensor.size()[1] >= 2
                && matches!(
                    trainlint_checks::train::probability_problem(&t.tensor),
                    Ok(None)
                );
            let task = if !t.tensor.is_floating_point() || probabilities {
                "classification"
            } else if i.tensor.size() == t.tensor.size() && i.tensor.dim() >= 3 {
                "image-to-image"
            } else {
                "regression"
            };
            filled.push(("setup.task", format!("{task:?}")));
        }
    }
    Ok(super::init_template(&filled))
}

/// A path given relative to the working directory, as a config file in `config_dir` must spell it:
/// absolute paths stay absolute; relative ones become relative to `config_dir` (`../runs/model.pt`).
fn path_for_config(path: &Path, config_dir: &Path) -> std::io::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let (path, config_dir) = (absolute(path)?, absolute(config_dir)?);
    Ok(relative_to(&path, &config_dir).unwrap_or(path))
}

/// `p` against the working directory, without `.` or `..`: lexically, so that a symlinked sample stays
/// the link the user named (and a model may be exported after `init`).
fn absolute(p: &Path) -> std::io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in std::path::absolute(p)?.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// `path` relative to `base` (both absolute and normalised), or `None` when they share nothing but the
/// root, where an absolute path says more than a chain of `..`.
fn relative_to(path: &Path, base: &Path) -> Option<PathBuf> {
    let (p, b): (Vec<_>, Vec<_>) = (path.components().collect(), base.components().collect());
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common <= 1 {
        return None;
    }
    let mut out: PathBuf = b[common..].iter().map(|_| "..").collect();
    out.extend(&p[common..]);
    Some(out)
}
