//! Global flags, rendering for people or as JSON, and the mapping of errors to exit codes.
//!
//! Exit codes: 0 ok, 1 the change was rejected (verification failed and was rolled
//! back, or no improvement found), 2 bad input or usage, 3 environment problem (not a
//! cargo project, git failure, lock timeout).

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use hephaestus_core::{Categorized, ErrorCategory};
use serde::Serialize;

/// Flags every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The target project (default: the nearest ancestor of the current directory
    /// holding a Cargo.toml).
    #[arg(long, global = true, value_name = "DIR")]
    pub project: Option<PathBuf>,
    /// Print one JSON document (or JSON lines) on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print less: only errors and the essential result.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more (repeat for even more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// When to use colors.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
}

/// `--color` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Colors when stderr is a terminal.
    Auto,
    /// Always colors.
    Always,
    /// Never colors.
    Never,
}

/// Where and how results are printed.
#[derive(Debug)]
pub struct Output {
    /// JSON on stdout instead of text.
    pub json: bool,
    /// -q
    pub quiet: bool,
    /// -v count
    pub verbose: u8,
    /// Colors on stderr.
    pub color: bool,
    /// stderr is a terminal (progress bars allowed).
    #[allow(dead_code)] // read by the commands that draw progress bars
    pub interactive: bool,
}

impl Output {
    /// Settings from the global flags.
    pub fn new(global: &GlobalArgs) -> Self {
        let interactive = io::stderr().is_terminal();
        let color = match global.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => interactive && std::env::var_os("NO_COLOR").is_none(),
        };
        Output {
            json: global.json,
            quiet: global.quiet,
            verbose: global.verbose,
            color,
            interactive,
        }
    }

    /// A line of the result for people (stdout); nothing in JSON mode.
    pub fn line(&self, text: impl AsRef<str>) {
        if !self.json {
            write_stdout(&format!("{}\n", text.as_ref()));
        }
    }

    /// A note about progress or context (stderr); nothing with -q or in JSON mode.
    pub fn note(&self, text: impl AsRef<str>) {
        if !self.quiet && !self.json {
            eprintln!("{}", text.as_ref());
        }
    }

    /// A warning (stderr), shown even with -q.
    pub fn warn(&self, text: impl AsRef<str>) {
        let prefix = if self.color {
            "\x1b[1;33mwarning\x1b[0m"
        } else {
            "warning"
        };
        eprintln!("{prefix}: {}", text.as_ref());
    }

    /// The JSON document of a command (stdout), only in JSON mode.
    pub fn json<T: Serialize>(&self, value: &T) {
        if self.json {
            let mut buf = Vec::with_capacity(4096);
            match serde_json::to_writer_pretty(&mut buf, value) {
                Ok(()) => {
                    buf.push(b'\n');
                    write_stdout_bytes(&buf);
                }
                Err(e) => eprintln!("error: cannot serialize the result: {e}"),
            }
        }
    }

    /// Render an error and return its exit code.
    pub fn error(&self, err: &anyhow::Error) -> u8 {
        let category = category_of(err);
        let code = category.map_or(3, ErrorCategory::exit_code);
        let prefix = if self.color {
            "\x1b[1;31merror\x1b[0m"
        } else {
            "error"
        };
        let mut text = format!("{prefix}: {err}");
        for cause in err.chain().skip(1) {
            let cause = cause.to_string();
            if !text.contains(&cause) {
                text.push_str(&format!("\n  caused by: {cause}"));
            }
        }
        eprintln!("{text}");
        if self.json {
            let doc = serde_json::json!({
                "error": {
                    "message": format!("{err:#}"),
                    "category": category,
                    "exit_code": code,
                }
            });
            write_stdout(&format!("{doc:#}\n"));
        }
        code
    }
}

/// Write to stdout; a closed pipe (`heph history | head`) ends the process quietly.
fn write_stdout(s: &str) {
    write_stdout_bytes(s.as_bytes());
}

fn write_stdout_bytes(s: &[u8]) {
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout.write_all(s).and_then(|()| stdout.flush())
        && e.kind() == io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// The category of the first error in the chain that has one.
fn category_of(err: &anyhow::Error) -> Option<ErrorCategory> {
    err.chain().find_map(categorize)
}

/// Downcast a cause to the core's error types. Each core error type is listed here.
fn categorize(cause: &(dyn std::error::Error + 'static)) -> Option<ErrorCategory> {
    macro_rules! try_types {
        ($($t:ty),* $(,)?) => {
            $(if let Some(e) = cause.downcast_ref::<$t>() { return Some(e.category()); })*
        };
    }
    use hephaestus_core as core;
    try_types!(
        UsageError,
        core::api::ApiError,
        core::api::TokenError,
        core::api::evolve::EvolveError,
        core::apply::ApplyError,
        core::apply::CodeError,
        core::config::ConfigError,
        core::edit::EditError,
        core::evolve::EvolveError,
        core::evolve::rules::RuleError,
        core::fsio::WriteError,
        core::history::HistoryError,
        core::import::ImportError,
        core::journal::JournalError,
        core::modpath::ModulePathError,
        core::project::ProjectError,
        core::project_root::ProjectRootError,
        core::resolve::ResolveError,
        core::run::RunError,
        core::state::StateError,
        core::supervise::SuperviseError,
        core::verify::VerifyError,
        core::watch::WatchError,
        core::watch::control::ControlError,
    );
    None
}

/// A usage error found by the CLI itself (exit code 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

impl Categorized for UsageError {
    fn category(&self) -> ErrorCategory {
        ErrorCategory::BadInput
    }
}
