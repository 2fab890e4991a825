//! Shared helpers of the end-to-end suite: build `heph` once, copy a fixture into a
//! fresh temp dir, run the binary there with a cleared, isolated environment, and read
//! back files with the temp paths masked.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The root of the heph workspace (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// One cargo target directory shared by every fixture build of the suite, so each
/// dependency of a fixture is compiled once per run, not once per test.
pub fn shared_target_dir() -> PathBuf {
    workspace_root().join("target").join("e2e-fixtures")
}

/// The `heph` binary, built once per test process (debug profile, same target dir as
/// the suite).
pub fn heph_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let run = escargot::CargoBuild::new()
            .manifest_path(workspace_root().join("Cargo.toml"))
            .package("hephaestus-cli")
            .bin("heph")
            .target_dir(
                std::env::var_os("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| workspace_root().join("target")),
            )
            .run()
            .expect("building heph");
        run.path().to_path_buf()
    })
}

/// A fresh copy of a fixture in a temp dir, and everything needed to run heph in it.
pub struct TestEnv {
    dir: tempfile::TempDir,
    project: PathBuf,
}

impl TestEnv {
    /// Copy `fixtures/NAME` (without any `target/`) to a new temp dir.
    pub fn new(fixture: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("heph-e2e-")
            .tempdir()
            .expect("tempdir");
        let project = dir.path().join(fixture);
        copy_tree(&workspace_root().join("fixtures").join(fixture), &project);
        TestEnv { dir, project }
    }

    /// An empty project directory (no fixture), for tests that build their own.
    pub fn empty(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("heph-e2e-")
            .tempdir()
            .expect("tempdir");
        let project = dir.path().join(name);
        fs::create_dir_all(&project).expect("mkdir");
        TestEnv { dir, project }
    }

    /// The project root.
    pub fn project(&self) -> &Path {
        &self.project
    }

    /// The temp dir holding the project (for files outside the project).
    pub fn temp(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the project.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.project.join(rel)
    }

    /// Read a project file as UTF-8.
    pub fn read(&self, rel: impl AsRef<Path>) -> String {
        let p = self.path(rel);
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
    }

    /// Read a project file as bytes.
    pub fn read_bytes(&self, rel: impl AsRef<Path>) -> Vec<u8> {
        let p = self.path(rel);
        fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
    }

    /// Write a project file, creating parent directories.
    pub fn write(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(&p, contents).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    }

    /// A `heph` command in the project dir with a cleared, isolated environment.
    pub fn heph(&self) -> Command {
        let mut cmd = Command::new(heph_bin());
        isolate(&mut cmd);
        cmd.current_dir(&self.project);
        cmd
    }

    /// Run heph with these arguments and capture the result.
    pub fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let output = self.heph().args(args).output().expect("running heph");
        Run::new(output, self.dir.path())
    }

    /// Run a shell script (`sh -c`) in the project dir with the isolated environment
    /// (for pipes, redirections and `ulimit`).
    pub fn heph_shell(&self, script: &str) -> Run {
        let mut cmd = Command::new("sh");
        isolate(&mut cmd);
        let output = cmd
            .arg("-c")
            .arg(script)
            .current_dir(&self.project)
            .output()
            .expect("running sh");
        Run::new(output, self.dir.path())
    }

    /// A `git` command in the project dir with the same isolated environment.
    pub fn git(&self) -> Command {
        let mut cmd = Command::new("git");
        isolate(&mut cmd);
        cmd.current_dir(&self.project);
        cmd
    }

    /// Run git, assert success, return stdout.
    pub fn git_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.git().args(&args).output().expect("running git");
        assert!(
            out.status.success(),
            "git {:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every file of the project (outside `target/` and `.heph/`) with its bytes,
    /// sorted by path: compare two of these to prove nothing else changed.
    pub fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        snapshot_of(&self.project)
    }
}

/// Every file under `root` (outside `target/`, `.heph/` and `.git/`) with its bytes,
/// sorted by path.
pub fn snapshot_of(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    walk(root, root, &mut files);
    files.sort();
    files
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name == ".heph" || name == ".git" {
            continue;
        }
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            walk(root, &path, out);
        } else if ft.is_file() {
            let rel = path.strip_prefix(root).expect("inside root").to_path_buf();
            // A file replaced between listing and reading (an atomic write): skip it.
            if let Ok(bytes) = fs::read(&path) {
                out.push((rel, bytes));
            }
        }
    }
}

/// Clear the environment but for what cargo and git need, and pin git's identity and
/// config so tests do not depend on the machine.
fn isolate(cmd: &mut Command) {
    cmd.env_clear();
    for var in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "TMPDIR",
        "LANG",
    ] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    cmd.env("CARGO_TARGET_DIR", shared_target_dir())
        .env("CARGO_TERM_COLOR", "never")
        .env("NO_COLOR", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Test Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.com")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z");
}

/// Copy a directory tree, skipping `target/` directories.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display())) {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        let ft = entry.file_type().expect("file type");
        let dest = to.join(&name);
        if ft.is_dir() {
            copy_tree(&entry.path(), &dest);
        } else if ft.is_symlink() {
            let target = fs::read_link(entry.path()).expect("readlink");
            std::os::unix::fs::symlink(target, &dest).expect("symlink");
        } else {
            fs::copy(entry.path(), &dest).expect("copy");
        }
    }
}

/// The captured result of one heph run, temp paths masked as `[TEMP]`.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// stdout, masked.
    pub stdout: String,
    /// stderr, masked.
    pub stderr: String,
}

impl Run {
    /// The result of a process started with [`TestEnv::heph`], temp paths masked.
    pub fn from_output(output: Output, temp: &Path) -> Self {
        Run::new(output, temp)
    }

    fn new(output: Output, temp: &Path) -> Self {
        let mask = |b: &[u8]| {
            let s = String::from_utf8_lossy(b).into_owned();
            let mut s = s.replace(&temp.display().to_string(), "[TEMP]");
            if let Ok(canon) = temp.canonicalize() {
                s = s.replace(&canon.display().to_string(), "[TEMP]");
            }
            s
        };
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: mask(&output.stdout),
            stderr: mask(&output.stderr),
        }
    }

    /// Assert the exit code, showing both streams when it differs.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "unexpected exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Parse stdout as one JSON document.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}
