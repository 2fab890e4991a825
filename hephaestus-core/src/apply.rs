//! Applying a change to the project: the one path every write takes.
//!
//! [`Project::plan`] computes the new file contents without touching anything;
//! [`Project::apply`] takes the writer lock, records the pre-state in the history
//! when the files changed by hand, writes atomically, verifies, records the result,
//! and restores every file byte for byte when the verification fails.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::Serialize;

use crate::edit::{self, ChangeAction, Edit, EditError, ItemChange, Splice};
use crate::evolution::{
    Evolution, EvolutionKind, EvolutionMeta, Fitness, ItemChanges, VerifyRecord,
};
use crate::fsio::{FileWrite, Transaction, WriteError};
use crate::history::{History, HistoryError, HistoryOptions, SkippedFile};
use crate::import::{self, ImportError, ImportSpec};
use crate::journal::{
    self, Direction, Journal, JournalError, PendingFile, Phase, Recovery, Settled, Side, TxKind,
    TxStart,
};
use crate::modpath::ModulePath;
use crate::project::Project;
use crate::resolve::{ResolveError, Resolver};
use crate::run::{RunError, RunReport, run_function};
use crate::source::{Origin, SyntaxError, decode};
use crate::state::{StateDir, StateError};
use crate::verify::{self, Verify, VerifyError, VerifyOptions, VerifyProgress, VerifyReport};

/// The default limit on submitted code: 8 MiB.
pub const DEFAULT_MAX_CODE_BYTES: u64 = 8 * 1024 * 1024;

/// A change to make.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// Edit the items of an existing module.
    SelfModify {
        /// The module path (`crate::agent::x`, `agent.x`, `pkg::agent::x`).
        module: String,
        /// The edit.
        edit: Edit,
    },
    /// Create a new module and wire it into its parent.
    Import(ImportSpec),
    /// Splices computed elsewhere (an accepted `heph evolve` candidate), applied only
    /// when each file still holds exactly the text they were computed on.
    Patch(Patch),
}

/// Splices of files of one module, computed on known file contents.
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    /// What produced it (`evolve`).
    pub kind: EvolutionKind,
    /// The module the change belongs to.
    pub module: String,
    /// The files, relative to the project root.
    pub files: Vec<PatchFile>,
    /// Item-level changes, for the history.
    pub changes: Vec<ItemChange>,
    /// The commit subject (default: a summary of the item changes).
    pub message: Option<String>,
    /// Fitness before and after (evolve).
    pub fitness: Option<Fitness>,
}

/// One file of a [`Patch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchFile {
    /// Relative to the project root, `/`-separated.
    pub path: String,
    /// The whole text the splices were computed on.
    pub before: String,
    /// Sorted, non-overlapping splices of `before`.
    pub splices: Vec<Splice>,
}

impl PatchFile {
    /// The text after the splices.
    pub fn after(&self) -> String {
        crate::evolve::rules::apply_splices(&self.before, &self.splices)
    }
}

impl Operation {
    fn kind(&self) -> EvolutionKind {
        match self {
            Operation::SelfModify { .. } => EvolutionKind::SelfModify,
            Operation::Import(_) => EvolutionKind::Import,
            Operation::Patch(p) => p.kind,
        }
    }

    fn module(&self) -> &str {
        match self {
            Operation::SelfModify { module, .. } => module,
            Operation::Import(spec) => &spec.module,
            Operation::Patch(p) => &p.module,
        }
    }
}

/// Everything an operation would write, computed without writing.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What produced it.
    pub kind: EvolutionKind,
    /// The module's canonical path in this project.
    pub module: String,
    /// The package that owns it (verified with cargo).
    pub package: String,
    /// Segments of the module from its crate root (for `--run`).
    pub segments: Vec<String>,
    /// The file writes.
    pub files: Vec<FileWrite>,
    /// Item-level changes.
    pub changes: Vec<ItemChange>,
    /// Function to run after an import (validated).
    pub run: Option<String>,
    /// Fitness before and after, recorded with the evolution (evolve).
    pub fitness: Option<Fitness>,
    /// The commit subject, when the operation names one.
    pub message: Option<String>,
    /// What heph decided or ignored on the way (the `#[cfg]` copy it chose, the macro
    /// that declares the module, comments a formatted merge did not compare).
    pub notes: Vec<String>,
}

impl Plan {
    /// True when nothing would be written.
    pub fn is_noop(&self) -> bool {
        self.files
            .iter()
            .all(|f| f.before.as_deref() == Some(f.after.as_slice()))
    }

    /// A unified diff of the plan, paths relative to the project root.
    pub fn diff(&self, project: &Project) -> String {
        let mut out = String::new();
        for f in &self.files {
            let rel = project.relative(&f.path);
            let before = f.before.as_deref().map(String::from_utf8_lossy);
            let after = String::from_utf8_lossy(&f.after);
            let old_name = if before.is_some() {
                format!("a/{rel}")
            } else {
                "/dev/null".to_owned()
            };
            out.push_str(&unified_diff(
                &old_name,
                &format!("b/{rel}"),
                before.as_deref().unwrap_or(""),
                &after,
            ));
        }
        out
    }

    fn item_changes(&self) -> ItemChanges {
        let mut c = ItemChanges::default();
        for ch in &self.changes {
            match ch.action {
                ChangeAction::Added => c.added.push(ch.key.clone()),
                ChangeAction::Replaced => c.replaced.push(ch.key.clone()),
                ChangeAction::Removed => c.removed.push(ch.key.clone()),
                ChangeAction::Unchanged => {}
            }
        }
        c
    }
}

/// A unified diff (3 lines of context) between two texts, with these header names.
pub fn unified_diff(old_name: &str, new_name: &str, before: &str, after: &str) -> String {
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .to_string()
}

/// How [`Project::apply`] behaves.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Compute and return the diff; write nothing.
    pub dry_run: bool,
    /// How to verify.
    pub verify: Verify,
    /// Record the result in the history (the pre-state is always recorded).
    pub backup: bool,
    /// Record anything in the history at all (tests of the engine alone turn it off).
    pub history: bool,
    /// Identities and test hooks of the history store.
    pub history_options: HistoryOptions,
    /// How long to wait for another heph holding the lock.
    pub lock_timeout: Duration,
    /// Limits, colors and cancellation of verification and `--run`.
    pub verify_options: VerifyOptions,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            dry_run: false,
            verify: Verify::CargoCheck,
            backup: true,
            history: true,
            history_options: HistoryOptions::default(),
            lock_timeout: Duration::from_secs(300),
            verify_options: VerifyOptions::default(),
        }
    }
}

impl ApplyOptions {
    /// Set the flag that cancels a running verification.
    pub fn with_cancel(mut self, flag: Arc<AtomicBool>) -> Self {
        self.verify_options.cancel = Some(flag);
        self
    }
}

/// Progress of [`Project::apply`], for front ends.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Another heph holds the lock; waiting.
    WaitingForLock {
        /// Who holds it, as it said.
        holder: String,
    },
    /// Edits by hand were found and recorded before writing (or, in a project without a
    /// history yet, its current files, as the history's first evolution).
    PreStateRecorded {
        /// The `manual` evolution's short id.
        id: String,
        /// It is the first evolution of the history: the initial state, not hand edits.
        first: bool,
    },
    /// The files were written.
    Written {
        /// Relative paths.
        files: Vec<String>,
    },
    /// Verification started.
    VerifyStarted {
        /// The command.
        command: String,
    },
    /// A compilation unit finished.
    VerifyProgress(VerifyProgress),
    /// Verification failed; the files were restored.
    RolledBack,
    /// Running the imported function.
    Running {
        /// The function's path.
        function: String,
    },
}

/// What [`Project::apply`] did.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyOutcome {
    /// `self-modify` or `import`.
    pub kind: EvolutionKind,
    /// The module's canonical path.
    pub module: String,
    /// The files written (relative).
    pub files: Vec<String>,
    /// The files created (relative), a subset of `files`.
    pub created: Vec<String>,
    /// Item-level changes.
    pub changes: Vec<ItemChange>,
    /// Only a dry run: nothing was written.
    pub dry_run: bool,
    /// The unified diff (dry runs).
    pub diff: Option<String>,
    /// Nothing needed to change.
    pub noop: bool,
    /// The verification.
    pub verify: VerifyReport,
    /// The change stands (verification passed or was skipped).
    pub accepted: bool,
    /// Verification failed and the files were restored byte for byte.
    pub rolled_back: bool,
    /// The evolution recorded for the change (absent with `--no-backup`, dry runs,
    /// no-ops).
    pub evolution: Option<Evolution>,
    /// The `manual` evolution recorded first, when files had been edited by hand.
    pub pre_state: Option<Evolution>,
    /// The `rollback` evolution recorded after a failed verification.
    pub rollback: Option<Evolution>,
    /// The result of `--run`.
    pub run: Option<RunReport>,
    /// Files changed by someone else while heph verified (relative): kept as they
    /// are, not restored.
    pub kept: Vec<String>,
    /// The `manual` evolution recording the files kept (instead of the failed attempt).
    pub hand_edits: Option<Evolution>,
    /// What was done with a transaction a killed heph had left unfinished, found when
    /// taking the lock.
    pub recovered: Option<Recovery>,
    /// What heph decided or ignored on the way (see [`Plan::notes`]).
    pub notes: Vec<String>,
}

/// Errors of planning or applying a change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The module path does not resolve.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The edit is invalid.
    #[error(transparent)]
    Edit(#[from] EditError),
    /// The import is invalid.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// Writing failed (read-only file, I/O error); nothing was left half-written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The lock could not be taken.
    #[error(transparent)]
    State(#[from] StateError),
    /// The history store failed.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// The verification command could not run, or was interrupted (files restored).
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The `--run` harness failed to start.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The write-ahead journal could not be written or settled.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Recording in the history failed after the files were written: they were put
    /// back (a file someone else changed meanwhile is kept).
    #[error("{}", not_recorded(.source, .restored, .kept))]
    NotRecorded {
        /// The history error.
        #[source]
        source: Box<HistoryError>,
        /// Files put back as they were before the change, relative.
        restored: Vec<String>,
        /// Files changed by someone else meanwhile, kept as they are.
        kept: Vec<String>,
    },
    /// A patch's file no longer holds the text the patch was computed on.
    #[error(
        "{path} changed since the change was computed (edited by hand meanwhile?); nothing was written"
    )]
    Stale {
        /// The file, relative to the project root.
        path: String,
    },
    /// A patch names a file outside the project.
    #[error("the patch names `{path}`, which is not a file inside the project")]
    PatchPath {
        /// The path as given.
        path: String,
    },
    /// Restoring the files after a failed or interrupted verification failed: the
    /// journal stays, so the next heph command (or `heph recover`) finishes the restore.
    #[error(
        "the change could not be undone ({source}); the state before it is in the history and the next heph command (or `heph recover`) puts it back"
    )]
    Restore {
        /// The restore error.
        #[source]
        source: JournalError,
    },
}

impl crate::Categorized for ApplyError {
    fn category(&self) -> crate::ErrorCategory {
        match self {
            ApplyError::Resolve(e) => e.category(),
            ApplyError::Edit(e) => e.category(),
            ApplyError::Import(e) => e.category(),
            ApplyError::Write(e) => e.category(),
            ApplyError::State(e) => e.category(),
            ApplyError::History(e) => e.category(),
            ApplyError::Verify(e) => e.category(),
            ApplyError::Run(e) => e.category(),
            ApplyError::Journal(e) => e.category(),
            ApplyError::NotRecorded { source, .. } => source.category(),
            ApplyError::Restore { .. } | ApplyError::Stale { .. } => {
                crate::ErrorCategory::Environment
            }
            ApplyError::PatchPath { .. } => crate::ErrorCategory::BadInput,
        }
    }
}

fn not_recorded(source: &HistoryError, restored: &[String], kept: &[String]) -> String {
    let mut s = format!(
        "recording the change in the history failed after the files were written ({source}); "
    );
    if restored.is_empty() {
        s.push_str("no file held the change any more");
    } else {
        s.push_str(&format!(
            "the files were put back as they were before the change ({})",
            restored.join(", ")
        ));
    }
    if !kept.is_empty() {
        s.push_str(&format!(
            "; kept {}, changed by someone else meanwhile",
            kept.join(", ")
        ));
    }
    s.push_str(
        "; nothing unverified was left behind, run the command again once the history is writable",
    );
    s
}

/// Errors of reading submitted code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodeError {
    /// More than the limit.
    #[error(
        "the submitted code is larger than the limit of {limit} bytes; split the change or raise the limit"
    )]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// Not UTF-8.
    #[error("the submitted code is not valid Rust: {0}")]
    NotUtf8(Box<SyntaxError>),
    /// Reading failed.
    #[error("cannot read the code from {from}: {source}")]
    Io {
        /// Where it was read from.
        from: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl crate::Categorized for CodeError {
    fn category(&self) -> crate::ErrorCategory {
        match self {
            CodeError::Io { .. } => crate::ErrorCategory::Environment,
            _ => crate::ErrorCategory::BadInput,
        }
    }
}

/// Read submitted code from `reader` with bounded memory: more than `limit` bytes is
/// refused without reading the rest; non-UTF-8 is refused with its position.
pub fn read_code(reader: impl Read, from: &str, limit: u64) -> Result<String, CodeError> {
    let mut buf = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|source| CodeError::Io {
            from: from.to_owned(),
            source,
        })?;
    if buf.len() as u64 > limit {
        return Err(CodeError::TooLarge { limit });
    }
    decode(Origin::Submitted, buf).map_err(CodeError::NotUtf8)
}

impl Project {
    /// Compute what an operation would write, without writing or locking.
    pub fn plan(&self, op: &Operation) -> Result<Plan, ApplyError> {
        let resolver = Resolver::new(self);
        match op {
            Operation::SelfModify { module, edit } => {
                let resolver = resolver.with_cfg(&edit.cfg);
                let m = resolver.resolve(module)?;
                let file = resolver.file(&m.file)?;
                let lookup = || resolver.cfg_set(&m.package);
                let outcome = edit::apply_to_module(&file, &m, edit, Some(&lookup))?;
                let mut notes = m.notes.clone();
                notes.extend(outcome.notes);
                Ok(Plan {
                    kind: EvolutionKind::SelfModify,
                    module: m.path.clone(),
                    package: m.package.clone(),
                    segments: m.segments.clone(),
                    files: vec![FileWrite {
                        path: m.file.clone(),
                        before: Some(file.text().as_bytes().to_vec()),
                        after: outcome.text.into_bytes(),
                    }],
                    changes: outcome.changes,
                    run: None,
                    fitness: None,
                    message: None,
                    notes,
                })
            }
            Operation::Import(spec) => Ok(import::plan(&resolver, spec)?),
            Operation::Patch(patch) => {
                let m = resolver.resolve(&patch.module)?;
                let mut files = Vec::new();
                for f in &patch.files {
                    let rel = std::path::Path::new(&f.path);
                    if rel.is_absolute()
                        || rel
                            .components()
                            .any(|c| !matches!(c, std::path::Component::Normal(_)))
                    {
                        return Err(ApplyError::PatchPath {
                            path: f.path.clone(),
                        });
                    }
                    let path = self.root().join(rel);
                    resolver.check_inside(&path, &f.path)?;
                    let current = std::fs::read(&path).map_err(|source| {
                        ApplyError::Write(crate::fsio::WriteError::Io {
                            path: path.clone(),
                            source,
                        })
                    })?;
                    if current != f.before.as_bytes() {
                        return Err(ApplyError::Stale {
                            path: f.path.clone(),
                        });
                    }
                    let after = f.after();
                    crate::source::check_file(&path, &after)
                        .map_err(|e| ApplyError::Edit(EditError::ResultSyntax(e)))?;
                    files.push(FileWrite {
                        path,
                        before: Some(current),
                        after: after.into_bytes(),
                    });
                }
                Ok(Plan {
                    kind: patch.kind,
                    module: m.path.clone(),
                    package: m.package.clone(),
                    segments: m.segments.clone(),
                    files,
                    changes: patch.changes.clone(),
                    run: None,
                    fitness: patch.fitness,
                    message: patch.message.clone(),
                    notes: m.notes.clone(),
                })
            }
        }
    }

    /// Resolve a module path (see [`Resolver`] for the rules).
    pub fn resolve(&self, module: &str) -> Result<crate::resolve::Module, ResolveError> {
        Resolver::new(self).resolve(module)
    }

    /// Parse a module path without resolving it.
    pub fn parse_module_path(text: &str) -> Result<ModulePath, ResolveError> {
        Ok(ModulePath::parse(text)?)
    }

    /// Apply an operation: lock, record the pre-state, write atomically, verify,
    /// record, and restore on failure. A verification failure is not an `Err`: the
    /// outcome says `accepted: false, rolled_back: true`.
    pub fn apply(
        &self,
        op: &Operation,
        opts: &ApplyOptions,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<ApplyOutcome, ApplyError> {
        if opts.dry_run {
            let plan = self.plan(op)?;
            return Ok(self.outcome(&plan, true, Some(plan.diff(self))));
        }
        let state = StateDir::new(self.root());
        let who = format!("{} {}", op.kind(), op.module());
        let lock = state.lock(&who, opts.lock_timeout, |holder| {
            on_event(&Event::WaitingForLock {
                holder: holder.to_owned(),
            })
        })?;
        state.clean_tmp();
        // A transaction a killed heph left is settled before anything else is read.
        let recovered = journal::recover(self.root(), &lock, &opts.history_options)?;
        // Plan under the lock, so concurrent heph processes see each other's writes.
        let plan = self.plan(op)?;
        let mut outcome = self.outcome(&plan, false, None);
        outcome.recovered = recovered;
        if plan.is_noop() {
            outcome.noop = true;
            return Ok(outcome);
        }
        let mut history = if opts.history {
            Some(History::open_with(
                self.root(),
                opts.history_options.clone(),
            )?)
        } else {
            None
        };
        let mut pre_tip = None;
        if let Some(h) = history.as_mut() {
            outcome.pre_state = h.record_manual_if_changed()?;
            if let Some(e) = &outcome.pre_state {
                on_event(&Event::PreStateRecorded {
                    id: e.short_id.clone(),
                    first: e.parent.is_none(),
                });
            }
            pre_tip = h.tip()?.map(|t| t.to_string());
            outcome
                .notes
                .extend(h.skipped().iter().map(SkippedFile::notice));
        }
        // The write-ahead record, durable before the first file changes.
        let pending: Vec<PendingFile<'_>> = plan
            .files
            .iter()
            .zip(&outcome.files)
            .map(|(f, rel)| PendingFile {
                path: rel,
                before: f.before.as_deref().map_or(Side::Absent, Side::Bytes),
                after: Side::Bytes(&f.after),
            })
            .collect();
        let mut journal = Journal::begin(
            self.root(),
            &lock,
            TxStart {
                kind: TxKind::Apply,
                operation: who.clone(),
                pre_state: pre_tip,
                history: opts.history,
                meta: None,
                target: None,
            },
            &pending,
        )?;
        let mut tx = Transaction::new(plan.files.clone()).with_tmp_dir(state.tmp_dir()?);
        if let Err(e) = tx.commit() {
            // The transaction put back what it wrote; the journal checks and goes.
            self.undo(journal)?;
            return Err(e.into());
        }
        // Test hook (crash tests): a pause between the write and the verification.
        if let Some(d) = opts.history_options.step_delay {
            std::thread::sleep(d);
        }
        journal.set_phase(Phase::Verifying, None)?;
        on_event(&Event::Written {
            files: outcome.files.clone(),
        });

        let report = match self.verify(&plan, opts, on_event) {
            Ok(r) => r,
            Err(e) => {
                // Interrupted or could not start: never leave an unverified change.
                let settled = self.undo(journal)?;
                outcome.kept = settled.kept;
                on_event(&Event::RolledBack);
                return Err(e.into());
            }
        };
        let meta = |verify: VerifyRecord| EvolutionMeta {
            kind: plan.kind,
            module: Some(plan.module.clone()),
            files: outcome.files.iter().map(PathBuf::from).collect(),
            changes: plan.item_changes(),
            verify: Some(verify),
            fitness: plan.fitness,
            message: match &plan.message {
                Some(m) if verify.outcome != crate::VerifyOutcome::Failed => m.clone(),
                _ => summary(&plan, verify),
            },
        };
        let record = VerifyRecord {
            outcome: report.outcome,
            duration: report.duration,
        };
        outcome.verify = report;
        if outcome.verify.ok() {
            if opts.backup
                && let Some(h) = history.as_mut()
            {
                let meta = meta(record);
                journal.set_phase(Phase::Passed, Some(meta.clone()))?;
                match h.record(&meta) {
                    Ok(e) => outcome.evolution = Some(e),
                    Err(source) => {
                        // Never leave a change the history does not hold: put the files back.
                        let settled = self.undo(journal)?;
                        return Err(ApplyError::NotRecorded {
                            source: Box::new(source),
                            restored: settled.restored,
                            kept: settled.kept,
                        });
                    }
                }
            }
            journal.finish()?;
            if let Some(function) = &plan.run {
                let pkg = self
                    .package(&plan.package)
                    .expect("plan of a known package");
                on_event(&Event::Running {
                    function: function.clone(),
                });
                outcome.run = Some(run_function(
                    self,
                    pkg,
                    &plan.segments,
                    function,
                    &opts.verify_options,
                )?);
            }
            return Ok(outcome);
        }
        outcome.accepted = false;
        // Files that no longer hold heph's bytes were saved by someone else during the
        // verification: they are kept, and recorded as a hand edit instead of the attempt.
        let edited_meanwhile = plan
            .files
            .iter()
            .any(|f| std::fs::read(&f.path).ok().as_deref() != Some(f.after.as_slice()));
        if edited_meanwhile {
            let settled = self.settle_undo(&journal)?;
            outcome.kept = settled.kept;
            outcome.rolled_back = true;
            on_event(&Event::RolledBack);
            if let Some(h) = history.as_mut() {
                match h.record_manual_if_changed() {
                    Ok(e) => outcome.hand_edits = e,
                    Err(source) => {
                        journal.finish()?;
                        return Err(ApplyError::NotRecorded {
                            source: Box::new(source),
                            restored: settled.restored,
                            kept: outcome.kept,
                        });
                    }
                }
            }
            journal.finish()?;
            return Ok(outcome);
        }
        // Verification failed: record the attempt, restore byte for byte, record that.
        journal.set_phase(Phase::Failed, None)?;
        if opts.backup
            && let Some(h) = history.as_mut()
        {
            match h.record(&meta(record)) {
                Ok(e) => outcome.evolution = Some(e),
                Err(source) => {
                    let settled = self.undo(journal)?;
                    return Err(ApplyError::NotRecorded {
                        source: Box::new(source),
                        restored: settled.restored,
                        kept: settled.kept,
                    });
                }
            }
        }
        let settled = self.settle_undo(&journal)?;
        outcome.kept = settled.kept;
        outcome.rolled_back = true;
        on_event(&Event::RolledBack);
        if opts.backup
            && let Some(h) = history.as_mut()
        {
            let mut m = EvolutionMeta::new(
                EvolutionKind::Rollback,
                format!("rollback: {} failed verification", plan.module),
            );
            m.module = Some(plan.module.clone());
            m.files = outcome.files.iter().map(PathBuf::from).collect();
            match h.record(&m) {
                Ok(e) => outcome.rollback = Some(e),
                Err(source) => {
                    journal.finish()?;
                    return Err(ApplyError::NotRecorded {
                        source: Box::new(source),
                        restored: settled.restored,
                        kept: outcome.kept,
                    });
                }
            }
        }
        journal.finish()?;
        Ok(outcome)
    }

    /// Put the files of an open transaction back as they were (comparing first: a file
    /// someone else changed is kept), then close it. When a file cannot be written, the
    /// journal stays, so the next command finishes the job.
    fn undo(&self, journal: Journal) -> Result<Settled, ApplyError> {
        let settled = self.settle_undo(&journal)?;
        journal.finish()?;
        Ok(settled)
    }

    fn settle_undo(&self, journal: &Journal) -> Result<Settled, ApplyError> {
        journal::settle(self.root(), journal.record(), Direction::Undo, None)
            .map_err(|source| ApplyError::Restore { source })
    }

    fn verify(
        &self,
        plan: &Plan,
        opts: &ApplyOptions,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<VerifyReport, VerifyError> {
        let mut progress = |p: VerifyProgress| on_event(&Event::VerifyProgress(p));
        match &opts.verify {
            Verify::Skip => Ok(VerifyReport::skipped()),
            Verify::Verified(report) => Ok(report.clone()),
            Verify::CargoCheck => {
                on_event(&Event::VerifyStarted {
                    command: format!("cargo check --all-targets -p {}", plan.package),
                });
                let mut progress = |p: VerifyProgress| on_event(&Event::VerifyProgress(p));
                verify::cargo_check(
                    &self.root().join("Cargo.toml"),
                    &plan.package,
                    &opts.verify_options,
                    &mut progress,
                )
            }
            Verify::Command(cmd) => {
                verify::shell(self.root(), cmd, &opts.verify_options, &mut progress)
            }
        }
    }

    fn outcome(&self, plan: &Plan, dry_run: bool, diff: Option<String>) -> ApplyOutcome {
        ApplyOutcome {
            kind: plan.kind,
            module: plan.module.clone(),
            files: plan.files.iter().map(|f| self.relative(&f.path)).collect(),
            created: plan
                .files
                .iter()
                .filter(|f| f.before.is_none())
                .map(|f| self.relative(&f.path))
                .collect(),
            changes: plan.changes.clone(),
            dry_run,
            diff,
            noop: plan.is_noop(),
            verify: VerifyReport::skipped(),
            accepted: true,
            rolled_back: false,
            evolution: None,
            pre_state: None,
            rollback: None,
            run: None,
            kept: Vec::new(),
            hand_edits: None,
            recovered: None,
            notes: plan.notes.clone(),
        }
    }
}

/// The commit subject of a change: `self-modify crate::a::b: replaced fn f, added fn g`.
fn summary(plan: &Plan, verify: VerifyRecord) -> String {
    let changes: Vec<String> = plan
        .changes
        .iter()
        .filter(|c| c.action != ChangeAction::Unchanged)
        .map(|c| format!("{} {}", c.action.as_str(), c.key))
        .collect();
    let mut s = format!("{} {}", plan.kind, plan.module);
    if !changes.is_empty() {
        s.push_str(": ");
        let joined = changes.join(", ");
        if joined.chars().count() > 120 {
            s.push_str(&format!("{} item changes", changes.len()));
        } else {
            s.push_str(&joined);
        }
    }
    if verify.outcome == crate::VerifyOutcome::Failed {
        s.push_str(" (verification failed)");
    }
    s
}
