//! Finding the target project and opening its history with what the environment says
//! (identities, test hooks): the one place the CLI reads environment variables for them.

use std::env;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hephaestus_core::Project;
use hephaestus_core::history::{History, HistoryOptions, Identity, SkippedFile, Store};

use crate::output::{GlobalArgs, Output};

/// Test-only: milliseconds to pause between the steps of a write, so that crash tests
/// can kill heph in the middle of one.
pub const TEST_DELAY_VAR: &str = "HEPH_TEST_DELAY_MS";

/// The project root: `--project DIR`, or the nearest ancestor of the current directory
/// holding a Cargo.toml.
pub fn root(global: &GlobalArgs) -> Result<PathBuf> {
    Ok(match &global.project {
        Some(dir) => Project::root_at(dir)?,
        None => {
            let cwd = env::current_dir().context("cannot read the current directory")?;
            Project::find_root(&cwd)?
        }
    })
}

/// The options every command opens the history with: identities from
/// `GIT_AUTHOR_*`/`GIT_COMMITTER_*`, the lock timeout and a note while waiting for the
/// lock, the test-only step delay. For the core calls that open the history themselves
/// (`self-modify`, `import`), pass these too.
pub fn history_options(out: &Output) -> HistoryOptions {
    let quiet = out.quiet || out.json;
    HistoryOptions {
        author: identity("AUTHOR"),
        committer: identity("COMMITTER"),
        lock_timeout: Duration::from_secs(120),
        repack_every: HistoryOptions::default().repack_every,
        // `[history] max_file_size` of the project's heph.toml, read when it is opened.
        max_file_size: None,
        on_lock_wait: Some(Arc::new(move |holder: &str| {
            if !quiet {
                let holder = if holder.is_empty() {
                    "another heph process"
                } else {
                    holder
                };
                eprintln!("waiting for the project lock held by {holder}...");
            }
        })),
        step_delay: env::var(TEST_DELAY_VAR)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis),
        before_ref_update: None,
        on_recover: Some(recovery_note(out)),
    }
}

/// Says what was done with a transaction a killed heph left unfinished, when a command
/// taking the project lock settled it (stderr, even in JSON mode; not with -q).
pub fn recovery_note(out: &Output) -> hephaestus_core::journal::RecoverFn {
    let quiet = out.quiet;
    Arc::new(move |r: &hephaestus_core::journal::Recovery| {
        if !quiet {
            eprintln!("{}", r.summary());
        }
    })
}

/// Open the project's history with [`history_options`].
pub fn open_history(global: &GlobalArgs, out: &Output) -> Result<History> {
    open_history_with(global, out, history_options(out))
}

/// [`open_history`] with these options.
pub fn open_history_with(
    global: &GlobalArgs,
    out: &Output,
    options: HistoryOptions,
) -> Result<History> {
    let root = root(global)?;
    let history = History::open_with(&root, options)?;
    if out.verbose > 0 {
        out.note(format!("project: {}", root.display()));
        let (Store::Repository { git_dir, .. } | Store::Private { git_dir }) = history.store();
        out.note(format!(
            "history: {} in {}",
            history.reference(),
            git_dir.display()
        ));
    }
    Ok(history)
}

/// One warning line per file a snapshot left out for its size.
pub fn note_skipped(out: &Output, skipped: &[SkippedFile]) {
    for s in skipped {
        out.warn(s.notice());
    }
}

fn var(name: &str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.is_empty())
}

/// `GIT_{who}_NAME`, `GIT_{who}_EMAIL`, `GIT_{who}_DATE`.
fn identity(who: &str) -> Identity {
    Identity {
        name: var(&format!("GIT_{who}_NAME")),
        email: var(&format!("GIT_{who}_EMAIL")),
        time: var(&format!("GIT_{who}_DATE"))
            .and_then(|d| hephaestus_core::evolution::parse_git_date(&d)),
    }
}
