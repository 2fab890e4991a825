//! `heph sync REMOTE`: share the history through a git remote.

use anyhow::Result;
use clap::{Args, ValueEnum};
use hephaestus_core::history::{SHORT_ID_LEN, SyncOutcome, SyncTransport};

use crate::output::{GlobalArgs, Output};
use crate::project;

/// Fetch the remote's history, then fast-forward the local one or push it; diverged
/// histories are reported and left alone (exit code 1).
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// A git remote of the project's repository, or a URL or path.
    pub remote: String,
    /// How to reach the remote: `auto` uses libgit2 for the protocols this build has
    /// (paths, file://, git://; ssh and https with the cargo features of those names)
    /// and the git CLI for the others.
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    pub transport: Transport,
}

/// `--transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// libgit2 when this build has the protocol, else the git CLI.
    Auto,
    /// libgit2 only.
    Libgit2,
    /// The git CLI (`git fetch`, `git push`), with your ssh and credential setup.
    Git,
}

impl From<Transport> for SyncTransport {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Auto => SyncTransport::Auto,
            Transport::Libgit2 => SyncTransport::Libgit2,
            Transport::Git => SyncTransport::Git,
        }
    }
}

fn short(id: &Option<String>) -> &str {
    id.as_deref()
        .map_or("-", |i| &i[..SHORT_ID_LEN.min(i.len())])
}

/// Run `heph sync`.
pub fn run(args: SyncArgs, global: &GlobalArgs, out: &Output) -> Result<u8> {
    let mut history = project::open_history(global, out)?;
    let report = history.sync_with(&args.remote, args.transport.into())?;
    out.json(&report);
    let r = &args.remote;
    match &report.outcome {
        SyncOutcome::Empty => out.line(format!("neither this project nor `{r}` has a history yet")),
        SyncOutcome::UpToDate => out.line(format!(
            "up to date with `{r}` at {}",
            short(&report.local_after)
        )),
        SyncOutcome::FastForwarded { evolutions } => {
            out.line(format!(
                "fetched {evolutions} evolution(s) from `{r}`; history now at {}",
                short(&report.local_after)
            ));
            out.note(format!(
                "the project's files were not changed: `heph rollback {}` applies them",
                short(&report.local_after)
            ));
        }
        SyncOutcome::Pushed { evolutions } => out.line(format!(
            "pushed {evolutions} evolution(s) to `{r}`; both at {}",
            short(&report.local_after)
        )),
        SyncOutcome::Diverged {
            ahead,
            behind,
            merge_base,
        } => {
            out.warn(format!(
                "the histories diverged: this project has {ahead} evolution(s) `{r}` lacks, \
                 and `{r}` has {behind} this project lacks (last common: {}); nothing was changed. \
                 The remote's history is in {} (see `heph show {}`)",
                short(merge_base),
                report.tracking_ref,
                short(&report.remote_tip),
            ));
            return Ok(1);
        }
        SyncOutcome::PushRejected { reason } => {
            out.warn(format!(
                "`{r}` refused the push: {reason}; nothing was changed"
            ));
            return Ok(1);
        }
    }
    Ok(0)
}
