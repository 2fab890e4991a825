//! The end-to-end suite: one test binary (cargo links once) running the real `heph`
//! against fresh copies of the fixtures.

mod api;
mod bad_input;
mod cli;
mod crash;
mod dashboard;
mod edit_cases;
mod evolve;
mod fleet;
mod hardening_api;
mod history;
mod hostile;
mod hot;
mod import;
mod mcp;
mod processes;
mod readme;
mod real_crates;
mod self_modify;
mod tidy;
mod watch;
