//! Data samples (`.npz`, `.npy`, `.safetensors`) and loss logs (CSV, JSONL). Files are only read.
//!
//! Every size a file states is a claim: nothing is allocated from it, array data is read in the
//! amount actually present, and no more than [`MAX_DATA_BYTES`] of it in one call, so a hostile
//! or damaged file ends in a [`DataError`], never in an abort or a libtorch backtrace.
mod budget;
mod logs;
mod npy;
mod npz;
pub(crate) mod paths;
mod safetensors_file;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};
use trainlint_checks::Dataset;

pub use logs::load_log;

use budget::{Budget, OverBudget, MAX_DATA_BYTES};
use paths::unreadable;

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
    #[error("array `{key}` in {path} is a scalar (0-d, shape []); a data array needs a dim 0 that indexes its samples")]
    Scalar { path: PathBuf, key: String },
    #[error("array `{key}` in {path} has unsupported dtype {dtype} (use float16/32/64, bfloat16, int8/16/32/64, uint8 or bool)")]
    Dtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    #[error("array `{key}` in {path} inflates beyond {} ({} to read); keep fewer samples (data.max_samples) or save a smaller file", budget::bytes_text(*.limit), budget::bytes_text(*.needed))]
    TooLarge {
        path: PathBuf,
        key: String,
        needed: u64,
        limit: u64,
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

/// What a file says about one array before its data is read: checked (no negative dimension, a
/// byte size that fits 64 bits) but not yet trusted to match the bytes that follow.
#[derive(Clone, Debug)]
struct ArrayInfo {
    name: String,
    /// The dtype as the file spells it (`<f4`, `F32`), for messages.
    dtype: String,
    /// None: a dtype trainlint does not read.
    kind: Option<Kind>,
    /// The logical shape (row-major; a Fortran-order array is transposed on reading).
    shape: Vec<i64>,
}

impl ArrayInfo {
    fn listing(&self) -> String {
        format!("`{}` {:?}", self.name, self.shape)
    }
}

/// A data file (or folder) opened for reading: its arrays' descriptions, in file order, and their
/// data on demand.
/// An array read from a data file.
type Loaded = Result<Tensor, DataError>;

trait ArraySource {
    fn arrays(&self) -> &[ArrayInfo];
    /// The first `rows` entries along dim 0 of array `index` (all of it for None, or for a scalar).
    fn read(&mut self, index: usize, rows: Option<i64>, budget: &mut Budget) -> Loaded;
}

/// Open a data file or folder of `.npy` files; only headers are read here.
fn open(path: &Path, budget: &mut Budget) -> Result<Box<dyn ArraySource>, DataError> {
    let meta = paths::metadata(path)?;
    if meta.is_dir() {
        return Ok(Box::new(npy::NpyFiles::folder(path, budget)?));
    }
    if !meta.is_file() {
        return Err(unreadable(path, "it is not a regular file"));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "npy" => Ok(Box::new(npy::NpyFiles::with_siblings(path, budget)?)),
        "npz" => Ok(Box::new(npz::Npz::open(path, budget)?)),
        "safetensors" => Ok(Box::new(safetensors_file::SafetensorsFile::open(
            path, budget,
        )?)),
        _ => Err(DataError::Format(path.to_path_buf())),
    }
}

/// Every array in a data file, in the file's order. A `.npy` file holds one array: its sibling `.npy`
/// files (as `np.save` per key writes them), or a folder of `.npy` files, give the others.
pub fn read_arrays(path: &Path) -> Result<Vec<Array>, DataError> {
    read_arrays_within(path, &mut Budget::new(MAX_DATA_BYTES))
}

fn read_arrays_within(path: &Path, budget: &mut Budget) -> Result<Vec<Array>, DataError> {
    let mut source = open(path, budget)?;
    let infos = source.arrays().to_vec();
    infos
        .iter()
        .enumerate()
        .map(|(i, info)| {
            supported(path, info)?;
            let tensor = source.read(i, None, budget)?;
            Ok(Array {
                name: info.name.clone(),
                tensor,
            })
        })
        .collect()
}

fn supported(path: &Path, info: &ArrayInfo) -> Result<Kind, DataError> {
    info.kind.ok_or_else(|| DataError::Dtype {
        path: path.to_path_buf(),
        key: info.name.clone(),
        dtype: info.dtype.clone(),
    })
}

/// The data sample: inputs and targets by key, checked for emptiness and matching sample counts.
/// `max_samples` keeps the first N samples (the order a non-shuffling loader would feed them); only
/// those rows are read from the file.
pub fn load_dataset(
    path: &Path,
    input_key: &str,
    target_key: &str,
    max_samples: usize,
) -> Result<Dataset, DataError> {
    load_dataset_within(
        path,
        input_key,
        target_key,
        max_samples,
        &mut Budget::new(MAX_DATA_BYTES),
    )
}

fn load_dataset_within(
    path: &Path,
    input_key: &str,
    target_key: &str,
    max_samples: usize,
    budget: &mut Budget,
) -> Result<Dataset, DataError> {
    let mut source = open(path, budget)?;
    let infos = source.arrays().to_vec();
    let find = |key: &str| -> Result<usize, DataError> {
        let index =
            infos
                .iter()
                .position(|a| a.name == key)
                .ok_or_else(|| DataError::MissingKey {
                    path: path.to_path_buf(),
                    key: key.to_string(),
                    present: if infos.is_empty() {
                        "no arrays".into()
                    } else {
                        infos
                            .iter()
                            .map(ArrayInfo::listing)
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                })?;
        let info = &infos[index];
        if info.shape.is_empty() {
            return Err(DataError::Scalar {
                path: path.to_path_buf(),
                key: key.to_string(),
            });
        }
        if info.shape.contains(&0) {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
                key: key.to_string(),
                shape: info.shape.clone(),
            });
        }
        supported(path, info)?;
        Ok(index)
    };
    let (i, t) = (find(input_key)?, find(target_key)?);
    let (n_in, n_t) = (infos[i].shape[0], infos[t].shape[0]);
    if n_in != n_t {
        return Err(DataError::SampleCount {
            path: path.to_path_buf(),
            inputs: input_key.into(),
            n_inputs: n_in,
            targets: target_key.into(),
            n_targets: n_t,
        });
    }
    let keep = i64::try_from(max_samples)
        .unwrap_or(i64::MAX)
        .min(n_in)
        .max(1);
    // Float and uint8 (image) inputs become float32, what models take, without rescaling; other
    // integer inputs (token ids for embeddings) become int64.
    let inputs = source.read(i, Some(keep), budget)?;
    let inputs = match inputs.kind() {
        Kind::Uint8 | Kind::Bool => inputs.to_kind(Kind::Float),
        _ if inputs.is_floating_point() => inputs.to_kind(Kind::Float),
        _ => inputs.to_kind(Kind::Int64),
    };
    let targets = source.read(t, Some(keep), budget)?;
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

/// Why an array could not be read, before the file and array names are attached.
#[derive(Debug)]
enum ReadError {
    Format(String),
    TooLarge(OverBudget),
}

impl From<String> for ReadError {
    fn from(reason: String) -> Self {
        ReadError::Format(reason)
    }
}

impl From<OverBudget> for ReadError {
    fn from(o: OverBudget) -> Self {
        ReadError::TooLarge(o)
    }
}

fn read_error(path: &Path, key: &str, e: ReadError) -> DataError {
    match e {
        ReadError::Format(reason) => unreadable(path, format!("array `{key}`: {reason}")),
        ReadError::TooLarge(o) => DataError::TooLarge {
            path: path.to_path_buf(),
            key: key.to_string(),
            needed: o.needed,
            limit: o.limit,
        },
    }
}

/// A tensor from bytes that exactly fill `shape` of `kind`; anything else is refused here rather
/// than handed to libtorch, which would read past the buffer.
fn tensor_from_bytes(bytes: &[u8], shape: &[i64], kind: Kind) -> Result<Tensor, String> {
    let elem = kind.elt_size_in_bytes() as u64;
    let needed = budget::byte_size(shape, elem)?;
    if bytes.len() as u64 != needed {
        return Err(format!(
            "{} bytes of data for shape {shape:?} ({needed} bytes)",
            bytes.len()
        ));
    }
    Tensor::f_from_data_size(bytes, shape, kind).map_err(|e| {
        // A libtorch message carries a C++ backtrace after its first line.
        e.to_string().lines().next().unwrap_or("").to_string()
    })
}
