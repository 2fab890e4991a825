//! File writes that cannot leave a half-written file: a temp file in the same
//! directory, fsync, rename over the target (keeping its permissions), fsync the
//! directory. And the transaction that writes a set of files and can restore them
//! byte for byte.

use std::fs::{self, File};
use std::io::{self, Write};
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

/// Replace `path` with `bytes` atomically. A symlink is followed: its target is
/// written, the link stays a link. Permissions of an existing file are kept.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let real = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_owned(),
        Err(e) => return Err(io_err(path)(e)),
    };
    let dir = real.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".heph-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err(&real))?;
    tmp.write_all(bytes).map_err(io_err(&real))?;
    if let Ok(meta) = fs::metadata(&real) {
        tmp.as_file()
            .set_permissions(meta.permissions())
            .map_err(io_err(&real))?;
    }
    tmp.as_file().sync_all().map_err(io_err(&real))?;
    tmp.persist(&real).map_err(|e| WriteError::Io {
        path: real.clone(),
        source: e.error,
    })?;
    sync_dir(dir);
    Ok(())
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
}

impl Transaction {
    /// A transaction of these writes.
    pub fn new(files: Vec<FileWrite>) -> Self {
        Transaction {
            files,
            created_dirs: Vec::new(),
            written: 0,
        }
    }

    /// The writes.
    pub fn files(&self) -> &[FileWrite] {
        &self.files
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
        write_atomic(&path, &self.files[i].after)
    }

    /// Put every written file back as it was (created files and directories removed).
    pub fn restore(&mut self) -> Result<(), WriteError> {
        let mut first_error = None;
        // Only written files need restoring: a failed write_atomic wrote nothing.
        for f in self.files[..self.written].iter().rev() {
            let r = match &f.before {
                Some(bytes) => write_atomic(&f.path, bytes),
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
        write_atomic(&link, b"new").expect("write");
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
