//! What a zip archive's end-of-central-directory record declares, read before a zip reader allocates
//! for it: the `.npz` reader and the `.pt2` reader each refuse a directory larger than their format
//! needs.
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

fn le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0u64, |n, &x| n << 8 | u64::from(x))
}

/// The member count and directory size the archive's end record declares (the larger of the zip and
/// zip64 records' where a zip64 locator is present), or `None` without an end record: that is left to
/// the zip reader, which refuses it.
pub fn declared_directory(file: &mut File) -> io::Result<Option<(u64, u64)>> {
    let len = file.metadata()?.len();
    let tail_len = len.min(22 + 65_535);
    let mut tail = vec![0u8; tail_len as usize];
    file.seek(SeekFrom::Start(len - tail_len))?;
    file.read_exact(&mut tail)?;
    let Some(end) = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| tail[i..].starts_with(b"PK\x05\x06"))
    else {
        return Ok(None);
    };
    let (mut members, mut size) = (le(&tail[end + 10..end + 12]), le(&tail[end + 12..end + 16]));
    // Zip64: the locator just before the record points to the zip64 record, which holds the counts.
    if end >= 20 && tail[end - 20..].starts_with(b"PK\x06\x07") {
        let at = le(&tail[end - 12..end - 4]);
        let mut record = [0u8; 56];
        if file
            .seek(SeekFrom::Start(at))
            .and_then(|_| file.read_exact(&mut record))
            .is_ok()
            && record.starts_with(b"PK\x06\x06")
        {
            members = members.max(le(&record[32..40]));
            size = size.max(le(&record[40..48]));
        }
    }
    Ok(Some((members, size)))
}
