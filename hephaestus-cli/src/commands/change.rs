//! What `self-modify` and `import` share: reading the code, the verification and
//! backup flags, progress while verifying, and rendering the outcome.

use std::fs::File;
use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use hephaestus_core::apply::{DEFAULT_MAX_CODE_BYTES, read_code};
use hephaestus_core::config::parse_duration;
use hephaestus_core::verify::{VerifyOptions, VerifyProgress};
use hephaestus_core::{
    ApplyOptions, ApplyOutcome, ChangeAction, Config, Event, Operation, Project, Verify,
};
use indicatif::ProgressBar;

use crate::output::{GlobalArgs, Output, UsageError};

/// Where the code comes from.
#[derive(Debug, Args)]
pub struct CodeArgs {
    /// The code, as a string.
    #[arg(long, value_name = "CODE", conflicts_with = "code_file")]
    pub code: Option<String>,
    /// Read the code from a file, or from stdin with `-`.
    #[arg(long, value_name = "PATH")]
    pub code_file: Option<PathBuf>,
    /// Refuse code larger than this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_CODE_BYTES, hide_default_value = false)]
    pub max_code_size: u64,
}

impl CodeArgs {
    /// The submitted code, read with bounded memory.
    pub fn read(&self) -> Result<Option<String>> {
        if let Some(code) = &self.code {
            if code.len() as u64 > self.max_code_size {
                return Err(hephaestus_core::apply::CodeError::TooLarge {
                    limit: self.max_code_size,
                }
                .into());
            }
            return Ok(Some(code.clone()));
        }
        let Some(path) = &self.code_file else {
            return Ok(None);
        };
        let code = if path.as_os_str() == "-" {
            if io::stdin().is_terminal() {
                return Err(UsageError(
                    "--code-file - reads the code from stdin, but stdin is a terminal; pipe the code in"
                        .into(),
                )
                .into());
            }
            read_code(io::stdin().lock(), "stdin", self.max_code_size)?
        } else {
            let file = File::open(path)
                .with_context(|| format!("cannot open the code file {}", path.display()))
                .map_err(|e| anyhow::Error::new(UsageError(format!("{e:#}"))))?;
            read_code(file, &path.display().to_string(), self.max_code_size)?
        };
        Ok(Some(code))
    }

    /// The code, required.
    pub fn require(&self) -> Result<String> {
        self.read()?.ok_or_else(|| {
            UsageError(
                "no code given: pass --code 'CODE', --code-file PATH, or --code-file - (stdin)"
                    .into(),
            )
            .into()
        })
    }
}

/// Flags of every command that writes.
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// Print the unified diff and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Skip verification.
    #[arg(long, conflicts_with = "verify")]
    pub no_verify: bool,
    /// Verify with this shell command instead of `cargo check` (e.g. 'cargo test').
    #[arg(long, value_name = "CMD")]
    pub verify: Option<String>,
    /// Do not record the result in the history (the state before the change is
    /// still recorded).
    #[arg(long)]
    pub no_backup: bool,
    /// Kill the verification after this long (e.g. 90s, 10m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub verify_timeout: Option<Duration>,
    /// Wait at most this long for another heph writing the same project.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    pub lock_timeout: Duration,
}

/// Open the project from `--project` or the current directory, reusing the cached
/// answer of `cargo metadata` while the manifests and cargo's environment are unchanged.
pub fn open_project(global: &GlobalArgs) -> Result<Project> {
    let env: String = [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_HOME",
        "RUSTC",
        "RUSTUP_TOOLCHAIN",
    ]
    .iter()
    .map(|v| format!("{v}={};", std::env::var(v).unwrap_or_default()))
    .collect();
    Ok(Project::open_cached(&crate::project::root(global)?, &env)?)
}

/// Options for `apply` from the flags, the config, and the terminal.
pub fn apply_options(args: &WriteArgs, config: &Config, out: &Output) -> ApplyOptions {
    let verify = if args.no_verify {
        Verify::Skip
    } else if let Some(cmd) = args
        .verify
        .clone()
        .or_else(|| config.verify.command.clone())
    {
        Verify::Command(cmd)
    } else {
        Verify::CargoCheck
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    // First Ctrl-C: stop the verification and restore the files; a second one exits.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    ApplyOptions {
        dry_run: args.dry_run,
        verify,
        backup: !args.no_backup,
        history: true,
        history_options: crate::project::history_options(out),
        lock_timeout: args.lock_timeout,
        verify_options: VerifyOptions {
            timeout: args
                .verify_timeout
                .or_else(|| config.verify_timeout())
                .or(Some(Duration::from_secs(30 * 60))),
            color: out.color,
            cancel: Some(cancel),
        },
    }
}

/// Apply an operation with progress on stderr.
pub fn apply(
    project: &Project,
    op: &Operation,
    opts: &ApplyOptions,
    out: &Output,
) -> Result<ApplyOutcome> {
    let bar = if out.interactive && !out.quiet && !out.json {
        let bar = ProgressBar::new_spinner();
        bar.set_style(out.progress_style("{spinner:.green} {msg} [{elapsed}]"));
        bar.enable_steady_tick(Duration::from_millis(100));
        Some(bar)
    } else {
        None
    };
    let mut command = String::new();
    let mut on_event = |e: &Event| match e {
        Event::WaitingForLock { holder } => {
            // The holder writes its description just after taking the lock: it can
            // still be empty (or blank) when we look.
            let msg = match holder.trim() {
                "" => "waiting for another heph to finish".to_owned(),
                holder => format!("waiting for another heph to finish ({holder})"),
            };
            match &bar {
                Some(b) => b.set_message(msg),
                None => out.note(msg),
            }
        }
        Event::PreStateRecorded { id, first } => {
            let msg = if *first {
                format!("recorded the project's files as evolution {id}, the first of its history")
            } else {
                format!("recorded hand edits as evolution {id} before writing")
            };
            // Above the spinner, never through it (a stray line would stay on screen).
            match &bar {
                Some(b) => b.suspend(|| out.note(msg)),
                None => out.note(msg),
            }
        }
        Event::VerifyStarted { command: c } => {
            command = c.clone();
            match &bar {
                Some(b) => b.set_message(format!("verifying: {c}")),
                None => {
                    if out.verbose > 0 {
                        out.note(format!("verifying: {c}"));
                    }
                }
            }
        }
        Event::VerifyProgress(VerifyProgress::Unit { done, name }) => {
            if let Some(b) = &bar {
                b.set_message(format!("verifying: {command} ({done} units, {name})"));
            }
        }
        Event::Running { function } => match &bar {
            Some(b) => b.set_message(format!("building and running {function}")),
            None => {
                if out.verbose > 0 {
                    out.note(format!("running {function}"));
                }
            }
        },
        _ => {}
    };
    let result = project.apply(op, opts, &mut on_event);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(result?)
}

/// Print the outcome for people, or as JSON; return the exit code.
pub fn render(outcome: &ApplyOutcome, out: &Output) -> u8 {
    out.json(outcome);
    let code = exit_code(outcome);
    if out.json {
        return code;
    }
    if let Some(diff) = &outcome.diff {
        out.line(crate::render::colorize_diff(diff, out.color_stdout));
    }
    for note in &outcome.notes {
        out.note(format!("note: {note}"));
    }
    for c in &outcome.changes {
        if c.action != ChangeAction::Unchanged || out.verbose > 0 {
            if outcome.rolled_back {
                // Not on stdout: nothing of it stands.
                out.note(format!("rolled back: {} {}", c.action.as_str(), c.key));
            } else {
                out.line(format!("{} {}", c.action.as_str(), c.key));
            }
        }
    }
    if outcome.dry_run {
        out.note(format!(
            "dry run: nothing written ({} file{})",
            outcome.files.len(),
            if outcome.files.len() == 1 { "" } else { "s" }
        ));
        return code;
    }
    if outcome.noop {
        out.note(format!("{}: nothing to change", outcome.module));
        return code;
    }
    let files = outcome.files.join(", ");
    out.note(format!("  in {files}"));
    let v = &outcome.verify;
    match v.outcome {
        hephaestus_core::VerifyOutcome::Passed => {
            out.note(format!(
                "verified: {} passed in {}",
                v.command,
                secs(v.duration)
            ));
        }
        hephaestus_core::VerifyOutcome::Skipped => out.note("verification skipped"),
        hephaestus_core::VerifyOutcome::Failed => {
            for e in &v.errors {
                eprintln!("{}", e.trim_end());
            }
            if v.errors.is_empty() && !v.output.trim().is_empty() {
                eprintln!("{}", v.output.trim_end());
            }
            let why = if v.timed_out {
                "timed out".to_owned()
            } else if v.errors.is_empty() {
                format!(
                    "exit code {}",
                    v.exit_code.map_or("none".into(), |c| c.to_string())
                )
            } else {
                format!(
                    "{} error{}",
                    v.errors.len(),
                    if v.errors.len() == 1 { "" } else { "s" }
                )
            };
            if outcome.kept.is_empty() {
                out.failure(format!(
                    "verification failed ({}: {why}, {}); the change was rolled back and every file is byte-identical to before",
                    v.command,
                    secs(v.duration)
                ));
            } else {
                let recorded = outcome
                    .hand_edits
                    .as_ref()
                    .map(|e| format!(", recorded as manual evolution {}", e.short_id))
                    .unwrap_or_default();
                out.failure(format!(
                    "verification failed ({}: {why}, {}); the change was rolled back, but {} changed during the verification by someone else: kept as it is{recorded}",
                    v.command,
                    secs(v.duration),
                    outcome.kept.join(", ")
                ));
            }
        }
    }
    if let Some(e) = &outcome.evolution {
        let state = if outcome.rolled_back {
            " (failed attempt)"
        } else {
            ""
        };
        out.line(format!("evolution {}{state}", e.short_id));
    }
    if let Some(e) = &outcome.rollback {
        out.note(format!("rollback recorded as evolution {}", e.short_id));
    }
    if let Some(run) = &outcome.run {
        match (&run.value, &run.run) {
            (Some(value), _) => out.line(value),
            (None, Some(r)) => {
                eprintln!("{}", r.output.trim_end());
                out.warn(format!(
                    "{} failed; the imported module was kept",
                    run.function
                ));
            }
            (None, None) => {
                for e in &run.build.errors {
                    eprintln!("{}", e.trim_end());
                }
                if run.build.errors.is_empty() {
                    eprintln!("{}", run.build.output.trim_end());
                }
                out.warn(format!(
                    "the harness calling {} did not build; the imported module was kept",
                    run.function
                ));
            }
        }
    }
    code
}

/// 0 when the change stands (and `--run` worked), 1 when it was rejected.
pub fn exit_code(outcome: &ApplyOutcome) -> u8 {
    let run_failed = outcome.run.as_ref().is_some_and(|r| !r.ok());
    if outcome.accepted && !run_failed {
        0
    } else {
        1
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}
