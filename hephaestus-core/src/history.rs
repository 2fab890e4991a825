//! The history store: every change a git commit on `refs/heph/history` (git2).
//!
//! Interface placeholder until the history-store work lands: `open` succeeds and
//! recording returns no evolution.

use std::path::{Path, PathBuf};

use crate::evolution::{Evolution, EvolutionMeta};

/// Errors of the history store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// Placeholder.
    #[error("history store unavailable at {0}")]
    Unavailable(PathBuf),
}

impl crate::Categorized for HistoryError {
    fn category(&self) -> crate::ErrorCategory {
        crate::ErrorCategory::Environment
    }
}

/// The history store of one project.
#[derive(Debug)]
pub struct History {
    _root: PathBuf,
}

impl History {
    /// Open the store of the project at `root`.
    pub fn open(root: &Path) -> Result<History, HistoryError> {
        Ok(History {
            _root: root.to_owned(),
        })
    }

    /// Record the current files as `manual` when they changed since the last snapshot.
    pub fn record_manual_if_changed(&mut self) -> Result<Option<Evolution>, HistoryError> {
        Ok(None)
    }

    /// Snapshot the current files with this metadata unless they equal the last
    /// snapshot (used by `heph watch`).
    pub fn record_if_changed(
        &mut self,
        _meta: &EvolutionMeta,
    ) -> Result<Option<Evolution>, HistoryError> {
        Ok(None)
    }

    /// Snapshot the current files with this metadata.
    pub fn record(&mut self, _meta: &EvolutionMeta) -> Result<Option<Evolution>, HistoryError> {
        Ok(None)
    }
}
