//! In-process hot reload (`heph watch --hot`), heph's side: which package is the hot
//! crate ([`find_hot_package`]), its interface read with syn and compared between
//! builds ([`interface`]), the control channel the program inherits ([`channel`]), and
//! the generation files ([`generations`]). The program's side is the `hephaestus-hot`
//! runtime crate; the watch loop (`crate::watch`) wires them together.
//!
//! **A library is loaded into the program only when its interface equals the running
//! one** (additions aside): heph compares the interfaces before building, and the
//! runtime compares each function's digest, the build fingerprint and the signature
//! again before the library serves.

pub mod channel;
pub mod generations;
pub mod interface;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use channel::{HotServer, Notice, Policy, Report};
pub use generations::{GenerationFile, Generations, Staged};
pub use interface::{Interface, InterfaceError};

use crate::project::{Project, TargetKind};

/// Errors of the hot path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HotError {
    /// No package can be the hot crate.
    #[error(
        "no hot crate: {0}; name it with `heph watch --hot PACKAGE` (a library package with crate-type = [\"cdylib\", \"rlib\"])"
    )]
    NoHotCrate(String),
    /// The named package is not a library of the project.
    #[error("package `{name}` cannot be the hot crate: {why}")]
    BadHotCrate {
        /// The package.
        name: String,
        /// Why not.
        why: String,
    },
    /// `[hot]` in heph.toml is invalid.
    #[error("heph.toml: [hot] {0}")]
    Config(String),
    /// The control socket failed.
    #[error("hot-reload channel {path}: {source}")]
    Channel {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The process is not connected to the channel.
    #[error("process {0} is not connected to the hot-reload channel")]
    NotConnected(u32),
    /// The process did not answer a load in time.
    #[error("process {pid} did not answer the load of generation {generation} in time")]
    NoAnswer {
        /// The process.
        pid: u32,
        /// The generation.
        generation: u64,
    },
}

impl crate::Categorized for HotError {
    fn category(&self) -> crate::ErrorCategory {
        match self {
            HotError::NoHotCrate(_) | HotError::BadHotCrate { .. } | HotError::Config(_) => {
                crate::ErrorCategory::BadInput
            }
            _ => crate::ErrorCategory::Environment,
        }
    }
}

/// What heph does when the runtime rolls a generation back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Heal {
    /// Report it and record a `rollback` evolution; the sources stay as they are.
    #[default]
    Report,
    /// Also restore the sources of the generation serving again (through the history's
    /// rollback: the current files are recorded first).
    RestoreSource,
}

impl std::str::FromStr for Heal {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "report" => Ok(Heal::Report),
            "restore-source" => Ok(Heal::RestoreSource),
            other => Err(format!(
                "unknown heal mode `{other}` (expected report or restore-source)"
            )),
        }
    }
}

/// `[hot]` in heph.toml.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotConfig {
    /// The hot crate's package (default: found, see [`find_hot_package`]).
    pub package: Option<String>,
    /// Panics of one generation within `panic_window` that roll it back (default 5; 0:
    /// never).
    pub max_panics: Option<u32>,
    /// The window panics are counted in, such as `10s` (default 10s).
    pub panic_window: Option<String>,
    /// `report` (default) or `restore-source`.
    pub heal: Option<Heal>,
}

impl HotConfig {
    /// The panic policy: these settings over the defaults (5 in 10 s).
    pub fn policy(&self) -> Result<Policy, HotError> {
        let window = match &self.panic_window {
            Some(w) => crate::config::parse_duration(w)
                .map_err(|e| HotError::Config(format!("panic_window: {e}")))?,
            None => Duration::from_secs(10),
        };
        Ok(Policy {
            max_panics: self.max_panics.unwrap_or(5),
            window,
        })
    }
}

/// Settings of the hot path of a watch session.
#[derive(Debug, Clone)]
pub struct HotOptions {
    /// The hot crate's package (None: found).
    pub package: Option<String>,
    /// The panic policy given to the program.
    pub policy: Policy,
    /// What to do on a rollback.
    pub heal: Heal,
    /// How long a load may take before heph gives up on it.
    pub load_timeout: Duration,
}

impl HotOptions {
    /// Defaults: 5 panics in 10 s, report only, 10 s load timeout.
    pub fn new(package: Option<String>) -> Self {
        HotOptions {
            package,
            policy: Policy {
                max_panics: 5,
                window: Duration::from_secs(10),
            },
            heal: Heal::Report,
            load_timeout: Duration::from_secs(10),
        }
    }
}

/// The hot crate of a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotCrate {
    /// Its package.
    pub package: String,
    /// Its library's crate name (`render`; the file is `librender.so`).
    pub crate_name: String,
    /// The directory holding its sources (the lib root's directory).
    pub src_dir: PathBuf,
}

fn is_cdylib(manifest: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read_to_string(manifest) else {
        return false;
    };
    let Ok(doc) = text.parse::<toml::Table>() else {
        return false;
    };
    doc.get("lib")
        .and_then(|l| l.get("crate-type"))
        .and_then(|t| t.as_array())
        .is_some_and(|a| a.iter().any(|k| k.as_str() == Some("cdylib")))
}

/// The hot crate: the package `name`, or else the only library package that is built
/// as a `cdylib` and is not `host` (the binary's package).
pub fn find_hot_package(
    project: &Project,
    name: Option<&str>,
    host: Option<&str>,
) -> Result<HotCrate, HotError> {
    let candidates: Vec<HotCrate> = project
        .packages()
        .iter()
        .filter_map(|p| {
            let lib = p.targets.iter().find(|t| t.kind == TargetKind::Lib)?;
            Some((p, lib))
        })
        .filter(|(p, _)| name.is_none_or(|n| p.name == n))
        .filter(|(p, _)| {
            name.is_some() || (Some(p.name.as_str()) != host && is_cdylib(&p.manifest_path))
        })
        .map(|(p, lib)| HotCrate {
            package: p.name.clone(),
            crate_name: lib.name.clone(),
            src_dir: lib
                .root
                .parent()
                .map_or_else(|| p.dir.clone(), std::path::Path::to_path_buf),
        })
        .collect();
    match (name, candidates.len()) {
        (Some(n), 0) => Err(HotError::BadHotCrate {
            name: n.to_owned(),
            why: "no library package of that name in this project".into(),
        }),
        (Some(n), _) => {
            let c = candidates.into_iter().next().expect("one");
            let p = project
                .packages()
                .iter()
                .find(|p| p.name == n)
                .expect("found");
            if is_cdylib(&p.manifest_path) {
                Ok(c)
            } else {
                Err(HotError::BadHotCrate {
                    name: n.to_owned(),
                    why: "its [lib] crate-type does not include \"cdylib\"".into(),
                })
            }
        }
        (None, 1) => Ok(candidates.into_iter().next().expect("one")),
        (None, 0) => Err(HotError::NoHotCrate(
            "no library package built as a cdylib".into(),
        )),
        (None, _) => Err(HotError::NoHotCrate(format!(
            "several library packages are built as cdylibs ({})",
            candidates
                .iter()
                .map(|c| c.package.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
