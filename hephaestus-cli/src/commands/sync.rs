//! `heph sync REMOTE`: share the history through a git remote.

use anyhow::Result;
use clap::{Args, ValueEnum};
use hephaestus_core::history::{SHORT_ID_LEN, SyncOutcome, SyncResolve, SyncSide, SyncTransport};

use crate::output::{GlobalArgs, Output};
use crate::project;

/// Fetch the remote's history, then fast-forward the local one or push it; diverged
/// histories are reported and left alone (exit code 1), or joined with `--keep`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// A git remote of the project's repository, or a URL or path.
    pub remote: String,
    /// How to reach the remote: `auto` uses libgit2 for the protocols this build has
    /// (paths, file://, git://; ssh and https with the cargo features of those names)
    /// and the git CLI for the others.
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    pub transport: Transport,
    /// When the histories diverged: join them with a merge evolution that holds this
    /// side's files (`local`: this project's, `remote`: the remote's), then push. The
    /// other side's evolutions stay in the history; files are never written (after
    /// `--keep remote`, `heph rollback` of the merge applies the remote's files).
    #[arg(long, value_enum, value_name = "SIDE")]
    pub keep: Option<Side>,
}

/// `--keep`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Side {
    /// This project's files.
    Local,
    /// The remote's files.
    Remote,
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
    let resolve = match args.keep {
        None => SyncResolve::Report,
        Some(Side::Local) => SyncResolve::Keep(SyncSide::Local),
        Some(Side::Remote) => SyncResolve::Keep(SyncSide::Remote),
    };
    let report = history.sync_resolving(&args.remote, args.transport.into(), resolve)?;
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
            out.note(format!(
                "to go on: `heph sync {r} --keep local` keeps this project's files, \
                 `--keep remote` the remote's; either records a merge that keeps both \
                 histories, and pushes it"
            ));
            return Ok(1);
        }
        SyncOutcome::Merged {
            kept,
            ahead,
            behind,
            evolution,
            push_rejected,
            ..
        } => {
            let id = &evolution[..SHORT_ID_LEN.min(evolution.len())];
            let side = match kept {
                SyncSide::Local => "this project's files".to_owned(),
                SyncSide::Remote => format!("`{r}`'s files"),
            };
            out.line(format!(
                "merged the diverged histories ({ahead} local, {behind} remote evolution(s)) \
                 as evolution {id}, keeping {side}"
            ));
            if *kept == SyncSide::Remote {
                out.note(format!(
                    "the project's files were not changed: `heph rollback {id}` applies the merge's files"
                ));
            }
            if let Some(reason) = push_rejected {
                out.warn(format!(
                    "`{r}` refused the push: {reason}; the merge is recorded here only, sync again"
                ));
                return Ok(1);
            }
            out.line(format!("pushed to `{r}`; both at {id}"));
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
