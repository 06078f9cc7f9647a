//! `.safetensors` files: an 8-byte header length, a JSON header naming each tensor's dtype, shape
//! and byte range, then the data. The header is checked here, in words, and only the rows asked
//! for are read from the file.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::Kind;

use super::budget::{byte_size, Budget};
use super::npy::{read_data, Header};
use super::paths::{describe_io, open_file, printable, unreadable};
use super::{read_error, ArrayInfo, ArraySource, DataError, Loaded, ReadError};

/// The safetensors format's own limit on its header.
const MAX_HEADER_BYTES: u64 = 100 << 20;

pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    /// Each tensor's first data byte in the file, and its header in `.npy` terms.
    tensors: Vec<(u64, Header)>,
    infos: Vec<ArrayInfo>,
}

fn kind_of(dtype: &str) -> Option<Kind> {
    Some(match dtype {
        "F16" => Kind::Half,
        "BF16" => Kind::BFloat16,
        "F32" => Kind::Float,
        "F64" => Kind::Double,
        "I8" => Kind::Int8,
        "I16" => Kind::Int16,
        "I32" => Kind::Int,
        "I64" => Kind::Int64,
        "U8" => Kind::Uint8,
        "BOOL" => Kind::Bool,
        _ => return None,
    })
}

/// One tensor's entry of the header: (name, dtype, shape, data offsets).
fn tensor_entry(name: &str, entry: &Value) -> Result<(String, Vec<i64>, u64, u64), String> {
    let name = printable(name);
    let what = |field: &str| format!("tensor `{name}` in the header has no valid `{field}`");
    let dtype = entry
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| what("dtype"))?
        .to_string();
    let shape = entry
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| what("shape"))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| i64::try_from(d).ok()))
        .collect::<Option<Vec<i64>>>()
        .ok_or_else(|| {
            format!(
                "tensor `{name}`: its shape holds something other than dimensions that fit 63 bits"
            )
        })?;
    let offsets = entry
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|o| o.len() == 2)
        .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
        .ok_or_else(|| what("data_offsets (two byte offsets)"))?;
    Ok((printable(&dtype), shape, offsets.0, offsets.1))
}

impl SafetensorsFile {
    pub fn open(path: &Path, budget: &mut Budget) -> Result<Self, DataError> {
        let bad = |why: String| unreadable(path, format!("not a .safetensors file: {why}"));
        let mut file = open_file(path)?;
        let file_len = file
            .metadata()
            .map_err(|e| unreadable(path, describe_io(&e)))?
            .len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len)
            .map_err(|_| bad("shorter than its 8-byte header length".into()))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > MAX_HEADER_BYTES || header_len > file_len - 8 {
            return Err(bad(format!(
                "its header claims {header_len} bytes, but the file has {} after the length",
                file_len - 8
            )));
        }
        budget
            .charge(header_len)
            .map_err(|o| read_error(path, "(header)", ReadError::TooLarge(o)))?;
        let mut text = Vec::new();
        (&mut file)
            .take(header_len)
            .read_to_end(&mut text)
            .map_err(|e| unreadable(path, describe_io(&e)))?;
        let header: Value = serde_json::from_slice(&text)
            .map_err(|e| bad(format!("the header is not valid JSON ({e})")))?;
        let entries = header
            .as_object()
            .ok_or_else(|| bad("the header is not a JSON object".into()))?;
        let data_start = 8 + header_len;
        let data_len = file_len - data_start;
        let mut tensors = Vec::new();
        for (name, entry) in entries.iter().filter(|(n, _)| *n != "__metadata__") {
            let (dtype, shape, begin, end) = tensor_entry(name, entry).map_err(&bad)?;
            let name = printable(name);
            if begin > end || end > data_len {
                return Err(bad(format!(
                    "tensor `{name}` lies at bytes {begin}..{end} of the data, beyond the end of the file ({data_len} bytes of data)"
                )));
            }
            let kind = kind_of(&dtype);
            if let Some(kind) = kind {
                let needed = byte_size(&shape, kind.elt_size_in_bytes() as u64)
                    .map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
                if needed != end - begin {
                    return Err(bad(format!(
                        "tensor `{name}`: shape {shape:?} of {dtype} needs {needed} bytes but its data_offsets span {}",
                        end - begin
                    )));
                }
            }
            let header = Header {
                descr: dtype,
                kind,
                big_endian: false,
                fortran: false,
                shape,
            };
            tensors.push((data_start + begin, header, name));
        }
        tensors.sort_by_key(|(offset, _, _)| *offset); // file order
        let infos = tensors
            .iter()
            .map(|(_, header, name)| header.info(name.clone()))
            .collect();
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            file,
            tensors: tensors.into_iter().map(|(o, h, _)| (o, h)).collect(),
            infos,
        })
    }
}

impl ArraySource for SafetensorsFile {
    fn arrays(&self) -> &[ArrayInfo] {
        &self.infos
    }

    fn read(&mut self, index: usize, rows: Option<i64>, budget: &mut Budget) -> Loaded {
        let (offset, header) = &self.tensors[index];
        let name = &self.infos[index].name;
        self.file
            .seek(SeekFrom::Start(*offset))
            .map_err(|e| ReadError::Format(describe_io(&e)))
            .and_then(|_| {
                read_data(
                    &mut std::io::BufReader::new(&self.file),
                    header,
                    rows,
                    budget,
                )
            })
            .map_err(|e| read_error(&self.path, name, e))
    }
}
