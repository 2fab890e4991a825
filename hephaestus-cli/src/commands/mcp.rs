//! `heph mcp`: serve the project to a coding agent over the Model Context Protocol
//! (stdio). The tools and their behaviour live in `hephaestus_core::mcp`.

use anyhow::Result;
use clap::Args as ClapArgs;
use hephaestus_core::Config;
use std::sync::Arc;

use hephaestus_core::mcp::{self, Heph, McpOptions};

use super::change::open_project;
use crate::output::{GlobalArgs, Output};
use crate::project::history_options;

/// Serve this project to a coding agent over MCP on stdin/stdout: read_module,
/// list_modules, find_item, self_modify, import, history, show, rollback, watch_status,
/// watch_pause, watch_resume, evolve_start, evolve_status. Every change is verified, rolled back when it fails, and
/// recorded, as with the CLI.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Register it with an MCP client, e.g.:\n  \
    {\"mcpServers\": {\"heph\": {\"command\": \"heph\", \"args\": [\"mcp\", \"--project\", \"/path/to/project\"]}}}\n\n\
    The client starts the server and talks JSON-RPC on its stdin/stdout; heph writes its\n\
    own notes to stderr only.")]
pub struct Args {}

/// Run the command: serve until the client closes stdin (or a signal).
pub fn run(_args: Args, global: &GlobalArgs, out: &Output) -> Result<u8> {
    let project = open_project(global)?;
    let config = Config::load(project.root())?;
    // Stdout carries the protocol: notes only on stderr (quiet, never JSON documents).
    let mut opts = McpOptions::from_config(&config, history_options(out));
    opts.evolve = super::api::evolve_command();
    let server = Heph::new(Arc::new(project), opts);
    // SIGINT/SIGTERM: stop taking requests; a verification in progress is cancelled and
    // its files restored before heph exits. A second signal exits at once.
    let stop = server.stop_token();
    let _ = ctrlc::set_handler(move || {
        if stop.is_cancelled() {
            std::process::exit(130);
        }
        stop.cancel();
    });
    mcp::serve_stdio(server)?;
    Ok(0)
}
