//! `heph recover`: settle a transaction a killed heph left unfinished.

use anyhow::Result;
use clap::Args as ClapArgs;
use hephaestus_core::journal::{self, RecoveryAction};
use serde_json::json;

use crate::output::{GlobalArgs, Output};
use crate::project;

/// Settle a change a killed heph (or a failed history write) left unfinished: an
/// unverified change is undone, a verified one or a rollback finished; a file someone
/// else changed meanwhile is kept and recorded as a hand edit. Every command that
/// writes the project does this first; `heph recover` does only this.
#[derive(Debug, ClapArgs)]
pub struct Args {}

/// Run `heph recover`.
pub fn run(_args: Args, global: &GlobalArgs, out: &Output) -> Result<u8> {
    let root = project::root(global)?;
    let mut options = project::history_options(out);
    // Said below, once.
    options.on_recover = None;
    let recovered = journal::recover_project(&root, &options)?;
    out.json(&json!({ "recovered": recovered }));
    match &recovered {
        None => out.line("nothing to recover: no unfinished change"),
        Some(r) => {
            out.line(r.summary());
            for f in &r.files.restored {
                let verb = match r.action {
                    RecoveryAction::Undone => "restored",
                    RecoveryAction::Finished => "written ",
                };
                out.line(format!("{verb} {f}"));
            }
            for f in &r.files.kept {
                out.line(format!("kept     {f} (changed by someone else)"));
            }
            if let Some(err) = &r.record_error {
                out.warn(format!("the result is not in the history: {err}"));
            }
        }
    }
    Ok(0)
}
