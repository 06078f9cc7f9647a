//! Where trainlint's output goes, and what it never touches.
//!
//! - Every output file is planned before anything runs: its folder must exist and take a new file, and
//!   it must not be one of the inputs (after resolving symlinks and hard links) nor another output.
//! - Outputs are written only at the end, each to a temporary file in its own folder, then renamed over
//!   the target: a failure leaves no half-written file and no new file behind. A character device
//!   (`/dev/null`, a terminal) or a named pipe is written into in place, never replaced; a block device
//!   or a socket is refused.
//! - A report that cannot be written to standard output (a full disk, a descriptor not open for
//!   writing) is an error, never a silent exit 0; a reader that stopped reading (a closed pipe, `| head`)
//!   ends the run quietly with the exit code it would have had.
//! - Model code can print (TorchScript `print`, C++ writing to fd 1): while `check` runs, fd 1 points
//!   to stderr, and the report goes to the real standard output, kept aside ([`ReportStdout`]).
use std::ffi::{c_int, c_void};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

/// Why an output cannot be planned or written (the CLI's exit 2). Each message is one line that names
/// the output's flag or path, and the input it would overwrite.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A node that takes no report (a block device, a socket).
    #[error("{flag} {} is a {node}; trainlint writes reports to files, character devices (/dev/null) and pipes only", path.display())]
    NoReportNode {
        flag: String,
        path: PathBuf,
        node: &'static str,
    },
    /// The output path cannot be resolved to a file in a folder that takes new files.
    #[error("{flag} {}: {source}", path.display())]
    Unusable {
        flag: String,
        path: PathBuf,
        #[source]
        source: PathError,
    },
    #[error("{flag} {} is {role}; trainlint never overwrites its inputs", path.display())]
    IsInput {
        flag: String,
        path: PathBuf,
        role: String,
    },
    #[error("{flag} {} lies inside {role} ({}); trainlint never writes into its inputs", path.display(), input.display())]
    InsideInput {
        flag: String,
        path: PathBuf,
        role: String,
        input: PathBuf,
    },
    #[error("{flag} {} is also where {other} goes; give each output its own file", path.display())]
    SameAsOutput {
        flag: String,
        path: PathBuf,
        other: String,
    },
    /// `init`'s config file is an input under another name (a link to the model).
    #[error("{} is {role} ({}) under another name; trainlint never overwrites its inputs", path.display(), input.display())]
    InputUnderAnotherName {
        path: PathBuf,
        role: String,
        input: PathBuf,
    },
    #[error("{} is not a regular file (a folder, a device, a pipe or a socket)", path.display())]
    NotRegularFile { path: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write to standard output: {0}")]
    Stdout(#[source] io::Error),
}

/// Why an output path names no file that can be written (see [`resolve`] and [`writable`]).
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("{0}")]
    ReadLink(#[source] io::Error),
    #[error("is a folder, not a file")]
    Folder,
    #[error("names no file")]
    NoFileName,
    #[error("the folder {} does not exist", .0.display())]
    NoFolder(PathBuf),
    #[error("{} is not a folder", .0.display())]
    NotAFolder(PathBuf),
    #[error("too many levels of symbolic links")]
    LinkLoop,
    #[error("cannot write into {}: {source}", folder.display())]
    FolderRefusesFiles {
        folder: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A file trainlint reads, under the name the user knows it by ("the model", "the --baseline file").
pub struct Input<'a> {
    pub role: &'a str,
    pub path: &'a Path,
}

/// A file trainlint is asked to write, under its flag ("--output-file").
pub struct Output<'a> {
    pub flag: &'a str,
    pub path: &'a Path,
}

/// An output that passed [`plan`]: the file to write, symlinks resolved.
#[derive(Debug, Clone)]
pub struct Target {
    pub flag: String,
    /// As the user gave it, for messages.
    pub shown: PathBuf,
    resolved: PathBuf,
    /// A character device or a named pipe: written into in place, never replaced by a rename.
    special: bool,
    /// `/dev/stdout` or `/dev/stderr` (or their `/dev/fd`, `/proc/self/fd` names): written to the
    /// process's own stream, which while `check` runs is not what fd 1 is (see [`ReportStdout`]).
    stream: Option<Stream>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stream {
    Stdout,
    Stderr,
}

/// The standard stream a path names, if any: opened by name it would be a new file description (at
/// offset 0 of a redirected file) or, for stdout while `check` runs, stderr.
fn standard_stream(path: &Path) -> Option<Stream> {
    match path.to_str()? {
        "/dev/stdout" | "/dev/fd/1" | "/proc/self/fd/1" => Some(Stream::Stdout),
        "/dev/stderr" | "/dev/fd/2" | "/proc/self/fd/2" => Some(Stream::Stderr),
        _ => None,
    }
}

/// What kind of node an existing output path is, when it is not a regular file: `Ok(true)` for the
/// ones written into in place (character devices, named pipes), `Err` with the node's name for those
/// that take no report (block devices: writing would overwrite a disk; sockets: nothing to open).
fn special_kind(path: &Path) -> Result<bool, &'static str> {
    // `metadata` follows every link, `/proc/self/fd/N` ones included, whose targets are no paths.
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(false);
    };
    let kind = meta.file_type();
    if kind.is_char_device() || kind.is_fifo() {
        Ok(true)
    } else if kind.is_block_device() {
        Err("block device")
    } else if kind.is_socket() {
        Err("socket")
    } else {
        Ok(false)
    }
}

/// Checks every output before anything runs. Refused: an output that is an input (or lies inside an
/// input folder), two outputs on one file, a missing folder or one that takes no new file, a folder in
/// place of a file. Each message is one line that names both roles.
pub fn plan(outputs: &[Output], inputs: &[Input]) -> Result<Vec<Target>, OutputError> {
    let inputs: Vec<(&Input, PathBuf)> = inputs
        .iter()
        // An input that does not exist yet is compared by where it would be (`--baseline X
        // --write-baseline X`); one whose folder does not exist either is reported when it is read.
        .filter_map(|i| {
            let resolved = i.path.canonicalize().or_else(|_| resolve(i.path));
            resolved.ok().map(|c| (i, c))
        })
        .collect();
    let mut planned: Vec<Target> = Vec::new();
    for o in outputs {
        let unusable = |source| OutputError::Unusable {
            flag: o.flag.into(),
            path: o.path.into(),
            source,
        };
        let stream = standard_stream(o.path);
        let special = stream.is_some()
            || special_kind(o.path).map_err(|node| OutputError::NoReportNode {
                flag: o.flag.into(),
                path: o.path.into(),
                node,
            })?;
        // A device or a pipe is opened by the name given (`/dev/stdout` links to no path).
        let resolved = if special {
            o.path.to_path_buf()
        } else {
            resolve(o.path).map_err(unusable)?
        };
        for (input, canonical) in &inputs {
            if same_file(&resolved, canonical) {
                return Err(OutputError::IsInput {
                    flag: o.flag.into(),
                    path: o.path.into(),
                    role: input.role.to_string(),
                });
            }
            if canonical.is_dir() && resolved.starts_with(canonical) {
                return Err(OutputError::InsideInput {
                    flag: o.flag.into(),
                    path: o.path.into(),
                    role: input.role.to_string(),
                    input: input.path.to_path_buf(),
                });
            }
        }
        if let Some(other) = planned.iter().find(|t| same_file(&resolved, &t.resolved)) {
            return Err(OutputError::SameAsOutput {
                flag: o.flag.into(),
                path: o.path.into(),
                other: other.flag.clone(),
            });
        }
        if !special {
            writable(&resolved).map_err(unusable)?;
        }
        planned.push(Target {
            flag: o.flag.to_string(),
            shown: o.path.to_path_buf(),
            resolved,
            special,
            stream,
        });
    }
    Ok(planned)
}

/// Where `path` will be written: symlinks resolved all the way, for a file that may not exist yet
/// (its folder is canonicalized and the name appended).
fn resolve(path: &Path) -> Result<PathBuf, PathError> {
    let mut path = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&path).map_err(PathError::ReadLink)?;
                path = match path.parent() {
                    Some(parent) => parent.join(link),
                    None => link,
                };
            }
            Ok(meta) if meta.is_dir() => return Err(PathError::Folder),
            _ => {
                let name = match path.components().next_back() {
                    Some(Component::Normal(name)) => name.to_os_string(),
                    _ => return Err(PathError::NoFileName),
                };
                let parent = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                let Ok(folder) = parent.canonicalize() else {
                    return Err(PathError::NoFolder(parent));
                };
                if !folder.is_dir() {
                    return Err(PathError::NotAFolder(parent));
                }
                return Ok(folder.join(name));
            }
        }
    }
    Err(PathError::LinkLoop)
}

/// Same path, or the same file under another name (a hard link).
fn same_file(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Whether `target`'s folder takes a new file (permissions, read-only file systems): by creating one.
fn writable(target: &Path) -> Result<(), PathError> {
    let folder = target.parent().unwrap_or(Path::new("."));
    let probe = temp_name(target, "probe");
    match OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(source) => Err(PathError::FolderRefusesFiles {
            folder: folder.to_path_buf(),
            source,
        }),
    }
}

/// A hidden name next to `target`, unique to this process.
fn temp_name(target: &Path, what: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.trainlint-{what}-{}", std::process::id()))
}

/// Creates `temp` (which must not exist) with `contents`, synced to disk: the first half of an atomic
/// write, whose rename follows once everything is staged.
fn write_new(temp: &Path, contents: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(temp)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Writes every `(target, contents)` atomically: all go to temporary files first, and only when all
/// of them are written are they renamed over their targets. On error nothing is left behind but the
/// files already renamed (renames in one folder fail only when the folder itself goes away).
/// Character devices and named pipes are written into in place once the files are staged: renaming
/// over them would replace the node (`/dev/null` for the whole system, when run as root).
pub fn write_all(files: &[(&Target, &[u8])]) -> Result<(), OutputError> {
    let mut staged: Vec<(PathBuf, &Target)> = Vec::new();
    let cleanup = |staged: &[(PathBuf, &Target)]| {
        for (temp, _) in staged {
            let _ = std::fs::remove_file(temp);
        }
    };
    for (target, contents) in files.iter().filter(|(t, _)| !t.special) {
        let temp = temp_name(&target.resolved, "tmp");
        if let Err(e) = write_new(&temp, contents) {
            let _ = std::fs::remove_file(&temp);
            cleanup(&staged);
            return Err(target.cannot_write(e));
        }
        staged.push((temp, target));
    }
    for (target, contents) in files.iter().filter(|(t, _)| t.special) {
        // No create, no truncate: the node stays what it is. A pipe without a reader waits for one,
        // as the shell's `>` does.
        let cannot = |e: io::Error| target.cannot_write(e);
        let written = match target.stream {
            Some(Stream::Stdout) => match real_stdout() {
                Some(fd) => write_stdout(fd.as_fd(), contents),
                None => print(contents),
            },
            Some(Stream::Stderr) => match io::stderr().lock().write_all(contents) {
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(cannot(e)),
                _ => Ok(()),
            },
            None => OpenOptions::new()
                .write(true)
                .open(&target.resolved)
                .and_then(|mut f| f.write_all(contents))
                .map_err(cannot),
        };
        if let Err(e) = written {
            cleanup(&staged);
            return Err(e);
        }
    }
    for (i, (temp, target)) in staged.iter().enumerate() {
        if let Err(e) = std::fs::rename(temp, &target.resolved) {
            cleanup(&staged[i..]);
            return Err(target.cannot_write(e));
        }
    }
    Ok(())
}

/// Writes `contents` as the file `path` names, replacing that name itself (temporary file, then rename):
/// a symbolic link there is replaced, never written through, and a hard link is split off. Refused
/// when `path` is one of `inputs` under another name (a link to the model), or names something that
/// is no file (a folder, a device, a pipe). For `trainlint init --force`.
pub fn replace(path: &Path, contents: &[u8], inputs: &[Input]) -> Result<(), OutputError> {
    if let Ok(target) = path.canonicalize().or_else(|_| resolve(path)) {
        for input in inputs {
            let input_path = input.path.canonicalize().or_else(|_| resolve(input.path));
            if input_path.is_ok_and(|i| same_file(&target, &i)) {
                return Err(OutputError::InputUnderAnotherName {
                    path: path.to_path_buf(),
                    role: input.role.to_string(),
                    input: input.path.to_path_buf(),
                });
            }
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        let kind = meta.file_type();
        if !kind.is_file() && !kind.is_symlink() {
            return Err(OutputError::NotRegularFile {
                path: path.to_path_buf(),
            });
        }
    }
    let temp = temp_name(path, "tmp");
    let written = write_new(&temp, contents).and_then(|()| std::fs::rename(&temp, path));
    written.map_err(|source| {
        let _ = std::fs::remove_file(&temp);
        OutputError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

impl Target {
    fn cannot_write(&self, source: io::Error) -> OutputError {
        OutputError::Write {
            path: self.shown.clone(),
            source,
        }
    }
}

extern "C" {
    fn dup2(old: c_int, new: c_int) -> c_int;
    fn fflush(stream: *mut c_void) -> c_int;
}

/// The real standard output, set aside while fd 1 points to stderr: whatever model code prints goes
/// to stderr, and only the report reaches stdout. Dropping it puts fd 1 back.
pub struct ReportStdout {
    saved: Option<OwnedFd>,
}

impl ReportStdout {
    /// Redirects fd 1 to fd 2 until drop. Without a usable stdout (closed) nothing is redirected and
    /// the report goes wherever fd 1 goes.
    pub fn capture() -> ReportStdout {
        let _ = io::stdout().flush();
        let Ok(saved) = io::stdout().as_fd().try_clone_to_owned() else {
            return ReportStdout { saved: None };
        };
        // SAFETY: dup2 on two open descriptors (1 is open: it was just duplicated; 2 is open or dup2
        // fails and returns -1, leaving fd 1 as it was). Rust's stdout buffer was flushed above.
        let redirected = unsafe { dup2(io::stderr().as_raw_fd(), io::stdout().as_raw_fd()) } >= 0;
        if redirected {
            *REAL_STDOUT.lock().unwrap_or_else(|p| p.into_inner()) = saved.try_clone().ok();
        }
        ReportStdout {
            saved: redirected.then_some(saved),
        }
    }

    /// Writes the report to the real standard output (see [`print`] for what a failure means).
    pub fn write(&self, bytes: &[u8]) -> Result<(), OutputError> {
        match &self.saved {
            Some(fd) => write_stdout(fd.as_fd(), bytes),
            None => print(bytes),
        }
    }
}

/// The real standard output while a [`ReportStdout`] holds it aside, for `-o /dev/stdout`.
static REAL_STDOUT: Mutex<Option<OwnedFd>> = Mutex::new(None);

fn real_stdout() -> Option<OwnedFd> {
    REAL_STDOUT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|fd| fd.try_clone().ok())
}

/// The first failure to write standard output, for commands that end without asking (see
/// [`stdout_failure`]).
static STDOUT_FAILURE: Mutex<Option<io::Error>> = Mutex::new(None);

/// An I/O error again, for a second owner: the OS error it was, or its kind and message.
fn io_error_again(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Writes `bytes` to standard output. Unlike `print!`, a failure neither panics nor passes unseen
/// (Rust's own stdout reports success on a descriptor that is not open for writing): it is returned as
/// a one-line message, and remembered for [`stdout_failure`]. A reader that went away (a closed pipe:
/// `trainlint rules | head -1`) is no failure: what it wanted, it read.
pub fn print(bytes: &[u8]) -> Result<(), OutputError> {
    let _ = io::stdout().flush();
    write_stdout(io::stdout().as_fd(), bytes)
}

fn write_stdout(fd: std::os::fd::BorrowedFd, bytes: &[u8]) -> Result<(), OutputError> {
    let written = fd
        .try_clone_to_owned()
        .map(File::from)
        .and_then(|mut out| out.write_all(bytes).and_then(|()| out.flush()));
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => {
            let mut failure = STDOUT_FAILURE.lock().unwrap_or_else(|p| p.into_inner());
            failure.get_or_insert_with(|| io_error_again(&e));
            Err(OutputError::Stdout(e))
        }
    }
}

/// Whether something this process meant for standard output was lost (the message of the first
/// failure): a command whose output did not arrive must not exit 0.
pub fn stdout_failure() -> Option<OutputError> {
    STDOUT_FAILURE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|e| OutputError::Stdout(io_error_again(e)))
}

/// Flushes Rust's stdout and stderr and every C stdio stream (libtorch's C++ streams sit on them):
/// before the process ends with `_exit`, which flushes nothing.
pub fn flush_all() {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    // SAFETY: fflush(NULL) flushes every C stdio stream and takes no pointer to dereference.
    unsafe {
        fflush(std::ptr::null_mut());
    }
}

/// Writes to standard error, and goes on if it cannot (`2>&1 | head -1` closed it): there is nowhere
/// left to say so, and the exit code still says how the run ended.
pub fn eprint(text: &str) {
    let _ = io::stderr().lock().write_all(text.as_bytes());
}

impl Drop for ReportStdout {
    fn drop(&mut self) {
        let Some(saved) = &self.saved else {
            return;
        };
        REAL_STDOUT.lock().unwrap_or_else(|p| p.into_inner()).take();
        let _ = io::stdout().flush();
        // SAFETY: fflush(NULL) flushes every C stdio stream (libtorch's C++ streams sit on them) and
        // takes no pointer to dereference; dup2 gets two open descriptors (`saved` is owned here).
        unsafe {
            fflush(std::ptr::null_mut());
            dup2(saved.as_raw_fd(), io::stdout().as_raw_fd());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary folder holding `model.pt` with `bytes`, an input the outputs must not touch.
    fn folder_with_model(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.pt");
        std::fs::write(&model, bytes).unwrap();
        (dir, model)
    }

    #[test]
    fn a_missing_file_resolves_through_its_folder_and_a_symlink_to_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        assert_eq!(
            resolve(&dir.path().join("new.json")).unwrap(),
            real.join("new.json")
        );
        std::fs::write(real.join("model.pt"), b"x").unwrap();
        std::os::unix::fs::symlink(real.join("model.pt"), real.join("link.json")).unwrap();
        assert_eq!(
            resolve(&real.join("link.json")).unwrap(),
            real.join("model.pt")
        );
        // A dangling relative link resolves next to itself.
        std::os::unix::fs::symlink("later.json", real.join("dangling")).unwrap();
        assert_eq!(
            resolve(&real.join("dangling")).unwrap(),
            real.join("later.json")
        );
        assert!(matches!(
            resolve(&real.join("nodir/x.html")),
            Err(PathError::NoFolder(_))
        ));
        assert!(matches!(resolve(&real), Err(PathError::Folder)));
    }

    #[test]
    fn writes_land_whole_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        std::fs::write(&a, b"old").unwrap();
        let plans = plan(
            &[
                Output {
                    flag: "-o",
                    path: &a,
                },
                Output {
                    flag: "--report",
                    path: &dir.path().join("b.html"),
                },
            ],
            &[],
        )
        .unwrap();
        write_all(&[(&plans[0], b"new"), (&plans[1], b"html")]).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"new");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn replace_swaps_a_link_for_a_file_and_refuses_an_input_behind_it() {
        let (dir, model) = folder_with_model(b"weights");
        let config = dir.path().join("trainlint.toml");
        std::os::unix::fs::symlink("model.pt", &config).unwrap();
        let input = Input {
            role: "the model",
            path: &model,
        };
        let err = replace(&config, b"[setup]\n", std::slice::from_ref(&input)).unwrap_err();
        assert!(err.to_string().contains("is the model"), "{err}");
        // Not named as an input, the link itself is replaced: its target keeps its bytes.
        replace(&config, b"[setup]\n", &[]).unwrap();
        assert_eq!(std::fs::read(&model).unwrap(), b"weights");
        assert!(std::fs::symlink_metadata(&config).unwrap().is_file());
        assert_eq!(std::fs::read(&config).unwrap(), b"[setup]\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_character_device_is_planned_in_place_without_a_probe() {
        let null = Path::new("/dev/null");
        if !std::fs::metadata(null).is_ok_and(|m| m.file_type().is_char_device()) {
            return;
        }
        let plans = plan(
            &[Output {
                flag: "-o",
                path: null,
            }],
            &[],
        )
        .unwrap();
        assert!(plans[0].special);
        assert_eq!(plans[0].resolved, null);
    }

    #[test]
    fn a_hard_link_to_an_input_is_the_input() {
        let (dir, model) = folder_with_model(b"x");
        let alias = dir.path().join("report.json");
        std::fs::hard_link(&model, &alias).unwrap();
        let err = plan(
            &[Output {
                flag: "--output-file",
                path: &alias,
            }],
            &[Input {
                role: "the model",
                path: &model,
            }],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--output-file") && err.contains("the model"),
            "{err}"
        );
    }
}
