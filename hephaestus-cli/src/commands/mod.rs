//! One module per subcommand, each with an `Args` struct and a `run` function.

use anyhow::Result;
use clap::Subcommand;

use crate::output::{GlobalArgs, Output};

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {}

/// Run one subcommand; returns the process exit code.
pub fn run(command: Command, _global: &GlobalArgs, _out: &Output) -> Result<u8> {
    match command {}
}
