//! How `heph sync` and the fleet reach a remote: libgit2 for every protocol this build
//! of it has (paths, `file://`, `git://`; `ssh` and `https` with the cargo features of
//! the same names), the git CLI for the others (with the user's ssh configuration,
//! agent and credential helpers; hooks, automatic maintenance and FETCH_HEAD turned off,
//! the C locale, and only the refs named changed). [`super::SyncTransport`] forces one
//! or the other; the choice is made in [`super::sync`].

use std::path::Path;
use std::process::{Command, Stdio};

use git2::{
    AutotagOption, Cred, CredentialType, FetchOptions, Oid, PushOptions, Remote, RemoteCallbacks,
    Repository,
};

use super::{History, HistoryError};

/// Can this build's libgit2 reach `url` by itself?
pub(super) fn libgit2_reaches(url: &str) -> Result<(), (&'static str, &'static str)> {
    let lower = url.to_ascii_lowercase();
    let https = lower.starts_with("https://") || lower.starts_with("http://");
    let ssh = lower.starts_with("ssh://")
        || lower.starts_with("git+ssh://")
        || lower.starts_with("ssh+git://")
        || is_scp_like(url);
    if https && !cfg!(feature = "https") {
        return Err(("HTTPS", "https"));
    }
    if ssh && !cfg!(feature = "ssh") {
        return Err(("SSH", "ssh"));
    }
    Ok(())
}

/// `user@host:path` or `host:path` (git's scp-like syntax): a colon before any slash,
/// and not a URL scheme.
pub(super) fn is_scp_like(url: &str) -> bool {
    match (url.find(':'), url.find('/')) {
        (Some(c), slash) => !url[c..].starts_with("://") && slash.is_none_or(|s| c < s) && c > 1,
        (None, _) => false,
    }
}

/// A reference-name component for a URL remote: `url-` and the URL with every character
/// other than ASCII letters, digits, `-` and `_` replaced by `_`.
pub(super) fn url_component(url: &str) -> String {
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

pub(super) fn looks_like_url(s: &str) -> bool {
    s.contains("://") || s.contains(':') || s.contains('/') || Path::new(s).exists()
}

pub(super) fn callbacks<'a>(attempts: &'a mut usize) -> RemoteCallbacks<'a> {
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

/// A git command on `repo`'s git directory that changes nothing but the refs it is
/// told to: no hooks, no automatic maintenance, no FETCH_HEAD, no tags.
pub(super) fn git_command(repo: &Repository) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("--git-dir")
        .arg(repo.path())
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "maintenance.auto=false",
            "-c",
            "gc.auto=0",
            "-c",
            "fetch.recurseSubmodules=false",
        ])
        .env("LC_ALL", "C")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .stdin(Stdio::null());
    cmd
}

/// `git fetch` of `spec` from `remote`: quiet, no tags, no FETCH_HEAD.
pub(super) fn fetch_command(repo: &Repository, remote: &str, spec: &str) -> Command {
    let mut cmd = git_command(repo);
    cmd.args([
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-write-fetch-head",
        "--",
    ])
    .arg(remote)
    .arg(spec);
    cmd
}

/// What a finished git command said.
pub(super) struct GitRun {
    pub(super) success: bool,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

pub(super) fn run_git(mut cmd: Command, what: &str, remote: &str) -> Result<GitRun, HistoryError> {
    let out = cmd.output().map_err(|e| HistoryError::Transport {
        what: what.to_owned(),
        remote: remote.to_owned(),
        message: if e.kind() == std::io::ErrorKind::NotFound {
            "`git` was not found on PATH; heph sync uses it to reach remotes".to_owned()
        } else {
            format!("cannot run git: {e}")
        },
    })?;
    Ok(GitRun {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// git's message for an error: its last few non-empty lines of stderr.
pub(super) fn git_message(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(4)..];
    if tail.is_empty() {
        "git failed without a message".to_owned()
    } else {
        tail.join("\n")
    }
}

/// More references fetched in the same connection as the history: every remote ref
/// under `from` (a directory such as `refs/heph/rollout/`) into the same names under
/// `into` (emptied first by the caller).
#[derive(Debug, Clone, Copy)]
pub(super) struct AlsoFetch<'a> {
    pub(super) from: &'a str,
    pub(super) into: &'a str,
}

impl AlsoFetch<'_> {
    fn refspec(&self) -> String {
        format!("+{}*:{}*", self.from, self.into)
    }

    /// The local name of remote ref `name`, when it is one of these.
    fn local(&self, name: &str) -> Option<String> {
        name.strip_prefix(self.from)
            .filter(|rest| !rest.is_empty())
            .map(|rest| format!("{}{rest}", self.into))
    }
}

/// Fetch the remote's history into `tracking_ref`; `Ok(false)` when the remote has
/// none.
pub(super) fn fetch_cli(
    repo: &Repository,
    remote: &str,
    name: &str,
    tracking_ref: &str,
    also: Option<AlsoFetch<'_>>,
) -> Result<bool, HistoryError> {
    let what = format!("fetching {name} from");
    let mut cmd = fetch_command(repo, remote, &format!("+{name}:{tracking_ref}"));
    if let Some(also) = also {
        cmd.arg(also.refspec());
    }
    let run = run_git(cmd, &what, remote)?;
    if run.success {
        return Ok(true);
    }
    if run.stderr.contains("couldn't find remote ref") {
        return Ok(false);
    }
    Err(HistoryError::Transport {
        what,
        remote: remote.to_owned(),
        message: git_message(&run.stderr),
    })
}

/// Push the local history (never forced); `Ok(Some(reason))` when the remote refused.
pub(super) fn push_cli(
    repo: &Repository,
    remote: &str,
    name: &str,
) -> Result<Option<String>, HistoryError> {
    push_spec_cli(repo, remote, &format!("{name}:{name}"))
}

/// Push the refspec `spec`; `Ok(Some(reason))` when the remote refused.
pub(super) fn push_spec_cli(
    repo: &Repository,
    remote: &str,
    spec: &str,
) -> Result<Option<String>, HistoryError> {
    let what = format!("pushing {spec} to");
    let mut cmd = git_command(repo);
    cmd.args(["push", "--porcelain", "--no-verify", "--quiet", "--"])
        .arg(remote)
        .arg(spec);
    let run = run_git(cmd, &what, remote)?;
    // `--porcelain`: one line per ref, `!` in front of a rejected one, with the reason
    // (`[rejected] (fetch first)`, `[remote rejected] (...)`) after the second tab.
    let rejected = run
        .stdout
        .lines()
        .find(|l| l.starts_with('!'))
        .map(|l| l.splitn(3, '\t').nth(2).unwrap_or(l).trim().to_owned());
    match rejected {
        Some(reason) => Ok(Some(reason)),
        None if run.success => Ok(None),
        None => Err(HistoryError::Transport {
            what,
            remote: remote.to_owned(),
            message: git_message(&run.stderr),
        }),
    }
}

/// Fetch the remote's history through libgit2 into `tracking_ref` (set by hand:
/// libgit2's `fetch` rewrites FETCH_HEAD even when told not to, so `download` is used);
/// `Ok(false)` when the remote has none.
pub(super) fn fetch_libgit2(
    history: &History,
    repo: &Repository,
    remote: &str,
    name: &str,
    tracking_ref: &str,
    also: Option<AlsoFetch<'_>>,
) -> Result<bool, HistoryError> {
    let mut handle = libgit2_remote(repo, remote)?;
    let mut attempts = 0;
    let mut fetch = FetchOptions::new();
    fetch
        .update_fetchhead(false)
        .download_tags(AutotagOption::None)
        .remote_callbacks(callbacks(&mut attempts));
    let refspec = format!("+{name}:{tracking_ref}");
    let also_spec = also.map(|a| a.refspec());
    let specs: Vec<&str> = std::iter::once(refspec.as_str())
        .chain(also_spec.as_deref())
        .collect();
    handle
        .download(&specs, Some(&mut fetch))
        .map_err(|source| HistoryError::Git {
            what: format!("fetching {name} from `{remote}`"),
            source,
        })?;
    let advertised = handle
        .list()
        .ok()
        .and_then(|heads| heads.iter().find(|h| h.name() == name).map(|h| h.oid()));
    let also_refs: Vec<(String, Oid)> = match also {
        Some(a) => handle
            .list()
            .map(|heads| {
                heads
                    .iter()
                    .filter_map(|h| a.local(h.name()).map(|n| (n, h.oid())))
                    .collect()
            })
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let _ = handle.disconnect();
    for (local, oid) in also_refs {
        repo.reference(&local, oid, true, "heph fleet: fetch")
            .map_err(HistoryError::git("writing a fetched fleet reference"))?;
    }
    match advertised {
        Some(oid) => {
            history.update_ref(tracking_ref, oid, || {
                repo.reference(tracking_ref, oid, true, "heph sync: fetch")
            })?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Push the local history through libgit2 (never forced); `Ok(Some(reason))` when the
/// remote refused (reported only through the `push_update_reference` callback).
pub(super) fn push_libgit2(
    repo: &Repository,
    remote: &str,
    name: &str,
) -> Result<Option<String>, HistoryError> {
    push_spec_libgit2(repo, remote, &format!("{name}:{name}"))
}

/// Push the refspec `spec` through libgit2; `Ok(Some(reason))` when the remote refused.
pub(super) fn push_spec_libgit2(
    repo: &Repository,
    remote: &str,
    spec: &str,
) -> Result<Option<String>, HistoryError> {
    let mut handle = libgit2_remote(repo, remote)?;
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
        handle
            .push(&[spec], Some(&mut push))
            .map_err(|source| HistoryError::Git {
                what: format!("pushing {spec} to `{remote}`"),
                source,
            })?;
    }
    Ok(rejected)
}

/// libgit2's handle on `remote` (a remote name of the repository, or a URL or path).
pub(super) fn libgit2_remote<'r>(
    repo: &'r Repository,
    remote: &str,
) -> Result<Remote<'r>, HistoryError> {
    let found = if Remote::is_valid_name(remote) {
        repo.find_remote(remote).ok()
    } else {
        None
    };
    match found {
        Some(r) => Ok(r),
        None => repo
            .remote_anonymous(remote)
            .map_err(|source| HistoryError::Git {
                what: format!("opening the remote `{remote}`"),
                source,
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A URL remote's tracking reference is named by one reference part: ASCII
    /// letters, digits, `-` and `_` kept, anything else `_` (the name stays the same
    /// from one version to the next, or the remote's history would be fetched again
    /// under a new name).
    #[test]
    fn a_url_remote_is_named_by_one_reference_part() {
        assert_eq!(
            url_component("ssh://git@example.org:22/My-repo_2.git"),
            "url-ssh___git_example_org_22_My-repo_2_git"
        );
        assert_eq!(url_component("/srv/é x"), "url-_srv___x");
    }

    /// A push the git CLI could not make (no remote there) is an error with git's
    /// message, not a push that went through.
    #[test]
    fn a_push_git_could_not_make_is_an_error_not_a_success() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init(dir.path().join("local")).expect("init");
        let tree = repo
            .treebuilder(None)
            .and_then(|b| b.write())
            .and_then(|t| repo.find_tree(t))
            .expect("empty tree");
        let sig = git2::Signature::now("T", "t@example.com").expect("signature");
        repo.commit(Some("refs/heph/history"), &sig, &sig, "x", &tree, &[])
            .expect("commit");
        let missing = dir.path().join("missing.git");
        let err = push_spec_cli(
            &repo,
            &missing.to_string_lossy(),
            "refs/heph/history:refs/heph/history",
        )
        .expect_err("nothing to push to");
        assert!(
            matches!(&err, HistoryError::Transport { message, .. }
                if message.contains("does not appear to be a git repository")),
            "{err}"
        );
    }

    #[test]
    fn which_urls_libgit2_reaches_in_this_build() {
        assert!(is_scp_like("git@github.com:o/r.git"));
        assert!(is_scp_like("host:path/r.git"));
        assert!(!is_scp_like("https://github.com/o/r.git"));
        assert!(!is_scp_like("/srv/git/r.git"));
        assert!(!is_scp_like("./a:b"));
        assert!(!is_scp_like("C:/repos/r.git"));
        assert!(libgit2_reaches("/srv/git/r.git").is_ok());
        assert!(libgit2_reaches("file:///srv/git/r.git").is_ok());
        assert!(libgit2_reaches("git://example.org/r.git").is_ok());
        assert_eq!(
            libgit2_reaches("ssh://git@example.org/r.git").is_ok(),
            cfg!(feature = "ssh")
        );
        assert_eq!(
            libgit2_reaches("git@example.org:r.git").is_ok(),
            cfg!(feature = "ssh")
        );
        assert_eq!(
            libgit2_reaches("HTTPS://example.org/r.git").is_ok(),
            cfg!(feature = "https")
        );
    }
}
