//! The state directory `.heph/` and the exclusive writer lock that lives in it.
//!
//! `.heph/` holds a `.gitignore` of `*`, so it never shows up in the user's `git status`.
//! Every operation that writes the project holds [`ProjectLock`]: concurrent heph
//! processes serialize instead of losing each other's updates. The lock is an OS file
//! lock (`flock`), so a holder that dies (even by `kill -9`) releases it at once: there
//! is no stale lock to clean up.
//!
//! Nothing in `.heph/` is followed through a symbolic link: a cloned repository could
//! ship `.heph` (or `.heph/tmp`, `.heph/lock`, ...) as a link to make heph write,
//! truncate or delete files outside the project. [`StateDir::check`] refuses such a
//! state directory before any command uses it (it runs when the project root is found,
//! when the history is opened and in [`StateDir::ensure`]), and files in it are opened
//! with `O_NOFOLLOW` ([`StateDir::open_file`], [`open_nofollow`]).

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
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
    /// The state directory or an entry in it is a symbolic link: refused, so that a
    /// link shipped in a cloned repository cannot make heph touch files elsewhere.
    #[error(
        "{path} is a symbolic link; heph never follows links in its state directory \
         (a link there, e.g. from a cloned repository, could make it overwrite or delete \
         files outside the project): remove the link and run again"
    )]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// The state directory (or a directory heph keeps in it) exists but is not a
    /// directory.
    #[error("{path} is not a directory; heph keeps its state there: move it away and run again")]
    NotDirectory {
        /// The path.
        path: PathBuf,
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

    /// Refuse a state directory that is, or holds, a symbolic link: `.heph` itself (it
    /// must be a directory when it exists), every entry in it, and every entry of the
    /// directories in it down to three levels (`.heph/history.git/objects/ab`), but not
    /// the contents of `tmp/` (emptied without following links, see
    /// [`StateDir::clean_tmp`]). A missing `.heph` is fine. Costs one `lstat` and a few
    /// directory listings (tens of microseconds).
    pub fn check(&self) -> Result<(), StateError> {
        match fs::symlink_metadata(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(StateError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
            Ok(meta) => kind_ok(&self.path, &meta, true)?,
        }
        check_entries(&self.path, 1)
    }

    /// Create the directory and its `.gitignore` when missing, after [`StateDir::check`].
    /// Idempotent.
    pub fn ensure(&self) -> Result<&Path, StateError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        self.check()?;
        if let Some(parent) = self.path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        match fs::create_dir(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Made meanwhile (by another heph), or a link that appeared since check.
                let meta = fs::symlink_metadata(&self.path).map_err(io_err(&self.path))?;
                kind_ok(&self.path, &meta, true)?;
            }
            Err(e) => return Err(io_err(&self.path)(e)),
        }
        let gitignore = self.path.join(".gitignore");
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&gitignore)
        {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(b"*\n").map_err(io_err(&gitignore))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&gitignore)(e)),
        }
        Ok(&self.path)
    }

    /// The directory `.heph/NAME` (a relative path of plain names), created when
    /// missing; refused when it, or any directory on the way, is a symbolic link or not
    /// a directory.
    pub fn subdir(&self, name: impl AsRef<Path>) -> Result<PathBuf, StateError> {
        self.ensure()?;
        let mut dir = self.path.clone();
        for part in plain_parts(name.as_ref())? {
            dir.push(part);
            match fs::create_dir(&dir) {
                Ok(()) => continue,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(StateError::Io { path: dir, source }),
            }
            let meta = fs::symlink_metadata(&dir).map_err(|source| StateError::Io {
                path: dir.clone(),
                source,
            })?;
            kind_ok(&dir, &meta, true)?;
        }
        Ok(dir)
    }

    /// Open the state file `.heph/NAME` (a relative path of plain names, e.g.
    /// `journal/current`) with `options`, never through a symbolic link: the
    /// directories on the way must be real directories (missing ones are created, as
    /// `.heph` itself) and the file itself is opened with `O_NOFOLLOW`.
    /// A link anywhere is [`StateError::Symlink`]. Add `create_new(true)` to `options`
    /// for an exclusive create (`O_EXCL`).
    pub fn open_file(
        &self,
        name: impl AsRef<Path>,
        options: &OpenOptions,
    ) -> Result<File, StateError> {
        let name = name.as_ref();
        let parts = plain_parts(name)?;
        let Some((file, dirs)) = parts.split_last() else {
            return Err(StateError::Io {
                path: self.path.join(name),
                source: io::Error::new(io::ErrorKind::InvalidInput, "no file name given"),
            });
        };
        let dir = if dirs.is_empty() {
            self.ensure()?.to_path_buf()
        } else {
            self.subdir(dirs.iter().collect::<PathBuf>())?
        };
        open_nofollow(&dir.join(file), options)
    }

    /// Where atomic writes put their temp files: `.heph/tmp/` (created when missing;
    /// refused when it is a link).
    pub fn tmp_dir(&self) -> Result<PathBuf, StateError> {
        self.subdir("tmp")
    }

    /// Remove what writes interrupted by a crash left in `.heph/tmp/`. Call it only
    /// while holding the lock (no other writer can be using the directory then). Does
    /// nothing when `tmp` is not a real directory; a link in it is removed, never
    /// followed.
    pub fn clean_tmp(&self) {
        let dir = self.path.join("tmp");
        if !fs::symlink_metadata(&self.path).is_ok_and(|m| m.is_dir())
            || !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir())
        {
            return;
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                // `remove_file` unlinks the entry itself (a link, not its target); a
                // directory left there is removed only when empty.
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = fs::remove_dir(e.path());
                } else {
                    let _ = fs::remove_file(e.path());
                }
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
        let path = self.path.join("lock");
        let io_err = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let mut file = self.open_file(
            "lock",
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
        )?;
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

/// Open `path` with `options`, refusing a symbolic link at its last component
/// (`O_NOFOLLOW`; the `ELOOP` it gives is [`StateError::Symlink`]) and anything but a
/// regular file (a FIFO or device planted in `.heph/` is refused without blocking).
/// For files of the state directory whose directories were checked already.
pub fn open_nofollow(path: &Path, options: &OpenOptions) -> Result<File, StateError> {
    let mut options = options.clone();
    options.custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC);
    let file = options.open(path).map_err(|source| {
        if source.raw_os_error() == Some(nix::libc::ELOOP) {
            StateError::Symlink {
                path: path.to_path_buf(),
            }
        } else {
            StateError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    let meta = file.metadata().map_err(|source| StateError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(StateError::Io {
            path: path.to_path_buf(),
            source: io::Error::other("not a regular file"),
        });
    }
    // Back to blocking I/O (O_NONBLOCK only kept a FIFO's open from waiting).
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    fcntl(&file, FcntlArg::F_GETFL)
        .and_then(|flags| {
            let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
            fcntl(&file, FcntlArg::F_SETFL(flags))
        })
        .map_err(|e| StateError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
    Ok(file)
}

/// The plain names of a relative path inside the state directory (no `..`, no root).
fn plain_parts(name: &Path) -> Result<Vec<&std::ffi::OsStr>, StateError> {
    name.components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(StateError::Io {
                path: name.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a plain relative path inside the state directory",
                ),
            }),
        })
        .collect()
}

/// A link is refused; so is a non-directory where a directory is needed.
fn kind_ok(path: &Path, meta: &fs::Metadata, dir: bool) -> Result<(), StateError> {
    if meta.file_type().is_symlink() {
        return Err(StateError::Symlink {
            path: path.to_path_buf(),
        });
    }
    if dir && !meta.is_dir() {
        return Err(StateError::NotDirectory {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// How deep [`StateDir::check`] looks: `.heph/history.git/objects/ab` is level 3.
const CHECK_DEPTH: usize = 3;

/// Refuse links among the entries of `dir` (at `depth` below `.heph`) and below.
fn check_entries(dir: &Path, depth: usize) -> Result<(), StateError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StateError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| StateError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        if kind.is_symlink() {
            return Err(StateError::Symlink { path });
        }
        let name = entry.file_name();
        // `tmp/` is emptied without following anything.
        if kind.is_dir() && depth < CHECK_DEPTH && !(depth == 1 && name == "tmp") {
            check_entries(&path, depth + 1)?;
        }
    }
    Ok(())
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

    /// A directory outside the project with a file in it, and its listing and bytes.
    fn outside() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("precious");
        fs::write(&file, "keep me").expect("write");
        (dir, file)
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_linked_state_dir_is_refused_and_nothing_outside_changes() {
        let (out, precious) = outside();
        let project = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(out.path(), project.path().join(STATE_DIR)).expect("ln");
        let state = StateDir::new(project.path());
        for err in [
            state.check().expect_err("check"),
            state.ensure().expect_err("ensure"),
            state.tmp_dir().expect_err("tmp"),
            state
                .lock("x", Duration::from_secs(1), |_| {})
                .expect_err("lock"),
        ] {
            assert!(
                matches!(&err, StateError::Symlink { path } if path.ends_with(".heph")),
                "{err}"
            );
            assert!(err.to_string().contains("symbolic link"), "{err}");
        }
        state.clean_tmp();
        assert_eq!(listing(out.path()), ["precious"]);
        assert_eq!(fs::read(&precious).expect("read"), b"keep me");
    }

    #[test]
    fn linked_entries_are_refused_and_nothing_outside_changes() {
        let (out, precious) = outside();
        for (entry, target) in [
            ("tmp", out.path().to_path_buf()),
            ("lock", precious.clone()),
            ("history.git", out.path().to_path_buf()),
            ("cache", out.path().to_path_buf()),
            ("history.git/objects", out.path().to_path_buf()),
            ("history.git/objects/ab", out.path().to_path_buf()),
        ] {
            let project = tempfile::tempdir().expect("tempdir");
            let state = StateDir::new(project.path());
            let link = state.path().join(entry);
            fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
            std::os::unix::fs::symlink(&target, &link).expect("ln");
            let err = state.check().expect_err(entry);
            assert!(
                matches!(&err, StateError::Symlink { path } if *path == link),
                "{entry}: {err}"
            );
            assert!(state.ensure().is_err(), "{entry}");
            assert!(
                state.lock("x", Duration::from_secs(1), |_| {}).is_err(),
                "{entry}"
            );
            state.clean_tmp();
            assert_eq!(listing(out.path()), ["precious"], "{entry}");
            assert_eq!(fs::read(&precious).expect("read"), b"keep me", "{entry}");
        }
    }

    #[test]
    fn state_files_are_opened_without_following_links() {
        let (out, precious) = outside();
        let project = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(project.path());
        state.ensure().expect("ensure");
        let mut create = OpenOptions::new();
        create.write(true).create(true).truncate(true);
        // A link to a file: O_NOFOLLOW refuses it (even when it appears after check).
        std::os::unix::fs::symlink(&precious, state.path().join("journal")).expect("ln");
        let err = state.open_file("journal", &create).expect_err("link");
        assert!(matches!(err, StateError::Symlink { .. }), "{err}");
        // A linked directory on the way.
        fs::remove_file(state.path().join("journal")).expect("rm");
        std::os::unix::fs::symlink(out.path(), state.path().join("journal")).expect("ln");
        let err = state
            .open_file("journal/current", &create)
            .expect_err("dir link");
        assert!(matches!(err, StateError::Symlink { .. }), "{err}");
        assert!(state.open_file("../escape", &create).is_err());
        assert_eq!(listing(out.path()), ["precious"]);
        assert_eq!(fs::read(&precious).expect("read"), b"keep me");
        // Real files and directories work, created on the way; O_EXCL when asked.
        fs::remove_file(state.path().join("journal")).expect("rm");
        let mut f = state.open_file("journal/current", &create).expect("open");
        std::io::Write::write_all(&mut f, b"x").expect("write");
        let err = state
            .open_file(
                "journal/current",
                OpenOptions::new().write(true).create_new(true),
            )
            .expect_err("exclusive");
        assert!(
            matches!(&err, StateError::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists),
            "{err}"
        );
    }

    #[test]
    fn a_fifo_in_the_state_dir_is_refused_without_blocking() {
        let project = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(project.path());
        state.ensure().expect("ensure");
        nix::unistd::mkfifo(&state.path().join("lock"), nix::sys::stat::Mode::S_IRWXU)
            .expect("mkfifo");
        assert!(state.lock("x", Duration::from_secs(1), |_| {}).is_err());
    }

    #[test]
    fn a_state_path_that_is_a_file_is_refused() {
        let project = tempfile::tempdir().expect("tempdir");
        fs::write(project.path().join(STATE_DIR), "not a dir").expect("write");
        let err = StateDir::new(project.path()).check().expect_err("file");
        assert!(matches!(err, StateError::NotDirectory { .. }), "{err}");
    }
}
