//! Finding the target project and opening its history with what the environment says
//! (identities, test hooks): the one place the CLI reads environment variables for them.

use std::env;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hephaestus_core::civil::days_from_civil;
use hephaestus_core::history::{History, HistoryOptions, Identity, SkippedFile, Store};
use hephaestus_core::project_root;

use crate::output::{GlobalArgs, Output};

/// Test-only: milliseconds to pause between the steps of a write, so that crash tests
/// can kill heph in the middle of one.
pub const TEST_DELAY_VAR: &str = "HEPH_TEST_DELAY_MS";

/// The project root: `--project DIR`, or the nearest ancestor of the current directory
/// holding a Cargo.toml.
pub fn root(global: &GlobalArgs) -> Result<PathBuf> {
    Ok(match &global.project {
        Some(dir) => project_root::at(dir)?,
        None => {
            let cwd = env::current_dir().context("cannot read the current directory")?;
            project_root::discover(&cwd)?
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
        out.warn(format!(
            "{} was left out of the snapshot: {} is over `[history] max_file_size` in heph.toml",
            s.path.display(),
            human_size(s.size)
        ));
    }
}

/// `2.0 GiB`, `512 KiB`, `12 B`.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn var(name: &str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.is_empty())
}

/// `GIT_{who}_NAME`, `GIT_{who}_EMAIL`, `GIT_{who}_DATE`.
fn identity(who: &str) -> Identity {
    Identity {
        name: var(&format!("GIT_{who}_NAME")),
        email: var(&format!("GIT_{who}_EMAIL")),
        time: var(&format!("GIT_{who}_DATE")).and_then(|d| parse_git_date(&d)),
    }
}

/// The date formats of `GIT_AUTHOR_DATE` that matter in practice: `@SECONDS [+HHMM]`,
/// `SECONDS +HHMM` and ISO 8601 `YYYY-MM-DD[T ]HH:MM:SS[Z|+HH:MM|+HHMM]`. Returns
/// seconds since the epoch and the offset in minutes.
pub fn parse_git_date(s: &str) -> Option<(i64, i32)> {
    let s = s.trim();
    let raw = s.strip_prefix('@').unwrap_or(s);
    let mut words = raw.split_whitespace();
    if let Some(Ok(secs)) = words.next().map(str::parse::<i64>) {
        let offset = words.next().and_then(parse_offset).unwrap_or(0);
        return Some((secs, offset));
    }
    let (date, rest) = s.split_at_checked(10)?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let rest = rest.strip_prefix(['T', ' '])?;
    let (time, zone) = rest.split_at_checked(8)?;
    let mut t = time.split(':').map(str::parse::<i64>);
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let zone = zone.trim();
    let offset = if zone.is_empty() || zone == "Z" {
        0
    } else {
        parse_offset(zone)?
    };
    let local = days_from_civil(y, m, day) * 86_400 + hh * 3600 + mm * 60 + ss;
    Some((local - i64::from(offset) * 60, offset))
}

fn parse_offset(z: &str) -> Option<i32> {
    let (sign, digits) = match z.as_bytes().first()? {
        b'+' => (1, &z[1..]),
        b'-' => (-1, &z[1..]),
        _ => return None,
    };
    let digits: String = digits.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 {
        return None;
    }
    let h: i32 = digits[..2].parse().ok()?;
    let m: i32 = digits[2..].parse().ok()?;
    Some(sign * (h * 60 + m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_git_date_formats() {
        assert_eq!(
            parse_git_date("2026-01-01T00:00:00Z"),
            Some((1_767_225_600, 0))
        );
        assert_eq!(
            parse_git_date("@1767225600 +0100"),
            Some((1_767_225_600, 60))
        );
        assert_eq!(
            parse_git_date("1767225600 -0230"),
            Some((1_767_225_600, -150))
        );
        assert_eq!(
            parse_git_date("2026-01-01 01:00:00 +01:00"),
            Some((1_767_225_600, 60))
        );
        assert_eq!(parse_git_date("yesterday"), None);
    }
}
