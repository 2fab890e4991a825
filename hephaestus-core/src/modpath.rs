//! Module paths as users write them: `crate::agent::example_module`,
//! `agent::example_module`, the dotted `agent.example_module`, or in a workspace
//! `package_name::agent::example_module`.
//!
//! Parsing only checks the form. Anything that looks like a file path (`..`, `/`, an
//! absolute path) is refused here, before it can reach the file system.

use std::fmt;

/// A parsed module path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModulePath {
    /// The path as the user wrote it.
    pub text: String,
    /// It started with `crate`.
    pub crate_relative: bool,
    /// The segments after an optional leading `crate` (the first may be a package name,
    /// which resolution decides).
    pub segments: Vec<String>,
}

/// Why a module path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModulePathError {
    /// Nothing was given.
    #[error(
        "the module path is empty; write it like `crate::agent::example_module` or `agent.example_module`"
    )]
    Empty,
    /// The path contains `..`, `/`, `\` or is absolute: module paths never name files.
    #[error(
        "`{path}` is not a module path: module paths use `::` or `.` between identifiers and \
         never contain `..`, `/` or `\\` (they cannot reach outside the project)"
    )]
    NotAModulePath {
        /// The path as given.
        path: String,
    },
    /// A segment is empty (`a::::b`, `a..b`, a trailing separator).
    #[error("`{path}` has an empty segment")]
    EmptySegment {
        /// The path as given.
        path: String,
    },
    /// A segment is a keyword.
    #[error(
        "`{segment}` in `{path}` is a Rust keyword and cannot name a module (write `r#{segment}` to use it as a raw identifier)"
    )]
    Keyword {
        /// The path as given.
        path: String,
        /// The offending segment.
        segment: String,
    },
    /// A segment is not an identifier.
    #[error("`{segment}` in `{path}` is not a valid Rust identifier")]
    InvalidIdentifier {
        /// The path as given.
        path: String,
        /// The offending segment.
        segment: String,
    },
    /// `self`/`super` are relative to a position, which a command line does not have.
    #[error("`{segment}` cannot appear in `{path}`: give the module's path from the crate root")]
    Relative {
        /// The path as given.
        path: String,
        /// `self` or `super`.
        segment: String,
    },
}

impl crate::Categorized for ModulePathError {
    fn category(&self) -> crate::ErrorCategory {
        crate::ErrorCategory::BadInput
    }
}

impl ModulePath {
    /// Parse and check a module path. The first segment may be a package name with `-`.
    pub fn parse(text: &str) -> Result<ModulePath, ModulePathError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(ModulePathError::Empty);
        }
        let not_a_path = || ModulePathError::NotAModulePath {
            path: trimmed.to_owned(),
        };
        if trimmed.contains('/') || trimmed.contains('\\') || trimmed.contains("..") {
            return Err(not_a_path());
        }
        let raw: Vec<&str> = if trimmed.contains("::") {
            if trimmed.contains('.') {
                return Err(not_a_path());
            }
            trimmed.split("::").collect()
        } else {
            trimmed.split('.').collect()
        };
        if raw.iter().any(|s| s.trim().is_empty()) {
            return Err(ModulePathError::EmptySegment {
                path: trimmed.to_owned(),
            });
        }
        let mut segments: Vec<String> = raw.iter().map(|s| s.trim().to_owned()).collect();
        let crate_relative = segments.first().is_some_and(|s| s == "crate");
        if crate_relative {
            segments.remove(0);
        }
        for (i, seg) in segments.iter().enumerate() {
            let package_like = i == 0 && !crate_relative && seg.contains('-');
            if package_like {
                if !seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(ModulePathError::InvalidIdentifier {
                        path: trimmed.to_owned(),
                        segment: seg.clone(),
                    });
                }
                continue;
            }
            check_identifier(seg).map_err(|kind| match kind {
                IdentProblem::Keyword if seg == "self" || seg == "super" => {
                    ModulePathError::Relative {
                        path: trimmed.to_owned(),
                        segment: seg.clone(),
                    }
                }
                IdentProblem::Keyword => ModulePathError::Keyword {
                    path: trimmed.to_owned(),
                    segment: seg.clone(),
                },
                IdentProblem::Invalid => ModulePathError::InvalidIdentifier {
                    path: trimmed.to_owned(),
                    segment: seg.clone(),
                },
            })?;
        }
        Ok(ModulePath {
            text: trimmed.to_owned(),
            crate_relative,
            segments,
        })
    }
}

impl fmt::Display for ModulePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What is wrong with a would-be identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentProblem {
    /// A reserved word (`type`, `fn`, `crate`, ...).
    Keyword,
    /// Not an identifier at all (`3d`, `a-b`, `_`).
    Invalid,
}

/// Check that `s` is a usable identifier (raw identifiers `r#type` allowed).
pub fn check_identifier(s: &str) -> Result<(), IdentProblem> {
    if syn::parse_str::<syn::Ident>(s).is_ok() {
        return Ok(());
    }
    // Distinguish keywords from garbage: a keyword is a valid raw identifier.
    let raw = format!("r#{s}");
    let raw_ok =
        !s.starts_with("r#") && s != "_" && syn::parse_str::<proc_macro2::Ident>(&raw).is_ok();
    if raw_ok || matches!(s, "crate" | "self" | "super" | "Self") {
        Err(IdentProblem::Keyword)
    } else {
        Err(IdentProblem::Invalid)
    }
}

/// The identifier as it names a file: `r#type` is stored in `type.rs`.
pub fn file_stem(ident: &str) -> &str {
    ident.strip_prefix("r#").unwrap_or(ident)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses_to_the_same_segments() {
        for text in [
            "crate::agent::example_module",
            "agent::example_module",
            "agent.example_module",
            " crate.agent.example_module ",
        ] {
            let p = ModulePath::parse(text).expect(text);
            assert_eq!(p.segments, ["agent", "example_module"], "{text}");
        }
        let p = ModulePath::parse("agent-lib::agent").expect("package");
        assert_eq!(p.segments, ["agent-lib", "agent"]);
        assert!(
            ModulePath::parse("crate")
                .expect("root")
                .segments
                .is_empty()
        );
    }

    #[test]
    fn file_like_paths_are_refused() {
        for text in [
            "../etc",
            "agent/../../x",
            "/etc/passwd",
            "agent\\x",
            "agent..x",
            "crate::..",
        ] {
            assert!(
                matches!(
                    ModulePath::parse(text),
                    Err(ModulePathError::NotAModulePath { .. })
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_segments_are_named() {
        assert!(matches!(
            ModulePath::parse("agent::type"),
            Err(ModulePathError::Keyword { .. })
        ));
        assert!(matches!(
            ModulePath::parse("agent::3d"),
            Err(ModulePathError::InvalidIdentifier { .. })
        ));
        assert!(matches!(
            ModulePath::parse("super::x"),
            Err(ModulePathError::Relative { .. })
        ));
        assert!(matches!(
            ModulePath::parse("a::::b"),
            Err(ModulePathError::EmptySegment { .. })
        ));
        assert!(matches!(
            ModulePath::parse("  "),
            Err(ModulePathError::Empty)
        ));
        assert!(ModulePath::parse("agent::r#type").is_ok());
    }

    #[test]
    fn identifiers_are_classified() {
        assert_eq!(check_identifier("fn"), Err(IdentProblem::Keyword));
        assert_eq!(check_identifier("crate"), Err(IdentProblem::Keyword));
        assert_eq!(check_identifier("a-b"), Err(IdentProblem::Invalid));
        assert_eq!(check_identifier("_"), Err(IdentProblem::Invalid));
        assert_eq!(check_identifier("héllo"), Ok(()));
        assert_eq!(file_stem("r#type"), "type");
    }
}
