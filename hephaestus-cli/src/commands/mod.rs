//! One module per subcommand, each with an `Args` struct and a `run` function.

pub mod api;
pub mod change;
pub mod completions;
pub mod evolve;
pub mod fleet;
pub mod history;
pub mod import;
pub mod mcp;
pub mod recover;
pub mod rollback;
pub mod self_modify;
pub mod serve;
pub mod show;
pub mod snapshot;
pub mod status;
pub mod sync;
pub mod watch;

use anyhow::Result;
use clap::Subcommand;

use crate::output::{GlobalArgs, Output};

/// The subcommands. Each one's arguments are defined only when it is the one invoked
/// (`defer`): building all of them took ~0.3 ms of every run (`heph history` takes
/// ~2 ms in all). Its `--help` opens with its arguments struct's description.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Replace, add or remove items of an existing module; verified, reversible.
    SelfModify(self_modify::Args),
    /// Create a new module from code and declare it in its parent.
    Import(import::Args),
    /// List the evolutions of the project, newest first.
    History(history::HistoryArgs),
    /// Show an evolution: metadata and diff.
    Show(show::ShowArgs),
    /// Restore the files of an evolution (undoable).
    Rollback(rollback::RollbackArgs),
    /// Finish or undo a change a killed heph left unfinished (every command that
    /// writes does it first too).
    Recover(recover::Args),
    /// Share the history with a git remote (fetch, fast-forward, push).
    Sync(sync::SyncArgs),
    /// Record the current files as a `manual` evolution.
    Snapshot(snapshot::SnapshotArgs),
    /// Watch the project: syntax check, rebuild and swap the running program without
    /// downtime on every change.
    Watch(Box<watch::Args>),
    /// Show the state of the `heph watch` running for this project.
    Status(status::Args),
    /// Make the project faster: try rewrite rules and proposals in isolated copies, keep
    /// what passes the tests and measurably improves the fitness.
    Evolve(Box<evolve::Args>),
    /// Serve this project to a coding agent over the Model Context Protocol (stdio).
    Mcp(mcp::Args),
    /// Serve the HTTP control API (self-modify, dynamic-import, history, evolution).
    Serve(serve::Args),
    /// The fleet of instances following one history (`heph fleet status REMOTE`).
    Fleet(fleet::FleetArgs),
    /// Print the completion script of a shell (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the manual page (roff), or write one page per command with --out-dir.
    Man(completions::ManArgs),
}

/// Run one subcommand; returns the process exit code.
pub fn run(command: Command, global: &GlobalArgs, out: &Output) -> Result<u8> {
    match command {
        Command::SelfModify(args) => self_modify::run(args, global, out),
        Command::Import(args) => import::run(args, global, out),
        Command::History(args) => history::run(args, global, out),
        Command::Show(args) => show::run(args, global, out),
        Command::Rollback(args) => rollback::run(args, global, out),
        Command::Recover(args) => recover::run(args, global, out),
        Command::Sync(args) => sync::run(args, global, out),
        Command::Snapshot(args) => snapshot::run(args, global, out),
        Command::Watch(args) => watch::run(*args, global, out),
        Command::Status(args) => status::run(args, global, out),
        Command::Evolve(args) => evolve::run(*args, global, out),
        Command::Mcp(args) => mcp::run(args, global, out),
        Command::Serve(args) => serve::run(args, global, out),
        Command::Fleet(args) => fleet::run(args, global, out),
        Command::Completions(args) => completions::run_completions(args),
        Command::Man(args) => completions::run_man(args, out),
    }
}
