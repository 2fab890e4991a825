//! Isolated copies of the project for `heph evolve`: one "slot" per worker plus one for
//! the baseline, each a directory holding a copy of the project's files and its own
//! warm cargo target directory (`SLOT/target`).
//!
//! Slots live under the sandbox directory (by default `heph-evolve/` in the project's
//! cargo target directory) with stable names (`<project>-<n>`), so the next run, or the
//! next test, finds their builds warm. A slot is owned by one run at a time (an OS file
//! lock on `<project>-<n>.lock`). Syncing a slot writes only the files whose bytes
//! differ, so cargo's fingerprints stay valid for the rest; written files always get a
//! new modification time (never an old one: cargo would take stale artifacts for fresh).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::history::ProjectFile;

/// One isolated copy of the project.
#[derive(Debug)]
pub struct Slot {
    dir: PathBuf,
    _lock: File,
}

impl Slot {
    /// Take the first free slot `<name>-<n>` under `sandbox`, skipping indices in `skip`.
    pub fn acquire(sandbox: &Path, name: &str, skip: &HashSet<usize>) -> io::Result<(Slot, usize)> {
        fs::create_dir_all(sandbox)?;
        for n in 0..1024 {
            if skip.contains(&n) {
                continue;
            }
            let lock_path = sandbox.join(format!("{name}-{n}.lock"));
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)?;
            match lock.try_lock() {
                Ok(()) => {
                    let dir = sandbox.join(format!("{name}-{n}"));
                    fs::create_dir_all(&dir)?;
                    return Ok((Slot { dir, _lock: lock }, n));
                }
                Err(fs::TryLockError::WouldBlock) => continue,
                Err(fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        Err(io::Error::other("no free sandbox slot (1024 in use)"))
    }

    /// The copy's root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The slot's cargo target directory.
    pub fn target_dir(&self) -> PathBuf {
        self.dir.join("target")
    }

    /// Make the copy hold exactly `files` of `root` (plus its `target/`): changed files
    /// rewritten, missing ones created, others deleted. The root `Cargo.toml` gets an
    /// empty `[workspace]` table when it has none, so that cargo never looks for a
    /// workspace above the slot.
    pub fn sync_from(&self, root: &Path, files: &[ProjectFile]) -> io::Result<()> {
        let mut keep = HashSet::new();
        for f in files {
            let src = root.join(&f.path);
            let dst = self.dir.join(&f.path);
            keep.insert(f.path.clone());
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent)?;
            }
            if f.symlink {
                let target = fs::read_link(&src)?;
                if fs::read_link(&dst).ok().as_ref() != Some(&target) {
                    let _ = fs::remove_file(&dst);
                    std::os::unix::fs::symlink(&target, &dst)?;
                }
                continue;
            }
            let mut bytes = match fs::read(&src) {
                Ok(b) => b,
                // Deleted since it was listed: leave it out.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if f.path == Path::new("Cargo.toml") {
                bytes = standalone_manifest(bytes);
            }
            write_if_changed(&dst, &bytes)?;
            let mode = fs::metadata(&dst)?.permissions().mode();
            let want = if f.executable {
                mode | 0o111
            } else {
                mode & !0o111
            };
            if want != mode {
                fs::set_permissions(&dst, fs::Permissions::from_mode(want))?;
            }
        }
        remove_others(&self.dir, &self.dir, &keep)?;
        Ok(())
    }

    /// Read a file of the copy.
    pub fn read(&self, rel: &str) -> io::Result<String> {
        fs::read_to_string(self.dir.join(rel))
    }

    /// Write a file of the copy when its bytes differ.
    pub fn write(&self, rel: &str, text: &str) -> io::Result<()> {
        write_if_changed(&self.dir.join(rel), text.as_bytes())
    }
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    // Remove first: a hard link or a read-only file is replaced, not written through.
    let _ = fs::remove_file(path);
    fs::write(path, bytes)
}

/// The manifest with `[workspace]` added when it declares none (nor a
/// `package.workspace` pointer).
fn standalone_manifest(bytes: Vec<u8>) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return bytes;
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return bytes;
    };
    let has_pointer = table
        .get("package")
        .and_then(|p| p.get("workspace"))
        .is_some();
    if table.contains_key("workspace") || has_pointer {
        return bytes;
    }
    let mut out = text.to_owned();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("\n# Added by heph evolve: this copy is a workspace of its own.\n[workspace]\n");
    out.into_bytes()
}

fn remove_others(root: &Path, dir: &Path, keep: &HashSet<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        if dir == root && entry.file_name() == "target" {
            continue;
        }
        let ft = entry.file_type()?;
        if ft.is_dir() {
            remove_others(root, &path, keep)?;
            if fs::read_dir(&path)?.next().is_none() {
                fs::remove_dir(&path)?;
            }
        } else if !keep.contains(&rel) {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(p: &str) -> ProjectFile {
        ProjectFile {
            path: PathBuf::from(p),
            executable: false,
            symlink: false,
        }
    }

    #[test]
    fn slots_sync_only_what_changed_and_lock() {
        let src = tempfile::tempdir().expect("tempdir");
        let sandbox = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(src.path().join("src")).expect("mkdir");
        fs::write(src.path().join("Cargo.toml"), "[package]\nname = \"x\"\n").expect("write");
        fs::write(src.path().join("src/lib.rs"), "pub fn a() {}\n").expect("write");
        let files = [file("Cargo.toml"), file("src/lib.rs")];
        let (slot, n) = Slot::acquire(sandbox.path(), "x", &HashSet::new()).expect("slot");
        assert_eq!(n, 0);
        slot.sync_from(src.path(), &files).expect("sync");
        let manifest = slot.read("Cargo.toml").expect("read");
        assert!(manifest.ends_with("[workspace]\n"), "{manifest}");
        let lib = slot.dir().join("src/lib.rs");
        let mtime = fs::metadata(&lib)
            .and_then(|m| m.modified())
            .expect("mtime");
        fs::create_dir_all(slot.dir().join("target/debug")).expect("mkdir");
        fs::write(slot.dir().join("stale.rs"), "old").expect("write");
        std::thread::sleep(std::time::Duration::from_millis(20));
        slot.sync_from(src.path(), &files).expect("sync");
        assert_eq!(
            fs::metadata(&lib)
                .and_then(|m| m.modified())
                .expect("mtime"),
            mtime,
            "an unchanged file is not rewritten"
        );
        assert!(!slot.dir().join("stale.rs").exists());
        assert!(slot.dir().join("target/debug").is_dir(), "target/ is kept");
        // The slot is taken: the next one is 1.
        let (_other, m) = Slot::acquire(sandbox.path(), "x", &HashSet::new()).expect("slot");
        assert_eq!(m, 1);
        drop(slot);
        // Free again (within a moment: a child forked meanwhile by another test's thread
        // shares the lock until it execs).
        let freed = (0..100).any(|_| {
            let (_again, k) = Slot::acquire(sandbox.path(), "x", &HashSet::new()).expect("slot");
            k == 0 || {
                std::thread::sleep(std::time::Duration::from_millis(10));
                false
            }
        });
        assert!(freed, "slot 0 is free again");
    }

    #[test]
    fn workspace_manifests_are_kept() {
        let m = b"[workspace]\nmembers = [\"a\"]\n".to_vec();
        assert_eq!(standalone_manifest(m.clone()), m);
        let p = b"[package]\nname = \"a\"\nworkspace = \"..\"\n".to_vec();
        assert_eq!(standalone_manifest(p.clone()), p);
    }
}
