//! `heph fleet status REMOTE`: which instance of a fleet runs which evolution.

use anyhow::Result;
use clap::{Args, Subcommand};
use hephaestus_core::history::{FleetState, SHORT_ID_LEN};

use super::sync::Transport;
use crate::output::{GlobalArgs, Output};
use crate::project;

/// The instances following one history through a git remote (`heph watch --follow`).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    heph fleet status ../fleet.git\n  \
    heph --json fleet status origin")]
pub struct FleetArgs {
    #[command(subcommand)]
    pub command: FleetCommand,
}

/// `heph fleet` subcommands.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// List each instance's report in REMOTE: evolution, state (applying, applied,
    /// build-failed, unhealthy, stopped) and since when. Exit code 1 when one is not
    /// `applied`.
    Status(StatusArgs),
}

/// `heph fleet status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A git remote of the project's repository, or a URL or path.
    pub remote: String,
    /// How to reach the remote (see `heph sync --transport`).
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    pub transport: Transport,
}

/// Run `heph fleet`.
pub fn run(args: FleetArgs, global: &GlobalArgs, out: &Output) -> Result<u8> {
    let FleetCommand::Status(args) = args.command;
    let mut history = project::open_history(global, out)?;
    let list = history.fleet_status(&args.remote, args.transport.into())?;
    out.json(&serde_json::json!({ "remote": args.remote, "instances": list }));
    if list.is_empty() {
        out.line(format!(
            "no instance reports to `{}` yet (`heph watch --follow {}` does)",
            args.remote, args.remote
        ));
        return Ok(0);
    }
    let width = list
        .iter()
        .map(|s| s.instance.len())
        .max()
        .unwrap_or(8)
        .max(8);
    out.line(format!(
        "{:<width$}  {:<12}  {:<12}  SINCE",
        "INSTANCE", "EVOLUTION", "STATE"
    ));
    for s in &list {
        let ev = s
            .evolution
            .as_deref()
            .map_or("-", |e| &e[..SHORT_ID_LEN.min(e.len())]);
        let mut line = format!(
            "{:<width$}  {:<12}  {:<12}  {}",
            s.instance,
            ev,
            s.state.as_str(),
            utc(s.since)
        );
        if let Some(d) = &s.detail {
            line.push_str(&format!("  ({d})"));
        }
        out.line(line);
    }
    Ok(u8::from(
        list.iter().any(|s| s.state != FleetState::Applied),
    ))
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(secs: i64) -> String {
    hephaestus_core::evolution::format_utc(secs)
}
