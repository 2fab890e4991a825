//! The state directory `.heph/` and the exclusive writer lock that lives in it.
//!
//! `.heph/` holds a `.gitignore` of `*`, so it never shows up in the user's `git status`.
//! Every operation that writes the project holds [`ProjectLock`]: concurrent heph
//! processes serialize instead of losing each other's updates. The lock is an OS file
//! lock (`flock`), so a holder that dies (even by `kill -9`) releases it at once: there
//! is no stale lock to clean up.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// Name of the state directory at the project root.
pub const STATE_DIR: &str = ".heph";

/// Errors of the state directory and the lock.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The state directory or a file in it could not be created or opened.
    #[error("cannot prepare the state directory {path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Another process held the lock for longer than the timeout.
    #[error(
        "another heph process is writing this project{holder} and still held {path} after {waited:?}; \
         wait for it to finish, or raise the timeout"
    )]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long this process waited.
        waited: Duration,
        /// A description of the holder, as it wrote it into the lock file (may be empty).
        holder: String,
    },
}

impl crate::Categorized for StateError {
    fn category(&self) -> crate::ErrorCategory {
        crate::ErrorCategory::Environment
    }
}

/// The `.heph/` directory of a project.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// The state directory of the project at `root`; nothing is created yet.
    pub fn new(root: &Path) -> Self {
        StateDir {
            path: root.join(STATE_DIR),
        }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Create the directory and its `.gitignore` when missing. Idempotent.
    pub fn ensure(&self) -> Result<&Path, StateError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        fs::create_dir_all(&self.path).map_err(io_err(&self.path))?;
        let gitignore = self.path.join(".gitignore");
        if !gitignore.exists() {
            fs::write(&gitignore, "*\n").map_err(io_err(&gitignore))?;
        }
        Ok(&self.path)
    }

    /// Where atomic writes put their temp files: `.heph/tmp/` (created when missing).
    pub fn tmp_dir(&self) -> Result<PathBuf, StateError> {
        let dir = self.path.join("tmp");
        fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    /// Remove what writes interrupted by a crash left in `.heph/tmp/`. Call it only
    /// while holding the lock (no other writer can be using the directory then).
    pub fn clean_tmp(&self) {
        if let Ok(entries) = fs::read_dir(self.path.join("tmp")) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Take the exclusive writer lock, waiting up to `timeout` for another holder.
    ///
    /// `on_wait` is called once if the lock is busy, with the holder's description, so
    /// a front end can say why it is waiting. `who` is written into the lock file for
    /// the messages of the processes that wait for this one.
    pub fn lock(
        &self,
        who: &str,
        timeout: Duration,
        mut on_wait: impl FnMut(&str),
    ) -> Result<ProjectLock, StateError> {
        self.ensure()?;
        let path = self.path.join("lock");
        let io_err = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        let start = Instant::now();
        let mut told = false;
        let mut pause = Duration::from_millis(2);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let holder = read_holder(&mut file);
                    if !told {
                        on_wait(&holder);
                        told = true;
                    }
                    let waited = start.elapsed();
                    if waited >= timeout {
                        return Err(StateError::LockTimeout {
                            path,
                            waited,
                            holder: if holder.is_empty() {
                                String::new()
                            } else {
                                format!(" ({holder})")
                            },
                        });
                    }
                    thread::sleep(pause.min(timeout - waited));
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(TryLockError::Error(e)) => return Err(io_err(e)),
            }
        }
        // We hold the lock: record who we are for the others' messages.
        let note = format!("pid {} {}\n", std::process::id(), who);
        let _ = crate::fsio::overwrite_open(&file, note.as_bytes());
        Ok(ProjectLock { _file: file, path })
    }
}

fn read_holder(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.take(256).read_to_string(&mut s));
    s.trim().to_owned()
}

/// The held writer lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct ProjectLock {
    _file: File,
    path: PathBuf,
}

impl ProjectLock {
    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_is_ignored_by_git() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        state.ensure().expect("ensure");
        assert_eq!(
            fs::read_to_string(dir.path().join(".heph/.gitignore")).expect("read"),
            "*\n"
        );
    }

    #[test]
    fn second_locker_times_out_with_the_holder_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let _held = state
            .lock("self-modify", Duration::from_secs(1), |_| {})
            .expect("first lock");
        let mut waited_for = String::new();
        let err = state
            .lock("import", Duration::from_millis(50), |h| {
                waited_for = h.to_owned()
            })
            .expect_err("second lock must time out");
        assert!(waited_for.contains("self-modify"), "{waited_for}");
        assert!(matches!(err, StateError::LockTimeout { .. }));
        assert!(err.to_string().contains("self-modify"), "{err}");
    }

    #[test]
    fn lock_is_released_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        drop(
            state
                .lock("a", Duration::from_secs(1), |_| {})
                .expect("lock"),
        );
        // Not instantly: a child forked meanwhile by another test's thread shares the
        // lock until it execs.
        state
            .lock("b", Duration::from_secs(1), |_| {})
            .expect("relock");
    }
}
