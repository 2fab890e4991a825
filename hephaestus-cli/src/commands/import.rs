//! `heph import MODULE`: create a new module from code and declare it in its parent.

use anyhow::Result;
use clap::Args as ClapArgs;
use hephaestus_core::{Config, ImportSpec, Operation};

use super::change::{self, CodeArgs, WriteArgs};
use crate::output::{GlobalArgs, Output};

/// Create a new module from code at the canonical place for its parent and add
/// `pub mod NAME;` to the parent.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Example:\n  \
    heph import dynamic_module --code 'pub fn hello() -> &'\"'\"'static str { \"Hello from dynamic code!\" }' --run hello")]
pub struct Args {
    /// The new module's path: `dynamic_module`, `agent::new_tool`, `package::a::b`.
    /// Missing intermediate modules are created.
    pub module: String,
    #[command(flatten)]
    pub code: CodeArgs,
    /// Declare the module with `mod` instead of `pub mod`.
    #[arg(long)]
    pub private: bool,
    /// After verification, call this public zero-argument function of the new module
    /// through a throwaway harness and print its Debug output.
    #[arg(long, value_name = "FUNCTION")]
    pub run: Option<String>,
    #[command(flatten)]
    pub write: WriteArgs,
}

/// Run the command.
pub fn run(args: Args, global: &GlobalArgs, out: &Output) -> Result<u8> {
    let code = args.code.require()?;
    let project = change::open_project(global)?;
    let config = Config::load(project.root())?;
    let opts = change::apply_options(&args.write, &config, out);
    let op = Operation::Import(ImportSpec {
        module: args.module,
        code,
        public: !args.private,
        run: args.run,
    });
    let outcome = change::apply(&project, &op, &opts, out)?;
    Ok(change::render(&outcome, out))
}
