//! `heph show`: an evolution's metadata and its diff against the previous evolution.

use std::path::PathBuf;

use git2::{Delta, DiffFormat, DiffOptions, Patch};
use serde::Serialize;

use super::{History, HistoryError};
use crate::evolution::Evolution;

/// One file changed by an evolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileChange {
    /// The path relative to the project root.
    pub path: PathBuf,
    /// `added`, `deleted`, `modified`, `renamed` or `typechange`.
    pub status: &'static str,
    /// Lines added.
    pub insertions: usize,
    /// Lines removed.
    pub deletions: usize,
    /// True for binary files (no line counts).
    pub binary: bool,
}

/// An evolution and what it changed relative to its parent (or to nothing, for the
/// first one).
#[derive(Debug, Clone, Serialize)]
pub struct EvolutionDiff {
    /// The evolution.
    pub evolution: Evolution,
    /// Each changed file.
    pub files: Vec<FileChange>,
    /// Total lines added.
    pub insertions: usize,
    /// Total lines removed.
    pub deletions: usize,
    /// The unified diff (`git diff` format), when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
}

fn status_name(d: Delta) -> &'static str {
    match d {
        Delta::Added => "added",
        Delta::Deleted => "deleted",
        Delta::Renamed => "renamed",
        Delta::Typechange => "typechange",
        _ => "modified",
    }
}

impl History {
    /// The evolution `id` and its changes; the unified diff too when `with_patch`.
    pub fn show(&self, id: &str, with_patch: bool) -> Result<EvolutionDiff, HistoryError> {
        let evolution = self.get(id)?;
        let repo = self.repo_ref()?;
        let oid = git2::Oid::from_str(&evolution.id).map_err(HistoryError::git("reading an id"))?;
        let commit = repo
            .find_commit(oid)
            .map_err(HistoryError::git("reading an evolution"))?;
        let tree = commit
            .tree()
            .map_err(HistoryError::git("reading an evolution's tree"))?;
        let parent_tree = match commit.parent(0) {
            Ok(p) => Some(
                p.tree()
                    .map_err(HistoryError::git("reading the parent's tree"))?,
            ),
            Err(_) => None,
        };
        let mut opts = DiffOptions::new();
        opts.include_typechange(true);
        let diff = repo
            .diff_tree_to_tree(parent_tree.as_ref(), Some(&tree), Some(&mut opts))
            .map_err(HistoryError::git("computing the diff"))?;
        let mut files = Vec::new();
        let (mut insertions, mut deletions) = (0, 0);
        for (i, delta) in diff.deltas().enumerate() {
            let path = delta
                .new_file()
                .path()
                .or_else(|| delta.old_file().path())
                .map(PathBuf::from)
                .unwrap_or_default();
            let patch =
                Patch::from_diff(&diff, i).map_err(HistoryError::git("computing the diff"))?;
            let binary = delta.flags().is_binary() || patch.is_none();
            let (_, ins, del) = match &patch {
                Some(p) => p
                    .line_stats()
                    .map_err(HistoryError::git("counting lines"))?,
                None => (0, 0, 0),
            };
            insertions += ins;
            deletions += del;
            files.push(FileChange {
                path,
                status: status_name(delta.status()),
                insertions: ins,
                deletions: del,
                binary: binary && ins == 0 && del == 0,
            });
        }
        let patch = if with_patch {
            let mut text = Vec::new();
            diff.print(DiffFormat::Patch, |_, _, line| {
                if matches!(line.origin(), '+' | '-' | ' ') {
                    text.push(line.origin() as u8);
                }
                text.extend_from_slice(line.content());
                true
            })
            .map_err(HistoryError::git("rendering the diff"))?;
            Some(String::from_utf8_lossy(&text).into_owned())
        } else {
            None
        };
        Ok(EvolutionDiff {
            evolution,
            files,
            insertions,
            deletions,
            patch,
        })
    }
}
