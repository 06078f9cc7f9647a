//! NumPy's `.npy` format (versions 1–3) and `.npz` archives of them.
use std::io::Read;

use tch::{Kind, Tensor};

#[derive(Debug)]
pub enum NpyError {
    Dtype(String),
    Format(String),
}

fn fmt_err(s: impl Into<String>) -> NpyError {
    NpyError::Format(s.into())
}

/// (name without `.npy`, raw bytes) of every member of an npz archive, in archive order.
pub fn parse_npz(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(|e| e.to_string())?;
        let name = f.name().trim_end_matches(".npy").to_string();
        let mut raw = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut raw)
            .map_err(|e| format!("member {name}: {e}"))?;
        out.push((name, raw));
    }
    Ok(out)
}

struct Header {
    descr: String,
    fortran: bool,
    shape: Vec<i64>,
}

fn header_value<'a>(header: &'a str, key: &str) -> Result<&'a str, NpyError> {
    let pat = format!("'{key}':");
    let start = header
        .find(&pat)
        .ok_or_else(|| fmt_err(format!("header lacks {key}")))?
        + pat.len();
    Ok(header[start..].trim_start())
}

fn parse_header(h: &str) -> Result<Header, NpyError> {
    let descr = header_value(h, "descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| fmt_err("structured dtypes are not supported"))?
        .to_string();
    let fortran = header_value(h, "fortran_order")?.starts_with("True");
    let shape_text = header_value(h, "shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| fmt_err("bad shape"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<i64>()
                .map_err(|_| fmt_err(format!("bad shape entry {s}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Header {
        descr,
        fortran,
        shape,
    })
}

pub fn parse(bytes: &[u8]) -> Result<Tensor, NpyError> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(fmt_err("not an .npy array (bad magic)"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(fmt_err(format!("unsupported .npy version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| fmt_err("truncated header"))?;
    let header = parse_header(&String::from_utf8_lossy(header))?;
    let (endian, code) = header.descr.split_at(1);
    let (kind, size) = match code {
        "f2" => (Kind::Half, 2),
        "f4" => (Kind::Float, 4),
        "f8" => (Kind::Double, 8),
        "i1" => (Kind::Int8, 1),
        "i2" => (Kind::Int16, 2),
        "i4" => (Kind::Int, 4),
        "i8" => (Kind::Int64, 8),
        "u1" => (Kind::Uint8, 1),
        "b1" => (Kind::Bool, 1),
        _ => return Err(NpyError::Dtype(header.descr.clone())),
    };
    let numel: i64 = header.shape.iter().product();
    let data = &bytes[start + header_len..];
    let needed = numel as usize * size;
    if data.len() < needed {
        return Err(fmt_err(format!(
            "truncated data: {} of {needed} bytes",
            data.len()
        )));
    }
    let mut data = data[..needed].to_vec();
    if endian == ">" && size > 1 {
        for chunk in data.chunks_mut(size) {
            chunk.reverse();
        }
    }
    let stored_shape: Vec<i64> = if header.fortran {
        header.shape.iter().rev().copied().collect()
    } else {
        header.shape.clone()
    };
    let t =
        Tensor::f_from_data_size(&data, &stored_shape, kind).map_err(|e| fmt_err(e.to_string()))?;
    if header.fortran && header.shape.len() > 1 {
        let dims: Vec<i64> = (0..header.shape.len() as i64).rev().collect();
        return Ok(t.permute(dims.as_slice()).contiguous());
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
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

    #[test]
    fn reads_little_and_big_endian_and_fortran_order() {
        let le: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t = parse(&npy("<f4", false, "(2, 3)", &le)).unwrap();
        assert_eq!(t.size(), vec![2, 3]);
        assert_eq!(t.double_value(&[1, 0]), 4.0);
        let be: Vec<u8> = [1i32, -2].iter().flat_map(|v| v.to_be_bytes()).collect();
        let t = parse(&npy(">i4", false, "(2,)", &be)).unwrap();
        assert_eq!(t.int64_value(&[1]), -2);
        // Fortran order stores columns first: [[1, 2, 3], [4, 5, 6]] is stored 1 4 2 5 3 6.
        let f: Vec<u8> = [1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t = parse(&npy("<f8", true, "(2, 3)", &f)).unwrap();
        assert_eq!(t.double_value(&[0, 1]), 2.0);
        assert_eq!(t.double_value(&[1, 0]), 4.0);
    }

    #[test]
    fn rejects_unsupported_dtypes_and_truncation() {
        assert!(
            matches!(parse(&npy("<c8", false, "(1,)", &[0; 8])), Err(NpyError::Dtype(d)) if d == "<c8")
        );
        assert!(matches!(
            parse(&npy("<f4", false, "(4,)", &[0; 8])),
            Err(NpyError::Format(_))
        ));
        assert!(matches!(parse(b"garbage!!!!!"), Err(NpyError::Format(_))));
    }
}
