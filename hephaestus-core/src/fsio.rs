//! File writes that cannot leave a half-written file: a temp file in the same
//! directory, fsync, rename over the target (keeping its permissions), fsync the
//! directory. And the transaction that writes a set of files and can restore them
//! byte for byte.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Errors of writing files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The target file is read-only.
    #[error("{path} is read-only; make it writable (chmod u+w) and run again: nothing was written")]
    ReadOnly {
        /// The file.
        path: PathBuf,
    },
    /// The file changed on disk after heph read it (an editor saved it meanwhile).
    #[error(
        "{path} changed on disk while heph was editing it; nothing was written: run the command again"
    )]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl crate::Categorized for WriteError {
    fn category(&self) -> crate::ErrorCategory {
        crate::ErrorCategory::Environment
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |source| WriteError::Io {
        path: path.to_owned(),
        source,
    }
}

const EXDEV: i32 = 18;

/// Replace `path` with `bytes` atomically: a temp file in `tmp_dir` (the state
/// directory's `tmp/`, so an interrupted write leaves nothing in the user's tree; next
/// to the target when `tmp_dir` is None or on another file system), fsync, rename over
/// the target, fsync its directory. `mode` gives the permission bits; None keeps the
/// existing file's (a new file gets the process default). The path is not followed:
/// a symlink at `path` is replaced by the file (see [`write_atomic`] to write through
/// one).
pub fn replace_file(
    path: &Path,
    bytes: &[u8],
    mode: Option<u32>,
    tmp_dir: Option<&Path>,
) -> io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let mode = mode.or_else(|| {
        fs::symlink_metadata(path)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.permissions().mode() & 0o7777)
    });
    let write_in = |dir: &Path| -> io::Result<()> {
        let mut tmp = tempfile::Builder::new()
            .prefix(".heph-")
            .suffix(".tmp")
            .tempfile_in(dir)?;
        tmp.write_all(bytes)?;
        if let Some(mode) = mode {
            tmp.as_file()
                .set_permissions(fs::Permissions::from_mode(mode))?;
        }
        tmp.as_file().sync_all()?;
        tmp.persist(path).map(|_| ()).map_err(|e| e.error)
    };
    match tmp_dir.map(write_in) {
        None => write_in(parent),
        Some(Err(e)) if e.raw_os_error() == Some(EXDEV) => write_in(parent),
        Some(r) => r,
    }?;
    sync_dir(parent);
    Ok(())
}

/// Replace `path` with a symlink to `target`, atomically (a link made under a temp
/// name in `tmp_dir` or next to the target, then renamed).
pub fn replace_with_symlink(path: &Path, target: &OsStr, tmp_dir: Option<&Path>) -> io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let link_in = |dir: &Path| -> io::Result<()> {
        // Reserve a unique name, then put the link in its place.
        let placeholder = tempfile::Builder::new()
            .prefix(".heph-")
            .suffix(".tmp")
            .tempfile_in(dir)?;
        let link = placeholder.path().to_path_buf();
        drop(placeholder);
        std::os::unix::fs::symlink(target, &link)?;
        fs::rename(&link, path).inspect_err(|_| {
            let _ = fs::remove_file(&link);
        })
    };
    match tmp_dir.map(link_in) {
        None => link_in(parent),
        Some(Err(e)) if e.raw_os_error() == Some(EXDEV) => link_in(parent),
        Some(r) => r,
    }?;
    sync_dir(parent);
    Ok(())
}

/// Replace `path` with `bytes` atomically, following a symlink (its target is written,
/// the link stays a link) and keeping the permissions of an existing file. Temp files
/// go to `tmp_dir` when given (see [`replace_file`]).
pub fn write_atomic(path: &Path, bytes: &[u8], tmp_dir: Option<&Path>) -> Result<(), WriteError> {
    let real = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_owned(),
        Err(e) => return Err(io_err(path)(e)),
    };
    replace_file(&real, bytes, None, tmp_dir).map_err(io_err(&real))
}

/// Overwrite a small bookkeeping file already open for writing, in place: write at
/// offset 0, then cut to length. Not atomic, so only for files whose readers accept any
/// content (heph's lock note and pack state); unlike truncating first, closing it does
/// not make ext4 (`auto_da_alloc`) write its blocks out at once.
pub fn overwrite_open(file: &fs::File, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(bytes, 0)?;
    file.set_len(bytes.len() as u64)
}

/// fsync a directory so a rename in it is durable (best effort: not every file
/// system supports it).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// One file a transaction writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileWrite {
    /// Absolute path.
    pub path: PathBuf,
    /// The bytes before (None: the file is created).
    pub before: Option<Vec<u8>>,
    /// The bytes after.
    pub after: Vec<u8>,
}

/// A set of file writes that is applied together and can be undone byte for byte.
#[derive(Debug, Default)]
pub struct Transaction {
    files: Vec<FileWrite>,
    created_dirs: Vec<PathBuf>,
    written: usize,
    tmp_dir: Option<PathBuf>,
}

impl Transaction {
    /// A transaction of these writes, with temp files next to their targets.
    pub fn new(files: Vec<FileWrite>) -> Self {
        Transaction {
            files,
            created_dirs: Vec::new(),
            written: 0,
            tmp_dir: None,
        }
    }

    /// Put temp files in `dir` (the state directory's `tmp/`), so a process killed
    /// mid-write leaves nothing in the project's own directories.
    pub fn with_tmp_dir(mut self, dir: PathBuf) -> Self {
        self.tmp_dir = Some(dir);
        self
    }

    /// Check that every file can be written and still holds what was read.
    pub fn preflight(&self) -> Result<(), WriteError> {
        for f in &self.files {
            match (&f.before, fs::metadata(&f.path)) {
                (Some(before), Ok(meta)) => {
                    if meta.permissions().readonly() {
                        return Err(WriteError::ReadOnly {
                            path: f.path.clone(),
                        });
                    }
                    let now = fs::read(&f.path).map_err(io_err(&f.path))?;
                    if &now != before {
                        return Err(WriteError::Changed {
                            path: f.path.clone(),
                        });
                    }
                }
                (Some(_), Err(e)) => return Err(io_err(&f.path)(e)),
                (None, Ok(_)) => {
                    return Err(WriteError::Changed {
                        path: f.path.clone(),
                    });
                }
                (None, Err(_)) => {}
            }
        }
        Ok(())
    }

    /// Write every file. On failure, the files already written are restored and the
    /// error returned.
    pub fn commit(&mut self) -> Result<(), WriteError> {
        self.preflight()?;
        for i in 0..self.files.len() {
            let result = self.write_one(i);
            if let Err(e) = result {
                let _ = self.restore();
                return Err(e);
            }
            self.written = i + 1;
        }
        Ok(())
    }

    fn write_one(&mut self, i: usize) -> Result<(), WriteError> {
        let path = self.files[i].path.clone();
        if let Some(parent) = path.parent() {
            let mut missing = Vec::new();
            let mut p = Some(parent);
            while let Some(d) = p {
                if d.exists() {
                    break;
                }
                missing.push(d.to_path_buf());
                p = d.parent();
            }
            for d in missing.into_iter().rev() {
                fs::create_dir(&d).map_err(io_err(&d))?;
                self.created_dirs.push(d);
            }
        }
        write_atomic(&path, &self.files[i].after, self.tmp_dir.as_deref())
    }

    /// Put every written file back as it was (created files and directories removed).
    pub fn restore(&mut self) -> Result<(), WriteError> {
        let mut first_error = None;
        // Only written files need restoring: a failed write_atomic wrote nothing.
        for f in self.files[..self.written].iter().rev() {
            let r = match &f.before {
                Some(bytes) => write_atomic(&f.path, bytes, self.tmp_dir.as_deref()),
                None => match fs::remove_file(&f.path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io_err(&f.path)(e)),
                },
            };
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        for d in self.created_dirs.drain(..).rev() {
            let _ = fs::remove_dir(&d);
        }
        self.written = 0;
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_keeps_mode_and_follows_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real.rs");
        fs::write(&real, "old").expect("write");
        fs::set_permissions(&real, fs::Permissions::from_mode(0o640)).expect("chmod");
        let link = dir.path().join("link.rs");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        write_atomic(&link, b"new", None).expect("write");
        assert_eq!(fs::read(&real).expect("read"), b"new");
        assert!(
            fs::symlink_metadata(&link)
                .expect("meta")
                .file_type()
                .is_symlink()
        );
        let mode = fs::metadata(&real).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn transaction_restores_bytes_and_removes_created_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.rs");
        fs::write(&a, b"before\r\n").expect("write");
        let b = dir.path().join("new/dir/b.rs");
        let mut tx = Transaction::new(vec![
            FileWrite {
                path: a.clone(),
                before: Some(b"before\r\n".to_vec()),
                after: b"after".to_vec(),
            },
            FileWrite {
                path: b.clone(),
                before: None,
                after: b"created".to_vec(),
            },
        ]);
        tx.commit().expect("commit");
        assert_eq!(fs::read(&b).expect("read"), b"created");
        tx.restore().expect("restore");
        assert_eq!(fs::read(&a).expect("read"), b"before\r\n");
        assert!(!b.exists() && !dir.path().join("new").exists());
    }

    #[test]
    fn changed_file_is_not_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.rs");
        fs::write(&a, "edited meanwhile").expect("write");
        let mut tx = Transaction::new(vec![FileWrite {
            path: a.clone(),
            before: Some(b"what heph read".to_vec()),
            after: b"x".to_vec(),
        }]);
        assert!(matches!(tx.commit(), Err(WriteError::Changed { .. })));
        assert_eq!(fs::read(&a).expect("read"), b"edited meanwhile");
    }
}
