//! The JSON error responses of the control API and the mapping of the core's errors to
//! HTTP statuses.
//!
//! Every error body is `{"error": {"status", "kind", "category", "message", "field"?,
//! "line"?, "column"?}}`: `kind` is a stable machine-readable reason, `field` the
//! request field at fault, `line`/`column` a position in the submitted code (or, for
//! malformed JSON, in the body).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::evolve::EvolveError;
use crate::apply::ApplyError;
use crate::edit::EditError;
use crate::history::HistoryError;
use crate::import::ImportError;
use crate::resolve::ResolveError;
use crate::source::{Origin, SyntaxError};
use crate::state::StateError;
use crate::verify::VerifyError;
use crate::{Categorized, ErrorCategory};

/// A failed request, as answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The HTTP status.
    pub status: u16,
    /// A stable reason: `unauthorized`, `not-found`, `method-not-allowed`,
    /// `invalid-json`, `missing-field`, `invalid-field`, `unknown-field`, `invalid-code`,
    /// `invalid-module`, `bad-input`, `too-large`, `busy`, `evolution-running`,
    /// `evolve-not-configured`, `not-implemented`, `shutting-down`, `timeout`, `internal`.
    pub kind: &'static str,
    /// `bad-input`, `rejected` or `environment`, as in the CLI's JSON errors.
    pub category: ErrorCategory,
    /// What was wrong and what to do.
    pub message: String,
    /// The request field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// 1-based line in the submitted code (or the JSON body).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// 1-based column, in characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl Failure {
    pub(crate) fn new(
        status: StatusCode,
        kind: &'static str,
        category: ErrorCategory,
        message: impl Into<String>,
    ) -> Self {
        Failure {
            status: status.as_u16(),
            kind,
            category,
            message: message.into(),
            field: None,
            line: None,
            column: None,
        }
    }

    /// A 400 about one field.
    pub(crate) fn field(kind: &'static str, field: &str, message: impl Into<String>) -> Self {
        Failure::new(
            StatusCode::BAD_REQUEST,
            kind,
            ErrorCategory::BadInput,
            message,
        )
        .with_field(field)
    }

    pub(crate) fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }

    fn at(mut self, line: usize, column: usize) -> Self {
        self.line = Some(line);
        self.column = Some(column);
        self
    }

    pub(crate) fn unauthorized() -> Self {
        Failure::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            ErrorCategory::BadInput,
            "missing or wrong token: send `Authorization: Bearer TOKEN` (the token is HEPH_TOKEN, or the contents of .heph/token)",
        )
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            ErrorCategory::Environment,
            message,
        )
    }

    /// A submitted code's syntax error: field, line and column.
    fn code(field: &str, e: &SyntaxError, message: String) -> Self {
        let f = Failure::field("invalid-code", field, message);
        if e.origin == Origin::Submitted {
            f.at(e.line, e.column)
        } else {
            f
        }
    }

    /// Map an error of [`crate::Project::apply`]; `code_field` names the request's
    /// code field (`new_code` or `code`).
    pub(crate) fn from_apply(e: &ApplyError, code_field: &str) -> Self {
        let message = e.to_string();
        match e {
            ApplyError::Resolve(ResolveError::Read { .. }) => Failure::internal(message),
            ApplyError::Resolve(ResolveError::Path(_)) => {
                Failure::field("invalid-module", "module_name", message)
            }
            ApplyError::Resolve(_) => Failure::field("bad-input", "module_name", message),
            ApplyError::Edit(EditError::Syntax(s)) => Failure::code(code_field, s, message),
            ApplyError::Edit(EditError::ResultSyntax(_)) => {
                Failure::field("invalid-code", code_field, message)
            }
            ApplyError::Edit(EditError::DuplicateInCode { first, .. }) => {
                let mut f = Failure::field("invalid-code", code_field, message);
                f.line = Some(*first);
                f
            }
            ApplyError::Edit(EditError::EmptyCode) => {
                Failure::field("invalid-field", code_field, message)
            }
            ApplyError::Edit(
                EditError::NoItems | EditError::NoSuchItem { .. } | EditError::Key(_),
            ) => Failure::field("invalid-field", "items", message),
            ApplyError::Edit(EditError::NoInlineModule(_)) => {
                Failure::field("bad-input", "module_name", message)
            }
            ApplyError::Import(ImportError::Syntax(s)) => Failure::code(code_field, s, message),
            ApplyError::Import(ImportError::EmptyCode) => {
                Failure::field("invalid-field", code_field, message)
            }
            ApplyError::Import(
                ImportError::NotALibrary { .. } | ImportError::NotRunnable { .. },
            ) => Failure::field("invalid-field", "run", message),
            ApplyError::Import(_) => Failure::field("bad-input", "module_name", message),
            ApplyError::State(StateError::LockTimeout { .. })
            | ApplyError::History(HistoryError::Lock(StateError::LockTimeout { .. })) => {
                Failure::busy(message)
            }
            ApplyError::Verify(VerifyError::Cancelled) => Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting-down",
                ErrorCategory::Environment,
                format!("{message}: the server is stopping; every file was restored"),
            ),
            other => Failure::by_category(other.category(), message),
        }
    }

    /// 409: another write holds the lock.
    pub(crate) fn busy(message: impl Into<String>) -> Self {
        Failure::new(
            StatusCode::CONFLICT,
            "busy",
            ErrorCategory::Environment,
            message,
        )
    }

    /// Any other categorized error.
    pub(crate) fn by_category(category: ErrorCategory, message: String) -> Self {
        match category {
            ErrorCategory::BadInput => {
                Failure::new(StatusCode::BAD_REQUEST, "bad-input", category, message)
            }
            ErrorCategory::Rejected => Failure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "rejected",
                category,
                message,
            ),
            ErrorCategory::Environment => Failure::internal(message),
        }
    }

    pub(crate) fn from_evolve(e: &EvolveError) -> Self {
        let message = e.to_string();
        match e {
            EvolveError::NotConfigured => Failure::new(
                StatusCode::CONFLICT,
                "evolve-not-configured",
                ErrorCategory::BadInput,
                message,
            ),
            EvolveError::Running { .. } => Failure::new(
                StatusCode::CONFLICT,
                "evolution-running",
                ErrorCategory::Environment,
                message,
            ),
            EvolveError::Unavailable(_) => Failure::new(
                StatusCode::NOT_IMPLEMENTED,
                "not-implemented",
                ErrorCategory::Environment,
                message,
            ),
            other => Failure::by_category(other.category(), message),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let unauthorized = status == StatusCode::UNAUTHORIZED;
        let mut response =
            (status, json_body(&serde_json::json!({ "error": self }))).into_response();
        if unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"heph\""),
            );
            // Refused before its body was read: the connection cannot carry another
            // request, and a client must not reuse it (it would find it closed).
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// A JSON body with its content type.
pub(crate) fn json_body<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot serialize the response: {e}"),
        )
            .into_response(),
    }
}

/// A JSON response with a status.
pub(crate) fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let mut r = json_body(value);
    *r.status_mut() = status;
    r
}
