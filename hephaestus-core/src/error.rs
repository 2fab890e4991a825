//! What kind of failure an error is, so front ends can map it to an exit code or an
//! HTTP status without matching every variant.

use serde::Serialize;

/// The broad class of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCategory {
    /// The change was tried and rejected: verification failed and was rolled back, or no
    /// improvement was found. CLI exit code 1.
    Rejected,
    /// The input was wrong: bad code, unknown module, invalid name. CLI exit code 2,
    /// HTTP 400/404.
    BadInput,
    /// The environment is not as needed: not a cargo project, git failure, I/O error,
    /// lock timeout. CLI exit code 3.
    Environment,
}

impl ErrorCategory {
    /// The CLI exit code of this category.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorCategory::Rejected => 1,
            ErrorCategory::BadInput => 2,
            ErrorCategory::Environment => 3,
        }
    }
}

/// Implemented by every error type of this crate.
pub trait Categorized {
    /// The class of this failure.
    fn category(&self) -> ErrorCategory;
}
