//! `heph self-modify MODULE`: replace, add or remove items of an existing module.

use anyhow::Result;
use clap::{Args as ClapArgs, ValueEnum};
use hephaestus_core::cfg::CfgOption;
use hephaestus_core::{Config, Edit, Operation};

use super::change::{self, CodeArgs, WriteArgs};
use crate::output::{GlobalArgs, Output, UsageError};

/// Apply code to a module: each item replaces the item with the same key, or is added.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    heph self-modify crate::agent::test_hot_reload --code 'fn test_function() -> &'\"'\"'static str { \"v3\" }'\n  \
    heph self-modify agent.example_module --code-file patch.rs --verify 'cargo test'\n  \
    heph self-modify agent::example_module --mode remove --item 'fn helper' --item 'Point::norm'\n  \
    heph self-modify agent::example_module --mode remove --item 'use super::*#2'\n  \
    heph self-modify crate::builder::str::inner --cfg 'feature = \"string\"' --code-file patch.rs")]
pub struct Args {
    /// The module: `crate::agent::example_module`, `agent::example_module`,
    /// `agent.example_module`, or `package::agent::example_module`.
    pub module: String,
    #[command(flatten)]
    pub code: CodeArgs,
    /// merge: replace items with the same key, add the others; replace: replace the
    /// module's whole content; remove: remove the items named by --item.
    #[arg(long, value_enum, default_value_t = Mode::Merge)]
    pub mode: Mode,
    /// An item to remove (--mode remove): `fn helper`, `struct Point`, `Point::norm`,
    /// `impl Display for Point`, `use std::fmt`, `#[cfg(test)] mod tests`.
    #[arg(long = "item", value_name = "KEY")]
    pub items: Vec<String>,
    /// Keep new items exactly as written (comments included) instead of formatting
    /// them with prettyplease.
    #[arg(long)]
    pub verbatim: bool,
    /// When a module or item has several `#[cfg]` copies, choose as a build with this
    /// cfg set too would: `feature = "name"`, `unix`, `target_os = "linux"`
    /// (repeatable). Without it, the copy the package's default build compiles.
    #[arg(long = "cfg", value_name = "CFG", value_parser = parse_cfg)]
    pub cfg: Vec<CfgOption>,
    #[command(flatten)]
    pub write: WriteArgs,
}

/// `--mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Replace items with the same key, add the others.
    Merge,
    /// Replace the module's whole content.
    Replace,
    /// Remove the items named by --item.
    Remove,
}

/// Run the command.
pub fn run(args: Args, global: &GlobalArgs, out: &Output) -> Result<u8> {
    let edit = match args.mode {
        Mode::Remove => {
            if args.code.code.is_some() || args.code.code_file.is_some() {
                return Err(UsageError("--mode remove takes --item KEY, not code".into()).into());
            }
            if args.items.is_empty() {
                return Err(UsageError(
                    "--mode remove needs at least one --item KEY (e.g. --item 'fn helper')".into(),
                )
                .into());
            }
            Edit::remove(args.items.clone()).with_cfg(args.cfg.clone())
        }
        mode => {
            if !args.items.is_empty() {
                return Err(UsageError("--item is only used with --mode remove".into()).into());
            }
            let code = args.code.require()?;
            let edit = if mode == Mode::Replace {
                Edit::replace(code)
            } else {
                Edit::merge(code)
            };
            let edit = edit.with_cfg(args.cfg.clone());
            if args.verbatim { edit.verbatim() } else { edit }
        }
    };
    let project = change::open_project(global)?;
    let config = Config::load(project.root())?;
    let opts = change::apply_options(&args.write, &config, out);
    let op = Operation::SelfModify {
        module: args.module,
        edit,
    };
    let outcome = change::apply(&project, &op, &opts, out)?;
    Ok(change::render(&outcome, out))
}

fn parse_cfg(text: &str) -> Result<CfgOption, String> {
    CfgOption::parse(text).map_err(|e| e.to_string())
}
