//! The Model Context Protocol server of `heph mcp` (stdio) and `heph serve --mcp`
//! (streamable HTTP), on the official Rust SDK (`rmcp`): a front door beside the CLI
//! and the HTTP control API, with no logic of its own.
//!
//! Every tool calls what the CLI calls: [`Project::outline`](crate::Project::outline), [`Project::modules`](crate::Project::modules) and
//! [`Project::find_items`](crate::Project::find_items) to read; [`Project::apply`](crate::Project::apply) for `self_modify` and `import`
//! (the same lock, pre-state, verification and rollback); [`crate::history::History`] for `history`,
//! `show` and `rollback`; the watch control socket for `watch_*`. A tool's result is
//! structured (`structuredContent`: the same document `--json` prints) and readable as
//! text; a failure is a tool error (`isError`) carrying heph's error category and the
//! message a person would see. Arguments of the wrong type and submitted code over the
//! size limit are protocol errors (`-32602`), and the server keeps answering.
//!
//! Writes of one server are serialized in arrival order; writes of several servers
//! (two agents, each with its own `heph mcp`) are serialized by the project lock, so
//! both changes land, one after the other, each planned on the files the other left.

mod evolve;
mod http;
mod stdio;
mod tools;

use std::time::Duration;

pub use http::{MCP_PATH, router as http_router};
pub use stdio::MAX_MESSAGE_BYTES;
pub use tools::Heph;

use crate::apply::{ApplyOptions, DEFAULT_MAX_CODE_BYTES};
use crate::config::Config;
use crate::history::HistoryOptions;
use crate::verify::Verify;

/// How the MCP server applies changes.
#[derive(Debug, Clone)]
pub struct McpOptions {
    /// The options of every write: `verify` is the project's default (a call may
    /// replace the command or skip it), `dry_run` and `lock_timeout` are set per call.
    pub apply: ApplyOptions,
    /// How long a write waits for the project lock (another heph writing).
    pub lock_timeout: Duration,
    /// Larger submitted code is refused (a protocol error).
    pub max_code_bytes: u64,
    /// How `evolve_start` runs `heph evolve` (the CLI passes its own executable and
    /// `["evolve"]`); None: `evolve_start` answers that it cannot.
    pub evolve: Option<crate::api::evolve::EvolveCommand>,
}

impl McpOptions {
    /// The project's defaults: `[verify] command` of heph.toml or `cargo check`, its
    /// `[verify] timeout` or 30 minutes; 5 minutes of waiting for the lock; 8 MiB of
    /// code at most; no `heph evolve`.
    pub fn from_config(config: &Config, history: HistoryOptions) -> Self {
        let verify = config
            .verify
            .command
            .clone()
            .map_or(Verify::CargoCheck, Verify::Command);
        let mut apply = ApplyOptions {
            verify,
            history_options: history,
            ..ApplyOptions::default()
        };
        apply.verify_options.timeout = config
            .verify_timeout()
            .or(Some(Duration::from_secs(30 * 60)));
        McpOptions {
            apply,
            lock_timeout: Duration::from_secs(300),
            max_code_bytes: DEFAULT_MAX_CODE_BYTES,
            evolve: None,
        }
    }
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    /// The runtime could not start.
    #[error("cannot start the MCP server: {0}")]
    Runtime(#[source] std::io::Error),
    /// The client did not complete the MCP handshake.
    #[error("the MCP client did not initialize the session: {0}")]
    Initialize(String),
    /// The session ended with an error.
    #[error("the MCP session failed: {0}")]
    Session(String),
}

impl crate::Categorized for McpError {
    fn category(&self) -> crate::ErrorCategory {
        crate::ErrorCategory::Environment
    }
}

/// Serve MCP with `server` over this process's stdin and stdout until the client
/// closes stdin or [`Heph::stop_token`] is cancelled (a signal handler may do it); a
/// write in progress then has its verification cancelled and its files restored
/// before this returns. Nothing else may write to stdout meanwhile.
pub fn serve_stdio(server: Heph) -> Result<(), McpError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("heph-mcp")
        // Tools parse code on these threads (and their blocking pool): the stack the
        // nesting limits of `crate::nesting` assume, as the HTTP API's runtime has.
        .thread_stack_size(crate::nesting::PARSE_STACK_SIZE)
        .enable_io()
        .enable_time()
        .build()
        .map_err(McpError::Runtime)?;
    let result = runtime.block_on(stdio::serve(server));
    // A read of stdin may still be parked on a blocking thread: do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}
