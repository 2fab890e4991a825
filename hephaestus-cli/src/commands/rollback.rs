//! `heph rollback ID | --last`: restore the project's files to an evolution.

use anyhow::Result;
use clap::Args;
use hephaestus_core::history::RollbackTarget;

use crate::output::{GlobalArgs, Output, UsageError};
use crate::project;

/// Restore the files of an evolution. The current files are recorded first and the
/// rollback is itself an evolution, so it can be undone.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The evolution to return to (full id or an unambiguous prefix).
    #[arg(required_unless_present = "last", conflicts_with = "last")]
    pub id: Option<String>,
    /// Return to the last evolution that passed verification.
    #[arg(long)]
    pub last: bool,
}

/// Run `heph rollback`.
pub fn run(args: RollbackArgs, global: &GlobalArgs, out: &Output) -> Result<u8> {
    let target = match (args.id, args.last) {
        (Some(id), false) => RollbackTarget::Id(id),
        (None, true) => RollbackTarget::LastPassed,
        _ => return Err(UsageError("give an evolution id or --last".into()).into()),
    };
    let mut history = project::open_history(global, out)?;
    let report = history.rollback(&target)?;
    project::note_skipped(out, history.skipped());
    out.json(&report);
    if let Some(pre) = &report.pre_state {
        out.note(format!(
            "recorded the current files first as evolution {} ({})",
            pre.short_id, pre.meta.message
        ));
    }
    if report.unchanged {
        out.line(report.summary());
        return Ok(0);
    }
    for p in &report.restored {
        out.line(format!("restored {}", p.display()));
    }
    for p in &report.deleted {
        out.line(format!("deleted  {}", p.display()));
    }
    out.line(report.summary());
    if let Some(before) = &report.evolution.parent {
        out.note(format!(
            "undo with: heph rollback {}",
            &before[..hephaestus_core::history::SHORT_ID_LEN]
        ));
    }
    Ok(0)
}
