//! `.safetensors` files: an 8-byte header length, a JSON header naming each tensor's dtype, shape
//! and byte range, then the data. The header is checked here, in words, and only the rows asked
//! for are read from the file.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use tch::Kind;

use super::budget::{byte_size, bytes_text, Budget};
use super::npy::{read_data, Header};
use super::paths::{describe_io, excerpt, open_regular, unreadable};
use super::{read_error, ArrayInfo, ArraySource, DataError, Loaded, ReadError};

/// The most header trainlint reads: the format allows 100 MB, but a data file's header lists a few
/// tensors in a few hundred bytes each.
const MAX_HEADER_BYTES: u64 = 16 << 20;

pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    /// Each tensor's first data byte in the file, and its header in `.npy` terms.
    tensors: Vec<(u64, Header)>,
    names: Vec<String>,
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

/// The most tensors a header may list: a data file holds a few arrays.
const MAX_ENTRIES: usize = 65_536;
/// The most dimensions a tensor's shape may have.
const MAX_RANK: usize = 64;

/// A JSON value where a number or a string is expected; anything else is skipped without being
/// kept, so a hostile header cannot make large structures here.
enum Scalar {
    Number(Option<u64>),
    Text(String),
    Other,
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Number(Some(v)))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Scalar, E> {
                Ok(Scalar::Number(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Scalar, E> {
                Ok(Scalar::Number(None))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(v.chars().take(64).collect()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// A list of numbers, at most `MAX_RANK` kept: None when the value is not a list of whole
/// numbers, or a longer one.
struct Numbers(Option<Vec<u64>>);

impl<'de> Deserialize<'de> for Numbers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Numbers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Numbers, A::Error> {
                let mut out = Some(Vec::new());
                while let Some(item) = seq.next_element::<Scalar>()? {
                    match (item, out.as_mut()) {
                        (Scalar::Number(Some(n)), Some(v)) if v.len() < MAX_RANK => v.push(n),
                        _ => out = None,
                    }
                }
                Ok(Numbers(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Numbers, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Numbers(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Numbers, E> {
                Ok(Numbers(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Numbers, E> {
                Ok(Numbers(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Numbers, E> {
                Ok(Numbers(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Numbers, E> {
                Ok(Numbers(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Numbers, E> {
                Ok(Numbers(None))
            }
            fn visit_unit<E>(self) -> Result<Numbers, E> {
                Ok(Numbers(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// One tensor's entry in the header, its fields as found (unknown fields are skipped).
#[derive(Default)]
struct RawEntry {
    dtype: Option<Scalar>,
    shape: Option<Numbers>,
    offsets: Option<Numbers>,
    /// Not a JSON object.
    malformed: bool,
}

impl RawEntry {
    fn malformed() -> Self {
        RawEntry {
            malformed: true,
            ..RawEntry::default()
        }
    }
}

impl<'de> Deserialize<'de> for RawEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEntry, A::Error> {
                let mut e = RawEntry::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "dtype" => e.dtype = Some(map.next_value()?),
                        "shape" => e.shape = Some(map.next_value()?),
                        "data_offsets" => e.offsets = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(e)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawEntry, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(RawEntry::malformed())
            }
            fn visit_u64<E>(self, _: u64) -> Result<RawEntry, E> {
                Ok(RawEntry::malformed())
            }
            fn visit_i64<E>(self, _: i64) -> Result<RawEntry, E> {
                Ok(RawEntry::malformed())
            }
            fn visit_f64<E>(self, _: f64) -> Result<RawEntry, E> {
                Ok(RawEntry::malformed())
            }
            fn visit_str<E>(self, _: &str) -> Result<RawEntry, E> {
                Ok(RawEntry::malformed())
            }
            fn visit_bool<E>(self, _: bool) -> Result<RawEntry, E> {
                Ok(RawEntry::malformed())
            }
            fn visit_unit<E>(self) -> Result<RawEntry, E> {
                Ok(RawEntry::malformed())
            }
        }
        d.deserialize_any(V)
    }
}

/// The header's entries in file order, `__metadata__` skipped; more than [`MAX_ENTRIES`] is an
/// error, raised as soon as the next entry is seen.
struct Entries(Vec<(String, RawEntry)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "__metadata__" {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    if out.len() == MAX_ENTRIES {
                        return Err(serde::de::Error::custom(format!(
                            "lists more than {MAX_ENTRIES} tensors, the most trainlint reads"
                        )));
                    }
                    out.push((key, map.next_value::<RawEntry>()?));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Why a tensor's entry of the header cannot be read (its name shortened to an excerpt).
#[derive(Debug, thiserror::Error)]
enum EntryError {
    #[error("tensor `{0}` in the header is not a JSON object")]
    NotAnObject(String),
    #[error("tensor `{name}` in the header has no valid `{field}`")]
    Missing { name: String, field: &'static str },
    #[error("tensor `{0}`: its shape holds something other than at most {MAX_RANK} dimensions that fit 63 bits")]
    Shape(String),
}

/// One tensor's entry of the header: (dtype, shape, data offsets).
fn tensor_entry(name: &str, entry: &RawEntry) -> Result<(String, Vec<i64>, u64, u64), EntryError> {
    let name = excerpt(name);
    let missing = |field| EntryError::Missing {
        name: name.clone(),
        field,
    };
    if entry.malformed {
        return Err(EntryError::NotAnObject(name));
    }
    let dtype = match &entry.dtype {
        Some(Scalar::Text(t)) => t.clone(),
        _ => return Err(missing("dtype")),
    };
    let shape = match &entry.shape {
        None => return Err(missing("shape")),
        Some(Numbers(shape)) => shape
            .as_ref()
            .and_then(|s| {
                s.iter()
                    .map(|&d| i64::try_from(d).ok())
                    .collect::<Option<Vec<i64>>>()
            })
            .ok_or_else(|| EntryError::Shape(name.clone()))?,
    };
    let offsets = match &entry.offsets {
        Some(Numbers(Some(o))) if o.len() == 2 => (o[0], o[1]),
        _ => return Err(missing("data_offsets (two byte offsets)")),
    };
    Ok((excerpt(&dtype), shape, offsets.0, offsets.1))
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let bad = |why: String| unreadable(path, format!("not a .safetensors file: {why}"));
        let mut file = open_regular(path, "the data file")?;
        let file_len = file
            .metadata()
            .map_err(|e| unreadable(path, describe_io(&e)))?
            .len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len)
            .map_err(|_| bad("shorter than its 8-byte header length".into()))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > file_len - 8 {
            return Err(bad(format!(
                "its header claims {header_len} bytes, but the file has {} after the length",
                file_len - 8
            )));
        }
        if header_len > MAX_HEADER_BYTES {
            return Err(bad(format!(
                "its header claims {} (the most trainlint reads is {})",
                bytes_text(header_len),
                bytes_text(MAX_HEADER_BYTES)
            )));
        }
        let mut text = Vec::new();
        (&mut file)
            .take(header_len)
            .read_to_end(&mut text)
            .map_err(|e| unreadable(path, describe_io(&e)))?;
        let Entries(entries) = serde_json::from_slice(&text).map_err(|e| {
            let why = e.to_string();
            if why.contains("tensors, the most") {
                bad(format!(
                    "the header {}",
                    why.split(" at line").next().unwrap_or(&why)
                ))
            } else if e.is_data() && why.starts_with("invalid type") {
                bad("the header is not a JSON object".into())
            } else {
                bad(format!("the header is not valid JSON ({why})"))
            }
        })?;
        drop(text);
        let data_start = 8 + header_len;
        let data_len = file_len - data_start;
        let mut tensors = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (name, entry) in &entries {
            let (dtype, shape, begin, end) =
                tensor_entry(name, entry).map_err(|e| bad(e.to_string()))?;
            if !seen.insert(name.as_str()) {
                return Err(bad(format!(
                    "tensor `{}` is listed twice in the header",
                    excerpt(name)
                )));
            }
            let shown = excerpt(name);
            if begin > end || end > data_len {
                return Err(bad(format!(
                    "tensor `{shown}` lies at bytes {begin}..{end} of the data, beyond the end of the file ({data_len} bytes of data)"
                )));
            }
            let kind = kind_of(&dtype);
            if let Some(kind) = kind {
                let needed = byte_size(&shape, kind.elt_size_in_bytes() as u64)
                    .map_err(|e| bad(format!("tensor `{shown}`: {e}")))?;
                if needed != end - begin {
                    return Err(bad(format!(
                        "tensor `{shown}`: shape {shape:?} of {dtype} needs {needed} bytes but its data_offsets span {}",
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
                data_offset: 0,
            };
            tensors.push((data_start + begin, header, name.clone()));
        }
        tensors.sort_by_key(|(offset, _, _)| *offset); // file order
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            file,
            names: tensors.iter().map(|(_, _, n)| n.clone()).collect(),
            tensors: tensors.into_iter().map(|(o, h, _)| (o, h)).collect(),
        })
    }
}

impl ArraySource for SafetensorsFile {
    fn names(&self) -> &[String] {
        &self.names
    }

    fn stored_as(&self, index: usize) -> String {
        format!("tensor `{}`", excerpt(&self.names[index]))
    }

    fn info(&mut self, index: usize, _budget: &mut Budget) -> Result<ArrayInfo, DataError> {
        Ok(self.tensors[index].1.info(excerpt(&self.names[index])))
    }

    fn read(&mut self, index: usize, rows: Option<i64>, budget: &mut Budget) -> Loaded {
        let (offset, header) = &self.tensors[index];
        let name = &excerpt(&self.names[index]);
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
