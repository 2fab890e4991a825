//! `heph`: the command-line front end of Hephaestus. Parses arguments, calls
//! `hephaestus-core`, renders the result; no logic another tool could want lives here.

mod commands;
mod output;
mod project;
mod render;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::commands::Command;
use crate::output::Output;

/// Evolve a running Rust project safely: surgical AST edits, verified and reversible,
/// with every change recorded in git.
#[derive(Debug, clap::Parser)]
#[command(
    name = "heph",
    version,
    about = "Evolve a running Rust project safely",
    max_term_width = 100
)]
pub(crate) struct Cli {
    #[command(flatten)]
    global: output::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    // `--color` and `NO_COLOR` reach clap's own messages too (usage errors, help).
    let color = output::ColorChoice::from_raw_args(std::env::args_os());
    let matches = Cli::command().color(color.for_clap()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Parsing (and everything that walks syn's trees) runs on a thread whose stack is
    // sized for the nesting limits of `hephaestus_core::nesting`.
    let code = hephaestus_core::nesting::with_parse_stack(move || {
        let out = Output::new(&cli.global);
        match commands::run(cli.command, &cli.global, &out) {
            Ok(code) => code,
            Err(err) => out.error(&err),
        }
    });
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Subcommands are deferred: a mistake in one's arguments would show only when it
    /// runs. Build every one and let clap check them.
    #[test]
    fn every_subcommand_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
