//! Hephaestus core: everything `heph` does, as a library.
//!
//! Open a target project with [`Project::open`], resolve a module path with
//! [`Project::resolve`], describe a change with [`Edit`] and apply it with
//! [`Project::apply`]: the edit is validated before anything is written, spliced into
//! the file by byte range (every byte it does not touch stays identical), written
//! atomically, verified with `cargo check`, and rolled back byte for byte when the
//! verification fails.
//!
//! [`watch::Session`] is the `heph watch` loop (a [`Watcher`] over the sources, the
//! syntax gate, cargo builds, and a [`Supervisor`] that swaps the running program
//! without dropping a connection).
//!
//! [`Evolver`] is `heph evolve`: candidates from rewrite rules and an external proposer,
//! evaluated in isolated copies of the project, accepted only when they pass the tests
//! and make a fitness measurably better (see [`evolve`]).
//!
//! The crate never prints and never reads the process environment: it returns data
//! and reports progress through [`Event`] callbacks.
//!
//! ```
//! use hephaestus_core::{ApplyOptions, ChangeAction, Edit, Operation, Project, Verify};
//! # let dir = tempfile::tempdir()?;
//! # std::fs::create_dir(dir.path().join("src"))?;
//! # std::fs::write(dir.path().join("Cargo.toml"), "[package]\nname = \"demo\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n")?;
//! # std::fs::write(dir.path().join("src/lib.rs"), "pub mod agent;\n")?;
//! # std::fs::write(dir.path().join("src/agent.rs"), "// Kept.\npub fn version() -> u32 { 2 }\n")?;
//! let project = Project::open(dir.path())?;
//! assert_eq!(project.resolve("agent")?.file, project.root().join("src/agent.rs"));
//!
//! let op = Operation::SelfModify {
//!     module: "crate::agent".into(),
//!     edit: Edit::merge("pub fn version() -> u32 { 3 }"),
//! };
//! let opts = ApplyOptions { verify: Verify::Skip, history: false, ..ApplyOptions::default() };
//! let outcome = project.apply(&op, &opts, &mut |_event| {})?;
//! assert_eq!(outcome.changes[0].action, ChangeAction::Replaced);
//! assert_eq!(
//!     std::fs::read_to_string(dir.path().join("src/agent.rs"))?,
//!     "// Kept.\npub fn version() -> u32 {\n    3\n}\n"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

#[cfg(feature = "api")]
pub mod api;
pub mod apply;
pub mod cfg;
pub(crate) mod civil;
pub mod config;
pub mod edit;
pub mod error;
pub mod evolution;
pub mod evolve;
pub(crate) mod expand;
pub(crate) mod fsio;
pub mod guard;
pub mod history;
pub mod hot;
pub mod import;
pub mod item;
pub mod journal;
#[cfg(feature = "mcp")]
pub mod mcp;
pub mod modpath;
pub mod nesting;
pub mod outline;
pub mod project;
pub(crate) mod project_root;
pub mod resolve;
pub mod run;
pub mod source;
pub(crate) mod state;
pub mod supervise;
pub mod verify;
pub mod watch;

pub use apply::{ApplyError, ApplyOptions, ApplyOutcome, Event, Operation, Patch, PatchFile, Plan};
pub use config::Config;
pub use edit::{ChangeAction, Edit, EditMode, Formatting, ItemChange};
pub use error::{Categorized, ErrorCategory};
pub use evolution::{
    Evolution, EvolutionKind, EvolutionMeta, Fitness, ItemChanges, VerifyOutcome, VerifyRecord,
};
pub use evolve::{EvolveOptions, Evolver};
pub use fsio::WriteError;
pub use import::ImportSpec;
pub use item::ItemKey;
pub use modpath::ModulePath;
pub use project::Project;
pub use project_root::ProjectRootError;
pub use resolve::{ItemSpan, Module};
pub use state::{ProjectLock, StateError};
pub use supervise::Supervisor;
pub use verify::Verify;
pub use watch::{Session as WatchSession, Watcher};
