//! `heph show ID`: an evolution's metadata and its diff against the previous one.

use anyhow::Result;
use clap::Args;
use hephaestus_core::history::EvolutionDiff;

use crate::output::{GlobalArgs, Output};
use crate::{project, render};

/// Show an evolution: its metadata and the unified diff against the evolution before it.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The evolution id (full, or an unambiguous prefix).
    pub id: String,
    /// A summary of the changed files instead of the diff.
    #[arg(long)]
    pub stat: bool,
}

/// Run `heph show`.
pub fn run(args: ShowArgs, global: &GlobalArgs, out: &Output) -> Result<u8> {
    let history = project::open_history(global, out)?;
    let shown = history.show(&args.id, !args.stat)?;
    out.json(&shown);
    if !out.json {
        out.page(render_text(&shown, args.stat, out.color_stdout));
    }
    Ok(0)
}

fn render_text(shown: &EvolutionDiff, stat: bool, color: bool) -> String {
    let e = &shown.evolution;
    let mut s = format!("evolution {}\n", e.id);
    let mut field = |name: &str, value: &str| {
        s.push_str(&format!("{:<10}{value}\n", format!("{name}:")));
    };
    field("kind", e.meta.kind.as_str());
    field(
        "date",
        &format!(
            "{} ({})",
            render::date(e.timestamp),
            render::age(e.timestamp, render::now())
        ),
    );
    if let Some(p) = &e.parent {
        field("parent", p);
    }
    if let Some(m) = &e.meta.module {
        field("module", m);
    }
    for f in &e.meta.files {
        field("file", &f.display().to_string());
    }
    for i in &e.meta.changes.added {
        field("added", i);
    }
    for i in &e.meta.changes.replaced {
        field("replaced", i);
    }
    for i in &e.meta.changes.removed {
        field("removed", i);
    }
    if let Some(v) = &e.meta.verify {
        field("verify", &render::verify(Some(v)));
    }
    if let Some(f) = &e.meta.fitness {
        field("fitness", &format!("{} -> {}", f.before, f.after));
    }
    s.push('\n');
    for line in e.meta.message.lines() {
        s.push_str(&format!("    {line}\n"));
    }
    s.push('\n');
    if stat || shown.patch.is_none() {
        let width = shown
            .files
            .iter()
            .map(|f| f.path.display().to_string().len())
            .max()
            .unwrap_or(0);
        for f in &shown.files {
            let counts = if f.binary {
                "Bin".to_owned()
            } else {
                format!(
                    "{:>4} {}{}",
                    f.insertions + f.deletions,
                    "+".repeat(f.insertions.min(40)),
                    "-".repeat(f.deletions.min(40))
                )
            };
            s.push_str(&format!(
                " {:<width$} | {counts}\n",
                f.path.display().to_string()
            ));
        }
        let n = shown.files.len();
        s.push_str(&format!(
            " {n} file{} changed, {} insertion{}(+), {} deletion{}(-)",
            if n == 1 { "" } else { "s" },
            shown.insertions,
            if shown.insertions == 1 { "" } else { "s" },
            shown.deletions,
            if shown.deletions == 1 { "" } else { "s" },
        ));
    } else if let Some(patch) = &shown.patch {
        s.push_str(&render::colorize_diff(patch, color));
    }
    s
}
