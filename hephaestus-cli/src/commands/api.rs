//! What `heph serve` and `heph watch --api` share: the API flags, the server's options
//! from the flags, heph.toml and `HEPH_TOKEN`, and rendering the server's events.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use hephaestus_core::api::evolve::{EvolveCommand, ProcessLauncher};
use hephaestus_core::api::{
    self, ApiEvent, ApiOptions, ApiServer, DEFAULT_ADDR, HotReload, TokenSource,
};
use hephaestus_core::mcp::{Heph, MCP_PATH, McpOptions};
use hephaestus_core::verify::VerifyOptions;
use hephaestus_core::{ApplyOptions, Config, Project, Verify};
use serde_json::json;

use crate::output::{Output, UsageError};

/// The environment variable holding the API token (else `.heph/token` is used).
pub const TOKEN_VAR: &str = "HEPH_TOKEN";

/// The flags of the control API.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Serve the HTTP control API on ADDR: PORT, IP:PORT, `[::1]:PORT` or
    /// localhost:PORT; port 0 picks a free port (`heph serve` default: `api.addr` in
    /// heph.toml, else 127.0.0.1:8000).
    #[arg(long, value_name = "ADDR")]
    pub api: Option<String>,
    /// Allow an address other machines can reach (e.g. 0.0.0.0:8000); the token then
    /// travels in clear text over the network.
    #[arg(long)]
    pub api_public: bool,
    /// Also serve MCP (the Model Context Protocol, for coding agents) over streamable
    /// HTTP at /mcp on the same address, behind the same token.
    #[arg(long)]
    pub mcp: bool,
}

/// How `trigger-evolution` runs `heph evolve`: this very binary, `heph evolve --project
/// ROOT`, which reads `[evolve]` of heph.toml and names its run after `HEPH_EVOLVE_RUN`.
/// None only when the path of this executable cannot be found (then such triggers
/// answer 501, and `[api] evolve_command` still works).
pub fn evolve_command() -> Option<EvolveCommand> {
    let program = std::env::current_exe().ok()?;
    Some(EvolveCommand {
        program,
        args: vec!["evolve".into()],
    })
}

/// Start the API when asked for (`serve`: always, on the default address when `--api`
/// is absent; `watch`: only with `--api`), print where it listens and where the token
/// is, and return the running server.
pub fn start(
    project: &Project,
    config: &Config,
    args: &ApiArgs,
    hot_reload: Arc<dyn HotReload>,
    out: &Output,
    always: bool,
) -> Result<Option<ApiServer>> {
    let addr = match (&args.api, &config.api.addr) {
        (Some(a), _) => api::parse_addr(a)?,
        (None, _) if !always => {
            if args.api_public {
                return Err(UsageError("--api-public needs --api ADDR".into()).into());
            }
            if args.mcp {
                return Err(UsageError("--mcp needs --api ADDR".into()).into());
            }
            return Ok(None);
        }
        (None, Some(a)) => api::parse_addr(a).context("heph.toml: api.addr")?,
        (None, None) => DEFAULT_ADDR,
    };
    let token = match std::env::var(TOKEN_VAR) {
        Ok(t) => Some(t),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(UsageError(format!("{TOKEN_VAR} is not valid UTF-8")).into());
        }
    };
    let verify = match &config.verify.command {
        Some(cmd) => Verify::Command(cmd.clone()),
        None => Verify::CargoCheck,
    };
    let mut opts = ApiOptions::new(addr);
    opts.public = args.api_public;
    opts.token = token;
    opts.body_limit = config.api_body_limit().unwrap_or(api::DEFAULT_BODY_LIMIT);
    opts.lock_timeout = config
        .api_lock_timeout()
        .unwrap_or(api::DEFAULT_LOCK_TIMEOUT);
    opts.header_timeout = config
        .api_header_timeout()
        .unwrap_or(api::DEFAULT_HEADER_TIMEOUT);
    opts.body_timeout = config
        .api_body_timeout()
        .unwrap_or(api::DEFAULT_BODY_TIMEOUT);
    opts.max_connections = config
        .api
        .max_connections
        .unwrap_or(api::DEFAULT_MAX_CONNECTIONS);
    opts.max_parses = config
        .api
        .max_parses
        .unwrap_or_else(api::default_max_parses);
    opts.apply = ApplyOptions {
        verify,
        history_options: crate::project::history_options(out),
        verify_options: VerifyOptions {
            timeout: config
                .verify_timeout()
                .or(Some(Duration::from_secs(30 * 60))),
            color: false,
            cancel: None,
        },
        ..ApplyOptions::default()
    };
    opts.evolve = Box::new(ProcessLauncher::new(evolve_command()));
    if args.mcp {
        let mut mcp_opts = McpOptions::from_config(config, crate::project::history_options(out));
        mcp_opts.evolve = evolve_command();
        opts.mcp = Some(Heph::new(Arc::new(project.clone()), mcp_opts));
    }
    let view = EventView {
        json: out.json,
        quiet: out.quiet,
        verbose: out.verbose,
    };
    let server = ApiServer::start(
        project.clone(),
        hot_reload,
        opts,
        Arc::new(move |e: &ApiEvent| view.show(e)),
    )?;
    let addr = server.local_addr();
    let url = format!("http://{addr}/hot-reload/");
    if out.json {
        print_json(&json!({
            "event": "api-listening",
            "addr": addr.to_string(),
            "url": url,
            "dashboard": format!("http://{addr}/"),
            "public": server.is_public(),
            "token": server.token_source(),
            "mcp": args.mcp.then(|| format!("http://{addr}{MCP_PATH}")),
            "project": project.root(),
        }));
    } else {
        out.line(format!("control API on {url}"));
        out.line(format!(
            "dashboard on http://{addr}/ (log in with the token)"
        ));
        if args.mcp {
            out.line(format!("MCP on http://{addr}{MCP_PATH}"));
        }
        out.line(match server.token_source() {
            TokenSource::Given => format!("token: from {TOKEN_VAR}"),
            TokenSource::File { path, generated } => format!(
                "token: {}{} (send `Authorization: Bearer $(cat {})`)",
                path.display(),
                if *generated { " (new)" } else { "" },
                path.display()
            ),
        });
    }
    if server.is_public() {
        out.warn(format!(
            "the control API listens on {addr}, reachable from other machines: anyone with the token can change this project's code, and the token travels in clear text over HTTP"
        ));
    }
    if server.token().is_short() {
        out.warn(format!(
            "{TOKEN_VAR} is shorter than 16 characters and easy to guess; use a long random token"
        ));
    }
    Ok(Some(server))
}

/// Renders the server's events: evolution runs always (but with -q), requests with -v;
/// JSON lines on stdout with --json.
#[derive(Debug, Clone, Copy)]
struct EventView {
    json: bool,
    quiet: bool,
    verbose: u8,
}

impl EventView {
    fn show(&self, event: &ApiEvent) {
        let is_request = matches!(event, ApiEvent::Request { .. });
        if (is_request && self.verbose == 0) || (self.quiet && !self.json) {
            return;
        }
        if self.json {
            if let Ok(v) = serde_json::to_value(event) {
                print_json(&v);
            }
            return;
        }
        let text = match event {
            ApiEvent::Request {
                method,
                path,
                status,
                duration_ms,
            } => format!("[api] {method} {path} {status} {duration_ms}ms"),
            ApiEvent::EvolveStarted {
                run_id,
                command,
                log,
            } => format!("[api] evolution run {run_id} started: {command} (output in {log})"),
            ApiEvent::EvolveFinished {
                run_id,
                success,
                exit_code,
                no_improvement,
            } => format!(
                "[api] evolution run {run_id} {} (exit code {})",
                if *success {
                    "finished"
                } else if *no_improvement {
                    "found no improvement"
                } else {
                    "failed"
                },
                exit_code.map_or("none".to_owned(), |c| c.to_string())
            ),
            _ => return,
        };
        eprintln!("{text}");
    }
}

/// One JSON line on stdout (a closed stdout is ignored: the server keeps serving).
fn print_json(value: &serde_json::Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{value}").and_then(|()| stdout.flush());
}
