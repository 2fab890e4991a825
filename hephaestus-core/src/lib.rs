//! Hephaestus core: everything `heph` does, as a library.
//!
//! Open a target project with [`Project::open`], resolve a module path with
//! [`Project::resolve`], describe a change with [`Edit`] and apply it with
//! [`Project::apply`]: the edit is validated before anything is written, spliced into
//! the file by byte range (every byte it does not touch stays identical), written
//! atomically, verified with `cargo check`, and rolled back byte for byte when the
//! verification fails.
//!
//! The crate never prints and never reads the process environment: it returns data
//! and reports progress through [`Event`] callbacks.
#![warn(missing_docs)]

pub mod error;
pub mod evolution;
pub mod history;
pub mod state;

pub use error::{Categorized, ErrorCategory};
pub use evolution::{
    Evolution, EvolutionKind, EvolutionMeta, Fitness, ItemChanges, VerifyOutcome, VerifyRecord,
};
pub mod project_root;
