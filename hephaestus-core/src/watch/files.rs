//! Which files `heph watch` watches, what a change of each one means, and the
//! notify-debouncer-full watcher that reports them in batches.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use notify_debouncer_full::notify::event::{MetadataKind, ModifyKind};
use notify_debouncer_full::notify::{EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use serde::Serialize;

use super::WatchError;
use crate::config::{RuleAction, WatchConfig};
use crate::project::Project;
use crate::supervise::{Signal, parse_signal};

/// The default debounce window: the quiet time that ends a batch of file events.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(10);

/// A `[[watch.rule]]`, compiled.
#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    /// The glob patterns, relative to the project root.
    pub paths: Vec<String>,
    /// The action.
    pub action: RuleAction,
    /// The signal of a `signal` rule.
    pub signal: Option<Signal>,
    #[serde(skip)]
    set: GlobSet,
}

/// What a changed file asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The file (absolute).
    pub path: PathBuf,
    /// The file relative to the project root, `/`-separated.
    pub rel: String,
    /// What to do (never `Ignore`: ignored files are not reported).
    pub action: RuleAction,
    /// The signal of a `signal` rule.
    pub signal: Option<Signal>,
    /// The package whose directory holds the file (None: the workspace root, such as
    /// the root Cargo.lock, which concerns every package).
    pub package: Option<String>,
}

impl Change {
    /// Is it a Rust source file?
    pub fn is_rust(&self) -> bool {
        self.path.extension().is_some_and(|e| e == "rs")
    }
}

/// One debounced batch of changes.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The changes, one per file, in path order.
    pub changes: Vec<Change>,
    /// The watcher lost events (an inotify queue overflow): treat everything as changed.
    pub rescan: bool,
    /// Errors the watcher reported.
    pub errors: Vec<String>,
}

impl Batch {
    /// Nothing to do?
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && !self.rescan && self.errors.is_empty()
    }
}

/// What to watch in a project and how to classify a changed path.
#[derive(Debug, Clone)]
pub struct WatchPlan {
    root: PathBuf,
    target_dir: PathBuf,
    recursive: Vec<PathBuf>,
    flat: Vec<PathBuf>,
    packages: Vec<(String, PathBuf)>,
    source_dirs: Vec<PathBuf>,
    gitignores: Vec<Gitignore>,
    rules: Vec<Rule>,
}

impl WatchPlan {
    /// The plan for `project` with the `[watch]` configuration: every package's source
    /// directories (recursively), the root and package directories (for Cargo.toml,
    /// Cargo.lock, build.rs), and the literal directories of the rules' patterns.
    pub fn new(project: &Project, config: &WatchConfig) -> Result<WatchPlan, WatchError> {
        let root = project.root().to_path_buf();
        let target_dir = project.target_dir().to_path_buf();
        let mut rules = Vec::new();
        for (i, r) in config.rules.iter().enumerate() {
            let mut b = GlobSetBuilder::new();
            for p in &r.paths {
                let glob = GlobBuilder::new(p.trim_start_matches("./"))
                    .literal_separator(true)
                    .build()
                    .map_err(|e| WatchError::Rule {
                        index: i + 1,
                        message: format!("invalid pattern `{p}`: {e}"),
                    })?;
                b.add(glob);
            }
            let set = b.build().map_err(|e| WatchError::Rule {
                index: i + 1,
                message: e.to_string(),
            })?;
            let signal = match (&r.signal, r.action) {
                (Some(s), RuleAction::Signal) => Some(parse_signal(s)?),
                (None, RuleAction::Signal) => Some(Signal::HUP),
                _ => None,
            };
            rules.push(Rule {
                paths: r.paths.clone(),
                action: r.action,
                signal,
                set,
            });
        }

        let mut flat = vec![root.clone()];
        let mut recursive = Vec::new();
        let mut packages = Vec::new();
        let mut source_dirs = Vec::new();
        for pkg in project.packages() {
            packages.push((pkg.name.clone(), pkg.dir.clone()));
            flat.push(pkg.dir.clone());
            for t in &pkg.targets {
                if let Some(dir) = t.root.parent() {
                    source_dirs.push(dir.to_path_buf());
                }
            }
        }
        // Deepest package directory first, so a file maps to its innermost package.
        packages.sort_by_key(|(_, d)| std::cmp::Reverse(d.components().count()));
        source_dirs = topmost(source_dirs);
        recursive.extend(source_dirs.iter().cloned());
        for rule in &rules {
            if rule.action == RuleAction::Ignore {
                continue;
            }
            for p in &rule.paths {
                let prefix = literal_prefix(p);
                let dir = root.join(&prefix);
                if prefix.as_os_str().is_empty() {
                    continue;
                } else if dir.is_dir() {
                    recursive.push(dir);
                } else if let Some(parent) = dir.parent()
                    && parent.is_dir()
                {
                    flat.push(parent.to_path_buf());
                }
            }
        }
        let recursive: Vec<PathBuf> = topmost(recursive)
            .into_iter()
            .filter(|d| d.starts_with(&root) && !d.starts_with(&target_dir))
            .collect();
        let mut flat: Vec<PathBuf> = flat
            .into_iter()
            .filter(|d| !recursive.iter().any(|r| d.starts_with(r)))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        flat.retain(|d| !d.starts_with(&target_dir) || d == &root);

        let mut gitignores = Vec::new();
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        dirs.insert(root.clone());
        dirs.extend(packages.iter().map(|(_, d)| d.clone()));
        for dir in dirs {
            let mut b = GitignoreBuilder::new(&dir);
            let mut any = false;
            for file in [dir.join(".gitignore"), dir.join(".git/info/exclude")] {
                if file.is_file() {
                    // A malformed line is skipped; the rest of the file still applies.
                    let _ = b.add(file);
                    any = true;
                }
            }
            if any && let Ok(g) = b.build() {
                gitignores.push(g);
            }
        }
        Ok(WatchPlan {
            root,
            target_dir,
            recursive,
            flat,
            packages,
            source_dirs,
            gitignores,
            rules,
        })
    }

    /// The project root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The compiled rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// What is watched, relative to the root: `src/**` for recursive directories,
    /// `./` or `pkg/` for a directory's own files.
    pub fn monitored_paths(&self) -> Vec<String> {
        let rel = |p: &Path| {
            let r = p.strip_prefix(&self.root).unwrap_or(p);
            r.components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/")
        };
        let mut out: Vec<String> = self
            .recursive
            .iter()
            .map(|d| {
                let r = rel(d);
                if r.is_empty() {
                    "**".to_owned()
                } else {
                    format!("{r}/**")
                }
            })
            .collect();
        out.extend(self.flat.iter().map(|d| {
            let r = rel(d);
            if r.is_empty() {
                "./".to_owned()
            } else {
                format!("{r}/")
            }
        }));
        out
    }

    /// Every Rust source file under the source directories (honouring .gitignore),
    /// for a full rescan.
    pub fn rust_sources(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for dir in &self.source_dirs {
            for entry in ignore::WalkBuilder::new(dir)
                .hidden(false)
                .build()
                .flatten()
            {
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "rs")
                    && entry.file_type().is_some_and(|t| t.is_file())
                    && self.classify(p).is_some()
                {
                    out.push(p.to_path_buf());
                }
            }
        }
        out.sort();
        out
    }

    /// What a change of `path` means, or None when it is ignored (build output,
    /// `.heph/`, `.git/`, editor temp files, .gitignore'd files, files no rule or
    /// default concerns).
    pub fn classify(&self, path: &Path) -> Option<Change> {
        if !path.starts_with(&self.root) || path.starts_with(&self.target_dir) {
            return None;
        }
        let rel_path = path.strip_prefix(&self.root).ok()?;
        if rel_path.as_os_str().is_empty() {
            return None;
        }
        for (i, c) in rel_path.components().enumerate() {
            if let Component::Normal(n) = c
                && (n == ".heph" || n == ".git" || (i == 0 && n == "target"))
            {
                return None;
            }
        }
        let name = path.file_name()?.to_string_lossy();
        if is_editor_temp(&name) {
            return None;
        }
        if path.is_dir() {
            return None;
        }
        let rel = rel_path
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        let package = self
            .packages
            .iter()
            .find(|(_, d)| path.starts_with(d) && d != &self.root)
            .or_else(|| self.packages.iter().find(|(_, d)| d == &self.root))
            .map(|(n, _)| n.clone());
        let change = |action, signal| Change {
            path: path.to_path_buf(),
            rel: rel.clone(),
            action,
            signal,
            package: package.clone(),
        };
        if let Some(rule) = self.rules.iter().find(|r| r.set.is_match(rel_path)) {
            return match rule.action {
                RuleAction::Ignore => None,
                action => Some(change(action, rule.signal)),
            };
        }
        if self.is_gitignored(path) {
            return None;
        }
        let in_sources = self.source_dirs.iter().any(|d| path.starts_with(d));
        let is_manifest = name == "Cargo.toml" || name == "Cargo.lock";
        let is_build_script = name == "build.rs"
            && self
                .packages
                .iter()
                .any(|(_, d)| path.parent() == Some(d.as_path()));
        if in_sources || is_manifest || is_build_script {
            let mut c = change(RuleAction::Rebuild, None);
            if is_manifest && path.parent() == Some(self.root.as_path()) && name == "Cargo.lock" {
                c.package = None;
            }
            return Some(c);
        }
        None
    }

    fn is_gitignored(&self, path: &Path) -> bool {
        let mut ignored = false;
        // Later (deeper) files override earlier ones, as in git.
        for g in &self.gitignores {
            if path.starts_with(g.path()) {
                let m = g.matched_path_or_any_parents(path, false);
                if m.is_ignore() {
                    ignored = true;
                } else if m.is_whitelist() {
                    ignored = false;
                }
            }
        }
        ignored
    }
}

/// Editor swap, backup and temp files, and heph's own atomic-write temp files.
pub fn is_editor_temp(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with('~')
        || lower.starts_with(".#")
        || (lower.starts_with('#') && lower.ends_with('#'))
        || [
            ".swp",
            ".swo",
            ".swx",
            ".swpx",
            ".tmp",
            ".bak",
            ".orig",
            ".kate-swp",
            ".crswap",
        ]
        .iter()
        .any(|s| lower.ends_with(s))
        || lower.contains("___jb_")
        || lower == "4913"
        || lower.starts_with(".heph-")
        || (lower.len() == 9
            && lower.starts_with("sed")
            && lower[3..].chars().all(|c| c.is_ascii_alphanumeric()))
        || lower == ".ds_store"
}

/// Does an event change a file (as opposed to reading it)?
fn is_write(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(m)) => {
            !matches!(m, MetadataKind::AccessTime | MetadataKind::Ownership)
        }
        _ => true,
    }
}

/// The directories among `dirs` that are not inside another one, deduplicated.
fn topmost(dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    let set: BTreeSet<PathBuf> = dirs.into_iter().collect();
    let mut out: Vec<PathBuf> = Vec::new();
    for d in set {
        if !out.iter().any(|o| d.starts_with(o)) {
            out.push(d);
        }
    }
    out
}

/// The leading components of a glob without glob characters (`config/**` → `config`).
fn literal_prefix(pattern: &str) -> PathBuf {
    let mut out = PathBuf::new();
    let comps: Vec<&str> = pattern.trim_start_matches("./").split('/').collect();
    for (i, c) in comps.iter().enumerate() {
        if c.contains(['*', '?', '[', '{']) {
            return out;
        }
        if i + 1 == comps.len() {
            // The last component is a file name or a directory: keep it, the caller checks.
            out.push(c);
            return out;
        }
        out.push(c);
    }
    out
}

/// A running file watcher (notify-debouncer-full). Dropping it stops watching.
pub struct Watcher {
    _debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
    plan: Arc<WatchPlan>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").field("plan", &self.plan).finish()
    }
}

impl Watcher {
    /// Watch what `plan` names, calling `on_change` from the watcher's thread with
    /// each non-empty debounced batch.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use hephaestus_core::{Config, Project};
    /// use hephaestus_core::watch::{WatchPlan, Watcher};
    ///
    /// let project = Project::open(".".as_ref())?;
    /// let plan = WatchPlan::new(&project, &Config::default().watch)?;
    /// let _watcher = Watcher::new(plan, Duration::from_millis(50), |batch| {
    ///     for change in &batch.changes {
    ///         println!("{} → {}", change.rel, change.action.as_str());
    ///     }
    /// })?;
    /// std::thread::sleep(Duration::from_secs(60));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(
        plan: WatchPlan,
        debounce: Duration,
        mut on_change: impl FnMut(Batch) + Send + 'static,
    ) -> Result<Watcher, WatchError> {
        let plan = Arc::new(plan);
        let p = Arc::clone(&plan);
        let debounce = debounce.max(Duration::from_millis(1));
        let mut debouncer = new_debouncer(debounce, None, move |result: DebounceEventResult| {
            let mut batch = Batch::default();
            let mut seen = BTreeSet::new();
            match result {
                Ok(events) => {
                    for ev in events {
                        if ev.event.need_rescan() {
                            batch.rescan = true;
                        }
                        if !is_write(&ev.event.kind) {
                            // Reads (cargo opening sources) are not changes.
                            continue;
                        }
                        for path in &ev.event.paths {
                            if seen.insert(path.clone())
                                && let Some(c) = p.classify(path)
                            {
                                batch.changes.push(c);
                            }
                        }
                    }
                }
                Err(errors) => {
                    for e in errors {
                        if matches!(
                            e.kind,
                            notify_debouncer_full::notify::ErrorKind::MaxFilesWatch
                        ) {
                            batch.rescan = true;
                        }
                        batch.errors.push(e.to_string());
                    }
                }
            }
            batch.changes.sort_by(|a, b| a.path.cmp(&b.path));
            if !batch.is_empty() {
                on_change(batch);
            }
        })
        .map_err(|e| WatchError::Notify(e.to_string()))?;
        for dir in &plan.recursive {
            debouncer
                .watch(dir, RecursiveMode::Recursive)
                .map_err(|e| WatchError::Watch {
                    path: dir.clone(),
                    message: e.to_string(),
                })?;
        }
        for dir in &plan.flat {
            debouncer
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|e| WatchError::Watch {
                    path: dir.clone(),
                    message: e.to_string(),
                })?;
        }
        Ok(Watcher {
            _debouncer: debouncer,
            plan,
        })
    }

    /// The plan being watched.
    pub fn plan(&self) -> &WatchPlan {
        &self.plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn editor_temp_files_are_recognised() {
        for name in [
            ".main.rs.swp",
            "main.rs~",
            ".#main.rs",
            "#main.rs#",
            "4913",
            "main.rs.tmp",
            ".heph-abc.tmp",
            "sedAb12Cd",
            "main.rs___jb_tmp___",
        ] {
            assert!(is_editor_temp(name), "{name}");
        }
        for name in ["main.rs", "Cargo.toml", "sed.rs", "config.toml"] {
            assert!(!is_editor_temp(name), "{name}");
        }
    }

    #[test]
    fn changes_are_classified_by_rules_gitignore_and_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let write = |rel: &str, text: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        };
        write(
            "Cargo.toml",
            "[package]\nname = \"demo\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
        );
        write("src/main.rs", "fn main() {}\n");
        write("config/app.toml", "x = 1\n");
        write("config/local.toml", "x = 2\n");
        write("static/index.html", "<p>\n");
        write(".gitignore", "/generated/\n*.log\nconfig/local.toml\n");
        let project = Project::open(root).expect("project");
        let config: crate::Config = toml::from_str(
            "[[watch.rule]]\npaths = [\"config/**\"]\naction = \"signal\"\nsignal = \"USR1\"\n\
             [[watch.rule]]\npaths = [\"static/**\"]\naction = \"restart\"\n\
             [[watch.rule]]\npaths = [\"src/scratch/**\"]\naction = \"ignore\"\n",
        )
        .expect("config");
        let plan = WatchPlan::new(&project, &config.watch).expect("plan");
        let root = project.root();
        let action = |rel: &str| plan.classify(&root.join(rel)).map(|c| c.action);
        for (rel, want) in [
            ("src/main.rs", Some(RuleAction::Rebuild)),
            ("src/deep/new_module.rs", Some(RuleAction::Rebuild)),
            ("src/data.json", Some(RuleAction::Rebuild)),
            ("Cargo.toml", Some(RuleAction::Rebuild)),
            ("Cargo.lock", Some(RuleAction::Rebuild)),
            ("build.rs", Some(RuleAction::Rebuild)),
            ("config/app.toml", Some(RuleAction::Signal)),
            // A rule wins over .gitignore.
            ("config/local.toml", Some(RuleAction::Signal)),
            ("static/index.html", Some(RuleAction::Restart)),
            ("src/scratch/try.rs", None),
            ("src/.main.rs.swp", None),
            ("src/main.rs~", None),
            ("src/4913", None),
            ("src/app.log", None),
            ("generated/x.rs", None),
            ("target/debug/demo", None),
            (".heph/lock", None),
            (".git/index", None),
            ("README.md", None),
        ] {
            assert_eq!(action(rel), want, "{rel}");
        }
        let sig = plan
            .classify(&root.join("config/app.toml"))
            .expect("signal");
        assert_eq!(sig.signal.map(|s| s.as_str()), Some("SIGUSR1"));
        assert_eq!(sig.package.as_deref(), Some("demo"));
        let watched = plan.monitored_paths();
        assert!(watched.contains(&"src/**".to_owned()), "{watched:?}");
        assert!(watched.contains(&"config/**".to_owned()), "{watched:?}");
        assert!(watched.contains(&"./".to_owned()), "{watched:?}");
        assert_eq!(plan.rust_sources(), vec![root.join("src/main.rs")]);
    }

    #[test]
    fn literal_prefixes() {
        assert_eq!(literal_prefix("config/**"), PathBuf::from("config"));
        assert_eq!(literal_prefix("./a/b/*.toml"), PathBuf::from("a/b"));
        assert_eq!(literal_prefix("*.sql"), PathBuf::new());
        assert_eq!(
            literal_prefix("static/index.html"),
            PathBuf::from("static/index.html")
        );
    }
}
