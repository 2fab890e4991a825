//! The commit message of an evolution: the subject, a blank line, then `Heph-*:` trailers;
//! written from an [`EvolutionMeta`] and parsed back, tolerating unknown trailers.

use std::path::PathBuf;
use std::time::Duration;

use crate::evolution::{
    EvolutionKind, EvolutionMeta, Fitness, ItemChanges, VerifyOutcome, VerifyRecord,
};

/// Trailer keys, as written in commit messages.
pub mod keys {
    /// What produced the change.
    pub const KIND: &str = "Heph-Kind";
    /// The module the change targeted.
    pub const MODULE: &str = "Heph-Module";
    /// A file the operation wrote (one trailer per file).
    pub const FILE: &str = "Heph-File";
    /// An item that was added.
    pub const ADDED: &str = "Heph-Added";
    /// An item that was replaced.
    pub const REPLACED: &str = "Heph-Replaced";
    /// An item that was removed.
    pub const REMOVED: &str = "Heph-Removed";
    /// `passed 1234ms`, `failed 800ms` or `skipped`.
    pub const VERIFY: &str = "Heph-Verify";
    /// `12.5 -> 9.1`.
    pub const FITNESS: &str = "Heph-Fitness";
}

/// A trailer value on one line: newlines would end the trailer early.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// The commit message for `meta`.
pub fn format(meta: &EvolutionMeta) -> String {
    let subject = meta.message.trim();
    let subject = if subject.is_empty() {
        meta.kind.as_str()
    } else {
        subject
    };
    let mut msg = String::with_capacity(subject.len() + 128);
    msg.push_str(subject);
    msg.push_str("\n\n");
    let mut trailer = |key: &str, value: &str| {
        msg.push_str(key);
        msg.push_str(": ");
        msg.push_str(&one_line(value));
        msg.push('\n');
    };
    trailer(keys::KIND, meta.kind.as_str());
    if let Some(module) = &meta.module {
        trailer(keys::MODULE, module);
    }
    for file in &meta.files {
        trailer(keys::FILE, &file.to_string_lossy());
    }
    for item in &meta.changes.added {
        trailer(keys::ADDED, item);
    }
    for item in &meta.changes.replaced {
        trailer(keys::REPLACED, item);
    }
    for item in &meta.changes.removed {
        trailer(keys::REMOVED, item);
    }
    if let Some(verify) = &meta.verify {
        let value = match verify.outcome {
            VerifyOutcome::Skipped => "skipped".to_owned(),
            outcome => format!("{} {}ms", outcome.as_str(), verify.duration.as_millis()),
        };
        trailer(keys::VERIFY, &value);
    }
    if let Some(fitness) = &meta.fitness {
        trailer(
            keys::FITNESS,
            &format!("{} -> {}", fitness.before, fitness.after),
        );
    }
    msg
}

/// True when `line` looks like `Key: value` with a git-trailer key.
fn trailer_line(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once(':')?;
    let ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| (key, value.trim()))
}

/// Split a commit message into its text (subject and body) and its trailers (the last
/// paragraph, when every line of it is `Key: value`).
pub fn split(message: &str) -> (&str, Vec<(&str, &str)>) {
    let trimmed = message.trim_end();
    let (text, last) = match trimmed.rfind("\n\n") {
        Some(at) => (&trimmed[..at], &trimmed[at + 2..]),
        None => return (trimmed, Vec::new()),
    };
    let trailers: Option<Vec<_>> = last
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(trailer_line)
        .collect();
    match trailers {
        Some(t) if !t.is_empty() => (text.trim_end(), t),
        _ => (trimmed, Vec::new()),
    }
}

fn parse_verify(value: &str) -> Option<VerifyRecord> {
    let mut words = value.split_whitespace();
    let outcome: VerifyOutcome = words.next()?.parse().ok()?;
    let duration = words
        .next()
        .and_then(|d| d.strip_suffix("ms"))
        .and_then(|d| d.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_millis);
    Some(VerifyRecord { outcome, duration })
}

fn parse_fitness(value: &str) -> Option<Fitness> {
    let (before, after) = value.split_once("->")?;
    Some(Fitness {
        before: before.trim().parse().ok()?,
        after: after.trim().parse().ok()?,
    })
}

/// Parse a commit message back into metadata. A commit without a `Heph-Kind:` trailer
/// (not written by heph) reads as `manual`; unknown trailers and malformed values are
/// ignored.
pub fn parse(message: &str) -> EvolutionMeta {
    let (text, trailers) = split(message);
    let mut meta = EvolutionMeta {
        kind: EvolutionKind::Manual,
        module: None,
        files: Vec::new(),
        changes: ItemChanges::default(),
        verify: None,
        fitness: None,
        message: text.to_owned(),
    };
    for (key, value) in trailers {
        match key {
            keys::KIND => {
                if let Ok(kind) = value.parse() {
                    meta.kind = kind;
                }
            }
            keys::MODULE => meta.module = Some(value.to_owned()),
            keys::FILE => meta.files.push(PathBuf::from(value)),
            keys::ADDED => meta.changes.added.push(value.to_owned()),
            keys::REPLACED => meta.changes.replaced.push(value.to_owned()),
            keys::REMOVED => meta.changes.removed.push(value.to_owned()),
            keys::VERIFY => meta.verify = parse_verify(value),
            keys::FITNESS => meta.fitness = parse_fitness(value),
            _ => {}
        }
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_meta() -> EvolutionMeta {
        EvolutionMeta {
            kind: EvolutionKind::SelfModify,
            module: Some("crate::agent::x".into()),
            files: vec![PathBuf::from("src/agent/x.rs")],
            changes: ItemChanges {
                added: vec!["fn new_awesome_function".into()],
                replaced: vec!["fn test_function".into(), "impl Display for P".into()],
                removed: vec!["const OLD".into()],
            },
            verify: Some(VerifyRecord {
                outcome: VerifyOutcome::Passed,
                duration: Duration::from_millis(1234),
            }),
            fitness: Some(Fitness {
                before: 12.5,
                after: 9.1,
            }),
            message: "self-modify crate::agent::x".into(),
        }
    }

    #[test]
    fn writes_the_documented_format() {
        assert_eq!(
            format(&full_meta()),
            "self-modify crate::agent::x\n\n\
             Heph-Kind: self-modify\n\
             Heph-Module: crate::agent::x\n\
             Heph-File: src/agent/x.rs\n\
             Heph-Added: fn new_awesome_function\n\
             Heph-Replaced: fn test_function\n\
             Heph-Replaced: impl Display for P\n\
             Heph-Removed: const OLD\n\
             Heph-Verify: passed 1234ms\n\
             Heph-Fitness: 12.5 -> 9.1\n"
        );
    }

    #[test]
    fn round_trips_every_field() {
        let meta = full_meta();
        assert_eq!(parse(&format(&meta)), meta);
        let mut failed = EvolutionMeta::new(EvolutionKind::Import, "import a::b");
        failed.verify = Some(VerifyRecord {
            outcome: VerifyOutcome::Failed,
            duration: Duration::from_millis(800),
        });
        assert_eq!(parse(&format(&failed)), failed);
        let mut skipped = EvolutionMeta::new(EvolutionKind::Watch, "watch");
        skipped.verify = Some(VerifyRecord::skipped());
        assert_eq!(parse(&format(&skipped)), skipped);
    }

    #[test]
    fn tolerates_unknown_trailers_and_foreign_commits() {
        let meta = parse("fix\n\nbody text\n\nSigned-off-by: A <a@b>\nHeph-Kind: rollback\n");
        assert_eq!(meta.kind, EvolutionKind::Rollback);
        assert_eq!(meta.message, "fix\n\nbody text");
        let foreign = parse("just a commit\n");
        assert_eq!(foreign.kind, EvolutionKind::Manual);
        assert_eq!(foreign.message, "just a commit");
        let not_trailers = parse("subject\n\nthis is prose, not: a trailer block\n");
        assert_eq!(
            not_trailers.message,
            "subject\n\nthis is prose, not: a trailer block"
        );
    }

    #[test]
    fn values_stay_on_one_line() {
        let meta = EvolutionMeta::new(EvolutionKind::Manual, "hand edits");
        let mut m = meta.clone();
        m.module = Some("a\nHeph-Kind: evolve".into());
        let parsed = parse(&format(&m));
        assert_eq!(parsed.kind, EvolutionKind::Manual);
        assert_eq!(parsed.module.as_deref(), Some("a Heph-Kind: evolve"));
    }
}
