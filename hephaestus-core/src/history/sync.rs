//! `heph sync REMOTE`: share `refs/heph/history` through a git remote.
//!
//! The remote's history is fetched into `refs/heph/remotes/NAME/history`; then the local
//! history is fast-forwarded when it is behind, pushed when the remote is behind, and
//! left alone (reported) when the two diverged. Nothing is ever force-pushed or reset.

use std::path::Path;

use git2::{
    AutotagOption, Cred, CredentialType, FetchOptions, Oid, PushOptions, Remote, RemoteCallbacks,
    Repository,
};
use serde::Serialize;

use super::{HISTORY_REF, History, HistoryError, read_ref};

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
        )
    }
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
    /// What happened.
    #[serde(flatten)]
    pub outcome: SyncOutcome,
}

/// A reference-name component for a URL remote: `url-` and the URL with every character
/// other than ASCII letters, digits, `-` and `_` replaced by `_`.
fn url_component(url: &str) -> String {
    let body: String = url
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("url-{body}")
}

fn looks_like_url(s: &str) -> bool {
    s.contains("://") || s.contains(':') || s.contains('/') || Path::new(s).exists()
}

fn callbacks<'a>(attempts: &'a mut usize) -> RemoteCallbacks<'a> {
    let mut cb = RemoteCallbacks::new();
    cb.credentials(move |url, username, allowed| {
        *attempts += 1;
        if *attempts > 3 {
            return Err(git2::Error::from_str("authentication failed"));
        }
        #[cfg(feature = "ssh")]
        if allowed.contains(CredentialType::SSH_KEY)
            && let Some(user) = username
        {
            return Cred::ssh_key_from_agent(user);
        }
        #[cfg(any(feature = "ssh", feature = "https"))]
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
            && let Ok(config) = git2::Config::open_default()
        {
            return Cred::credential_helper(&config, url, username);
        }
        let _ = url; // used by the transports of the optional features
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(username.unwrap_or("git"));
        }
        Cred::default()
    });
    cb
}

impl History {
    /// `heph sync REMOTE`, under the writer lock: fetch the remote's history, then
    /// fast-forward, push, or report the divergence. `remote` is the name of a remote of
    /// the project's repository, or a URL or path.
    pub fn sync(&mut self, remote: &str) -> Result<SyncReport, HistoryError> {
        let _lock = self.lock("sync")?;
        self.repo_for_write()?;
        let repo = self.repo_ref()?;
        let (mut handle, component) = open_remote(repo, remote)?;
        let tracking_ref = format!("refs/heph/remotes/{component}/history");
        self.recover_stale_ref_lock(repo);
        let local = self.tip()?;

        let mut attempts = 0;
        let mut fetch = FetchOptions::new();
        fetch
            .update_fetchhead(false)
            .download_tags(AutotagOption::None)
            .remote_callbacks(callbacks(&mut attempts));
        // `download`, not `fetch`: libgit2's fetch rewrites FETCH_HEAD in the user's
        // repository even when told not to update it. The tracking ref is set by hand.
        let refspec = format!("+{HISTORY_REF}:{tracking_ref}");
        handle
            .download(&[refspec.as_str()], Some(&mut fetch))
            .map_err(|source| transport_error(remote, source))?;
        let advertised = handle.list().ok().and_then(|heads| {
            heads
                .iter()
                .find(|h| h.name() == HISTORY_REF)
                .map(|h| h.oid())
        });
        let _ = handle.disconnect();
        match advertised {
            Some(oid) => {
                self.update_ref(&tracking_ref, || {
                    repo.reference(&tracking_ref, oid, true, "heph sync: fetch")
                })
                .map_err(HistoryError::git("recording the remote's history"))?;
            }
            None => {
                // The remote has no history (any more): drop a stale tracking ref.
                if let Ok(mut r) = repo.find_reference(&tracking_ref) {
                    let _ = r.delete();
                }
            }
        }
        let theirs = match advertised {
            Some(_) => read_ref(repo, &tracking_ref)?,
            None => None,
        };
        let hex = |o: Option<Oid>| o.map(|o| o.to_string());
        let mut report = SyncReport {
            remote: remote.to_owned(),
            tracking_ref: tracking_ref.clone(),
            local_before: hex(local),
            remote_tip: hex(theirs),
            local_after: hex(local),
            outcome: SyncOutcome::UpToDate,
        };
        let git = |what: &'static str| HistoryError::git(what);
        report.outcome = match (local, theirs) {
            (None, None) => SyncOutcome::Empty,
            (Some(l), Some(r)) if l == r => SyncOutcome::UpToDate,
            (None, Some(r)) => {
                self.update_ref(HISTORY_REF, || {
                    repo.reference(HISTORY_REF, r, false, "heph sync: fast-forward")
                })
                .map_err(git("creating the history from the remote's"))?;
                report.local_after = hex(Some(r));
                SyncOutcome::FastForwarded {
                    evolutions: count(repo, r, None)?,
                }
            }
            (Some(l), Some(r)) if repo.graph_descendant_of(r, l).unwrap_or(false) => {
                self.update_ref(HISTORY_REF, || {
                    repo.reference_matching(HISTORY_REF, r, true, l, "heph sync: fast-forward")
                })
                .map_err(git("fast-forwarding the history"))?;
                report.local_after = hex(Some(r));
                SyncOutcome::FastForwarded {
                    evolutions: count(repo, r, Some(l))?,
                }
            }
            (Some(l), r) if r.is_none_or(|r| repo.graph_descendant_of(l, r).unwrap_or(false)) => {
                let mut attempts = 0;
                let mut rejected: Option<String> = None;
                {
                    let mut cb = callbacks(&mut attempts);
                    cb.push_update_reference(|_refname, status| {
                        if let Some(reason) = status {
                            rejected = Some(reason.to_owned());
                        }
                        Ok(())
                    });
                    let mut push = PushOptions::new();
                    push.remote_callbacks(cb);
                    let spec = format!("{HISTORY_REF}:{HISTORY_REF}");
                    handle
                        .push(&[spec.as_str()], Some(&mut push))
                        .map_err(|source| HistoryError::Git {
                            what: format!("pushing {HISTORY_REF} to `{remote}`"),
                            source,
                        })?;
                }
                match rejected {
                    Some(reason) => SyncOutcome::PushRejected { reason },
                    None => {
                        self.update_ref(&tracking_ref, || {
                            repo.reference(&tracking_ref, l, true, "heph sync: pushed")
                        })
                        .map_err(git("recording the pushed history"))?;
                        SyncOutcome::Pushed {
                            evolutions: count(repo, l, r)?,
                        }
                    }
                }
            }
            (Some(l), Some(r)) => {
                let (ahead, behind) = repo
                    .graph_ahead_behind(l, r)
                    .map_err(git("comparing the histories"))?;
                SyncOutcome::Diverged {
                    ahead,
                    behind,
                    merge_base: repo.merge_base(l, r).ok().map(|b| b.to_string()),
                }
            }
            (Some(_), None) => SyncOutcome::UpToDate, // unreachable: handled by the push arm
        };
        Ok(report)
    }
}

/// The remote named `remote`, or an anonymous one for a URL/path, and the component its
/// tracking reference is named with.
fn open_remote<'r>(
    repo: &'r Repository,
    remote: &str,
) -> Result<(Remote<'r>, String), HistoryError> {
    if Remote::is_valid_name(remote)
        && let Ok(r) = repo.find_remote(remote)
    {
        return Ok((r, remote.to_owned()));
    }
    if looks_like_url(remote) {
        let r = repo
            .remote_anonymous(remote)
            .map_err(|source| HistoryError::Git {
                what: format!("opening the remote `{remote}`"),
                source,
            })?;
        return Ok((r, url_component(remote)));
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

/// A fetch error, made clear when the protocol was left out of the build.
fn transport_error(remote: &str, source: git2::Error) -> HistoryError {
    let unsupported = source.message().contains("unsupported URL protocol")
        || source.message().contains("no TLS stream available");
    if unsupported {
        let https = remote.starts_with("https://") || remote.starts_with("http://");
        return HistoryError::UnsupportedTransport {
            remote: remote.to_owned(),
            protocol: if https { "HTTPS" } else { "SSH" },
            feature: if https { "https" } else { "ssh" },
        };
    }
    HistoryError::Git {
        what: format!("fetching {HISTORY_REF} from `{remote}`"),
        source,
    }
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
