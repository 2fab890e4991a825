//! `heph serve`: the HTTP control API for a project, without a supervised program.

use std::sync::Arc;
use std::sync::mpsc;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use hephaestus_core::Config;
use hephaestus_core::api::ServeState;
use hephaestus_core::watch::{Publisher, WatchEvent};

use super::api::{self, ApiArgs};
use super::change::open_project;
use super::sync::Transport;
use crate::output::{GlobalArgs, Output};

/// Serve the HTTP control API (`/hot-reload/...`): self-modify, dynamic-import,
/// evolution-history, trigger-evolution, and an enabled/disabled hot-reload switch.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    heph serve                                  (127.0.0.1:8000, token in .heph/token)\n  \
    HEPH_TOKEN=secret heph serve --api 9000\n  \
    curl -H \"Authorization: Bearer $(cat .heph/token)\" http://127.0.0.1:8000/hot-reload/status\n\n\
    Stop with Ctrl-C (a verification in progress is cancelled and its files restored).")]
pub struct Args {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Push every evolution recorded (through the API or otherwise) to REMOTE; never
    /// forced: a push that is not a fast-forward is reported and left alone.
    #[arg(long, value_name = "REMOTE")]
    pub publish: Option<String>,
    /// How --publish reaches the remote (see `heph sync --transport`).
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    pub transport: Transport,
    #[command(flatten)]
    pub canary: super::fleet::CanaryArgs,
}

/// Run the command: serve until Ctrl-C or SIGTERM.
pub fn run(args: Args, global: &GlobalArgs, out: &Output) -> Result<u8> {
    let project = open_project(global)?;
    let config = Config::load(project.root())?;
    let (tx, rx) = mpsc::channel::<()>();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("cannot install the Ctrl-C handler")?;
    let state = Arc::new(ServeState::new(project.root(), true));
    let Some(server) = api::start(&project, &config, &args.api, state, out, true)? else {
        return Ok(0);
    };
    let publisher = args.publish.clone().map(|remote| {
        let (json, quiet) = (out.json, out.quiet);
        Publisher::start(
            project.root(),
            crate::project::history_options(out),
            remote,
            args.transport.into(),
            args.canary.options(),
            move |event| {
                if json {
                    if let Ok(line) = serde_json::to_string(&event) {
                        println!("{line}");
                    }
                } else if !quiet {
                    eprintln!("{}", describe(&event));
                }
            },
        )
    });
    let _ = rx.recv();
    drop(publisher);
    server.shutdown();
    out.note("control API stopped");
    Ok(0)
}

/// A line for a publisher event.
fn describe(event: &WatchEvent) -> String {
    match event {
        WatchEvent::Published {
            remote,
            evolution,
            evolutions,
        } => format!(
            "[heph] published {evolutions} evolution(s) to {remote} (at {})",
            &evolution[..evolution.len().min(7)]
        ),
        WatchEvent::PublishRefused { remote, reason, .. } => {
            format!("warning: not published to {remote}: {reason}")
        }
        WatchEvent::FleetUnreachable {
            remote,
            message,
            retry_ms,
        } => format!(
            "warning: {remote} is unreachable ({message}); retrying in {:.1}s",
            *retry_ms as f64 / 1000.0
        ),
        WatchEvent::FleetReachable { remote } => format!("[heph] {remote} is reachable again"),
        WatchEvent::CanaryStarted { .. }
        | WatchEvent::CanaryPromoted { .. }
        | WatchEvent::CanaryFailed { .. } => {
            format!(
                "[heph] {}",
                super::fleet::describe_canary(event).unwrap_or_default()
            )
        }
        other => format!("{other:?}"),
    }
}
