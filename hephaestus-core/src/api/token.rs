//! The bearer token of the control API: given by the front end (`HEPH_TOKEN`), or kept
//! in `.heph/token` (mode 0600), generated there from the operating system's CSPRNG
//! (256 bits, hex) when the file does not exist. Requests are compared with it in
//! constant time.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::state::{StateDir, StateError};

/// The token file's name in `.heph/`.
pub const TOKEN_FILE: &str = "token";

/// Random bytes in a generated token (256 bits; 64 hex digits).
const TOKEN_BYTES: usize = 32;

/// The longest token accepted.
const MAX_TOKEN_LEN: usize = 4096;

/// The shortest token accepted: 8 characters, which the original system's examples
/// (`test_token`) meet; under 16 front ends still warn ([`Token::is_short`]).
pub const MIN_TOKEN_LEN: usize = 8;

/// Errors of preparing the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The given token cannot be sent in an `Authorization` header.
    #[error("the API token is unusable: {reason}")]
    Invalid {
        /// What is wrong with it.
        reason: String,
    },
    /// The token file can be read by other users.
    #[error(
        "{} can be read by other users (mode {mode:o}); run `chmod 600 {}` or delete it to generate a new token",
        path.display(),
        path.display()
    )]
    Insecure {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The token file holds no usable token.
    #[error("{} does not hold a usable token ({reason}); delete it to generate a new one", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the token file failed.
    #[error("cannot access the token file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `.heph/` could not be created.
    #[error(transparent)]
    State(#[from] StateError),
    /// The operating system's random number generator failed.
    #[error("cannot generate a token: the system's random number generator failed: {0}")]
    Random(String),
}

impl crate::Categorized for TokenError {
    fn category(&self) -> crate::ErrorCategory {
        match self {
            TokenError::Invalid { .. }
            | TokenError::Insecure { .. }
            | TokenError::BadFile { .. } => crate::ErrorCategory::BadInput,
            TokenError::Io { .. } | TokenError::State(_) | TokenError::Random(_) => {
                crate::ErrorCategory::Environment
            }
        }
    }
}

/// The secret. Its `Debug` form does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Wrap a token, checking it can travel in a header and is not trivially guessed:
    /// [`MIN_TOKEN_LEN`] to 4096 visible ASCII characters, no spaces.
    pub fn new(text: impl Into<String>) -> Result<Token, TokenError> {
        let text = text.into();
        if text.is_empty() {
            return Err(TokenError::Invalid {
                reason: "it is empty".into(),
            });
        }
        if text.chars().count() < MIN_TOKEN_LEN {
            return Err(TokenError::Invalid {
                reason: format!(
                    "it is {} character{} long; use at least {MIN_TOKEN_LEN} (a long random one, such as the 64 hex digits heph generates when HEPH_TOKEN is not set)",
                    text.chars().count(),
                    if text.chars().count() == 1 { "" } else { "s" }
                ),
            });
        }
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid {
                reason: format!("it is longer than {MAX_TOKEN_LEN} characters"),
            });
        }
        if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(TokenError::Invalid {
                reason: format!("it contains {c:?}; use visible ASCII characters only (no spaces)"),
            });
        }
        Ok(Token(text))
    }

    /// A new random token: 256 bits from the operating system's CSPRNG, as 64 hex digits.
    pub fn generate() -> Result<Token, TokenError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
        Ok(Token(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// The token's text (to hand to a client; never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compare in constant time (for tokens of the same length; a different length is
    /// refused at once, which tells an attacker only the length).
    pub fn matches(&self, given: &[u8]) -> bool {
        constant_time_eq::constant_time_eq(given, self.0.as_bytes())
    }

    /// Shorter than 16 characters: guessable; front ends warn about it.
    pub fn is_short(&self) -> bool {
        self.0.len() < 16
    }
}

/// Where the token came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub enum TokenSource {
    /// Given by the front end (the CLI reads `HEPH_TOKEN`); not written anywhere.
    Given,
    /// Read from, or generated into, the token file.
    File {
        /// The file (`.heph/token`).
        path: PathBuf,
        /// It was generated now (else it existed).
        generated: bool,
    },
}

/// The token file of the project at `root`.
pub fn token_path(root: &Path) -> PathBuf {
    StateDir::new(root).path().join(TOKEN_FILE)
}

/// The token to require: `given` (checked), else the one in `.heph/token`, else a new
/// one generated into `.heph/token` with mode 0600. An existing file readable by other
/// users is refused.
pub fn prepare(root: &Path, given: Option<String>) -> Result<(Token, TokenSource), TokenError> {
    if let Some(text) = given {
        return Ok((Token::new(text)?, TokenSource::Given));
    }
    let state = StateDir::new(root);
    state.ensure()?;
    let path = token_path(root);
    if let Some(token) = read_file(&path)? {
        return Ok((
            token,
            TokenSource::File {
                path,
                generated: false,
            },
        ));
    }
    let token = Token::generate()?;
    // Write a private temp file, then link it into place: the link fails if another heph
    // created the file meanwhile (use theirs), and no reader ever sees a partial file.
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TokenError::Io { path, source }
    };
    let tmp = state
        .path()
        .join(format!(".token.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    let written = file
        .write_all(format!("{}\n", token.expose()).as_bytes())
        .and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    let linked = fs::hard_link(&tmp, &path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok((
            token,
            TokenSource::File {
                path,
                generated: true,
            },
        )),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match read_file(&path)? {
            Some(theirs) => Ok((
                theirs,
                TokenSource::File {
                    path,
                    generated: false,
                },
            )),
            None => Err(TokenError::BadFile {
                path,
                reason: "it vanished while heph read it".into(),
            }),
        },
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// The token in `path`, None when the file does not exist.
fn read_file(path: &Path) -> Result<Option<Token>, TokenError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TokenError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.is_file() {
        return Err(TokenError::BadFile {
            path: path.to_owned(),
            reason: "it is not a regular file".into(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenError::Insecure {
            path: path.to_owned(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(|source| TokenError::Io {
        path: path.to_owned(),
        source,
    })?;
    Token::new(text.trim().to_owned())
        .map(Some)
        .map_err(|e| TokenError::BadFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_long_random_and_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (token, source) = prepare(dir.path(), None).expect("prepare");
        assert_eq!(token.expose().len(), 64);
        assert!(token.expose().bytes().all(|b| b.is_ascii_hexdigit()));
        let path = token_path(dir.path());
        assert_eq!(
            source,
            TokenSource::File {
                path: path.clone(),
                generated: true
            }
        );
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second start reuses it.
        let (again, source) = prepare(dir.path(), None).expect("prepare again");
        assert_eq!(again, token);
        assert!(matches!(
            source,
            TokenSource::File {
                generated: false,
                ..
            }
        ));
        assert_ne!(Token::generate().expect("gen"), token);
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    }

    #[test]
    fn a_token_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        prepare(dir.path(), None).expect("prepare");
        let path = token_path(dir.path());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = prepare(dir.path(), None).expect_err("insecure");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn given_tokens_are_checked_and_compared_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (token, source) = prepare(dir.path(), Some("test_token".into())).expect("given");
        assert_eq!(source, TokenSource::Given);
        assert!(!token_path(dir.path()).exists());
        assert!(token.is_short());
        assert!(token.matches(b"test_token"));
        assert!(!token.matches(b"test_tokeN"));
        assert!(!token.matches(b"test_toke"));
        assert!(!token.matches(b""));
        for bad in [
            "",
            "with space",
            "tab\there",
            "é",
            "x",
            "1234567",
            "éééééééé",
        ] {
            assert!(Token::new(bad).is_err(), "{bad:?}");
        }
        let err = Token::new("x").expect_err("too short").to_string();
        assert!(err.contains("1 character long; use at least 8"), "{err}");
        assert!(Token::new("12345678").is_ok());
    }
}
