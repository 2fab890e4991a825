//! `heph status`: the state of the `heph watch` running for this project, through its
//! control socket.

use anyhow::Result;
use clap::Args as ClapArgs;
use hephaestus_core::watch::WatchStatus;
use hephaestus_core::watch::control::{self, Request};

use super::change::open_project;
use crate::output::{GlobalArgs, Output};

/// Show what the running `heph watch` is doing: generation, pid, reloads, failed
/// builds, watched paths and rules.
#[derive(Debug, ClapArgs)]
pub struct Args {}

/// Run the command.
pub fn run(_args: Args, global: &GlobalArgs, out: &Output) -> Result<u8> {
    let project = open_project(global)?;
    let response = control::request(project.root(), Request::Status)?;
    let status = response.status.unwrap_or_default();
    out.json(&status);
    render(&status, out);
    Ok(0)
}

fn render(s: &WatchStatus, out: &Output) {
    let active = if s.paused { "paused" } else { "active" };
    out.line(format!(
        "heph watch: {active}, {} (pid {}, up {})",
        s.state,
        s.pid,
        human(s.uptime_s)
    ));
    match (&s.program, s.child_pid) {
        (Some(p), Some(pid)) => out.line(format!(
            "program:    {p} (generation {}, pid {pid})",
            s.generation
        )),
        (Some(p), None) => out.line(format!("program:    {p} (not running)")),
        (None, _) => out.line("program:    none (--check-only)"),
    }
    if !s.sockets.is_empty() {
        out.line(format!("sockets:    {}", s.sockets.join(", ")));
    }
    let last = took(s.last_reload_ms);
    out.line(format!(
        "reloads:    {}{last}; failed builds: {}; syntax errors: {}",
        s.reloads, s.failed_builds, s.syntax_errors
    ));
    if s.mode == "hot" {
        let generation = s
            .hot_generation
            .map_or_else(|| "none yet".to_owned(), |g| g.to_string());
        let last = took(s.last_hot_reload_ms);
        out.line(format!(
            "hot:        generation {generation}; {} hot reloads{last}; {} rollbacks",
            s.hot_reloads, s.hot_rollbacks
        ));
        if let Some(r) = &s.last_restart_reason {
            out.line(format!("restarted:  {r}"));
        }
    }
    out.line(format!("watching:   {}", s.monitored_paths.join(", ")));
    for r in &s.rules {
        let sig = r
            .signal
            .as_deref()
            .map(|x| format!(" {x}"))
            .unwrap_or_default();
        out.line(format!(
            "rule:       {} → {}{sig}",
            r.paths.join(", "),
            r.action
        ));
    }
    if let Some(e) = &s.last_evolution {
        out.line(format!("evolution:  {e} (last watch snapshot)"));
    }
    if let Some(e) = &s.last_error {
        out.line(format!("last error: {e}"));
    }
}

/// `, last took 0.31s` (nothing without a time).
fn took(ms: Option<u64>) -> String {
    ms.map(|ms| format!(", last took {:.2}s", ms as f64 / 1000.0))
        .unwrap_or_default()
}

fn human(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}
