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

/// `--canary N [--health-window D] [--canary-timeout D]` of a publisher (`heph watch
/// --publish`, `heph serve --publish`).
#[derive(Debug, Clone, Args)]
pub struct CanaryArgs {
    /// Roll each new evolution out to N followers first (the first N instances of
    /// `heph fleet status` by name, `stopped` ones left out): the others get it once
    /// every canary reports `applied` and stays healthy for --health-window; a canary
    /// that fails makes this instance record and publish a `rollback` to what the
    /// fleet ran.
    #[arg(long, value_name = "N", requires = "publish",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub canary: Option<u32>,
    /// How long the canaries stay healthy before the rest of the fleet gets an
    /// evolution.
    #[arg(long, value_name = "DURATION", value_parser = hephaestus_core::config::parse_duration,
          default_value = "10s", requires = "canary")]
    pub health_window: std::time::Duration,
    /// How long the canaries have to report `applied` (their build included) before
    /// the rollout counts as failed.
    #[arg(long, value_name = "DURATION", value_parser = hephaestus_core::config::parse_duration,
          default_value = "10m", requires = "canary")]
    pub canary_timeout: std::time::Duration,
}

impl CanaryArgs {
    /// The core's options, None without `--canary`.
    pub fn options(&self) -> Option<hephaestus_core::watch::CanaryOptions> {
        self.canary.map(|n| hephaestus_core::watch::CanaryOptions {
            count: usize::try_from(n).unwrap_or(usize::MAX),
            health_window: self.health_window,
            timeout: self.canary_timeout,
        })
    }
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

/// A line for a canary rollout event of a publisher.
pub fn describe_canary(event: &hephaestus_core::watch::WatchEvent) -> Option<String> {
    use hephaestus_core::watch::WatchEvent;
    let short = |id: &str| id[..id.len().min(SHORT_ID_LEN)].to_owned();
    Some(match event {
        WatchEvent::CanaryStarted {
            evolution,
            canaries,
            ..
        } => format!(
            "rolling out {} to the canaries first: {}",
            short(evolution),
            canaries.join(", ")
        ),
        WatchEvent::CanaryPromoted { evolution, .. } => format!(
            "the canaries stayed healthy: {} goes to the whole fleet",
            short(evolution)
        ),
        WatchEvent::CanaryFailed {
            evolution,
            reason,
            rollback,
            ..
        } => match rollback {
            Some(r) => format!(
                "canary failed on {}: {reason}; recorded rollback {} and publishing it to the whole fleet (the other followers never ran it)",
                short(evolution),
                short(r)
            ),
            None => format!(
                "canary failed on {}: {reason}; the rollback could not be recorded (the rest of the fleet does not get it)",
                short(evolution)
            ),
        },
        _ => return None,
    })
}
