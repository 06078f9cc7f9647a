//! Data samples (`.npz`, `.npy`, `.safetensors`) and loss logs (CSV, JSONL). Files are only read.
//!
//! Every size a file states is a claim: nothing is allocated from it, array data is read in the
//! amount actually present, and no more than [`MAX_DATA_BYTES`] of it in one call, so a hostile
//! or damaged file ends in a [`DataError`], never in an abort or a libtorch backtrace.
mod budget;
#[cfg(test)]
pub(crate) mod fuzz;
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
use paths::{excerpt, unreadable};

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
    /// `needs` says how much memory, for what: what is read and what it is converted to.
    #[error("array `{key}` in {path} needs {needs}; keep fewer samples (data.max_samples) or save a smaller file")]
    TooLargeConverted {
        path: PathBuf,
        key: String,
        needs: String,
    },
    #[error("{path}: array `{key}` is stored twice, as {stored}; np.load and trainlint could read different ones: keep one")]
    Ambiguous {
        path: PathBuf,
        key: String,
        stored: String,
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

/// An array read from a data file.
type Loaded = Result<Tensor, DataError>;

/// A data file (or folder) opened for reading: its arrays' names, in file order, then each array's
/// header and data on demand, so an array the run does not need is never read.
trait ArraySource {
    /// Each array's name, as `np.load(f)[name]` (or `safetensors`) knows it, in file order. Two
    /// entries may share a name (an `.npz` holding `x.npy` and `x`); such a name is ambiguous.
    fn names(&self) -> &[String];
    /// How array `index` is stored, for messages: `` `x.npy` `` (an archive member, a file).
    fn stored_as(&self, index: usize) -> String;
    /// The header of array `index`.
    fn info(&mut self, index: usize, budget: &mut Budget) -> Result<ArrayInfo, DataError>;
    /// The first `rows` entries along dim 0 of array `index` (all of it for None, or for a scalar).
    fn read(&mut self, index: usize, rows: Option<i64>, budget: &mut Budget) -> Loaded;
    /// Check the file the user named, when it is one array among others (an `.npy` file and its
    /// siblings): it is read even when the run needs only its siblings.
    fn check_named(&mut self, _budget: &mut Budget) -> Result<(), DataError> {
        Ok(())
    }
}

/// Open a data file or folder of `.npy` files; nothing but the list of arrays is read here.
fn open(path: &Path) -> Result<Box<dyn ArraySource>, DataError> {
    let meta = paths::metadata(path)?;
    if meta.is_dir() {
        return Ok(Box::new(npy::NpyFiles::folder(path)?));
    }
    if !meta.is_file() {
        return Err(unreadable(path, "it is not a regular file"));
    }
    match extension(path).as_str() {
        "npy" => Ok(Box::new(npy::NpyFiles::with_siblings(path)?)),
        "npz" => Ok(Box::new(npz::Npz::open(path)?)),
        "safetensors" => Ok(Box::new(safetensors_file::SafetensorsFile::open(path)?)),
        _ => Err(DataError::Format(path.to_path_buf())),
    }
}

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// The files besides `path` that a run with these keys reads: for an `.npy` data file, the
/// sibling `.npy` files that hold the input and target arrays (none for other data). Outputs must
/// not be any of them.
pub fn siblings_read(path: &Path, input_key: &str, target_key: &str) -> Vec<PathBuf> {
    if path.is_file() && extension(path) == "npy" {
        npy::siblings_for(path, &[input_key, target_key])
    } else {
        Vec::new()
    }
}

/// Every array in a data file, in the file's order. A `.npy` file holds one array: its sibling `.npy`
/// files (as `np.save` per key writes them), or a folder of `.npy` files, give the others.
pub fn read_arrays(path: &Path) -> Result<Vec<Array>, DataError> {
    read_arrays_within(path, &mut Budget::new(MAX_DATA_BYTES))
}

fn read_arrays_within(path: &Path, budget: &mut Budget) -> Result<Vec<Array>, DataError> {
    let mut source = open(path)?;
    let names = source.names().to_vec();
    let mut arrays = Vec::new();
    for name in &names {
        let index = find(&mut *source, path, name, budget)?;
        let info = source.info(index, budget)?;
        supported(path, &info)?;
        let tensor = source.read(index, None, budget)?;
        arrays.push(Array {
            name: paths::printable(name),
            tensor,
        });
    }
    Ok(arrays)
}

fn supported(path: &Path, info: &ArrayInfo) -> Result<Kind, DataError> {
    info.kind.ok_or_else(|| DataError::Dtype {
        path: path.to_path_buf(),
        key: info.name.clone(),
        dtype: info.dtype.clone(),
    })
}

/// The index of the one array named `key`; a name that two arrays share is refused, since the
/// reader (`np.load`) and trainlint could each pick another.
fn find(
    source: &mut dyn ArraySource,
    path: &Path,
    key: &str,
    budget: &mut Budget,
) -> Result<usize, DataError> {
    let matches: Vec<usize> = source
        .names()
        .iter()
        .enumerate()
        .filter(|(_, n)| *n == key)
        .map(|(i, _)| i)
        .collect();
    match matches[..] {
        [index] => Ok(index),
        [] => Err(DataError::MissingKey {
            path: path.to_path_buf(),
            key: excerpt(key),
            present: listing(source, budget),
        }),
        _ => Err(DataError::Ambiguous {
            path: path.to_path_buf(),
            key: excerpt(key),
            stored: matches
                .iter()
                .map(|&i| source.stored_as(i))
                .collect::<Vec<_>>()
                .join(" and "),
        }),
    }
}

/// The arrays of a file for a message: the first few, with their declared shapes where their
/// headers read (from a budget of their own, so a listing never refuses the run's reads).
fn listing(source: &mut dyn ArraySource, budget: &Budget) -> String {
    const SHOWN: usize = 12;
    let count = source.names().len();
    if count == 0 {
        return "no arrays".into();
    }
    let mut scratch = Budget::new(budget.limit().min(16 << 20));
    let mut parts: Vec<String> = (0..count.min(SHOWN))
        .map(|i| match source.info(i, &mut scratch) {
            Ok(info) => info.listing(),
            Err(_) => format!("`{}`", excerpt(&source.names()[i])),
        })
        .collect();
    if count > SHOWN {
        parts.push(format!("… {} more", count - SHOWN));
    }
    parts.join(", ")
}

/// The kind a sample array is handed to the checks in: float and uint8 (image) inputs become
/// float32, what models take, without rescaling; other integer inputs (token ids for embeddings)
/// become int64. Targets: float32 when floating, int64 (class indices) otherwise.
fn sample_kind(kind: Kind, is_input: bool) -> Kind {
    let floating = matches!(
        kind,
        Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double
    );
    match kind {
        _ if floating => Kind::Float,
        Kind::Uint8 | Kind::Bool if is_input => Kind::Float,
        _ => Kind::Int64,
    }
}

/// The data sample: inputs and targets by key, checked for emptiness and matching sample counts.
/// `max_samples` keeps the first N samples (the order a non-shuffling loader would feed them); only
/// those rows are read from the file, and the budget counts them both as read and as converted.
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
    let mut source = open(path)?;
    source.check_named(budget)?;
    let mut sample_array = |key: &str| -> Result<(usize, ArrayInfo), DataError> {
        let index = find(&mut *source, path, key, budget)?;
        let info = source.info(index, budget)?;
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
        supported(path, &info)?;
        Ok((index, info))
    };
    let (i, input_info) = sample_array(input_key)?;
    let (t, target_info) = sample_array(target_key)?;
    let (n_in, n_t) = (input_info.shape[0], target_info.shape[0]);
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
    let mut sample = |index: usize, info: &ArrayInfo, is_input: bool| -> Loaded {
        let kind = supported(path, info)?;
        let to = sample_kind(kind, is_input);
        // The converted copy is charged before anything is read: a small file of uint8 or int8
        // must not widen past the budget (4 and 8 times its bytes).
        let mut kept = info.shape.clone();
        kept[0] = keep;
        if to != kind {
            let size = |k: Kind| {
                budget::byte_size(&kept, k.elt_size_in_bytes() as u64)
                    .map_err(|e| unreadable(path, format!("array `{}`: {e}", info.name)))
            };
            let (read, converted) = (size(kind)?, size(to)?);
            // Both copies are in memory at once, the one read and the one converted.
            budget.check(read.saturating_add(converted)).map_err(|o| {
                DataError::TooLargeConverted {
                    path: path.to_path_buf(),
                    key: info.name.clone(),
                    needs: format!(
                        "{} in memory for its first {keep} samples ({} as read ({}), {} as {}), over the limit of {}",
                        budget::bytes_text(o.needed),
                        budget::bytes_text(read),
                        info.dtype,
                        budget::bytes_text(converted),
                        kind_name(to),
                        budget::bytes_text(o.limit)
                    ),
                }
            })?;
            budget.charge(converted).expect("checked with more");
        }
        let raw = source.read(index, Some(keep), budget)?;
        raw.f_to_kind(to)
            .map_err(|e| unreadable(path, format!("array `{}`: {}", info.name, torch_reason(&e))))
    };
    let inputs = sample(i, &input_info, true)?;
    let targets = sample(t, &target_info, false)?;
    Ok(Dataset {
        path: path.display().to_string(),
        input_key: input_key.to_string(),
        target_key: target_key.to_string(),
        inputs,
        targets,
    })
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "float32",
        Kind::Int64 => "int64",
        _ => "another dtype",
    }
}

/// A libtorch error's first line: the rest is a C++ backtrace.
fn torch_reason(e: &tch::TchError) -> String {
    e.to_string().lines().next().unwrap_or("").to_string()
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

impl From<budget::ShapeSizeError> for ReadError {
    fn from(e: budget::ShapeSizeError) -> Self {
        ReadError::Format(e.to_string())
    }
}

impl From<npy::HeaderError> for ReadError {
    fn from(e: npy::HeaderError) -> Self {
        ReadError::Format(e.to_string())
    }
}

impl From<npz::LocalHeaderError> for ReadError {
    fn from(e: npz::LocalHeaderError) -> Self {
        ReadError::Format(e.to_string())
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
