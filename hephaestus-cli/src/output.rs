//! Global flags, rendering for people or as JSON, and the mapping of errors to exit codes.
//!
//! Exit codes: 0 ok, 1 the change was rejected (verification failed and was rolled
//! back, or no improvement found), 2 bad input or usage, 3 environment problem (not a
//! cargo project, git failure, lock timeout).

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use hephaestus_core::{Categorized, ErrorCategory};
use indicatif::ProgressStyle;
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
    /// Never page the output of `show` and `history` (default on a terminal: `$PAGER`,
    /// or `less`).
    #[arg(long, global = true)]
    pub no_pager: bool,
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
    /// Colors on stdout (diffs).
    pub color_stdout: bool,
    /// Long output (`show`, `history`) goes through a pager.
    pub pager: bool,
    /// stderr is a terminal (progress bars allowed).
    #[allow(dead_code)] // read by the commands that draw progress bars
    pub interactive: bool,
}

/// `NO_COLOR` asks for no colors only when it is set to a non-empty value
/// (<https://no-color.org>): `NO_COLOR=` leaves colors on.
pub fn no_color_env() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

impl ColorChoice {
    /// The `--color` value among the raw arguments (the last one wins, as clap reads
    /// it), before clap parses them: clap's own messages (usage errors, `--help`) must
    /// follow it too. `auto` when absent or unreadable (clap then reports it).
    pub fn from_raw_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Self {
        let mut choice = ColorChoice::Auto;
        let mut args = args.into_iter().skip(1);
        while let Some(arg) = args.next() {
            let value = if arg == "--color" {
                args.next()
            } else if arg == "--" {
                break;
            } else {
                arg.to_str()
                    .and_then(|a| a.strip_prefix("--color="))
                    .map(std::ffi::OsString::from)
            };
            if let Some(v) = value.as_ref().and_then(|v| v.to_str()) {
                choice = ColorChoice::from_str(v, true).unwrap_or(choice);
            }
        }
        choice
    }

    /// clap's setting for its own messages.
    pub fn for_clap(self) -> clap::ColorChoice {
        match self {
            ColorChoice::Always => clap::ColorChoice::Always,
            ColorChoice::Never => clap::ColorChoice::Never,
            ColorChoice::Auto if no_color_env() => clap::ColorChoice::Never,
            ColorChoice::Auto => clap::ColorChoice::Auto,
        }
    }
}

impl Output {
    /// Settings from the global flags.
    pub fn new(global: &GlobalArgs) -> Self {
        let interactive = io::stderr().is_terminal();
        let color = match global.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => interactive && !no_color_env(),
        };
        let stdout_terminal = io::stdout().is_terminal();
        let color_stdout = match global.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => stdout_terminal && !no_color_env(),
        };
        Output {
            json: global.json,
            quiet: global.quiet,
            verbose: global.verbose,
            color,
            color_stdout,
            pager: stdout_terminal && !global.no_pager && !global.json,
            interactive,
        }
    }

    /// A line of the result for people (stdout); nothing in JSON mode.
    pub fn line(&self, text: impl AsRef<str>) {
        if !self.json {
            write_stdout(&format!("{}\n", text.as_ref()));
        }
    }

    /// Long text for people on stdout, through the pager when stdout is a terminal (as
    /// git does: `$PAGER`, else `less` with `LESS=FRX` unless set; an empty `PAGER` or
    /// `cat` means none); nothing in JSON mode.
    pub fn page(&self, text: impl AsRef<str>) {
        if self.json {
            return;
        }
        let text = format!("{}\n", text.as_ref());
        let pager = std::env::var("PAGER").unwrap_or_else(|_| "less".to_owned());
        if !self.pager || pager.trim().is_empty() || pager.trim() == "cat" {
            write_stdout(&text);
            return;
        }
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&pager)
            .stdin(std::process::Stdio::piped());
        if std::env::var_os("LESS").is_none() {
            cmd.env("LESS", "FRX");
        }
        match cmd.spawn() {
            Ok(mut child) => {
                if let Some(mut stdin) = child.stdin.take() {
                    // The pager may quit before reading everything (`q`): not an error.
                    let _ = stdin.write_all(text.as_bytes());
                }
                let _ = child.wait();
            }
            Err(_) => write_stdout(&text),
        }
    }

    /// A note about progress or context (stderr); nothing with -q or in JSON mode.
    pub fn note(&self, text: impl AsRef<str>) {
        if !self.quiet && !self.json {
            eprintln!("{}", text.as_ref());
        }
    }

    /// An indicatif style from a template; its color specs (`{spinner:.green}`,
    /// `{bar:30.cyan/blue}`) are dropped when colors are off.
    pub fn progress_style(&self, template: &str) -> ProgressStyle {
        let template = if self.color {
            template.to_owned()
        } else {
            strip_progress_colors(template)
        };
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_spinner())
    }

    /// A failure of the command's work that is not an error of heph (a rejected change,
    /// stderr, shown even with -q): `error: ...`.
    pub fn failure(&self, text: impl AsRef<str>) {
        let prefix = if self.color {
            "\x1b[1;31merror\x1b[0m"
        } else {
            "error"
        };
        eprintln!("{prefix}: {}", text.as_ref());
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
        core::WriteError,
        core::history::HistoryError,
        core::import::ImportError,
        core::journal::JournalError,
        core::modpath::ModulePathError,
        core::project::ProjectError,
        core::ProjectRootError,
        core::resolve::ResolveError,
        core::run::RunError,
        core::StateError,
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

/// An indicatif template without its styles: `{spinner:.green}` → `{spinner}`,
/// `{bar:30.cyan/blue}` → `{bar:30}`, `{prefix:>9}` kept.
fn strip_progress_colors(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let field = &rest[open + 1..open + close];
        let field = match field.split_once(':') {
            Some((key, spec)) => {
                let spec = spec.split_once('.').map_or(spec, |(before, _)| before);
                if spec.is_empty() {
                    key.to_owned()
                } else {
                    format!("{key}:{spec}")
                }
            }
            None => field.to_owned(),
        };
        out.push('{');
        out.push_str(&field);
        out.push('}');
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_templates_lose_only_their_styles() {
        assert_eq!(
            strip_progress_colors("{spinner:.green} {msg} [{elapsed}]"),
            "{spinner} {msg} [{elapsed}]"
        );
        assert_eq!(
            strip_progress_colors("{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len}"),
            "{prefix} [{bar:30}] {pos}/{len}"
        );
        assert_eq!(
            strip_progress_colors("  {spinner:.green} {prefix:>9} {msg}"),
            "  {spinner} {prefix:>9} {msg}"
        );
    }

    fn raw(args: &[&str]) -> ColorChoice {
        ColorChoice::from_raw_args(args.iter().map(std::ffi::OsString::from))
    }

    #[test]
    fn the_color_flag_is_read_before_clap() {
        assert_eq!(raw(&["heph", "history"]), ColorChoice::Auto);
        assert_eq!(raw(&["heph", "--color", "never", "x"]), ColorChoice::Never);
        assert_eq!(raw(&["heph", "x", "--color=always"]), ColorChoice::Always);
        assert_eq!(
            raw(&["heph", "--color=never", "--color", "always"]),
            ColorChoice::Always
        );
        // After `--`, an argument is a value, not a flag; a bad value is clap's to report.
        assert_eq!(raw(&["heph", "--", "--color=never"]), ColorChoice::Auto);
        assert_eq!(raw(&["heph", "--color", "sometimes"]), ColorChoice::Auto);
    }
}
