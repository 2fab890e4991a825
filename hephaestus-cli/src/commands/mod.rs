//! One module per subcommand, each with an `Args` struct and a `run` function.

pub mod change;
pub mod import;
pub mod self_modify;
pub mod status;
pub mod watch;

use anyhow::Result;
use clap::Subcommand;

use crate::output::{GlobalArgs, Output};

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replace, add or remove items of an existing module; verified, reversible.
    SelfModify(self_modify::Args),
    /// Create a new module from code and declare it in its parent.
    Import(import::Args),
    /// Watch the project: syntax check, rebuild and swap the running program without
    /// downtime on every change.
    Watch(watch::Args),
    /// Show the state of the `heph watch` running for this project.
    Status(status::Args),
}

/// Run one subcommand; returns the process exit code.
pub fn run(command: Command, global: &GlobalArgs, out: &Output) -> Result<u8> {
    match command {
        Command::SelfModify(args) => self_modify::run(args, global, out),
        Command::Import(args) => import::run(args, global, out),
        Command::Watch(args) => watch::run(args, global, out),
        Command::Status(args) => status::run(args, global, out),
    }
}
