//! Verification after a write: `cargo check` (or any command) run in its own process
//! group, with cargo's JSON messages parsed for progress and rendered diagnostics, a
//! timeout, and cancellation.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use cargo_metadata::Message;
use serde::Serialize;

use crate::evolution::VerifyOutcome;
use crate::guard;

/// What verifies a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// `cargo check --all-targets` on the package that owns the module.
    CargoCheck,
    /// A shell command (`sh -c CMD`) run at the project root, e.g. `cargo test`.
    Command(String),
    /// No verification.
    Skip,
    /// Already verified on the same files elsewhere (`heph evolve` checks and tests each
    /// candidate in an isolated copy of the project before applying it): the report is
    /// recorded as is and nothing runs.
    Verified(VerifyReport),
}

/// Limits and switches of a verification run.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Kill the command after this long (None: no limit).
    pub timeout: Option<Duration>,
    /// Ask cargo for ANSI-colored diagnostics.
    pub color: bool,
    /// Set to true (e.g. from a Ctrl-C handler) to stop the command.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// The result of a verification run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Passed, failed or skipped.
    pub outcome: VerifyOutcome,
    /// Wall time.
    #[serde(rename = "duration_ms", serialize_with = "ser_ms")]
    pub duration: Duration,
    /// The command line that ran.
    pub command: String,
    /// Compiler errors, rendered the way cargo renders them.
    pub errors: Vec<String>,
    /// Number of compiler warnings.
    pub warnings: usize,
    /// The tail of the command's output (for non-cargo commands, or cargo failures
    /// without diagnostics).
    pub output: String,
    /// The exit code, when the command exited.
    pub exit_code: Option<i32>,
    /// The command was killed after the timeout.
    pub timed_out: bool,
    /// Executables cargo built or found fresh (`compiler-artifact` messages with an
    /// `executable`), in the order cargo reported them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub executables: Vec<PathBuf>,
    /// The test harnesses among them (`profile.test`: what `cargo test` runs, doc tests
    /// aside), in the order cargo reported them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub test_executables: Vec<TestExecutable>,
}

/// A test harness cargo built (`cargo test --no-run`, `cargo build --tests`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestExecutable {
    /// The executable.
    pub path: PathBuf,
    /// The Cargo.toml of its package (`cargo test` runs it in that directory).
    pub manifest_path: PathBuf,
    /// The target's name (`slow_crate`, `fitness`, an integration test's file stem).
    pub target: String,
    /// The cargo arguments that select this target alone (`--lib`, `--bin NAME`,
    /// `--test NAME`, `--bench NAME`, `--example NAME`); empty for a kind cargo has no
    /// such flag for.
    pub select: Vec<String>,
}

/// The cargo arguments selecting one target of these kinds (see
/// [`TestExecutable::select`]).
fn select_target(kinds: &[cargo_metadata::TargetKind], name: &str) -> Vec<String> {
    use cargo_metadata::TargetKind as K;
    let flag = match kinds.first() {
        Some(K::Lib | K::RLib | K::DyLib | K::CDyLib | K::StaticLib | K::ProcMacro) => {
            return vec!["--lib".to_owned()];
        }
        Some(K::Bin) => "--bin",
        Some(K::Test) => "--test",
        Some(K::Bench) => "--bench",
        Some(K::Example) => "--example",
        _ => return Vec::new(),
    };
    vec![flag.to_owned(), name.to_owned()]
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl VerifyReport {
    /// A report for a skipped verification.
    pub fn skipped() -> Self {
        VerifyReport {
            outcome: VerifyOutcome::Skipped,
            duration: Duration::ZERO,
            command: String::new(),
            errors: Vec::new(),
            warnings: 0,
            output: String::new(),
            exit_code: None,
            timed_out: false,
            executables: Vec::new(),
            test_executables: Vec::new(),
        }
    }

    /// Did it pass (or was it skipped)?
    pub fn ok(&self) -> bool {
        self.outcome != VerifyOutcome::Failed
    }
}

/// Progress of a verification run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyProgress {
    /// A compilation unit finished (cargo JSON `compiler-artifact`).
    Unit {
        /// Units finished so far.
        done: usize,
        /// The unit's crate name.
        name: String,
    },
}

/// Errors of running a verification command at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The command could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The run was cancelled (Ctrl-C).
    #[error("verification was interrupted")]
    Cancelled,
}

impl crate::Categorized for VerifyError {
    fn category(&self) -> crate::ErrorCategory {
        match self {
            VerifyError::Spawn { .. } => crate::ErrorCategory::Environment,
            VerifyError::Cancelled => crate::ErrorCategory::Rejected,
        }
    }
}

/// Run `cargo check --all-targets` for `package` of the workspace at `manifest`.
pub fn cargo_check(
    manifest: &Path,
    package: &str,
    opts: &VerifyOptions,
    on_progress: &mut dyn FnMut(VerifyProgress),
) -> Result<VerifyReport, VerifyError> {
    let format = if opts.color {
        "--message-format=json-diagnostic-rendered-ansi"
    } else {
        "--message-format=json"
    };
    let mut cmd = Command::new("cargo");
    cmd.arg("check")
        .arg(format)
        .arg("--all-targets")
        .arg("--manifest-path")
        .arg(manifest)
        .arg("-p")
        .arg(package);
    let shown = format!("cargo check --all-targets -p {package}");
    run_command(cmd, shown, true, opts, on_progress)
}

/// Run a shell command (`sh -c`) in `dir`.
pub fn shell(
    dir: &Path,
    command: &str,
    opts: &VerifyOptions,
    on_progress: &mut dyn FnMut(VerifyProgress),
) -> Result<VerifyReport, VerifyError> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command).current_dir(dir);
    run_command(cmd, command.to_owned(), false, opts, on_progress)
}

/// Keep the last `max` bytes of output, cut at a line boundary.
fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    let cut = s[start..].find('\n').map_or(start, |i| start + i + 1);
    format!("[… {} earlier bytes not shown]\n{}", cut, &s[cut..])
}

/// Run `cmd` in its own process group, guarded so that it dies with heph (see
/// [`crate::guard`]); with `cargo_json`, parse cargo's JSON messages from its stdout.
/// The report's `output` holds stdout (plus stderr on failure). Whatever the command
/// leaves running in its group when it exits is killed.
pub fn run_command(
    mut cmd: Command,
    shown: String,
    cargo_json: bool,
    opts: &VerifyOptions,
    on_progress: &mut dyn FnMut(VerifyProgress),
) -> Result<VerifyReport, VerifyError> {
    let start = Instant::now();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut child, group) = guard::spawn(&mut cmd).map_err(|source| VerifyError::Spawn {
        command: shown.clone(),
        source,
    })?;
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let err_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });
    let (tx, rx) = std::sync::mpsc::channel::<Line>();
    let out_thread = thread::spawn(move || {
        let reader = BufReader::new(stdout);
        if cargo_json {
            for msg in Message::parse_stream(reader).flatten() {
                let line = match msg {
                    Message::CompilerArtifact(a) => {
                        let test = a.executable.as_ref().filter(|_| a.profile.test).map(|p| {
                            TestExecutable {
                                path: p.clone().into_std_path_buf(),
                                manifest_path: a.manifest_path.clone().into_std_path_buf(),
                                target: a.target.name.clone(),
                                select: select_target(&a.target.kind, &a.target.name),
                            }
                        });
                        Line::Unit(
                            a.target.name.clone(),
                            a.executable.map(|p| p.into_std_path_buf()),
                            test,
                        )
                    }
                    Message::CompilerMessage(m) => {
                        use cargo_metadata::diagnostic::DiagnosticLevel as L;
                        match m.message.level {
                            L::Error | L::Ice => {
                                Line::Error(m.message.rendered.unwrap_or(m.message.message))
                            }
                            L::Warning => Line::Warning,
                            _ => continue,
                        }
                    }
                    Message::TextLine(t) => Line::Text(t),
                    _ => continue,
                };
                if tx.send(line).is_err() {
                    break;
                }
            }
        } else {
            for line in reader.lines().map_while(Result::ok) {
                if tx.send(Line::Text(line)).is_err() {
                    break;
                }
            }
        }
    });

    let mut errors = Vec::new();
    let mut warnings = 0;
    let mut text = String::new();
    let mut units = 0;
    let mut executables = Vec::new();
    let mut test_executables = Vec::new();
    let mut timed_out = false;
    let mut cancelled = false;
    let status = loop {
        while let Ok(line) = rx.try_recv() {
            match line {
                Line::Unit(name, exe, test) => {
                    units += 1;
                    executables.extend(exe);
                    test_executables.extend(test);
                    on_progress(VerifyProgress::Unit { done: units, name });
                }
                // `--all-targets` reports an error of the lib once per target.
                Line::Error(e) if !errors.contains(&e) => errors.push(e),
                Line::Error(_) => {}
                Line::Warning => warnings += 1,
                Line::Text(t) => {
                    text.push_str(&t);
                    text.push('\n');
                }
            }
        }
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(_) => break None,
        }
        if opts
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
        {
            cancelled = true;
        }
        if opts.timeout.is_some_and(|t| start.elapsed() > t) {
            timed_out = true;
        }
        if cancelled || timed_out {
            group.kill();
            let _ = child.wait();
            break None;
        }
        // The exit is noticed at most 2 ms late (10 ms cost `heph evolve` 5 ms per
        // build on average); a `try_wait` every 2 ms costs nothing measurable.
        thread::sleep(Duration::from_millis(2));
    };
    // What the command left in its group could hold the pipes open: stop it first.
    drop(group);
    let _ = out_thread.join();
    for line in rx.try_iter() {
        match line {
            Line::Error(e) if !errors.contains(&e) => errors.push(e),
            Line::Error(_) => {}
            Line::Unit(_, exe, test) => {
                executables.extend(exe);
                test_executables.extend(test);
            }
            Line::Warning => warnings += 1,
            Line::Text(t) => {
                text.push_str(&t);
                text.push('\n');
            }
        }
    }
    let stderr_text = err_thread.join().unwrap_or_default();
    if cancelled {
        return Err(VerifyError::Cancelled);
    }
    let success = status.is_some_and(|s| s.success());
    let mut output = text;
    if !success {
        output.push_str(&stderr_text);
    }
    if timed_out {
        output.push_str(&format!(
            "\n`{shown}` did not finish within {:?} and was killed\n",
            opts.timeout.unwrap_or_default()
        ));
    }
    Ok(VerifyReport {
        outcome: if success {
            VerifyOutcome::Passed
        } else {
            VerifyOutcome::Failed
        },
        duration: start.elapsed(),
        command: shown,
        errors,
        warnings,
        output: tail(&output, 16 * 1024),
        exit_code: status.and_then(|s| s.code()),
        timed_out,
        executables,
        test_executables,
    })
}

enum Line {
    Unit(String, Option<PathBuf>, Option<TestExecutable>),
    Error(String),
    Warning,
    Text(String),
}

/// Stop `child`, started in `group` ([`guard::spawn`]): SIGTERM to the group, up to
/// `grace` for the child to exit, then SIGKILL to the group. Reaps the child and
/// returns its exit status.
pub fn terminate_group(
    child: &mut std::process::Child,
    group: &guard::Group,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        // The child is gone; take whatever it left in its group with it.
        group.kill();
        return Some(status);
    }
    let _ = group.signal(nix::sys::signal::Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(status)) = child.try_wait() {
            group.kill();
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    group.kill();
    child.wait().ok()
}

/// The manifest cargo should use for `package`: the project's root manifest.
pub fn manifest_of(root: &Path) -> PathBuf {
    root.join("Cargo.toml")
}

/// What [`run_with_input`] captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// stdout (at most the limit given; `stdout_truncated` says when more was cut).
    pub stdout: String,
    /// The stdout limit was reached (the rest was read and dropped).
    pub stdout_truncated: bool,
    /// The tail of stderr.
    pub stderr: String,
    /// The exit code, when the command exited (None: killed by a signal, or timed out).
    pub exit_code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    /// Killed after the timeout.
    pub timed_out: bool,
    /// Wall time from spawn to exit.
    pub duration: Duration,
}

impl CommandOutput {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Run `cmd` in its own guarded process group ([`crate::guard`]) with `input` on its stdin (closed after it), and
/// capture stdout (up to `max_stdout` bytes) and the tail of stderr. The whole group is
/// killed after `opts.timeout` or when `opts.cancel` is set (then the error is
/// [`VerifyError::Cancelled`]).
pub fn run_with_input(
    mut cmd: Command,
    shown: &str,
    input: Option<Vec<u8>>,
    max_stdout: usize,
    opts: &VerifyOptions,
) -> Result<CommandOutput, VerifyError> {
    use std::io::Write;
    use std::os::unix::process::ExitStatusExt;
    let start = Instant::now();
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let (mut child, group) = guard::spawn(&mut cmd).map_err(|source| VerifyError::Spawn {
        command: shown.to_owned(),
        source,
    })?;
    let stdin_thread = match (child.stdin.take(), input) {
        (Some(mut stdin), Some(bytes)) => Some(thread::spawn(move || {
            // A program that does not read its input gets EPIPE: not an error here.
            let _ = stdin.write_all(&bytes);
        })),
        _ => None,
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_thread = thread::spawn(move || {
        let mut buf = Vec::new();
        let mut truncated = false;
        if let Some(mut s) = stdout {
            let mut chunk = [0u8; 8192];
            loop {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = max_stdout.saturating_sub(buf.len());
                        if n > room {
                            truncated = true;
                        }
                        buf.extend_from_slice(&chunk[..n.min(room)]);
                    }
                }
            }
        }
        (String::from_utf8_lossy(&buf).into_owned(), truncated)
    });
    let err_thread = thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr {
            let _ = BufReader::new(e).read_to_string(&mut s);
        }
        tail(&s, 16 * 1024)
    });
    let mut timed_out = false;
    let mut cancelled = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(_) => break None,
        }
        cancelled = opts
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst));
        timed_out = opts.timeout.is_some_and(|t| start.elapsed() > t);
        if cancelled || timed_out {
            group.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(2));
    };
    let duration = start.elapsed();
    // The group may hold the pipes open (a grandchild): stop it before joining readers.
    drop(group);
    let (stdout, stdout_truncated) = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    if let Some(t) = stdin_thread {
        let _ = t.join();
    }
    if cancelled {
        return Err(VerifyError::Cancelled);
    }
    Ok(CommandOutput {
        stdout,
        stdout_truncated,
        stderr,
        exit_code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        timed_out,
        duration,
    })
}
