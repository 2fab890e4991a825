//! The end-to-end suite: one test binary (cargo links once) running the real `heph`
//! against fresh copies of the fixtures.

mod cli;
mod history;
