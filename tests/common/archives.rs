//! Files built byte by byte for the hostile-input tests: `.npy` arrays, zip archives whose headers
//! can lie about sizes and CRCs, deflate bombs, `.safetensors` files.
use std::io::Write;
use std::path::{Path, PathBuf};

/// An `.npy` file (format 1.0) of `descr` and `shape` (Python tuple text) holding `data`.
pub fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
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

pub fn f32_bytes(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

pub fn file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

/// A zip member whose headers can lie: `size` is what the central directory declares it inflates
/// to, `local_size` what its local header declares (zip64 when either passes 32 bits), `crc` the
/// CRC-32 both give.
pub struct Member<'a> {
    pub name: &'a str,
    pub method: u16,
    pub compressed: Vec<u8>,
    pub size: u64,
    pub local_size: u64,
    pub crc: u32,
}

impl<'a> Member<'a> {
    pub fn stored(name: &'a str, data: Vec<u8>) -> Self {
        Member {
            name,
            method: 0,
            crc: crc32fast::hash(&data),
            size: data.len() as u64,
            local_size: data.len() as u64,
            compressed: data,
        }
    }

    pub fn deflated(name: &'a str, data: &[u8]) -> Self {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        Member {
            name,
            method: 8,
            crc: crc32fast::hash(data),
            size: data.len() as u64,
            local_size: data.len() as u64,
            compressed: e.finish().unwrap(),
        }
    }
}

pub fn zip(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for m in members {
        let offset = out.len() as u32;
        let fields = |size: u64| {
            let zip64 = size >= u32::MAX as u64;
            let extra: Vec<u8> = if zip64 {
                let mut e = vec![0x01, 0x00, 16, 0];
                e.extend(size.to_le_bytes());
                e.extend((m.compressed.len() as u64).to_le_bytes());
                e
            } else {
                Vec::new()
            };
            let (usize32, csize32) = if zip64 {
                (u32::MAX, u32::MAX)
            } else {
                (size as u32, m.compressed.len() as u32)
            };
            let mut f = Vec::new();
            f.extend((if zip64 { 45u16 } else { 20 }).to_le_bytes());
            f.extend(0u16.to_le_bytes()); // flags
            f.extend(m.method.to_le_bytes());
            f.extend(0u16.to_le_bytes()); // time
            f.extend(0x21u16.to_le_bytes()); // date: 1980-01-01
            f.extend(m.crc.to_le_bytes());
            f.extend(csize32.to_le_bytes());
            f.extend(usize32.to_le_bytes());
            f.extend((m.name.len() as u16).to_le_bytes());
            f.extend((extra.len() as u16).to_le_bytes());
            (f, extra)
        };
        let (local, local_extra) = fields(m.local_size);
        out.extend(0x04034b50u32.to_le_bytes());
        out.extend(&local);
        out.extend(m.name.as_bytes());
        out.extend(&local_extra);
        out.extend(&m.compressed);
        let (cd, cd_extra) = fields(m.size);
        central.extend(0x02014b50u32.to_le_bytes());
        central.extend(45u16.to_le_bytes()); // version made by
        central.extend(&cd);
        central.extend([0u8; 6]); // comment length, disk, internal attributes
        central.extend(0u32.to_le_bytes()); // external attributes
        central.extend(offset.to_le_bytes());
        central.extend(m.name.as_bytes());
        central.extend(&cd_extra);
    }
    let cd_offset = out.len() as u32;
    out.extend(&central);
    out.extend(0x06054b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

/// A deflate stream of `prefix` then `zeros_mib` MiB of zero bytes, built in milliseconds: one
/// sync-flushed MiB of zeros encodes to the same bytes whatever zeros came before, so it repeats.
pub fn deflated_zeros(prefix: &[u8], zeros_mib: usize) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let mut c = Compress::new(Compression::best(), false);
    let mut out = Vec::with_capacity(1 << 20);
    let mut chunk = |input: &[u8], flush: FlushCompress, out: &mut Vec<u8>| {
        let start = out.len();
        let mut consumed = 0;
        loop {
            out.reserve(64 << 10);
            let before = c.total_in();
            c.compress_vec(&input[consumed..], out, flush).unwrap();
            consumed += (c.total_in() - before) as usize;
            if consumed == input.len() && out.len() < out.capacity() {
                break;
            }
        }
        out[start..].to_vec()
    };
    let zeros = vec![0u8; 1 << 20];
    chunk(prefix, FlushCompress::Sync, &mut out);
    chunk(&zeros, FlushCompress::Sync, &mut out);
    let repeat = chunk(&zeros, FlushCompress::Sync, &mut out);
    for _ in 2..zeros_mib {
        out.extend(&repeat);
    }
    chunk(&[], FlushCompress::Finish, &mut out);
    out
}

/// A .safetensors file: 8-byte header length, the JSON header, the data.
pub fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    out
}
