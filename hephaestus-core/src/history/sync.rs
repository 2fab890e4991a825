//! `heph sync REMOTE`: share the project's history reference through a git remote.
//!
//! Each project shares its own reference ([`super::refs`]: `refs/heph/history` at the
//! root, `refs/heph/projects/FOLDER/history` for a sub-folder project...), under the
//! same name on the remote, so the projects of one repository share one remote without
//! mixing their histories. The remote's history is fetched into
//! `refs/heph/remotes/NAME/` and the same suffix (`refs/heph/remotes/NAME/history` at
//! the root); then the local
//! history is fast-forwarded when it is behind, pushed when the remote is behind, and
//! left alone (reported) when the two diverged. Nothing is ever force-pushed or reset.
//!
//! The network goes through libgit2 (git2) for every protocol this build of it has:
//! paths, `file://` and `git://` always, `ssh` and `https` with the cargo features of the
//! same names (they link OpenSSL, which every heph process would pay for at start-up).
//! Remotes whose protocol it lacks go through the git CLI (`git fetch`, `git push`),
//! with the user's ssh configuration, agent and credential helpers; that git runs with
//! hooks, automatic maintenance and FETCH_HEAD turned off, in the C locale, and only
//! the refs named here change. [`SyncTransport`] forces one or the other.

use git2::{AutotagOption, FetchOptions, Oid, Remote, Repository};
use serde::Serialize;

use super::refs::read_ref;
use super::transport::{
    AlsoFetch, callbacks, fetch_cli, fetch_command, fetch_libgit2, git_message, libgit2_reaches,
    libgit2_remote, looks_like_url, push_cli, push_libgit2, push_spec_cli, push_spec_libgit2,
    run_git, url_component,
};
use super::{History, HistoryError};
use crate::evolution::{EvolutionKind, EvolutionMeta};

/// How a sync ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum SyncOutcome {
    /// Neither side has a history.
    Empty,
    /// Both sides point at the same evolution.
    UpToDate,
    /// The local history was behind and now includes the remote's evolutions. The files
    /// of the project were not changed (`heph rollback` applies a fetched state).
    FastForwarded {
        /// How many evolutions arrived.
        evolutions: usize,
    },
    /// The remote was behind and received the local evolutions.
    Pushed {
        /// How many evolutions were sent.
        evolutions: usize,
    },
    /// Both sides have evolutions the other lacks; nothing was changed.
    Diverged {
        /// Local evolutions the remote lacks.
        ahead: usize,
        /// Remote evolutions the local history lacks.
        behind: usize,
        /// The last evolution both share, if any.
        merge_base: Option<String>,
    },
    /// The histories diverged and were joined as asked ([`SyncResolve`]): a merge
    /// evolution whose first parent is the side kept (its files are the merge's) and
    /// whose second is the other (kept reachable: nothing is lost), then pushed.
    Merged {
        /// Which side's files the merge holds: `local` or `remote`.
        kept: SyncSide,
        /// Local evolutions the remote lacked.
        ahead: usize,
        /// Remote evolutions the local history lacked.
        behind: usize,
        /// The last evolution both shared, if any.
        merge_base: Option<String>,
        /// The merge evolution's id (the local history's new tip).
        evolution: String,
        /// The remote's refusal of the push, if it refused (the merge stays local).
        push_rejected: Option<String>,
    },
    /// The remote refused the push (e.g. someone pushed in between); nothing was changed.
    PushRejected {
        /// The server's reason.
        reason: String,
    },
}

impl SyncOutcome {
    /// True when the two histories are now the same.
    pub fn is_in_sync(&self) -> bool {
        matches!(
            self,
            SyncOutcome::Empty
                | SyncOutcome::UpToDate
                | SyncOutcome::FastForwarded { .. }
                | SyncOutcome::Pushed { .. }
        ) || matches!(
            self,
            SyncOutcome::Merged {
                push_rejected: None,
                ..
            }
        )
    }
}

/// One side of a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncSide {
    /// This project's history.
    Local,
    /// The remote's history.
    Remote,
}

/// What `heph sync` does when the two histories diverged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncResolve {
    /// Report the divergence and change nothing.
    #[default]
    Report,
    /// Join the histories with a merge evolution holding this side's files (the other
    /// side's evolutions stay in the history, reachable through the merge's second
    /// parent, and any of them can be restored with `heph rollback`), then push.
    Keep(SyncSide),
}

/// What `heph sync` did.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    /// The remote as given (a name or a URL).
    pub remote: String,
    /// The local reference holding the remote's history.
    pub tracking_ref: String,
    /// The local history's tip before the sync.
    pub local_before: Option<String>,
    /// The remote history's tip as fetched.
    pub remote_tip: Option<String>,
    /// The local history's tip after the sync.
    pub local_after: Option<String>,
    /// How the remote was reached: [`SyncTransport::Libgit2`] or [`SyncTransport::Git`].
    pub transport: SyncTransport,
    /// What happened.
    #[serde(flatten)]
    pub outcome: SyncOutcome,
}

/// How `heph sync` reaches the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncTransport {
    /// libgit2 when this build has the remote's protocol, the git CLI otherwise.
    #[default]
    Auto,
    /// libgit2 only (an error for a protocol this build lacks).
    Libgit2,
    /// The git CLI (`git fetch`, `git push`), whatever the protocol.
    Git,
}

impl History {
    /// `heph sync REMOTE`, under the writer lock: fetch the remote's history, then
    /// fast-forward, push, or report the divergence. `remote` is the name of a remote of
    /// the project's repository, or a URL or path.
    pub fn sync(&mut self, remote: &str) -> Result<SyncReport, HistoryError> {
        self.sync_with(remote, SyncTransport::Auto)
    }

    /// [`History::sync`] with a chosen [`SyncTransport`].
    pub fn sync_with(
        &mut self,
        remote: &str,
        transport: SyncTransport,
    ) -> Result<SyncReport, HistoryError> {
        self.sync_resolving(remote, transport, SyncResolve::Report)
    }

    /// [`History::sync_with`], settling a divergence as `resolve` says. The project's
    /// files are never written: after keeping the remote's side, `heph rollback` of the
    /// merge evolution applies its files.
    pub fn sync_resolving(
        &mut self,
        remote: &str,
        transport: SyncTransport,
        resolve: SyncResolve,
    ) -> Result<SyncReport, HistoryError> {
        let _lock = self.lock("sync")?;
        let Fetched {
            handle,
            cli,
            name,
            tracking_ref,
            local,
            theirs,
        } = self.fetch_locked(remote, transport)?;
        let repo = self.repo_ref()?;
        let hex = |o: Option<Oid>| o.map(|o| o.to_string());
        let mut report = SyncReport {
            remote: remote.to_owned(),
            tracking_ref: tracking_ref.clone(),
            local_before: hex(local),
            remote_tip: hex(theirs),
            local_after: hex(local),
            transport: if cli {
                SyncTransport::Git
            } else {
                SyncTransport::Libgit2
            },
            outcome: SyncOutcome::UpToDate,
        };
        report.outcome = match (local, theirs) {
            (None, None) => SyncOutcome::Empty,
            (Some(l), Some(r)) if l == r => SyncOutcome::UpToDate,
            (None, Some(r)) => {
                self.update_ref(&name, r, || {
                    repo.reference(&name, r, false, "heph sync: fast-forward")
                })?;
                report.local_after = hex(Some(r));
                SyncOutcome::FastForwarded {
                    evolutions: count(repo, r, None)?,
                }
            }
            (Some(l), Some(r)) if repo.graph_descendant_of(r, l).unwrap_or(false) => {
                self.update_ref(&name, r, || {
                    repo.reference_matching(&name, r, true, l, "heph sync: fast-forward")
                })?;
                report.local_after = hex(Some(r));
                SyncOutcome::FastForwarded {
                    evolutions: count(repo, r, Some(l))?,
                }
            }
            (Some(l), r) if r.is_none_or(|r| repo.graph_descendant_of(l, r).unwrap_or(false)) => {
                let rejected = if cli {
                    push_cli(repo, &handle, &name)?
                } else {
                    push_libgit2(repo, &handle, &name)?
                };
                match rejected {
                    Some(reason) => SyncOutcome::PushRejected { reason },
                    None => {
                        self.update_ref(&tracking_ref, l, || {
                            repo.reference(&tracking_ref, l, true, "heph sync: pushed")
                        })?;
                        SyncOutcome::Pushed {
                            evolutions: count(repo, l, r)?,
                        }
                    }
                }
            }
            (Some(l), Some(r)) => {
                let (ahead, behind) = repo
                    .graph_ahead_behind(l, r)
                    .map_err(HistoryError::git("comparing the histories"))?;
                let merge_base = repo.merge_base(l, r).ok().map(|b| b.to_string());
                match resolve {
                    SyncResolve::Report => SyncOutcome::Diverged {
                        ahead,
                        behind,
                        merge_base,
                    },
                    SyncResolve::Keep(kept) => {
                        let merge = self.merge_diverged(repo, &name, l, r, kept, remote)?;
                        report.local_after = hex(Some(merge));
                        let rejected = if cli {
                            push_cli(repo, &handle, &name)?
                        } else {
                            push_libgit2(repo, &handle, &name)?
                        };
                        if rejected.is_none() {
                            self.update_ref(&tracking_ref, merge, || {
                                repo.reference(&tracking_ref, merge, true, "heph sync: pushed")
                            })?;
                        }
                        SyncOutcome::Merged {
                            kept,
                            ahead,
                            behind,
                            merge_base,
                            evolution: merge.to_string(),
                            push_rejected: rejected,
                        }
                    }
                }
            }
            (Some(_), None) => SyncOutcome::UpToDate, // unreachable: handled by the push arm
        };
        Ok(report)
    }
}

/// The remote's history as fetched under the writer lock.
pub(super) struct Fetched {
    /// The remote as git is told.
    pub(super) handle: String,
    /// Through the git CLI (else libgit2).
    pub(super) cli: bool,
    /// The history reference's name (the same on both sides).
    pub(super) name: String,
    /// The local reference holding the remote's history.
    pub(super) tracking_ref: String,
    /// The local history's tip.
    pub(super) local: Option<Oid>,
    /// The remote history's tip (None: the remote has none for this project).
    pub(super) theirs: Option<Oid>,
}

impl History {
    /// Fetch `remote`'s history into its tracking reference; the caller holds the
    /// writer lock.
    pub(super) fn fetch_locked(
        &mut self,
        remote: &str,
        transport: SyncTransport,
    ) -> Result<Fetched, HistoryError> {
        self.fetch_locked_also(remote, transport, None)
    }

    /// [`History::fetch_locked`], fetching `also` in the same connection (its local
    /// refs are emptied first, so refs gone from the remote go here too).
    pub(super) fn fetch_locked_also(
        &mut self,
        remote: &str,
        transport: SyncTransport,
        also: Option<AlsoFetch<'_>>,
    ) -> Result<Fetched, HistoryError> {
        self.repo_for_write()?;
        let repo = self.repo_ref()?;
        let (handle, component, url) = open_remote(repo, remote)?;
        let name = self.reference.name();
        let tracking_ref = self.reference.tracking(&component);
        let cli = self.use_cli(remote, &url, transport)?;
        super::refs::recover_stale_lock(self.state.path(), repo);
        self.settle_legacy(repo)?;
        let local = self.tip()?;
        if let Some(a) = &also {
            delete_refs_under(repo, a.into);
        }
        let advertised = if cli {
            fetch_cli(repo, &handle, &name, &tracking_ref, also)?
        } else {
            fetch_libgit2(self, repo, &handle, &name, &tracking_ref, also)?
        };
        if !advertised {
            // The remote has no history (any more): drop a stale tracking ref.
            if let Ok(mut r) = repo.find_reference(&tracking_ref) {
                let _ = r.delete();
            }
        }
        // A remote history recorded for another folder by an earlier version (its
        // `Heph-Scope` is not this project's) is not this project's history.
        let theirs = if advertised {
            read_ref(repo, &tracking_ref)?
                .filter(|&r| super::refs::scope_of(repo, r) == self.scope_prefix)
        } else {
            None
        };
        Ok(Fetched {
            handle,
            cli,
            name,
            tracking_ref,
            local,
            theirs,
        })
    }

    /// Whether `remote` (URL `url`) is reached through the git CLI.
    fn use_cli(
        &self,
        remote: &str,
        url: &str,
        transport: SyncTransport,
    ) -> Result<bool, HistoryError> {
        match (transport, libgit2_reaches(url)) {
            (SyncTransport::Git, _) | (SyncTransport::Auto, Err(_)) => Ok(true),
            (SyncTransport::Libgit2, Err((protocol, feature))) => {
                Err(HistoryError::UnsupportedTransport {
                    remote: remote.to_owned(),
                    protocol,
                    feature,
                })
            }
            _ => Ok(false),
        }
    }

    /// `heph watch --follow`: under the writer lock, fetch `remote`'s history into its
    /// tracking reference (the local history and the files are not changed); the
    /// remote's tip, None when it has no history for this project.
    pub fn fetch_remote(
        &mut self,
        remote: &str,
        transport: SyncTransport,
    ) -> Result<Option<String>, HistoryError> {
        let _lock = self.lock("follow")?;
        Ok(self
            .fetch_locked(remote, transport)?
            .theirs
            .map(|o| o.to_string()))
    }

    /// `heph watch --publish`: under the writer lock, push the local history to
    /// `remote` when that is a fast-forward there. Never forced, never fetched into the
    /// local history: when the remote has evolutions this history lacks (another
    /// instance published first) the outcome is [`SyncOutcome::Diverged`] and nothing
    /// changes (behind only, with nothing to publish: [`SyncOutcome::UpToDate`]); a
    /// refusal by the server is [`SyncOutcome::PushRejected`].
    pub fn publish(
        &mut self,
        remote: &str,
        transport: SyncTransport,
    ) -> Result<SyncReport, HistoryError> {
        let _lock = self.lock("publish")?;
        let f = self.fetch_locked(remote, transport)?;
        let repo = self.repo_ref()?;
        let hex = |o: Option<Oid>| o.map(|o| o.to_string());
        let outcome = match (f.local, f.theirs) {
            (None, None) => SyncOutcome::Empty,
            (None, Some(_)) => SyncOutcome::UpToDate,
            (Some(l), Some(r)) if l == r => SyncOutcome::UpToDate,
            (Some(l), r) if r.is_none_or(|r| repo.graph_descendant_of(l, r).unwrap_or(false)) => {
                let rejected = if f.cli {
                    push_cli(repo, &f.handle, &f.name)?
                } else {
                    push_libgit2(repo, &f.handle, &f.name)?
                };
                match rejected {
                    Some(reason) => SyncOutcome::PushRejected { reason },
                    None => {
                        self.update_ref(&f.tracking_ref, l, || {
                            repo.reference(&f.tracking_ref, l, true, "heph publish: pushed")
                        })?;
                        SyncOutcome::Pushed {
                            evolutions: count(repo, l, r)?,
                        }
                    }
                }
            }
            (Some(l), Some(r)) => {
                let (ahead, behind) = repo
                    .graph_ahead_behind(l, r)
                    .map_err(HistoryError::git("comparing the histories"))?;
                if ahead == 0 {
                    // Behind only: nothing of ours to publish (a follower catches up).
                    SyncOutcome::UpToDate
                } else {
                    SyncOutcome::Diverged {
                        ahead,
                        behind,
                        merge_base: repo.merge_base(l, r).ok().map(|b| b.to_string()),
                    }
                }
            }
            (Some(_), None) => SyncOutcome::UpToDate, // unreachable: the push arm
        };
        Ok(SyncReport {
            remote: remote.to_owned(),
            tracking_ref: f.tracking_ref.clone(),
            local_before: hex(f.local),
            remote_tip: hex(f.theirs),
            local_after: hex(f.local),
            transport: if f.cli {
                SyncTransport::Git
            } else {
                SyncTransport::Libgit2
            },
            outcome,
        })
    }

    /// Push `local_ref` to `remote_ref` on `remote`, replacing what is there (for refs
    /// an instance owns alone, such as its fleet status); the server's refusal, if any.
    pub(super) fn push_owned_ref(
        &self,
        remote: &str,
        transport: SyncTransport,
        local_ref: &str,
        remote_ref: &str,
    ) -> Result<Option<String>, HistoryError> {
        self.push_spec(remote, transport, &format!("+{local_ref}:{remote_ref}"))
    }

    /// Push `local_ref` to `remote_ref` on `remote` only when that is a fast-forward
    /// there (never forced); the server's refusal, if any.
    pub(super) fn push_ref_fast_forward(
        &self,
        remote: &str,
        transport: SyncTransport,
        local_ref: &str,
        remote_ref: &str,
    ) -> Result<Option<String>, HistoryError> {
        self.push_spec(remote, transport, &format!("{local_ref}:{remote_ref}"))
    }

    /// Push one refspec to `remote` through the transport it takes; the server's
    /// refusal, if any.
    fn push_spec(
        &self,
        remote: &str,
        transport: SyncTransport,
        spec: &str,
    ) -> Result<Option<String>, HistoryError> {
        let repo = self.repo_ref()?;
        let (handle, _, url) = open_remote(repo, remote)?;
        if self.use_cli(remote, &url, transport)? {
            push_spec_cli(repo, &handle, spec)
        } else {
            push_spec_libgit2(repo, &handle, spec)
        }
    }

    /// Fetch every remote ref matching `pattern` (a glob such as `refs/heph/fleet/*`)
    /// into `into` (the same glob under another prefix), after deleting the local refs
    /// under `into` (refs gone from the remote go here too).
    pub(super) fn fetch_glob(
        &mut self,
        remote: &str,
        transport: SyncTransport,
        pattern: &str,
        into_prefix: &str,
    ) -> Result<(), HistoryError> {
        self.repo_for_write()?;
        let repo = self.repo_ref()?;
        let (handle, _, url) = open_remote(repo, remote)?;
        delete_refs_under(repo, into_prefix);
        let spec = format!("+{pattern}:{into_prefix}*");
        let what = format!("fetching {pattern} from");
        if self.use_cli(remote, &url, transport)? {
            let run = run_git(fetch_command(repo, &handle, &spec), &what, remote)?;
            if !run.success {
                return Err(HistoryError::Transport {
                    what,
                    remote: remote.to_owned(),
                    message: git_message(&run.stderr),
                });
            }
        } else {
            let mut h = libgit2_remote(repo, &handle)?;
            let mut attempts = 0;
            let mut fetch = FetchOptions::new();
            fetch
                .update_fetchhead(false)
                .download_tags(AutotagOption::None)
                .remote_callbacks(callbacks(&mut attempts));
            // `download` and the refs set here: libgit2's `fetch` rewrites FETCH_HEAD.
            h.download(&[spec.as_str()], Some(&mut fetch))
                .map_err(|source| HistoryError::Git {
                    what: format!("fetching {pattern} from `{remote}`"),
                    source,
                })?;
            let from = pattern.trim_end_matches('*');
            let advertised: Vec<(String, Oid)> = h
                .list()
                .map(|heads| {
                    heads
                        .iter()
                        .filter_map(|head| {
                            let rest = head.name().strip_prefix(from)?;
                            Some((format!("{into_prefix}{rest}"), head.oid()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let _ = h.disconnect();
            for (name, oid) in advertised {
                repo.reference(&name, oid, true, "heph fleet: fetch")
                    .map_err(HistoryError::git("writing a fetched fleet reference"))?;
            }
        }
        Ok(())
    }
}

impl History {
    /// Commit the merge of diverged `local` and `remote` tips keeping `kept`'s files
    /// (first parent: the kept side, so listings follow it), durably, and move the
    /// history's reference to it from `local` (compare-and-swap); its id.
    fn merge_diverged(
        &self,
        repo: &Repository,
        name: &str,
        local: Oid,
        remote: Oid,
        kept: SyncSide,
        remote_name: &str,
    ) -> Result<Oid, HistoryError> {
        let (first, second) = match kept {
            SyncSide::Local => (local, remote),
            SyncSide::Remote => (remote, local),
        };
        let find = |oid: Oid| {
            repo.find_commit(oid)
                .map_err(HistoryError::git("reading a diverged evolution"))
        };
        let (first, second) = (find(first)?, find(second)?);
        let tree = first
            .tree()
            .map_err(HistoryError::git("reading the kept evolution's tree"))?;
        let subject = match kept {
            SyncSide::Local => format!(
                "sync: kept this project's files over `{remote_name}`'s diverged evolutions"
            ),
            SyncSide::Remote => format!(
                "sync: kept `{remote_name}`'s files over this project's diverged evolutions"
            ),
        };
        let meta = EvolutionMeta::new(EvolutionKind::Manual, subject);
        let msg = super::message::format(&meta);
        let author = self.signature(repo, &self.options.author)?;
        let committer = self.signature(repo, &self.options.committer)?;
        let buffer = repo
            .commit_create_buffer(&author, &committer, &msg, &tree, &[&first, &second])
            .map_err(HistoryError::git("formatting the merge"))?;
        let oid = super::signing::write_commit(repo, self.signing_key.as_deref(), &buffer)?;
        super::refs::sync_objects(repo, &[oid])?;
        self.update_ref(name, oid, || {
            repo.reference_matching(name, oid, true, local, "heph sync: merge")
        })?;
        Ok(oid)
    }
}

/// The remote as git is to be told (a remote name of the repository, or a URL or
/// path), the component its tracking reference is named with, and its URL.
fn open_remote(repo: &Repository, remote: &str) -> Result<(String, String, String), HistoryError> {
    if Remote::is_valid_name(remote)
        && let Ok(r) = repo.find_remote(remote)
    {
        let url = r.url().unwrap_or_default().to_owned();
        return Ok((remote.to_owned(), remote.to_owned(), url));
    }
    if looks_like_url(remote) {
        // A path git would read as an option is made explicit.
        let arg = if remote.starts_with('-') {
            format!("./{remote}")
        } else {
            remote.to_owned()
        };
        return Ok((arg, url_component(remote), remote.to_owned()));
    }
    let known = repo
        .remotes()
        .map(|names| {
            names
                .iter()
                .flatten()
                .flatten()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Err(HistoryError::UnknownRemote {
        name: remote.to_owned(),
        repo: repo.path().to_path_buf(),
        known,
    })
}

/// Commits reachable from `from` and not from `hide`.
fn count(repo: &Repository, from: Oid, hide: Option<Oid>) -> Result<usize, HistoryError> {
    let mut walk = repo
        .revwalk()
        .map_err(HistoryError::git("walking the history"))?;
    walk.push(from)
        .map_err(HistoryError::git("walking the history"))?;
    if let Some(h) = hide {
        walk.hide(h)
            .map_err(HistoryError::git("walking the history"))?;
    }
    Ok(walk.count())
}

/// Delete every reference whose name starts with `prefix` (a directory such as
/// `refs/heph/remotes/NAME/fleet/`), before fetching its new contents into it. Best
/// effort: a reference that cannot be deleted is overwritten by the fetch.
fn delete_refs_under(repo: &Repository, prefix: &str) {
    let Ok(refs) = repo.references_glob(&format!("{prefix}*")) else {
        return;
    };
    let names: Vec<String> = refs
        .flatten()
        .filter_map(|r| r.name().ok().map(str::to_owned))
        .collect();
    for n in names {
        if let Ok(mut r) = repo.find_reference(&n) {
            let _ = r.delete();
        }
    }
}
