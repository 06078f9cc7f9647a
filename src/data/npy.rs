//! NumPy's `.npy` format (versions 1–3), read from any stream: a file, or a member of an `.npz`
//! archive as it inflates. Only the rows asked for are read.
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::budget::{byte_size, Budget};
use super::paths::{describe_io, excerpt, open_regular, unreadable};
use super::{read_error, torch_reason, ArrayInfo, ArraySource, DataError, Loaded, ReadError};

const MAGIC: &[u8] = b"\x93NUMPY";

/// NumPy itself refuses headers over 10 000 bytes unless told otherwise; this leaves room.
const MAX_HEADER_BYTES: usize = 1 << 20;

/// An array's header: what the bytes after it should hold.
#[derive(Clone, Debug)]
pub struct Header {
    pub descr: String,
    pub kind: Option<Kind>,
    pub big_endian: bool,
    pub fortran: bool,
    pub shape: Vec<i64>,
    /// The bytes before the data: magic, version, header length and header.
    pub data_offset: u64,
}

impl Header {
    /// The bytes of the whole array as stored (header and data); None for a dtype not read.
    pub fn stored_size(&self) -> Option<u64> {
        let elem = self.kind?.elt_size_in_bytes() as u64;
        byte_size(&self.shape, elem)
            .ok()?
            .checked_add(self.data_offset)
    }

    pub fn info(&self, name: String) -> ArrayInfo {
        ArrayInfo {
            name,
            dtype: self.descr.clone(),
            kind: self.kind,
            shape: self.shape.clone(),
        }
    }
}

fn io_reason(e: io::Error) -> ReadError {
    ReadError::Format(describe_io(&e))
}

/// Read up to `n` bytes; fewer only where the stream ends. The buffer grows with the bytes that
/// arrive, never with what a header claims.
fn read_up_to(r: &mut impl Read, n: u64) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    r.take(n).read_to_end(&mut out).map_err(io_reason)?;
    Ok(out)
}

/// Read the magic, version and header of an array; the stream is left at its first data byte.
pub fn read_header(r: &mut impl Read, budget: &mut Budget) -> Result<Header, ReadError> {
    let prefix = read_up_to(r, 8)?;
    if prefix.len() < 8 || &prefix[..6] != MAGIC {
        return Err(ReadError::Format(
            "not an .npy array (it does not start with \\x93NUMPY)".into(),
        ));
    }
    let length_bytes = if prefix[6] == 1 { 2 } else { 4 };
    let header_len = match prefix[6] {
        1 => {
            let b = read_up_to(r, 2)?;
            b.get(..2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
        }
        2 | 3 => {
            let b = read_up_to(r, 4)?;
            b.get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        }
        v => {
            return Err(ReadError::Format(format!(
                "unsupported .npy version {v} (1, 2 and 3 are read)"
            )))
        }
    }
    .ok_or_else(|| ReadError::Format("truncated header".into()))?;
    if header_len > MAX_HEADER_BYTES {
        return Err(ReadError::Format(format!(
            "its header claims {header_len} bytes; .npy headers of numeric arrays are far smaller"
        )));
    }
    budget.charge(header_len as u64 + 12)?;
    let header = read_up_to(r, header_len as u64)?;
    if header.len() < header_len {
        return Err(ReadError::Format("truncated header".into()));
    }
    let mut parsed = parse_header(&String::from_utf8_lossy(&header))?;
    parsed.data_offset = 8 + length_bytes + header_len as u64;
    Ok(parsed)
}

/// Why an `.npy` header (the Python dict literal) is not one trainlint reads.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("the header lacks `{0}`")]
    MissingKey(&'static str),
    #[error("structured dtypes are not supported")]
    StructuredDtype,
    #[error("the header's shape is not a tuple")]
    ShapeNotTuple,
    /// A shape entry (an excerpt of it) that is not an i64.
    #[error("shape entry `{0}` is not a whole number that fits 64 bits")]
    ShapeEntry(String),
    #[error(transparent)]
    Size(#[from] super::budget::ShapeSizeError),
}

fn header_value<'a>(header: &'a str, key: &'static str) -> Result<&'a str, HeaderError> {
    let pat = format!("'{key}':");
    let start = header.find(&pat).ok_or(HeaderError::MissingKey(key))? + pat.len();
    Ok(header[start..].trim_start())
}

fn kind_of(code: &str) -> Option<Kind> {
    Some(match code {
        "f2" => Kind::Half,
        "f4" => Kind::Float,
        "f8" => Kind::Double,
        "i1" => Kind::Int8,
        "i2" => Kind::Int16,
        "i4" => Kind::Int,
        "i8" => Kind::Int64,
        "u1" => Kind::Uint8,
        "b1" | "?" => Kind::Bool,
        _ => return None,
    })
}

fn parse_header(h: &str) -> Result<Header, HeaderError> {
    let descr = header_value(h, "descr")?
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or(HeaderError::StructuredDtype)?
        .to_string();
    let (big_endian, code) = match descr.chars().next() {
        Some('>') => (true, &descr[1..]),
        Some('<' | '|' | '=') => (false, &descr[1..]),
        _ => (false, descr.as_str()),
    };
    let kind = kind_of(code);
    let fortran = header_value(h, "fortran_order")?.starts_with("True");
    let inner = header_value(h, "shape")?
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or(HeaderError::ShapeNotTuple)?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<i64>()
                .map_err(|_| HeaderError::ShapeEntry(excerpt(s)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The element count alone must fit; the byte size is checked with the element size.
    byte_size(&shape, 1)?;
    Ok(Header {
        descr: excerpt(&descr),
        kind,
        big_endian,
        fortran,
        shape,
        data_offset: 0,
    })
}

/// The data of an array whose header was just read: the first `rows` rows (all for None). A
/// C-order array stops being read after them; a Fortran-order one is read through (its rows are
/// spread over the whole data) keeping only them. The bytes go straight into the tensor's memory,
/// which the budget allowed before it was allocated, and which holds only the bytes that arrive.
pub fn read_data(
    r: &mut impl Read,
    header: &Header,
    rows: Option<i64>,
    budget: &mut Budget,
) -> Result<Tensor, ReadError> {
    let kind = header
        .kind
        .ok_or_else(|| ReadError::Format(format!("unsupported dtype {}", header.descr)))?;
    let elem = kind.elt_size_in_bytes() as u64;
    let total = byte_size(&header.shape, elem)?;
    let mut keep_shape = header.shape.clone();
    if let (Some(rows), Some(first)) = (rows, keep_shape.first_mut()) {
        *first = (*first).min(rows.max(0));
    }
    let keep = byte_size(&keep_shape, elem)?;
    let fortran = header.fortran && header.shape.len() > 1;
    // A Fortran-order array is stored transposed: read as such, then permuted.
    let stored: Vec<i64> = if fortran {
        keep_shape.iter().rev().copied().collect()
    } else {
        keep_shape.clone()
    };
    budget.charge(if fortran { total.max(keep) } else { keep })?;
    let mut tensor = Tensor::f_empty(stored.as_slice(), (kind, Device::Cpu)).map_err(|e| {
        ReadError::Format(format!(
            "cannot allocate {keep} bytes: {}",
            torch_reason(&e)
        ))
    })?;
    {
        let data = tensor_bytes(&mut tensor, keep);
        if fortran {
            let (n, k) = (header.shape[0] as u64, keep_shape[0] as u64);
            let columns = (total / elem).checked_div(n).unwrap_or(0);
            let (kept, skip) = ((k * elem) as usize, (n - k) * elem);
            for column in 0..columns as usize {
                let got = fill(r, &mut data[column * kept..(column + 1) * kept])?;
                let skipped =
                    io::copy(&mut r.by_ref().take(skip), &mut io::sink()).map_err(io_reason)?;
                if got < kept || skipped < skip {
                    return Err(truncated((column * kept + got) as u64, keep));
                }
            }
        } else {
            let got = fill(r, data)?;
            if (got as u64) < keep {
                return Err(truncated(got as u64, keep));
            }
        }
        let size = elem as usize;
        if header.big_endian && size > 1 {
            for chunk in data.chunks_mut(size) {
                chunk.reverse();
            }
        }
        if kind == Kind::Bool {
            // libtorch assumes bools are 0 or 1.
            data.iter_mut().for_each(|b| *b = (*b != 0) as u8);
        }
    }
    if fortran {
        let dims: Vec<i64> = (0..keep_shape.len() as i64).rev().collect();
        return tensor
            .f_permute(dims.as_slice())
            .and_then(|t| t.f_contiguous())
            .map_err(|e| ReadError::Format(torch_reason(&e)));
    }
    Ok(tensor)
}

/// The memory of a fresh contiguous CPU tensor of `bytes` bytes, to fill.
fn tensor_bytes(tensor: &mut Tensor, bytes: u64) -> &mut [u8] {
    if bytes == 0 {
        return &mut [];
    }
    // SAFETY: `tensor` was just allocated by `f_empty` as a contiguous CPU tensor of exactly
    // `bytes` bytes (its shape and kind give them), nothing else refers to its storage, and the
    // slice is dropped before the tensor is used or moved.
    unsafe { std::slice::from_raw_parts_mut(tensor.data_ptr() as *mut u8, bytes as usize) }
}

/// Read into `buf` until it is full or the stream ends; the bytes read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, ReadError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_reason(e)),
        }
    }
    Ok(filled)
}

fn truncated(got: u64, needed: u64) -> ReadError {
    ReadError::Format(format!("truncated data: {got} of {needed} bytes"))
}

/// `.npy` files, one array each, named by file stem; each is opened only when its array is needed.
pub struct NpyFiles {
    files: Vec<PathBuf>,
    names: Vec<String>,
    /// What the files are to the user, for messages about one that is not a regular file.
    role: &'static str,
    /// The first file is the one the user named (its siblings follow).
    named: bool,
}

/// The `.npy` files of a folder, sorted by name.
fn npy_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| unreadable(dir, describe_io(&e)))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy")))
        .collect();
    files.sort();
    Ok(files)
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "array".into())
}

/// The folder of an `.npy` file.
fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The sibling `.npy` files of `path` that hold one of `keys`.
pub fn siblings_for(path: &Path, keys: &[&str]) -> Vec<PathBuf> {
    npy_files(folder_of(path))
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.file_name() != path.file_name() && keys.contains(&stem(s).as_str()))
        .collect()
}

impl NpyFiles {
    fn new(files: Vec<PathBuf>, role: &'static str, named: bool) -> Self {
        let names = files.iter().map(|p| stem(p)).collect();
        NpyFiles {
            files,
            names,
            role,
            named,
        }
    }

    /// Every `.npy` file of a folder.
    pub fn folder(dir: &Path) -> Result<Self, DataError> {
        let files = npy_files(dir)?;
        if files.is_empty() {
            return Err(unreadable(dir, "the folder holds no .npy files"));
        }
        Ok(Self::new(files, "this .npy file of the data folder", false))
    }

    /// One `.npy` file, then the other `.npy` files beside it.
    pub fn with_siblings(path: &Path) -> Result<Self, DataError> {
        let mut files = vec![path.to_path_buf()];
        files.extend(
            npy_files(folder_of(path))?
                .into_iter()
                .filter(|s| s.file_name() != path.file_name()),
        );
        Ok(Self::new(files, "this sibling .npy file of the data", true))
    }

    /// The file of array `index`, opened at its first data byte, and its header.
    fn open_array(
        &self,
        index: usize,
        budget: &mut Budget,
    ) -> Result<(io::BufReader<std::fs::File>, Header), DataError> {
        let path = &self.files[index];
        let role = if index == 0 && self.named {
            "the data file"
        } else {
            self.role
        };
        let mut file = io::BufReader::new(open_regular(path, role)?);
        let header = read_header(&mut file, budget)
            .map_err(|e| read_error(path, &excerpt(&self.names[index]), e))?;
        Ok((file, header))
    }
}

impl ArraySource for NpyFiles {
    fn names(&self) -> &[String] {
        &self.names
    }

    fn stored_as(&self, index: usize) -> String {
        format!("`{}`", excerpt(&self.files[index].display().to_string()))
    }

    fn info(&mut self, index: usize, budget: &mut Budget) -> Result<ArrayInfo, DataError> {
        let (_, header) = self.open_array(index, budget)?;
        Ok(header.info(excerpt(&self.names[index])))
    }

    fn check_named(&mut self, budget: &mut Budget) -> Result<(), DataError> {
        if self.named {
            self.open_array(0, budget)?;
        }
        Ok(())
    }

    fn read(&mut self, index: usize, rows: Option<i64>, budget: &mut Budget) -> Loaded {
        let (mut file, header) = self.open_array(index, budget)?;
        read_data(&mut file, &header, rows, budget)
            .map_err(|e| read_error(&self.files[index], &excerpt(&self.names[index]), e))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    /// Parse a whole `.npy` held in memory, `rows` rows of it.
    pub fn parse(bytes: &[u8], rows: Option<i64>) -> Result<Tensor, ReadError> {
        let mut budget = Budget::new(super::super::MAX_DATA_BYTES);
        let mut r = bytes;
        let header = read_header(&mut r, &mut budget)?;
        read_data(&mut r, &header, rows, &mut budget)
    }

    fn reason(r: Result<Tensor, ReadError>) -> String {
        match r {
            Ok(t) => panic!("read a tensor of shape {:?}", t.size()),
            Err(ReadError::Format(s)) => s,
            Err(ReadError::TooLarge(o)) => panic!("over budget: {o:?}"),
        }
    }

    #[test]
    fn reads_little_and_big_endian_and_fortran_order() {
        let le: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t = parse(&npy("<f4", false, "(2, 3)", &le), None).unwrap();
        assert_eq!(t.size(), vec![2, 3]);
        assert_eq!(t.double_value(&[1, 0]), 4.0);
        let be: Vec<u8> = [1i32, -2].iter().flat_map(|v| v.to_be_bytes()).collect();
        let t = parse(&npy(">i4", false, "(2,)", &be), None).unwrap();
        assert_eq!(t.int64_value(&[1]), -2);
        // Fortran order stores columns first: [[1, 2, 3], [4, 5, 6]] is stored 1 4 2 5 3 6.
        let f: Vec<u8> = [1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t = parse(&npy("<f8", true, "(2, 3)", &f), None).unwrap();
        assert_eq!(t.double_value(&[0, 1]), 2.0);
        assert_eq!(t.double_value(&[1, 0]), 4.0);
        // Its first row alone: 1 2 3.
        let t = parse(&npy("<f8", true, "(2, 3)", &f), Some(1)).unwrap();
        assert_eq!(t.size(), vec![1, 3]);
        assert_eq!(t.double_value(&[0, 2]), 3.0);
    }

    #[test]
    fn reads_only_the_rows_asked_for() {
        // The data stops after two of the declared 1000 rows: enough for two rows, not for all.
        let bytes = npy("<f4", false, "(1000, 2)", &[0; 16]);
        assert_eq!(parse(&bytes, Some(2)).unwrap().size(), vec![2, 2]);
        assert_eq!(
            reason(parse(&bytes, None)),
            "truncated data: 16 of 8000 bytes"
        );
    }

    #[test]
    fn rejects_unsupported_dtypes_and_truncation() {
        let bytes = npy("<c8", false, "(1,)", &[0; 8]);
        let header = read_header(&mut &bytes[..], &mut Budget::new(1 << 20)).unwrap();
        assert_eq!((header.kind, header.descr.as_str()), (None, "<c8"));
        assert_eq!(
            reason(parse(&npy("<f4", false, "(4,)", &[0; 8]), None)),
            "truncated data: 8 of 16 bytes"
        );
        assert!(reason(parse(b"garbage!!!!!", None)).starts_with("not an .npy array"));
        assert!(reason(parse(b"\x93NUMPY\x01", None)).starts_with("not an .npy array"));
    }

    #[test]
    fn shapes_that_overflow_or_are_negative_are_refused_before_any_data() {
        for (shape, words) in [
            ("(4611686018427387904, 4)", "is too large"),
            ("(2305843009213693952, 1)", "is too large"), // 2^61 float64: 2^64 bytes
            ("(-1, 2)", "has a negative dimension"),
            ("(-2, -3)", "has a negative dimension"),
            ("(1, 99999999999999999999)", "is not a whole number"),
        ] {
            let e = reason(parse(&npy("<f8", false, shape, &[0; 64]), None));
            assert!(e.contains(words), "{shape}: {e}");
        }
    }

    #[test]
    fn bools_are_zero_or_one() {
        let t = parse(&npy("|b1", false, "(3,)", &[0, 1, 7]), None).unwrap();
        assert_eq!(t.to_kind(Kind::Uint8).int64_value(&[2]), 1);
    }
}
