//! What a TorchScript archive would make libtorch do while it loads, read before it loads: the
//! records as libtorch's reader lists them, looked up as libtorch looks them up (miniz compares names
//! ASCII-case-insensitively), the source it would compile and the pickles it would unpickle.
//!
//! The findings come in three strengths, and the policy (`crate::security`) decides what each means:
//! damage that makes loading unsafe whatever the user trusts, code that runs while loading, and parts
//! this reading could not see into.
use super::pickle;

/// One record of a TorchScript archive: its name under the archive's folder as raw bytes, its size,
/// and its bytes when it is source (`*.py`) or a pickle (`*.pkl`), in any case.
#[derive(Debug, Clone)]
pub struct ArchiveRecord {
    pub name: Vec<u8>,
    pub size: u64,
    pub bytes: Option<Vec<u8>>,
}

impl ArchiveRecord {
    /// The name for messages: lossy UTF-8 with control characters escaped.
    pub fn shown(&self) -> String {
        shown(&self.name)
    }
    /// The name as libtorch compares it.
    fn folded(&self) -> Vec<u8> {
        self.name.to_ascii_lowercase()
    }
    fn is_source(&self) -> bool {
        self.folded().ends_with(b".py")
    }
    /// The two pickles `torch::jit::load` unpickles (others, such as a trace's `traced_inputs.pkl`,
    /// are read only on request from Python).
    fn is_loaded_pickle(&self) -> bool {
        matches!(&self.folded()[..], b"data.pkl" | b"constants.pkl")
    }
}

fn shown(name: &[u8]) -> String {
    String::from_utf8_lossy(name).escape_debug().to_string()
}

/// Code that runs while libtorch loads the archive, before anything could scan the loaded graphs.
#[derive(Debug, Clone, PartialEq)]
pub enum RunsOnLoad {
    /// A TorchScript `__setstate__` method in a source record.
    SetState { record: String },
    /// An object of a C++ custom class: its native `__setstate__` runs on the pickled state.
    CustomClass { class: String, record: String },
    /// A sparse tensor: libtorch rebuilds it without checking its indices.
    SparseTensor { record: String },
}

impl RunsOnLoad {
    pub fn describe(&self) -> String {
        match self {
            RunsOnLoad::SetState { record } => format!(
                "it defines __setstate__ (in {record}), which libtorch runs while loading the model"
            ),
            RunsOnLoad::CustomClass { class, record } => format!(
                "{record} holds an object of the C++ custom class `{class}`, whose native __setstate__ runs while loading the model"
            ),
            RunsOnLoad::SparseTensor { record } => format!(
                "{record} holds a sparse tensor, which libtorch rebuilds without checking its indices"
            ),
        }
    }
}

/// What [`inspect`] found.
#[derive(Debug, Default, PartialEq)]
pub struct Inspection {
    /// Damage that makes loading unsafe even for a trusted model (libtorch would read past a record,
    /// or could pick either of two records): one line each.
    pub damaged: Vec<String>,
    pub runs_on_load: Vec<RunsOnLoad>,
    /// What the scan could not read, so cannot vouch for: one line each.
    pub unscanned: Vec<String>,
}

/// How much more than its file an archive may unpack to: `torch.jit.save` stores records
/// uncompressed, so a healthy archive unpacks to about its own size.
fn unpack_limit(file_bytes: u64) -> u64 {
    file_bytes
        .saturating_mul(16)
        .max(file_bytes.saturating_add(64 << 20))
}

/// Reads the records as libtorch would use them while loading; `file_bytes` is the archive's size.
pub fn inspect(records: &[ArchiveRecord], file_bytes: u64) -> Inspection {
    let mut found = Inspection::default();
    let unpacked = records
        .iter()
        .fold(0u64, |sum, r| sum.saturating_add(r.size));
    if unpacked > unpack_limit(file_bytes) {
        found.damaged.push(format!(
            "its records unpack to {unpacked} bytes from a file of {file_bytes} bytes, which loading would have to hold in memory (a zip bomb)"
        ));
    }
    let mut by_name: std::collections::HashMap<Vec<u8>, &ArchiveRecord> =
        std::collections::HashMap::with_capacity(records.len());
    for record in records {
        if let Some(first) = by_name.insert(record.folded(), record) {
            found.damaged.push(format!(
                "its records `{}` and `{}` have names libtorch cannot tell apart (it compares names case-insensitively), so a scan cannot know which one it loads",
                first.shown(),
                record.shown()
            ));
        }
    }
    for record in records {
        let name = record.shown();
        if !(record.is_source() || record.is_loaded_pickle()) {
            continue;
        }
        let Some(bytes) = &record.bytes else {
            found.unscanned.push(format!(
                "record `{name}` is {} bytes, more than the scan reads ({} bytes)",
                record.size,
                super::MAX_SCANNED_RECORD_BYTES
            ));
            continue;
        };
        if record.is_source() {
            if String::from_utf8_lossy(bytes).contains("__setstate__") {
                found
                    .runs_on_load
                    .push(RunsOnLoad::SetState { record: name });
            }
            continue;
        }
        let scan = match pickle::scan(bytes) {
            Ok(scan) => scan,
            Err(why) => {
                found
                    .unscanned
                    .push(format!("pickle `{name}` cannot be read: {why}"));
                continue;
            }
        };
        for (module, class) in &scan.globals {
            if let Some(ns) = module.strip_prefix("__torch__.torch.classes.") {
                if super::policy::allowed_custom_class(&format!("{ns}.{class}")) {
                    continue;
                }
                found.runs_on_load.push(RunsOnLoad::CustomClass {
                    class: format!("torch.classes.{ns}.{class}"),
                    record: name.clone(),
                });
            } else if module == "torch._utils" && class.starts_with("_rebuild_sparse") {
                found.runs_on_load.push(RunsOnLoad::SparseTensor {
                    record: name.clone(),
                });
            }
        }
        // libtorch reads a storage `key` of `<stem>.pkl` from the record `<stem>/<key>`.
        let stem = &record.name[..record.name.len() - 4];
        for storage in scan.storages.iter().filter(|s| s.numel != 0) {
            let mut data_name = stem.to_vec();
            data_name.push(b'/');
            data_name.extend_from_slice(storage.key.as_bytes());
            let shown_data = shown(&data_name);
            let declared = match storage.bytes {
                Some(bytes) => format!("{bytes} bytes ({} × {})", storage.numel, storage.dtype),
                None => format!("{} × {} elements", storage.numel, storage.dtype),
            };
            match by_name.get(&data_name.to_ascii_lowercase()) {
                None => found.damaged.push(format!(
                    "{name} declares a storage of {declared} in record `{shown_data}`, which the archive does not hold"
                )),
                Some(data) if storage.bytes.is_none_or(|b| b > data.size) => {
                    found.damaged.push(format!(
                        "record `{shown_data}` holds {} bytes, but {name} declares a storage of {declared} in it: libtorch would read past the record",
                        data.size
                    ))
                }
                Some(_) => {}
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, size: u64, bytes: Option<&[u8]>) -> ArchiveRecord {
        ArchiveRecord {
            name: name.as_bytes().to_vec(),
            size,
            bytes: bytes.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn names_that_differ_only_in_case_are_damage() {
        let records = [
            record("code/__torch__.py", 5, Some(b"x = 1")),
            record("code/__torch__.PY", 5, Some(b"y = 1")),
        ];
        let found = inspect(&records, 1 << 20);
        assert_eq!(found.damaged.len(), 1, "{found:?}");
        assert!(found.damaged[0].contains("`code/__torch__.py` and `code/__torch__.PY`"));
    }

    #[test]
    fn setstate_is_found_in_source_of_any_case() {
        for name in ["code/__torch__.py", "code/__torch__.PY", "code/x/y.Py"] {
            let found = inspect(
                &[record(name, 20, Some(b"def __setstate__(self):"))],
                1 << 20,
            );
            assert_eq!(
                found.runs_on_load,
                vec![RunsOnLoad::SetState {
                    record: name.into()
                }]
            );
        }
        // Source too large to read is not vouched for.
        let found = inspect(&[record("code/big.py", 1 << 40, None)], 1 << 20);
        assert!(found.unscanned[0].contains("code/big.py"), "{found:?}");
    }

    #[test]
    fn a_pickle_that_cannot_be_read_is_unscanned() {
        let found = inspect(&[record("data.pkl", 3, Some(b"abc"))], 1 << 20);
        assert_eq!(found.unscanned.len(), 1);
        assert!(found.unscanned[0].starts_with("pickle `data.pkl` cannot be read"));
    }
}
