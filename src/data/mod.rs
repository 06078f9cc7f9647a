//! Data samples (`.npz`, `.npy`, `.safetensors`) and loss logs (CSV, JSONL). Files are only read.
mod logs;
mod npy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};
use trainlint_checks::Dataset;

pub use logs::load_log;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("data file {0} does not exist")]
    Missing(PathBuf),
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{path} has no array `{key}` (it has: {present})")]
    MissingKey {
        path: PathBuf,
        key: String,
        present: String,
    },
    #[error("array `{key}` in {path} is empty (shape {shape:?})")]
    Empty {
        path: PathBuf,
        key: String,
        shape: Vec<i64>,
    },
    #[error("array `{key}` in {path} has unsupported dtype {dtype} (use float16/32/64, bfloat16, int8/16/32/64, uint8 or bool)")]
    Dtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    #[error("{path}: `{inputs}` has {n_inputs} samples but `{targets}` has {n_targets} (dim 0 must match)")]
    SampleCount {
        path: PathBuf,
        inputs: String,
        n_inputs: i64,
        targets: String,
        n_targets: i64,
    },
    #[error("unsupported data format {0} (use .npz, .npy (or a folder of them) or .safetensors)")]
    Format(PathBuf),
    #[error("{path}:{line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Log { path: PathBuf, reason: String },
}

/// One named array, as stored.
pub struct Array {
    pub name: String,
    pub tensor: Tensor,
}

fn unreadable(path: &Path, reason: impl ToString) -> DataError {
    DataError::Unreadable {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The `.npy` files of a folder, sorted by name: one array each, named by the file stem.
fn npy_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| unreadable(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy")))
        .collect();
    files.sort();
    Ok(files)
}

fn read_npy(path: &Path) -> Result<Array, DataError> {
    let bytes = std::fs::read(path).map_err(|e| unreadable(path, e))?;
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("array")
        .to_string();
    let tensor = npy::parse(&bytes).map_err(|e| npy_error(path, &name, e))?;
    Ok(Array { name, tensor })
}

/// Every array in a data file, in the file's order. A `.npy` file holds one array: its sibling `.npy`
/// files (as `np.save` per key writes them), or a folder of `.npy` files, give the others.
pub fn read_arrays(path: &Path) -> Result<Vec<Array>, DataError> {
    if path.is_dir() {
        let files = npy_files(path)?;
        if files.is_empty() {
            return Err(unreadable(path, "the folder holds no .npy files"));
        }
        return files.iter().map(|f| read_npy(f)).collect();
    }
    if !path.is_file() {
        return Err(DataError::Missing(path.to_path_buf()));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ext == "npy" {
        let folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut arrays = vec![read_npy(path)?];
        for sibling in npy_files(folder)? {
            if sibling.file_name() != path.file_name() {
                arrays.push(read_npy(&sibling)?);
            }
        }
        return Ok(arrays);
    }
    let bytes = std::fs::read(path).map_err(|e| unreadable(path, e))?;
    match ext.as_str() {
        "npz" => npy::parse_npz(&bytes)
            .map_err(|e| unreadable(path, format!("not a valid .npz archive: {e}")))?
            .into_iter()
            .map(|(name, raw)| {
                let tensor = npy::parse(&raw).map_err(|e| npy_error(path, &name, e))?;
                Ok(Array { name, tensor })
            })
            .collect(),
        "safetensors" => read_safetensors(path, &bytes),
        _ => Err(DataError::Format(path.to_path_buf())),
    }
}

fn npy_error(path: &Path, key: &str, e: npy::NpyError) -> DataError {
    match e {
        npy::NpyError::Dtype(dtype) => DataError::Dtype {
            path: path.to_path_buf(),
            key: key.to_string(),
            dtype,
        },
        npy::NpyError::Format(reason) => unreadable(path, format!("array `{key}`: {reason}")),
    }
}

fn read_safetensors(path: &Path, bytes: &[u8]) -> Result<Vec<Array>, DataError> {
    use safetensors::Dtype;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| unreadable(path, format!("not a valid .safetensors file: {e}")))?;
    let mut names: Vec<(usize, String)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (view.data().as_ptr() as usize, name))
        .collect();
    names.sort(); // file order
    let mut out = Vec::new();
    for (_, name) in names {
        let view = st.tensor(&name).map_err(|e| unreadable(path, e))?;
        let kind = match view.dtype() {
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F32 => Kind::Float,
            Dtype::F64 => Kind::Double,
            Dtype::I8 => Kind::Int8,
            Dtype::I16 => Kind::Int16,
            Dtype::I32 => Kind::Int,
            Dtype::I64 => Kind::Int64,
            Dtype::U8 => Kind::Uint8,
            Dtype::BOOL => Kind::Bool,
            other => {
                return Err(DataError::Dtype {
                    path: path.to_path_buf(),
                    key: name,
                    dtype: format!("{other:?}"),
                })
            }
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let tensor =
            Tensor::f_from_data_size(view.data(), &shape, kind).map_err(|e| unreadable(path, e))?;
        out.push(Array { name, tensor });
    }
    Ok(out)
}

/// The data sample: inputs and targets by key, checked for emptiness and matching sample counts.
/// `max_samples` keeps the first N samples (the order a non-shuffling loader would feed them).
pub fn load_dataset(
    path: &Path,
    input_key: &str,
    target_key: &str,
    max_samples: usize,
) -> Result<Dataset, DataError> {
    let arrays = read_arrays(path)?;
    let mut by_name: BTreeMap<&str, &Tensor> = BTreeMap::new();
    for a in &arrays {
        by_name.insert(&a.name, &a.tensor);
    }
    let present = || {
        arrays
            .iter()
            .map(|a| format!("`{}` {:?}", a.name, a.tensor.size()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let get = |key: &str| -> Result<Tensor, DataError> {
        let t = by_name.get(key).ok_or_else(|| DataError::MissingKey {
            path: path.to_path_buf(),
            key: key.to_string(),
            present: if arrays.is_empty() {
                "no arrays".into()
            } else {
                present()
            },
        })?;
        let shape = t.size();
        if shape.is_empty() || t.numel() == 0 {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
                key: key.to_string(),
                shape,
            });
        }
        Ok(t.shallow_clone())
    };
    let inputs = get(input_key)?;
    let targets = get(target_key)?;
    let (n_in, n_t) = (inputs.size()[0], targets.size()[0]);
    if n_in != n_t {
        return Err(DataError::SampleCount {
            path: path.to_path_buf(),
            inputs: input_key.into(),
            n_inputs: n_in,
            targets: target_key.into(),
            n_targets: n_t,
        });
    }
    let keep = (max_samples as i64).min(n_in).max(1);
    // Float and uint8 (image) inputs become float32, what models take, without rescaling; other
    // integer inputs (token ids for embeddings) become int64.
    let inputs = inputs.narrow(0, 0, keep);
    let inputs = match inputs.kind() {
        Kind::Uint8 | Kind::Bool => inputs.to_kind(Kind::Float),
        _ if inputs.is_floating_point() => inputs.to_kind(Kind::Float),
        _ => inputs.to_kind(Kind::Int64),
    };
    let targets = targets.narrow(0, 0, keep);
    let targets = if targets.is_floating_point() {
        targets.to_kind(Kind::Float)
    } else {
        targets.to_kind(Kind::Int64)
    };
    Ok(Dataset {
        path: path.display().to_string(),
        input_key: input_key.to_string(),
        target_key: target_key.to_string(),
        inputs,
        targets,
    })
}
