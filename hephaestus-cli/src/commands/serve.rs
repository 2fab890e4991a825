//! `heph serve`: the HTTP control API for a project, without a supervised program.

use std::sync::Arc;
use std::sync::mpsc;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use hephaestus_core::Config;
use hephaestus_core::api::ServeState;

use super::api::{self, ApiArgs};
use super::change::open_project;
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
    let _ = rx.recv();
    server.shutdown();
    out.note("control API stopped");
    Ok(0)
}
