//! `heph snapshot`: record the current files as a `manual` evolution now.

use anyhow::Result;
use clap::Args;
use serde_json::json;

use crate::output::{GlobalArgs, Output};
use crate::project;

/// Record the project's current files as a `manual` evolution (nothing is recorded when
/// they equal the last snapshot).
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The evolution's message (default: a summary of what changed).
    #[arg(short, long, value_name = "MSG")]
    pub message: Option<String>,
}

/// Run `heph snapshot`.
pub fn run(args: SnapshotArgs, global: &GlobalArgs, out: &Output) -> Result<u8> {
    let mut history = project::open_history(global, out)?;
    let recorded = history.snapshot(args.message.as_deref())?;
    out.json(&json!({
        "recorded": recorded.is_some(),
        "evolution": recorded,
        "skipped": history.skipped(),
    }));
    project::note_skipped(out, history.skipped());
    match &recorded {
        Some(e) => out.line(format!(
            "recorded evolution {} ({})",
            e.short_id, e.meta.message
        )),
        None => out.line("nothing changed since the last evolution"),
    }
    Ok(0)
}
