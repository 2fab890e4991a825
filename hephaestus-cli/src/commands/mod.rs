//! One module per subcommand, each with an `Args` struct and a `run` function.

pub mod history;
pub mod rollback;
pub mod show;
pub mod snapshot;
pub mod sync;

use anyhow::Result;
use clap::Subcommand;

use crate::output::{GlobalArgs, Output};

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the evolutions of the project, newest first.
    History(history::HistoryArgs),
    /// Show an evolution: metadata and diff.
    Show(show::ShowArgs),
    /// Restore the files of an evolution (undoable).
    Rollback(rollback::RollbackArgs),
    /// Share the history with a git remote (fetch, fast-forward, push).
    Sync(sync::SyncArgs),
    /// Record the current files as a `manual` evolution.
    Snapshot(snapshot::SnapshotArgs),
}

/// Run one subcommand; returns the process exit code.
pub fn run(command: Command, global: &GlobalArgs, out: &Output) -> Result<u8> {
    match command {
        Command::History(args) => history::run(args, global, out),
        Command::Show(args) => show::run(args, global, out),
        Command::Rollback(args) => rollback::run(args, global, out),
        Command::Sync(args) => sync::run(args, global, out),
        Command::Snapshot(args) => snapshot::run(args, global, out),
    }
}
