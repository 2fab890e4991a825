//! `heph history`: the evolutions of the project, newest first, one line each.

use std::path::Path;

use anyhow::Result;
use clap::Args;
use hephaestus_core::history::ListFilter;
use hephaestus_core::{Evolution, EvolutionKind};
use serde::Serialize;

use crate::output::{GlobalArgs, Output};
use crate::{project, render};

/// List evolutions, newest first: id, age, kind, module or files, item changes,
/// verification.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Show at most N evolutions (0: all).
    #[arg(long, short = 'n', default_value_t = 20, value_name = "N")]
    pub limit: usize,
    /// Only evolutions of this kind (self-modify, import, watch, evolve, rollback, manual).
    #[arg(long, value_name = "KIND")]
    pub kind: Option<EvolutionKind>,
    /// Only evolutions of this module or its submodules (`crate::a::b`, `a::b`, `a.b`).
    #[arg(long, value_name = "MODULE")]
    pub module: Option<String>,
}

/// Run `heph history`.
pub fn run(args: HistoryArgs, global: &GlobalArgs, out: &Output) -> Result<u8> {
    // Each commit is read once: libgit2 need not keep them.
    hephaestus_core::history::cache_objects(false);
    let history = project::open_history(global, out)?;
    let filter = ListFilter {
        limit: (args.limit > 0).then_some(args.limit),
        kind: args.kind,
        module: args.module,
    };
    let evolutions = history.list(&filter)?;
    if out.json {
        // Serialized straight from the typed list (no intermediate `serde_json::Value`):
        // this listing is what scripts and agents poll.
        out.json(&Listing {
            project: history.root(),
            evolutions: &evolutions,
        });
        return Ok(0);
    }
    if evolutions.is_empty() {
        out.note("no evolutions recorded yet (`heph snapshot` records the current files)");
    }
    if !evolutions.is_empty() {
        out.page(render::table(&evolutions, render::now()).join("\n"));
    }
    Ok(0)
}

/// The JSON document of `heph history --json`.
#[derive(Serialize)]
struct Listing<'a> {
    project: &'a Path,
    evolutions: &'a [Evolution],
}
