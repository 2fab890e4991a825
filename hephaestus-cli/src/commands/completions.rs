//! `heph completions SHELL` and `heph man`: the shell completion script and the manual
//! pages, generated from the same clap definition that parses the arguments (so they
//! never drift from it).

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::output::Output;

/// Print the completion script of a shell on stdout.
///
/// bash: `heph completions bash > ~/.local/share/bash-completion/completions/heph`;
/// zsh: `heph completions zsh > "${fpath[1]}/_heph"`; fish: `heph completions fish >
/// ~/.config/fish/completions/heph.fish`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_name = "SHELL")]
    pub shell: Shell,
}

/// Print the manual page of `heph` (roff) on stdout, or write one page per command.
///
/// `heph man | man -l -` reads it; `heph man --out-dir DIR` writes `heph.1` and
/// `heph-COMMAND.1` for each command into DIR (for `man -M` or packaging).
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write `heph.1` and one `heph-COMMAND.1` per command into this directory instead
    /// of printing `heph.1`.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// The whole command line, with every deferred subcommand built (generators walk them).
fn command() -> clap::Command {
    let mut cmd = crate::Cli::command();
    cmd.build();
    cmd
}

/// Run `heph completions`.
pub fn run_completions(args: CompletionsArgs) -> Result<u8> {
    let mut cmd = command();
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "heph", &mut buf);
    write_stdout(&buf)?;
    Ok(0)
}

/// Run `heph man`.
pub fn run_man(args: ManArgs, out: &Output) -> Result<u8> {
    let cmd = command();
    let Some(dir) = args.out_dir else {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut buf)?;
        write_stdout(&buf)?;
        return Ok(0);
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let mut pages = vec![(String::from("heph"), cmd.clone())];
    for sub in cmd.get_subcommands() {
        if sub.get_name() != "help" {
            pages.push((format!("heph-{}", sub.get_name()), sub.clone()));
        }
    }
    for (name, page) in pages {
        let page = page
            .display_name(name.clone())
            .bin_name(name.replacen('-', " ", 1));
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).render(&mut buf)?;
        fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    out.note(format!(
        "wrote {} manual pages into {}",
        written.len(),
        dir.display()
    ));
    out.json(&serde_json::json!({ "pages": written }));
    Ok(0)
}

fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        // `heph completions bash | head`: a closed pipe is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}
