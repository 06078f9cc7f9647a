//! Opening the files named by the user, with messages that say why one cannot be read.
use std::fs::{File, Metadata};
use std::io;
use std::path::Path;

use super::DataError;

pub fn unreadable(path: &Path, reason: impl ToString) -> DataError {
    DataError::Unreadable {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// An I/O error in words: `permission denied`, not an OS error code alone.
pub fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::NotFound => "it does not exist".into(),
        io::ErrorKind::UnexpectedEof => "the file ends early".into(),
        _ => {
            let text = e.to_string();
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => "unknown I/O error".into(),
            }
        }
    }
}

/// The metadata of a path the user named; only a path that is not there is "missing": a symlink
/// loop or a folder without permission is unreadable, and says why.
pub fn metadata(path: &Path) -> Result<Metadata, DataError> {
    std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => DataError::Missing(path.to_path_buf()),
        _ => unreadable(path, describe_io(&e)),
    })
}

/// Linux's `O_NONBLOCK` (the same value on x86-64 and aarch64): opening a FIFO with it returns at
/// once instead of waiting for a writer; a regular file ignores it.
const O_NONBLOCK: i32 = 0o4000;

/// Open a file the run reads, refusing anything but a regular file: a FIFO would block the run
/// forever and a device (`/dev/zero`, `/dev/urandom`) never ends. The file is opened without waiting
/// and checked on the opened descriptor, so a path swapped after a check cannot slip through.
/// `role` names the file in the message ("the loss log", "sibling .npy").
pub fn open_regular(path: &Path, role: &str) -> Result<File, DataError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => DataError::Missing(path.to_path_buf()),
            _ => unreadable(path, describe_io(&e)),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| unreadable(path, describe_io(&e)))?;
    if meta.is_dir() {
        return Err(unreadable(path, format!("{role} is a folder, not a file")));
    }
    if !meta.is_file() {
        return Err(unreadable(
            path,
            format!(
                "{role} is not a regular file (a {}); trainlint reads only regular files",
                file_type_name(&meta)
            ),
        ));
    }
    Ok(file)
}

/// What a non-regular file is, in words.
fn file_type_name(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// A value from a file, cut short for a one-line message: at most 40 characters, then `…` and the
/// value's full size in bytes; control characters escaped.
pub fn excerpt(value: &str) -> String {
    const KEEP: usize = 40;
    match value.char_indices().nth(KEEP) {
        None => printable(value),
        Some((cut, _)) => format!("{}… ({} bytes)", printable(&value[..cut]), value.len()),
    }
}

/// Text from a file, safe to put in a one-line message: control characters are escaped.
pub fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}
