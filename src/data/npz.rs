//! `.npz` archives: a zip of `.npy` members, each inflated as a stream and only as far as needed.
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use zip::result::ZipError;

use super::budget::Budget;
use super::npy::{read_data, read_header};
use super::paths::{describe_io, open_file, printable, unreadable};
use super::{read_error, ArrayInfo, ArraySource, DataError, Loaded, ReadError};

pub struct Npz {
    path: PathBuf,
    archive: zip::ZipArchive<BufReader<File>>,
    /// The archive index of each array's member.
    members: Vec<usize>,
    infos: Vec<ArrayInfo>,
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

impl Npz {
    pub fn open(path: &Path, budget: &mut Budget) -> Result<Self, DataError> {
        let file = BufReader::new(open_file(path)?);
        let mut archive = zip::ZipArchive::new(file).map_err(|e| {
            let why = match e {
                ZipError::InvalidArchive(_) => {
                    "not a zip archive, which an .npz (NumPy's np.savez) is".to_string()
                }
                other => format!("not a readable zip archive: {}", describe_zip(other)),
            };
            unreadable(path, why)
        })?;
        let mut members = Vec::new();
        let mut infos = Vec::new();
        for index in 0..archive.len() {
            let mut member = archive.by_index(index).map_err(|e| {
                unreadable(path, format!("zip member #{index}: {}", describe_zip(e)))
            })?;
            if member.is_dir() {
                continue;
            }
            let name = printable(member.name().trim_end_matches(".npy"));
            let header =
                read_header(&mut member, budget).map_err(|e| read_error(path, &name, e))?;
            infos.push(header.info(name));
            members.push(index);
        }
        Ok(Npz {
            path: path.to_path_buf(),
            archive,
            members,
            infos,
        })
    }
}

impl ArraySource for Npz {
    fn arrays(&self) -> &[ArrayInfo] {
        &self.infos
    }

    fn read(&mut self, index: usize, rows: Option<i64>, budget: &mut Budget) -> Loaded {
        let name = &self.infos[index].name;
        let mut member = self
            .archive
            .by_index(self.members[index])
            .map_err(|e| read_error(&self.path, name, ReadError::Format(describe_zip(e))))?;
        read_header(&mut member, budget)
            .and_then(|header| read_data(&mut member, &header, rows, budget))
            .map_err(|e| read_error(&self.path, name, e))
    }
}
