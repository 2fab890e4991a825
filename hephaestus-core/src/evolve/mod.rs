//! `heph evolve`: performance-driven evolution (placeholder while the engine is built).

pub mod rules;
pub mod stats;
