//! The record of one change: [`Evolution`] and the metadata every writer hands to the history store.

/// Dates of evolutions: display, and git's date formats (`GIT_AUTHOR_DATE`).
pub use crate::civil::{format_utc, parse_git_date};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What produced an evolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvolutionKind {
    /// `heph self-modify`: items of an existing module were changed.
    SelfModify,
    /// `heph import`: a new module was created and wired into its parent.
    Import,
    /// `heph watch`: a state of the sources that built successfully.
    Watch,
    /// `heph evolve`: an accepted candidate that made the fitness better.
    Evolve,
    /// `heph rollback`: the files were restored to an earlier snapshot.
    Rollback,
    /// Edits made outside heph, recorded before heph overwrote anything.
    Manual,
}

impl EvolutionKind {
    /// Every kind, in the order they are documented.
    pub const ALL: [EvolutionKind; 6] = [
        EvolutionKind::SelfModify,
        EvolutionKind::Import,
        EvolutionKind::Watch,
        EvolutionKind::Evolve,
        EvolutionKind::Rollback,
        EvolutionKind::Manual,
    ];

    /// The name used on the command line and in the `Heph-Kind:` trailer.
    pub fn as_str(self) -> &'static str {
        match self {
            EvolutionKind::SelfModify => "self-modify",
            EvolutionKind::Import => "import",
            EvolutionKind::Watch => "watch",
            EvolutionKind::Evolve => "evolve",
            EvolutionKind::Rollback => "rollback",
            EvolutionKind::Manual => "manual",
        }
    }
}

impl fmt::Display for EvolutionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown evolution kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown evolution kind `{0}` (expected one of: self-modify, import, watch, evolve, rollback, manual)"
)]
pub struct UnknownKind(pub String);

impl FromStr for EvolutionKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EvolutionKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

/// How the verification of a change ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyOutcome {
    /// The verification command succeeded.
    Passed,
    /// The verification command failed; the change was rolled back.
    Failed,
    /// No verification ran (`--no-verify`, or a kind that does not verify).
    Skipped,
}

impl VerifyOutcome {
    /// The word used in the `Heph-Verify:` trailer and in output.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyOutcome::Passed => "passed",
            VerifyOutcome::Failed => "failed",
            VerifyOutcome::Skipped => "skipped",
        }
    }
}

impl fmt::Display for VerifyOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VerifyOutcome {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "passed" => Ok(VerifyOutcome::Passed),
            "failed" => Ok(VerifyOutcome::Failed),
            "skipped" => Ok(VerifyOutcome::Skipped),
            other => Err(format!("unknown verification outcome `{other}`")),
        }
    }
}

/// The verification outcome of a change and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRecord {
    /// Passed, failed or skipped.
    pub outcome: VerifyOutcome,
    /// Wall time of the verification command (zero when skipped).
    #[serde(with = "duration_ms", rename = "duration_ms")]
    pub duration: Duration,
}

impl VerifyRecord {
    /// A record for a change that was not verified.
    pub fn skipped() -> Self {
        VerifyRecord {
            outcome: VerifyOutcome::Skipped,
            duration: Duration::ZERO,
        }
    }
}

/// The item-level changes of an evolution, as item keys rendered for people
/// (`fn test_function`, `impl Display for Point`, `fn Point::norm`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemChanges {
    /// Items that did not exist before.
    pub added: Vec<String>,
    /// Items whose text changed.
    pub replaced: Vec<String>,
    /// Items that no longer exist.
    pub removed: Vec<String>,
}

impl ItemChanges {
    /// True when no item was added, replaced or removed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.replaced.is_empty() && self.removed.is_empty()
    }
}

/// Fitness before and after an `evolve` evolution (lower is better unless the run maximizes).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fitness {
    /// The baseline value.
    pub before: f64,
    /// The value with the change applied.
    pub after: f64,
}

/// What a writer tells the history store about a change it is recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvolutionMeta {
    /// What produced the change.
    pub kind: EvolutionKind,
    /// The module path the change targeted, when there is one (`crate::agent::example_module`).
    pub module: Option<String>,
    /// Files the operation wrote, relative to the project root, with `/` separators.
    pub files: Vec<PathBuf>,
    /// Item-level changes.
    pub changes: ItemChanges,
    /// The verification outcome, when the change was verified or explicitly skipped.
    pub verify: Option<VerifyRecord>,
    /// Fitness before and after (evolve only).
    pub fitness: Option<Fitness>,
    /// A one-line summary; the commit subject.
    pub message: String,
}

impl EvolutionMeta {
    /// Metadata with only a kind and a message; the other fields empty.
    pub fn new(kind: EvolutionKind, message: impl Into<String>) -> Self {
        EvolutionMeta {
            kind,
            module: None,
            files: Vec::new(),
            changes: ItemChanges::default(),
            verify: None,
            fitness: None,
            message: message.into(),
        }
    }
}

/// One recorded change: a commit on `refs/heph/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evolution {
    /// The full commit hash.
    pub id: String,
    /// The abbreviated hash shown to people.
    pub short_id: String,
    /// Commit time, seconds since the Unix epoch.
    pub timestamp: i64,
    /// The previous evolution, if any.
    pub parent: Option<String>,
    /// Everything the writer recorded.
    #[serde(flatten)]
    pub meta: EvolutionMeta,
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in EvolutionKind::ALL {
            assert_eq!(kind.as_str().parse::<EvolutionKind>(), Ok(kind));
        }
        assert!("bogus".parse::<EvolutionKind>().is_err());
    }
}
