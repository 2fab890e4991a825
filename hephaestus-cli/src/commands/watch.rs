//! `heph watch`: watch, check, build and swap the running program without downtime;
//! `--pause`/`--resume` steer a watch running in another terminal.

use std::ffi::OsString;
use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use hephaestus_core::Config;
use hephaestus_core::config::parse_duration;
use hephaestus_core::hot::{Heal, HotOptions};
use hephaestus_core::supervise::{
    Readiness, SocketSpec, Stream, SuperviseEvent, SupervisorOptions,
};
use hephaestus_core::watch::control::{self, Request};
use hephaestus_core::watch::{
    FleetOptions, RunTarget, Session, WatchEvent, WatchOptions, default_instance,
};
use indicatif::ProgressBar;

use super::api::{self as control_api, ApiArgs};
use super::change::open_project;
use super::sync::Transport;
use crate::output::{GlobalArgs, Output, UsageError};

mod keys;

/// Watch the project: on each change, check the syntax, rebuild, and swap the running
/// program without dropping a connection; snapshot every successful build.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    heph watch --bin hello-server --socket 127.0.0.1:3000\n  \
    heph watch --run 'cargo test' \n  \
    heph watch --check-only\n  \
    heph watch --hot --socket 127.0.0.1:3001   (reload the hot crate in place)\n  \
    heph watch --pause        (from another terminal)\n\n\
    Keys in a terminal: r rebuild now, p pause/resume, q quit.")]
pub struct Args {
    /// The binary to build and run (default: the project's only binary).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["run", "check_only"])]
    pub bin: Option<String>,
    /// Run this shell command after each successful build instead of a binary.
    #[arg(long, value_name = "CMD", conflicts_with = "check_only")]
    pub run: Option<String>,
    /// Only `cargo check` the changed packages; run nothing.
    #[arg(long)]
    pub check_only: bool,
    /// Listen on ADDR (PORT, HOST:PORT, unix:PATH, optionally NAME=ADDR) once and pass
    /// the socket to every generation (systemd protocol: LISTEN_FDS, fds from 3).
    #[arg(long = "socket", value_name = "ADDR")]
    pub sockets: Vec<SocketSpec>,
    /// A new generation is ready when it prints a line matching this regex on stdout.
    #[arg(long, value_name = "REGEX", conflicts_with = "ready_delay")]
    pub ready_line: Option<String>,
    /// A new generation is ready when it has run this long (default 100ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ready_delay: Option<Duration>,
    /// Give up on a new generation that is not ready after this long.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub ready_timeout: Duration,
    /// Time between SIGTERM and SIGKILL when stopping the old generation.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    pub grace: Duration,
    /// Quiet time that ends a batch of changes (default 10ms, config `watch.debounce`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub debounce: Option<Duration>,
    /// Load changes of the hot crate PACKAGE (default: the project's only cdylib library)
    /// into the running program when its interface is unchanged; restart otherwise.
    #[arg(long, value_name = "PACKAGE", num_args = 0..=1, default_missing_value = "",
          conflicts_with_all = ["run", "check_only"])]
    pub hot: Option<String>,
    /// With --hot, when the runtime rolls a panicking generation back: `report` (record
    /// it) or `restore-source` (also restore that generation's sources). Config
    /// `hot.heal`.
    #[arg(long, value_name = "MODE", requires = "hot")]
    pub heal: Option<Heal>,
    /// With --hot, panics of one generation within --panic-window that roll it back
    /// (default 5; 0 never). Config `hot.max_panics`.
    #[arg(long, value_name = "N", requires = "hot")]
    pub max_panics: Option<u32>,
    /// With --hot, the window panics are counted in (default 10s). Config
    /// `hot.panic_window`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "hot")]
    pub panic_window: Option<Duration>,
    /// Do not snapshot successful builds in the history.
    #[arg(long)]
    pub no_history: bool,
    /// Start paused (changes are remembered until `p` or `heph watch --resume`).
    #[arg(long, conflicts_with_all = ["pause", "resume"])]
    pub start_paused: bool,
    /// Pause the `heph watch` running for this project, then exit.
    #[arg(long, conflicts_with_all = ["resume", "api", "api_public"])]
    pub pause: bool,
    /// Resume the `heph watch` running for this project, then exit.
    #[arg(long, conflicts_with_all = ["api", "api_public"])]
    pub resume: bool,
    /// Push every evolution this instance records to REMOTE (a git remote of the
    /// project's repository, a URL or a path); never forced: a push that is not a
    /// fast-forward is reported and left alone.
    #[arg(long, value_name = "REMOTE")]
    pub publish: Option<String>,
    /// Follow REMOTE's history: apply each new evolution (syntax gate, build, swap as
    /// for an edit). Hand edits are never overwritten: they are recorded and following
    /// stops. An unreachable remote is retried with backoff while the program serves.
    #[arg(long, value_name = "REMOTE")]
    pub follow: Option<String>,
    /// Time between two fetches of the --follow remote.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2s",
          requires = "follow")]
    pub follow_interval: Duration,
    /// With --follow: apply only evolutions signed by a key of KEYS, an allowed-signers
    /// file as git's `gpg.ssh.allowedSignersFile` takes it (git's ssh signing format;
    /// checked with `ssh-keygen -Y verify`). Any other commit stops following, and says
    /// why. Publishers sign with `[history] signing_key` in heph.toml.
    #[arg(long, value_name = "KEYS", requires = "follow")]
    pub require_signed: Option<std::path::PathBuf>,
    /// This instance's name in `heph fleet status` (default: HOST-HASH of the project path).
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
    /// How --publish and --follow reach the remote (see `heph sync --transport`).
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    pub transport: Transport,
    #[command(flatten)]
    pub canary: super::fleet::CanaryArgs,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Arguments for the binary (after `--`).
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<OsString>,
}

/// Run the command.
pub fn run(args: Args, global: &GlobalArgs, out: &Output) -> Result<u8> {
    let project = open_project(global)?;
    if args.pause || args.resume {
        let req = if args.pause {
            Request::Pause
        } else {
            Request::Resume
        };
        let response = control::request(project.root(), req)?;
        if let Some(s) = &response.status {
            out.json(s);
            out.line(if s.paused {
                "paused: changes are remembered until `heph watch --resume`"
            } else {
                "resumed: watching for changes"
            });
        }
        return Ok(0);
    }
    if !args.args.is_empty() && (args.run.is_some() || args.check_only) {
        return Err(UsageError("arguments after `--` are for --bin".into()).into());
    }
    let config = Config::load(project.root())?;
    let target = if args.check_only {
        RunTarget::CheckOnly
    } else if let Some(cmd) = args.run.clone() {
        RunTarget::Command(cmd)
    } else {
        RunTarget::Bin {
            name: args.bin.clone(),
            args: args.args.clone(),
        }
    };
    if args.check_only && !args.sockets.is_empty() {
        return Err(
            UsageError("--socket needs a program to pass it to (not --check-only)".into()).into(),
        );
    }
    let mut sup = SupervisorOptions::new(project.root().to_path_buf());
    sup.grace = args.grace;
    sup.ready_timeout = args.ready_timeout;
    if let Some(re) = &args.ready_line {
        let re = regex::Regex::new(re)
            .map_err(|e| UsageError(format!("--ready-line: invalid regex: {e}")))?;
        sup.readiness = Readiness::Line(re);
    } else if let Some(d) = args.ready_delay {
        sup.readiness = Readiness::Delay(d);
    }
    let mut opts = WatchOptions::new(target);
    opts.sockets = args.sockets.clone();
    opts.debounce = args
        .debounce
        .or_else(|| config.watch_debounce())
        .unwrap_or(hephaestus_core::watch::DEFAULT_DEBOUNCE);
    opts.supervisor = sup;
    opts.color = out.color;
    opts.history = !args.no_history;
    opts.history_options = crate::project::history_options(out);
    opts.paused = args.start_paused;
    if (args.publish.is_some() || args.follow.is_some()) && args.no_history {
        return Err(UsageError(
            "--publish and --follow share the history: they cannot go with --no-history".into(),
        )
        .into());
    }
    if args.follow_interval.is_zero() {
        return Err(UsageError("--follow-interval must be longer than 0".into()).into());
    }
    opts.fleet = FleetOptions {
        publish: args.publish.clone(),
        follow: args.follow.clone(),
        follow_interval: args.follow_interval,
        instance: args
            .instance
            .clone()
            .unwrap_or_else(|| default_instance(project.root())),
        transport: args.transport.into(),
        canary: args.canary.options(),
        require_signed: match &args.require_signed {
            Some(keys) => Some(
                keys.canonicalize()
                    .map_err(|e| UsageError(format!("--require-signed {}: {e}", keys.display())))?,
            ),
            None => None,
        },
    };
    if let Some(package) = &args.hot {
        let mut hot = HotOptions::new(
            Some(package.clone())
                .filter(|p| !p.is_empty())
                .or_else(|| config.hot.package.clone()),
        );
        hot.policy = config.hot.policy()?;
        if let Some(n) = args.max_panics {
            hot.policy.max_panics = n;
        }
        if let Some(w) = args.panic_window {
            hot.policy.window = w;
        }
        hot.heal = args.heal.or(config.hot.heal).unwrap_or_default();
        opts.hot = Some(hot);
    }
    let session = Session::new(project.clone(), &config, opts)?;
    let handle = session.handle();
    // `--api`: the control API, whose enable/disable resume/pause this session.
    let api = control_api::start(
        &project,
        &config,
        &args.api,
        Arc::new(handle.clone()),
        out,
        false,
    )?;

    // Ctrl-C, SIGTERM, SIGHUP: stop the program and every child, then exit.
    let h = handle.clone();
    ctrlc::set_handler(move || h.quit()).context("cannot install the Ctrl-C handler")?;
    let _keys = if io::stdin().is_terminal() && !out.json {
        keys::listen(handle.clone())
    } else {
        None
    };

    let mut view = View::new(out);
    // `--api`: every event also goes to the API's live stream (the dashboard).
    let result = session.run(&mut |event| {
        if let Some(server) = &api {
            server.publish(event);
        }
        view.show(event);
    });
    if let Some(server) = api {
        server.shutdown();
    }
    result?;
    view.finish();
    Ok(0)
}

/// Renders watch events: indicatif on a terminal, plain lines otherwise, JSON lines
/// with `--json`.
struct View<'a> {
    out: &'a Output,
    bar: Option<ProgressBar>,
    command: String,
    stdout: Arc<Mutex<io::Stdout>>,
}

impl<'a> View<'a> {
    fn new(out: &'a Output) -> Self {
        View {
            out,
            bar: None,
            command: String::new(),
            stdout: Arc::new(Mutex::new(io::stdout())),
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    /// A line on stderr that does not tear the progress bar.
    fn note(&self, text: impl AsRef<str>) {
        if self.out.quiet || self.out.json {
            return;
        }
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{}", text.as_ref())),
            None => eprintln!("{}", text.as_ref()),
        }
    }

    fn error(&self, text: impl AsRef<str>) {
        if self.out.json {
            return;
        }
        let prefix = if self.out.color {
            "\x1b[1;31merror\x1b[0m"
        } else {
            "error"
        };
        let line = format!("{prefix}: {}", text.as_ref());
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    fn heph(&self, text: impl AsRef<str>) {
        let tag = if self.out.color {
            "\x1b[1;36m[heph]\x1b[0m"
        } else {
            "[heph]"
        };
        self.note(format!("{tag} {}", text.as_ref()));
    }

    fn json_line(&self, event: &WatchEvent) {
        if let Ok(text) = serde_json::to_string(event) {
            let mut out = self
                .stdout
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
                // stdout closed (`| head`): keep running quietly.
            }
        }
    }

    fn show(&mut self, event: &WatchEvent) {
        if self.out.json {
            self.json_line(event);
            return;
        }
        match event {
            WatchEvent::Watching {
                monitored_paths,
                rules,
                sockets,
                control,
                program,
                debounce_ms,
                hot,
            } => {
                self.heph(format!(
                    "watching {} ({debounce_ms}ms debounce)",
                    monitored_paths.join(", ")
                ));
                for r in rules {
                    let sig = r
                        .signal
                        .as_deref()
                        .map(|s| format!(" {s}"))
                        .unwrap_or_default();
                    self.heph(format!("rule: {} → {}{sig}", r.paths.join(", "), r.action));
                }
                for s in sockets {
                    self.heph(format!("listening on {} (fd {}, {})", s.addr, s.fd, s.name));
                }
                if let Some(p) = program {
                    self.heph(format!("program: {p}"));
                }
                if let Some(h) = hot {
                    self.heph(format!(
                        "hot crate: {h} (loaded into the running program while its interface is unchanged)"
                    ));
                }
                if let Some(c) = control {
                    self.heph(format!(
                        "control: {} (heph status, heph watch --pause/--resume)",
                        c.display()
                    ));
                }
                if self.out.interactive && io::stdin().is_terminal() {
                    self.heph("keys: r rebuild, p pause/resume, q quit");
                }
            }
            WatchEvent::Changed {
                files,
                rescan,
                paused,
            } => {
                let mut text = if files.len() <= 3 {
                    format!("changed: {}", files.join(", "))
                } else {
                    format!(
                        "changed: {}, … ({} files)",
                        files[..3].join(", "),
                        files.len()
                    )
                };
                if *rescan {
                    text.push_str(" (events were lost: rechecking everything)");
                }
                if *paused {
                    text.push_str(" (paused: waiting for resume)");
                }
                self.heph(text);
            }
            WatchEvent::SyntaxError(p) => {
                self.error(format!(
                    "{}\n  the running program is unchanged; fix the file and save",
                    p.rendered
                ));
            }
            WatchEvent::BuildStarted { command, .. } => {
                self.command = command.clone();
                if self.out.interactive && !self.out.quiet {
                    let bar = ProgressBar::new_spinner();
                    bar.set_style(self.out.progress_style("{spinner:.green} {msg} [{elapsed}]"));
                    bar.set_message(format!("building: {command}"));
                    bar.enable_steady_tick(Duration::from_millis(100));
                    self.bar = Some(bar);
                } else {
                    self.heph(format!("building: {command}"));
                }
            }
            WatchEvent::BuildProgress { done, total, unit } => {
                if let Some(b) = &self.bar {
                    match total {
                        Some(t) => {
                            b.set_style(
                                self.out
                                    .progress_style(
                                        "{spinner:.green} {msg} [{bar:25}] {pos}/{len} [{elapsed}]",
                                    )
                                    .progress_chars("=> "),
                            );
                            b.set_length(*t as u64);
                            b.set_position(*done as u64);
                            b.set_message(format!("building {unit}"));
                        }
                        None => b.set_message(format!(
                            "building: {} ({done} units, {unit})",
                            self.command
                        )),
                    }
                }
            }
            WatchEvent::BuildFinished {
                ok,
                duration_ms,
                errors,
                warnings,
                output,
                command,
            } => {
                self.finish();
                let secs = *duration_ms as f64 / 1000.0;
                let warn = match warnings {
                    0 => String::new(),
                    1 => ", 1 warning".into(),
                    n => format!(", {n} warnings"),
                };
                if *ok {
                    self.heph(format!("built in {secs:.2}s{warn}"));
                } else {
                    for e in errors {
                        self.note(e.trim_end());
                    }
                    if errors.is_empty() && !output.trim().is_empty() {
                        self.note(output.trim_end());
                    }
                    self.error(format!(
                        "build failed ({command}, {secs:.2}s); the running program is unchanged"
                    ));
                }
            }
            WatchEvent::Reloaded {
                generation,
                pid,
                reload_ms,
                first,
            } => {
                let secs = *reload_ms as f64 / 1000.0;
                let Some(pid) = pid else {
                    // It finished already (exit code 0): nothing serves.
                    self.heph(format!(
                        "generation {generation} ran ({secs:.2}s after the change)"
                    ));
                    return;
                };
                let pid = format!(", pid {pid}");
                self.heph(if *first {
                    format!("generation {generation} serving{pid} (started in {secs:.2}s)")
                } else {
                    format!("generation {generation} serving{pid} ({secs:.2}s after the change)")
                });
            }
            WatchEvent::SwapFailed { reason } => self.error(format!("swap failed: {reason}")),
            WatchEvent::Recorded { id, .. } if self.out.verbose > 0 => {
                self.heph(format!("recorded as evolution {id}"));
            }
            WatchEvent::PreStateRecorded { id } => {
                self.heph(format!("recorded the current files as evolution {id}"));
            }
            WatchEvent::Paused => {
                self.heph("paused: changes are remembered; press p or run `heph watch --resume`")
            }
            WatchEvent::Resumed => self.heph("resumed"),
            WatchEvent::Warning { message } => self.out.warn(message),
            WatchEvent::HotRestart { reason } => self.heph(format!("{reason}: restarting")),
            WatchEvent::HotReloaded {
                generation,
                pid,
                reload_ms,
                load_us,
                callbacks,
            } => self.heph(format!(
                "hot reload: generation {generation} serving in pid {pid} ({:.3}s after the change; loaded and checked in {:.2} ms; {callbacks} reload callback{})",
                *reload_ms as f64 / 1000.0,
                *load_us as f64 / 1000.0,
                if *callbacks == 1 { "" } else { "s" }
            )),
            WatchEvent::HotRefused { generation, reason } => self.error(format!(
                "the program refused generation {generation}: {reason}; the running generation keeps serving"
            )),
            WatchEvent::HotPanic {
                generation,
                function,
                message,
                count,
            } => self.out.warn(format!(
                "hot fn {function} panicked in generation {generation} ({count} in the window): {message}"
            )),
            WatchEvent::HotRollback {
                from,
                to,
                panics,
                evolution,
                restored,
                ..
            } => {
                let ev = evolution
                    .as_ref()
                    .map(|e| format!(" (recorded as {e})"))
                    .unwrap_or_default();
                self.heph(format!(
                    "self-healing: generation {from} panicked {panics} times; generation {to} serves again{ev}"
                ));
                if !restored.is_empty() {
                    self.heph(format!("restored the sources of generation {to}: {}", restored.join(", ")));
                }
            }
            WatchEvent::HotCrashed { generation, next } => self.error(match next {
                Some(n) => format!(
                    "the program died while generation {generation} served; it restarts with generation {n}"
                ),
                None => format!("the program died while generation {generation} served"),
            }),
            WatchEvent::Published {
                remote,
                evolution,
                evolutions,
            } => self.heph(format!(
                "published {evolutions} evolution(s) to {remote} (at {})",
                &evolution[..evolution.len().min(7)]
            )),
            WatchEvent::PublishRefused { remote, reason, .. } => {
                self.out.warn(format!("not published to {remote}: {reason}"))
            }
            WatchEvent::FleetUnreachable {
                remote,
                message,
                retry_ms,
            } => self.out.warn(format!(
                "{remote} is unreachable ({message}); the program keeps serving, retrying in {:.1}s",
                *retry_ms as f64 / 1000.0
            )),
            WatchEvent::FleetReachable { remote } => self.heph(format!("{remote} is reachable again")),
            WatchEvent::CanaryFailed { .. } => {
                self.error(super::fleet::describe_canary(event).unwrap_or_default())
            }
            WatchEvent::CanaryStarted { .. } | WatchEvent::CanaryPromoted { .. } => {
                self.heph(super::fleet::describe_canary(event).unwrap_or_default())
            }
            WatchEvent::FollowApplied {
                evolution,
                restored,
                deleted,
            } => {
                let mut files: Vec<&str> = restored.iter().map(String::as_str).collect();
                files.extend(deleted.iter().map(String::as_str));
                self.heph(format!(
                    "following: applying evolution {} ({})",
                    &evolution[..evolution.len().min(7)],
                    files.join(", ")
                ));
            }
            WatchEvent::FollowStopped { remote, reason, .. } => self.error(format!(
                "stopped following {remote}: {reason}; the running program is unchanged"
            )),
            WatchEvent::FleetReported { state, evolution, .. } if self.out.verbose > 0 => {
                self.heph(format!(
                    "fleet status: {state} {}",
                    evolution.as_deref().map_or("-", |e| &e[..e.len().min(7)])
                ))
            }
            WatchEvent::Stopped => self.heph("stopped; no child process left"),
            WatchEvent::Process(p) => self.process(p),
            _ => {}
        }
    }

    fn process(&mut self, event: &SuperviseEvent) {
        match event {
            SuperviseEvent::Output { stream, line, .. } => {
                let print = |line: &str| match stream {
                    Stream::Stdout => {
                        let mut out = self
                            .stdout
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
                    }
                    Stream::Stderr => eprintln!("{line}"),
                };
                match &self.bar {
                    Some(b) => b.suspend(|| print(line)),
                    None => print(line),
                }
            }
            SuperviseEvent::Started { generation, pid } if self.out.verbose > 0 => {
                self.heph(format!("generation {generation} started (pid {pid})"));
            }
            SuperviseEvent::Exited {
                generation, status, ..
            } if !status.success() => {
                self.error(format!("generation {generation} exited ({status})"))
            }
            SuperviseEvent::Finished { generation, .. } => self.heph(format!(
                "generation {generation} finished (exit code 0); waiting for the next change"
            )),
            SuperviseEvent::Restarting { delay, attempt, .. } => self.heph(format!(
                "restarting in {:.2}s (crash #{attempt} in a row)",
                delay.as_secs_f64()
            )),
            SuperviseEvent::StartFailed { generation, reason } => {
                self.error(format!("generation {generation} did not start: {reason}"))
            }
            SuperviseEvent::Stopped {
                generation, killed, ..
            } => {
                if *killed {
                    self.out.warn(format!(
                        "generation {generation} did not stop within the grace period and was killed"
                    ));
                } else if self.out.verbose > 0 {
                    self.heph(format!("generation {generation} stopped"));
                }
            }
            SuperviseEvent::Signalled { signal, pid, .. } => {
                self.heph(format!("sent {signal} to pid {pid}"))
            }
            _ => {}
        }
    }
}
