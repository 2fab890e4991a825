//! The end-to-end suite: one test binary (cargo links once) running the real `heph`
//! against fresh copies of the fixtures.

mod api;
mod bad_input;
mod cli;
mod evolve;
mod history;
mod hot;
mod import;
mod self_modify;
mod watch;
