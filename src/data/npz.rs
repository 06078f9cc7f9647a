//! `.npz` archives: a zip of `.npy` members, each inflated as a stream and only as far as needed.
//!
//! An archive is a set of claims: the central directory and each member's local header state its
//! name, sizes and CRC-32 twice. A member is read only when they agree (as they do in every archive
//! `np.savez` writes), its declared size is the size of the array it holds, and the data read
//! matches its CRC-32, so trainlint reads what `np.load` reads or refuses the file.
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use zip::result::ZipError;
use zip::CompressionMethod;

use super::budget::{bytes_text, Budget};
use super::npy::{read_data, read_header, Header};
use super::paths::{describe_io, excerpt, open_regular, unreadable};
use super::{read_error, ArrayInfo, ArraySource, DataError, Loaded, ReadError};

/// The most members an archive may list: an `.npz` holds a few arrays. The zip reader keeps every
/// entry of the central directory in memory, so its size is checked before the reader sees it.
const MAX_MEMBERS: u64 = 65_536;
/// The most bytes of central directory read (about 46 bytes and a name per member).
const MAX_DIRECTORY_BYTES: u64 = 16 << 20;
/// A member read in part is inflated through its end to verify its size and CRC-32 when at most
/// this much is left; past it (a sample from a huge archive) the rest is not inflated.
const MAX_VERIFY_BYTES: u64 = 256 << 20;

pub struct Npz {
    path: PathBuf,
    archive: zip::ZipArchive<BufReader<File>>,
    /// The archive file, to read members' local headers.
    raw: File,
    /// The archive index of each array's member.
    members: Vec<usize>,
    /// Each array's key (`x` for the member `x.npy`, as `np.load` names it) and member name.
    names: Vec<String>,
    stored: Vec<String>,
}

/// A zip error in words.
fn describe_zip(e: ZipError) -> String {
    match e {
        ZipError::Io(e) => describe_io(&e),
        ZipError::InvalidArchive(why) => format!("it is damaged ({why})"),
        ZipError::UnsupportedArchive(why) if why == ZipError::PASSWORD_REQUIRED => {
            "it is encrypted".into()
        }
        ZipError::UnsupportedArchive(why) => {
            format!("it uses a zip feature trainlint cannot read ({why})")
        }
        other => other.to_string(),
    }
}

fn u16_at(b: &[u8], at: usize) -> u64 {
    u16::from_le_bytes([b[at], b[at + 1]]) as u64
}

fn u32_at(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as u64
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Refuse an archive whose end-of-central-directory record lists more members, or a larger
/// directory, than an `.npz` could need, before the zip reader allocates for them. An archive
/// without such a record is left to the zip reader, which refuses it.
fn check_directory(file: &mut File) -> Result<(), DirectoryError> {
    let Some((members, size)) = crate::zipdir::declared_directory(file)? else {
        return Ok(());
    };
    if members > MAX_MEMBERS || size > MAX_DIRECTORY_BYTES {
        return Err(DirectoryError::TooLarge { members, size });
    }
    Ok(())
}

/// Why an archive's zip directory is refused before the zip reader reads it ([`check_directory`]).
#[derive(Debug, thiserror::Error)]
enum DirectoryError {
    #[error("{}", describe_io(.0))]
    Io(#[from] io::Error),
    #[error("its zip directory lists {members} members in {}; an .npz holds at most {MAX_MEMBERS} members in {}", bytes_text(*.size), bytes_text(MAX_DIRECTORY_BYTES))]
    TooLarge { members: u64, size: u64 },
}

/// Why a member's local header cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LocalHeaderError {
    #[error("its local zip header lies beyond the end of the file")]
    BeyondEnd,
    #[error("its local zip header is missing (no local header signature)")]
    NoSignature,
    #[error("its local zip header is cut short")]
    CutShort,
}

/// What a member's local header states.
struct LocalHeader {
    flags: u64,
    crc: u64,
    compressed: u64,
    size: u64,
    name: Vec<u8>,
}

fn read_local_header(file: &mut File, at: u64) -> Result<LocalHeader, LocalHeaderError> {
    let mut fixed = [0u8; 30];
    file.seek(SeekFrom::Start(at))
        .and_then(|_| file.read_exact(&mut fixed))
        .map_err(|_| LocalHeaderError::BeyondEnd)?;
    if !fixed.starts_with(b"PK\x03\x04") {
        return Err(LocalHeaderError::NoSignature);
    }
    let (name_len, extra_len) = (u16_at(&fixed, 26) as usize, u16_at(&fixed, 28) as usize);
    let mut variable = vec![0u8; name_len + extra_len];
    file.read_exact(&mut variable)
        .map_err(|_| LocalHeaderError::CutShort)?;
    let extra = variable.split_off(name_len);
    let mut header = LocalHeader {
        flags: u16_at(&fixed, 6),
        crc: u32_at(&fixed, 14),
        compressed: u32_at(&fixed, 18),
        size: u32_at(&fixed, 22),
        name: variable,
    };
    // Zip64: 0xFFFFFFFF sizes are in the extra field 0x0001, uncompressed size first.
    let mut rest = &extra[..];
    while rest.len() >= 4 {
        let (id, len) = (u16_at(rest, 0), u16_at(rest, 2) as usize);
        let body = rest.get(4..4 + len).unwrap_or(&[]);
        if id == 1 {
            let mut fields = body.chunks_exact(8).map(|c| u64_at(c, 0));
            if header.size == 0xFFFF_FFFF {
                header.size = fields.next().unwrap_or(u64::MAX);
            }
            if header.compressed == 0xFFFF_FFFF {
                header.compressed = fields.next().unwrap_or(u64::MAX);
            }
        }
        rest = rest.get(4 + len..).unwrap_or(&[]);
    }
    Ok(header)
}

impl Npz {
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let mut raw = open_regular(path, "the data file")?;
        check_directory(&mut raw).map_err(|why| unreadable(path, why))?;
        // A handle of its own (not a clone, which would share the offset the zip reader seeks).
        let file = BufReader::new(open_regular(path, "the data file")?);
        let archive = zip::ZipArchive::new(file).map_err(|e| {
            let why = match e {
                ZipError::InvalidArchive(_) => {
                    "not a zip archive, which an .npz (NumPy's np.savez) is".to_string()
                }
                other => format!("not a readable zip archive: {}", describe_zip(other)),
            };
            unreadable(path, why)
        })?;
        let mut members = Vec::new();
        let mut names = Vec::new();
        let mut stored = Vec::new();
        for index in 0..archive.len() {
            let Some(name) = archive.name_for_index(index) else {
                continue;
            };
            if name.ends_with('/') {
                continue; // a folder entry
            }
            // np.load names a member `x.npy` as `x`, and any other member by its name.
            let key = name.strip_suffix(".npy").unwrap_or(name);
            names.push(key.to_string());
            stored.push(name.to_string());
            members.push(index);
        }
        Ok(Npz {
            path: path.to_path_buf(),
            archive,
            raw,
            members,
            names,
            stored,
        })
    }

    /// Check that member `index`'s two headers agree, then read its `.npy` header; the member is
    /// left open for reading its data. Returns the reader, the array header and the member's
    /// declared uncompressed size.
    fn open_member(
        &mut self,
        index: usize,
        budget: &mut Budget,
    ) -> Result<(zip::read::ZipFile<'_, BufReader<File>>, Header, u64), ReadError> {
        let archive_index = self.members[index];
        let member = self
            .archive
            .by_index(archive_index)
            .map_err(|e| ReadError::Format(format!("zip member: {}", describe_zip(e))))?;
        let local = read_local_header(&mut self.raw, member.header_start())?;
        let mismatch = |what: &str, central: u64, local: u64| {
            ReadError::Format(format!(
                "its zip entry is inconsistent: the central directory gives {what} {central}, the local header {local}; the archive is damaged or crafted"
            ))
        };
        if local.name != member.name_raw() {
            return Err(ReadError::Format(
                "its zip entry is inconsistent: the local header names another member; the archive is damaged or crafted".into(),
            ));
        }
        // With flag bit 3 the local header leaves sizes and CRC to a descriptor after the data.
        if local.flags & 8 == 0 {
            if local.crc != member.crc32() as u64 {
                return Err(mismatch("CRC-32", member.crc32() as u64, local.crc));
            }
            if local.compressed != member.compressed_size() {
                return Err(mismatch(
                    "compressed size",
                    member.compressed_size(),
                    local.compressed,
                ));
            }
            if local.size != member.size() {
                return Err(mismatch("size", member.size(), local.size));
            }
        }
        if member.compression() == CompressionMethod::Stored
            && member.size() != member.compressed_size()
        {
            return Err(ReadError::Format(format!(
                "its zip entry is stored uncompressed but declares {} bytes for {} bytes of data; the archive is damaged or crafted",
                member.size(),
                member.compressed_size()
            )));
        }
        let declared = member.size();
        let mut member = member;
        let header = read_header(&mut member, budget)?;
        if let Some(needed) = header.stored_size() {
            if needed != declared {
                return Err(ReadError::Format(format!(
                    "its zip entry declares {declared} bytes, but the array it holds (shape {:?} of {}) takes {needed}; the archive is damaged or crafted",
                    header.shape, header.descr
                )));
            }
        }
        Ok((member, header, declared))
    }
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// Inflate the rest of a member to its end: it must hold exactly its declared size, and the zip
/// reader checks the CRC-32 when it reaches the end.
fn verify_rest(r: &mut Counting<impl Read>, declared: u64) -> Result<(), ReadError> {
    let left = declared.saturating_sub(r.count);
    if left > MAX_VERIFY_BYTES {
        return Ok(());
    }
    io::copy(&mut r.by_ref().take(left + 1), &mut io::sink()).map_err(|e| {
        ReadError::Format(
            if e.kind() == io::ErrorKind::InvalidData && e.to_string().contains("checksum") {
                "its data does not match its CRC-32 (the archive is damaged)".into()
            } else {
                describe_io(&e)
            },
        )
    })?;
    if r.count != declared {
        let found = if r.count > declared {
            "more".to_string()
        } else {
            format!("only {}", r.count)
        };
        return Err(ReadError::Format(format!(
            "its zip entry declares {declared} bytes, but {found} inflate from it; the archive is damaged or crafted"
        )));
    }
    Ok(())
}

impl ArraySource for Npz {
    fn names(&self) -> &[String] {
        &self.names
    }

    fn stored_as(&self, index: usize) -> String {
        format!("`{}`", excerpt(&self.stored[index]))
    }

    fn info(&mut self, index: usize, budget: &mut Budget) -> Result<ArrayInfo, DataError> {
        let name = excerpt(&self.names[index]);
        let path = self.path.clone();
        let (_, header, _) = self
            .open_member(index, budget)
            .map_err(|e| read_error(&path, &name, e))?;
        Ok(header.info(name))
    }

    fn read(&mut self, index: usize, rows: Option<i64>, budget: &mut Budget) -> Loaded {
        let name = excerpt(&self.names[index]);
        let path = self.path.clone();
        let (member, header, declared) = self
            .open_member(index, budget)
            .map_err(|e| read_error(&path, &name, e))?;
        let mut member = Counting {
            count: header.data_offset,
            inner: member,
        };
        let tensor = read_data(&mut member, &header, rows, budget)
            .and_then(|t| verify_rest(&mut member, declared).map(|_| t))
            .map_err(|e| read_error(&path, &name, e))?;
        Ok(tensor)
    }
}
