//! The watch loop's decisions as plain values, with time passed in: how batches of file
//! events are coalesced ([`Coalescer`]), what a batch asks for ([`Pending`]), when the
//! loop acts on it ([`Pending::ready`]), and whether a rebuild can reload the hot crate
//! in place or must swap the process ([`Pending::reload_path`]). The loop in `mod.rs`
//! only wires events to them; the tests here drive them with a fake clock.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::files::{Batch, Change};
use crate::config::RuleAction;
use crate::supervise::Signal;

/// A batch of at least this many changed files is a burst (a branch switch, a code
/// generator): it is built once the files have been quiet for [`BURST_QUIET`].
pub(crate) const BURST_FILES: usize = 32;

/// The quiet that ends a burst: long enough for the stalls of a tool writing many files
/// on a busy machine (a burst of 2,000 files on two cores, a build running beside it,
/// was seen split into five batches by such pauses), short beside a build.
pub(crate) const BURST_QUIET: Duration = Duration::from_millis(100);

/// The longest a batch waits for company.
pub(crate) const COALESCE_MAX: Duration = Duration::from_secs(2);

/// Coalesces the debouncer's batches into one unit of work. The debouncer sends a batch
/// per tick (a quarter of its window) while files keep changing: a single saved file
/// waits one tick for company, a few files a whole window without a batch, and a burst
/// of many (a tool writing them, which a busy machine may stall for tens of
/// milliseconds between two files) [`BURST_QUIET`]; never more than [`COALESCE_MAX`] in
/// all.
#[derive(Debug)]
pub(crate) struct Coalescer {
    batch: Batch,
    debounce: Duration,
    deadline: Instant,
}

impl Coalescer {
    /// Start with the first batch, received at `now`.
    pub(crate) fn new(batch: Batch, debounce: Duration, now: Instant) -> Self {
        Coalescer {
            batch,
            debounce,
            deadline: now + COALESCE_MAX,
        }
    }

    /// How long to wait for another batch at `now`; None: the batch is complete.
    pub(crate) fn wait(&self, now: Instant) -> Option<Duration> {
        if now >= self.deadline {
            return None;
        }
        let n = self.batch.changes.len();
        Some(if n >= BURST_FILES || self.batch.rescan {
            self.debounce.max(BURST_QUIET)
        } else if n > 1 {
            self.debounce.max(Duration::from_millis(10))
        } else {
            (self.debounce / 4).max(Duration::from_millis(2))
        })
    }

    /// Another batch arrived.
    pub(crate) fn add(&mut self, more: Batch) {
        self.batch.changes.extend(more.changes);
        self.batch.rescan |= more.rescan;
        self.batch.errors.extend(more.errors);
    }

    /// The coalesced batch.
    pub(crate) fn finish(self) -> Batch {
        self.batch
    }
}

/// What the changes seen since the last piece of work ask for.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// When the first of them happened (the reload time is measured from it).
    pub(crate) first_change: Option<Instant>,
    pub(crate) rebuild: bool,
    pub(crate) restart: bool,
    pub(crate) signals: Vec<Signal>,
    pub(crate) packages: BTreeSet<String>,
    pub(crate) all_packages: bool,
    /// Files of `rebuild` changes that are not Rust sources (manifests, build scripts,
    /// assets): they cannot be reloaded in place.
    pub(crate) non_rust: BTreeSet<String>,
}

/// What [`Pending::absorb`] found in a batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Absorbed {
    /// The files reported (each once), relative to the root.
    pub(crate) files: Vec<String>,
    /// Rust files to pass through the syntax gate.
    pub(crate) rust: Vec<PathBuf>,
    /// Files whose change is recorded by the next snapshot.
    pub(crate) rebuild_files: Vec<String>,
}

/// How a successful rebuild reaches the running program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReloadPath {
    /// Build the hot crate only and load it into the running process.
    Hot,
    /// Build and swap the process; the reason, for the log (None outside hot mode).
    Restart(Option<String>),
}

impl Pending {
    /// Work to do at the session's start: build everything.
    pub(crate) fn initial(now: Instant) -> Self {
        Pending {
            first_change: Some(now),
            rebuild: true,
            all_packages: true,
            ..Pending::default()
        }
    }

    /// An explicit rebuild (key `r`, the control socket) at `now`.
    pub(crate) fn rebuild_all(&mut self, now: Instant) {
        self.rebuild = true;
        self.all_packages = true;
        self.first_change.get_or_insert(now);
    }

    /// Nothing to do?
    pub(crate) fn is_empty(&self) -> bool {
        !self.rebuild && !self.restart && self.signals.is_empty()
    }

    /// Should the loop act now?
    pub(crate) fn ready(&self, paused: bool, cancelled: bool) -> bool {
        !self.is_empty() && !paused && !cancelled
    }

    /// Take in a coalesced batch received at `now`; `sources` lists every Rust source
    /// (rechecked after the watcher lost events).
    pub(crate) fn absorb(
        &mut self,
        batch: Batch,
        now: Instant,
        sources: impl FnOnce() -> Vec<PathBuf>,
    ) -> Absorbed {
        let mut out = Absorbed::default();
        let mut seen = BTreeSet::new();
        for c in batch.changes {
            if !seen.insert(c.path.clone()) {
                continue;
            }
            out.files.push(c.rel.clone());
            self.take(c, &mut out);
        }
        if batch.rescan {
            // Events were lost: recheck every source file and rebuild everything.
            self.rebuild = true;
            self.all_packages = true;
            self.non_rust.insert("(events lost)".to_owned());
            out.rust.extend(sources());
        }
        if !out.files.is_empty() || batch.rescan {
            self.first_change.get_or_insert(now);
        }
        out
    }

    fn take(&mut self, c: Change, out: &mut Absorbed) {
        match c.action {
            RuleAction::Rebuild => {
                self.rebuild = true;
                match &c.package {
                    Some(p) => {
                        self.packages.insert(p.clone());
                    }
                    None => self.all_packages = true,
                }
                if c.is_rust() {
                    out.rust.push(c.path.clone());
                } else {
                    self.non_rust.insert(c.rel.clone());
                }
                out.rebuild_files.push(c.rel);
            }
            RuleAction::Restart => self.restart = true,
            RuleAction::Signal => {
                let sig = c.signal.unwrap_or(Signal::HUP);
                if !self.signals.contains(&sig) {
                    self.signals.push(sig);
                }
            }
            RuleAction::Ignore => {}
        }
    }

    /// In hot mode with hot crate `hot`: can this rebuild be loaded in place? Only Rust
    /// sources of the hot crate may have changed, and a program must be running;
    /// `interface` then says whether the hot crate's interface is unchanged (None) or
    /// why not. Outside hot mode (`hot` None) it is always a restart.
    pub(crate) fn reload_path(
        &self,
        hot: Option<&str>,
        running: bool,
        interface: impl FnOnce() -> Option<String>,
    ) -> ReloadPath {
        let Some(hot) = hot else {
            return ReloadPath::Restart(None);
        };
        let why = if !running {
            Some("no program is running".to_owned())
        } else if self.restart {
            Some("a restart rule matched".to_owned())
        } else if self.all_packages {
            Some("the change concerns every package".to_owned())
        } else if let Some(other) = self.packages.iter().find(|p| *p != hot) {
            Some(format!(
                "package {other} changed (only {hot} reloads in place)"
            ))
        } else if let Some(file) = self.non_rust.iter().next() {
            Some(format!("{file} changed"))
        } else {
            interface()
        };
        match why {
            None => ReloadPath::Hot,
            Some(why) => ReloadPath::Restart(Some(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(rel: &str, action: RuleAction, package: Option<&str>) -> Change {
        Change {
            path: PathBuf::from("/p").join(rel),
            rel: rel.to_owned(),
            action,
            signal: None,
            package: package.map(str::to_owned),
        }
    }

    fn batch(n: usize) -> Batch {
        Batch {
            changes: (0..n)
                .map(|i| change(&format!("src/f{i}.rs"), RuleAction::Rebuild, Some("app")))
                .collect(),
            ..Batch::default()
        }
    }

    #[test]
    fn one_file_waits_a_quarter_window_a_few_a_window_a_burst_the_burst_quiet() {
        let t = Instant::now();
        let d = Duration::from_millis(40);
        assert_eq!(
            Coalescer::new(batch(1), d, t).wait(t),
            Some(Duration::from_millis(10))
        );
        assert_eq!(Coalescer::new(batch(3), d, t).wait(t), Some(d));
        assert_eq!(
            Coalescer::new(batch(BURST_FILES), d, t).wait(t),
            Some(BURST_QUIET)
        );
        let rescan = Batch {
            rescan: true,
            ..Batch::default()
        };
        assert_eq!(Coalescer::new(rescan, d, t).wait(t), Some(BURST_QUIET));
        // Floors for tiny windows.
        let tiny = Duration::from_millis(1);
        assert_eq!(
            Coalescer::new(batch(1), tiny, t).wait(t),
            Some(Duration::from_millis(2))
        );
        assert_eq!(
            Coalescer::new(batch(2), tiny, t).wait(t),
            Some(Duration::from_millis(10))
        );
    }

    #[test]
    fn a_batch_grows_into_a_burst_and_stops_waiting_after_two_seconds() {
        let t = Instant::now();
        let d = Duration::from_millis(10);
        let mut c = Coalescer::new(batch(1), d, t);
        c.add(batch(40));
        assert_eq!(c.wait(t + Duration::from_millis(500)), Some(BURST_QUIET));
        assert_eq!(
            c.wait(t + COALESCE_MAX - Duration::from_millis(1)),
            Some(BURST_QUIET)
        );
        assert_eq!(c.wait(t + COALESCE_MAX), None);
        assert_eq!(c.finish().changes.len(), 41);
    }

    #[test]
    fn absorb_reports_each_file_once_and_sorts_rules() {
        let t = Instant::now();
        let mut p = Pending::default();
        let mut hup = change("config/a.toml", RuleAction::Signal, None);
        hup.signal = Some(Signal::HUP);
        let b = Batch {
            changes: vec![
                change("src/a.rs", RuleAction::Rebuild, Some("app")),
                change("src/a.rs", RuleAction::Rebuild, Some("app")),
                change("Cargo.toml", RuleAction::Rebuild, Some("app")),
                hup.clone(),
                hup,
                change("assets/x", RuleAction::Restart, None),
            ],
            ..Batch::default()
        };
        let got = p.absorb(b, t, Vec::new);
        assert_eq!(
            got.files,
            ["src/a.rs", "Cargo.toml", "config/a.toml", "assets/x"]
        );
        assert_eq!(got.rust, [PathBuf::from("/p/src/a.rs")]);
        assert_eq!(got.rebuild_files, ["src/a.rs", "Cargo.toml"]);
        assert!(p.rebuild && p.restart);
        assert_eq!(p.signals, [Signal::HUP]);
        assert_eq!(p.packages.iter().collect::<Vec<_>>(), ["app"]);
        assert!(p.non_rust.contains("Cargo.toml"));
        assert_eq!(p.first_change, Some(t));
        // A later batch keeps the first change's time.
        p.absorb(batch(1), t + Duration::from_secs(1), Vec::new);
        assert_eq!(p.first_change, Some(t));
    }

    #[test]
    fn a_rescan_rebuilds_everything_and_rechecks_every_source() {
        let t = Instant::now();
        let mut p = Pending::default();
        let got = p.absorb(
            Batch {
                rescan: true,
                ..Batch::default()
            },
            t,
            || vec![PathBuf::from("/p/src/main.rs")],
        );
        assert!(p.rebuild && p.all_packages);
        assert_eq!(got.rust, [PathBuf::from("/p/src/main.rs")]);
        assert_eq!(p.first_change, Some(t));
    }

    #[test]
    fn nothing_is_done_while_paused_cancelled_or_empty() {
        let mut p = Pending::default();
        assert!(!p.ready(false, false));
        p.rebuild_all(Instant::now());
        assert!(p.ready(false, false));
        assert!(!p.ready(true, false));
        assert!(!p.ready(false, true));
        let t = Instant::now();
        let first = Pending::initial(t);
        assert!(first.ready(false, false));
        assert_eq!(
            first.first_change,
            Some(t),
            "the first reload is timed from the start"
        );
        assert!(first.rebuild && first.all_packages);
    }

    #[test]
    fn only_rust_changes_of_the_hot_crate_with_the_same_interface_reload_in_place() {
        let t = Instant::now();
        let hot = |p: &Pending, running: bool, iface: Option<&str>| {
            p.reload_path(Some("render"), running, || iface.map(str::to_owned))
        };
        let mut p = Pending::default();
        p.absorb(
            Batch {
                changes: vec![change(
                    "render/src/lib.rs",
                    RuleAction::Rebuild,
                    Some("render"),
                )],
                ..Batch::default()
            },
            t,
            Vec::new,
        );
        assert_eq!(hot(&p, true, None), ReloadPath::Hot);
        assert_eq!(
            hot(&p, true, Some("struct Stats gained a field `misses`")),
            ReloadPath::Restart(Some("struct Stats gained a field `misses`".into()))
        );
        assert_eq!(
            hot(&p, false, None),
            ReloadPath::Restart(Some("no program is running".into()))
        );
        assert_eq!(
            p.reload_path(None, true, || None),
            ReloadPath::Restart(None)
        );

        let mut host = Pending::default();
        host.absorb(
            Batch {
                changes: vec![change("src/main.rs", RuleAction::Rebuild, Some("host"))],
                ..Batch::default()
            },
            t,
            Vec::new,
        );
        assert_eq!(
            hot(&host, true, None),
            ReloadPath::Restart(Some(
                "package host changed (only render reloads in place)".into()
            ))
        );

        let mut manifest = Pending::default();
        manifest.absorb(
            Batch {
                changes: vec![change(
                    "render/Cargo.toml",
                    RuleAction::Rebuild,
                    Some("render"),
                )],
                ..Batch::default()
            },
            t,
            Vec::new,
        );
        assert_eq!(
            hot(&manifest, true, None),
            ReloadPath::Restart(Some("render/Cargo.toml changed".into()))
        );
        assert_eq!(
            hot(&Pending::initial(t), true, None),
            ReloadPath::Restart(Some("the change concerns every package".into()))
        );
        let mut rule = Pending::default();
        rule.absorb(
            Batch {
                changes: vec![change("assets/x", RuleAction::Restart, None)],
                ..Batch::default()
            },
            t,
            Vec::new,
        );
        assert_eq!(
            hot(&rule, true, None),
            ReloadPath::Restart(Some("a restart rule matched".into()))
        );
    }
}
