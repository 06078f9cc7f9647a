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

pub fn open_file(path: &Path) -> Result<File, DataError> {
    File::open(path).map_err(|e| unreadable(path, describe_io(&e)))
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
