//! The history store: every change a git commit on `refs/heph/history` (git2).
//!
//! Placeholder of the interface; implemented by the history-store work (issue 3).
