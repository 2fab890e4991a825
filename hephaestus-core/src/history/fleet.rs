//! A fleet of instances following one history through a git remote.
//!
//! - [`History::follow_apply`] brings this project's files to an evolution fetched from
//!   the remote (`heph watch --follow`): only when the files are those of an evolution
//!   the remote's history holds (the local tip, or an ancestor of the target with the
//!   same files). Hand edits are recorded first (`manual`) and then nothing is written.
//! - Each instance publishes its state on a reference of its own in the remote,
//!   `refs/heph/fleet/INSTANCE` (beside the history reference, so each project of a
//!   repository has its own fleet): a commit with the empty tree whose message holds
//!   `Heph-Fleet-*` trailers (evolution, state, since). It is the only reference heph
//!   replaces on a remote, and only the instance named in it writes it.
//!   [`History::fleet_status`] reads them all.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use git2::{Oid, Repository};
use serde::{Deserialize, Serialize};

use super::sync::SyncTransport;
use super::{History, HistoryError};
use crate::evolution::Evolution;
use crate::journal::{TxKind, TxStart};

/// How many evolutions of the target's history are searched for one with the
/// project's current files (an instance set up from a copy of the files).
const BASE_SEARCH: usize = 10_000;

/// What [`History::follow_apply`] did.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum FollowStep {
    /// The local history already is at the target.
    UpToDate,
    /// The local history already holds the target (it is an ancestor of the tip).
    Ahead,
    /// The files were written and the history moved to the target.
    Applied {
        /// The evolution the files were at.
        from: Option<String>,
        /// The evolution applied.
        to: String,
        /// Files written, relative to the root.
        restored: Vec<PathBuf>,
        /// Files deleted, relative to the root.
        deleted: Vec<PathBuf>,
    },
    /// Nothing was written: the files (or local evolutions) are not in the target's
    /// history.
    Refused {
        /// The local tip (after recording the hand edits).
        local: Option<String>,
        /// The `manual` evolution recording the hand edits, when the files had changed.
        pre_state: Option<Box<Evolution>>,
        /// Why, in words.
        reason: String,
    },
}

/// The state an instance reports for the evolution it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FleetState {
    /// Its files were written; the build and swap are under way.
    Applying,
    /// Built and serving.
    Applied,
    /// The syntax gate or the build failed: the previous version keeps serving.
    BuildFailed,
    /// The new version did not become ready, or crashed after the swap.
    Unhealthy,
    /// It stopped following (hand edits, diverged history).
    Stopped,
}

impl FleetState {
    /// The kebab-case name (`build-failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            FleetState::Applying => "applying",
            FleetState::Applied => "applied",
            FleetState::BuildFailed => "build-failed",
            FleetState::Unhealthy => "unhealthy",
            FleetState::Stopped => "stopped",
        }
    }

    fn parse(s: &str) -> Option<FleetState> {
        [
            FleetState::Applying,
            FleetState::Applied,
            FleetState::BuildFailed,
            FleetState::Unhealthy,
            FleetState::Stopped,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// One instance's report in the remote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// The instance's name (`--instance`, default `HOST-HASH`).
    pub instance: String,
    /// The evolution it runs or tried.
    pub evolution: Option<String>,
    /// Its state.
    pub state: FleetState,
    /// Since when (seconds since the Unix epoch).
    pub since: i64,
    /// Details (the first build error, why following stopped).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
}

impl FleetStatus {
    /// A report of `state` for `evolution`, since now.
    pub fn now(instance: &str, evolution: Option<String>, state: FleetState) -> FleetStatus {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        FleetStatus {
            instance: instance.to_owned(),
            evolution,
            state,
            since,
            detail: None,
        }
    }

    fn message(&self) -> String {
        let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut m = format!(
            "fleet: {} {} {}\n\nHeph-Fleet-Instance: {}\nHeph-Fleet-State: {}\nHeph-Fleet-Since: {}\n",
            self.instance,
            self.state.as_str(),
            self.evolution.as_deref().unwrap_or("-"),
            one_line(&self.instance),
            self.state.as_str(),
            self.since
        );
        if let Some(e) = &self.evolution {
            m.push_str(&format!("Heph-Fleet-Evolution: {e}\n"));
        }
        if let Some(d) = &self.detail {
            let d: String = one_line(d).chars().take(500).collect();
            m.push_str(&format!("Heph-Fleet-Detail: {d}\n"));
        }
        m
    }

    fn parse(message: &str) -> Option<FleetStatus> {
        let field = |key: &str| {
            message.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|r| r.strip_prefix(": "))
                    .map(|v| v.trim().to_owned())
            })
        };
        Some(FleetStatus {
            instance: field("Heph-Fleet-Instance")?,
            evolution: field("Heph-Fleet-Evolution"),
            state: FleetState::parse(&field("Heph-Fleet-State")?)?,
            since: field("Heph-Fleet-Since")?.parse().ok()?,
            detail: field("Heph-Fleet-Detail"),
        })
    }
}

/// A canary rollout in the remote (`heph watch --publish REMOTE --canary N`):
/// `refs/heph/rollout/current`, a commit with the empty tree whose parent is the
/// evolution rolled out (fetching it brings the evolution along) and whose message
/// names the canaries in `Heph-Rollout-*` trailers. Only the publisher writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The evolution the canaries apply first.
    pub evolution: String,
    /// The instances that apply it before it reaches the history reference.
    pub canaries: Vec<String>,
    /// Since when (seconds since the Unix epoch).
    pub since: i64,
}

impl Rollout {
    fn message(&self) -> String {
        let mut m = format!(
            "rollout: {} to {}\n\nHeph-Rollout-Evolution: {}\nHeph-Rollout-Since: {}\n",
            self.evolution,
            self.canaries.join(", "),
            self.evolution,
            self.since
        );
        for c in &self.canaries {
            let c: String = c.split_whitespace().collect::<Vec<_>>().join(" ");
            m.push_str(&format!("Heph-Rollout-Canary: {c}\n"));
        }
        m
    }

    fn parse(message: &str) -> Option<Rollout> {
        let values = |key: &str| {
            message
                .lines()
                .filter_map(|l| {
                    l.strip_prefix(key)
                        .and_then(|r| r.strip_prefix(": "))
                        .map(|v| v.trim().to_owned())
                })
                .collect::<Vec<_>>()
        };
        Some(Rollout {
            evolution: values("Heph-Rollout-Evolution").into_iter().next()?,
            canaries: values("Heph-Rollout-Canary"),
            since: values("Heph-Rollout-Since").first()?.parse().ok()?,
        })
    }
}

/// The first `count` instances of `statuses` by name that follow (not `stopped`): the
/// canaries of a rollout.
pub fn choose_canaries(statuses: &[FleetStatus], count: usize) -> Vec<String> {
    let mut names: Vec<&FleetStatus> = statuses
        .iter()
        .filter(|s| s.state != FleetState::Stopped)
        .collect();
    names.sort_by(|a, b| a.instance.cmp(&b.instance));
    names
        .into_iter()
        .take(count)
        .map(|s| s.instance.clone())
        .collect()
}

/// An instance name as one reference-name part: ASCII letters, digits, `-`, `_` and
/// `.` kept (no leading `.`), anything else `_`.
pub fn instance_component(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_start_matches('.').replace("..", "_");
    let s = s.strip_suffix(".lock").map_or(s.clone(), str::to_owned);
    if s.is_empty() { "_".to_owned() } else { s }
}

impl History {
    /// The remote (and local outgoing) reference of instance `instance`'s status:
    /// `refs/heph/fleet/INSTANCE` for the project at the root.
    fn fleet_prefix(&self) -> String {
        let name = self.reference.name();
        let base = name.strip_suffix("history").unwrap_or(&name);
        format!("{base}fleet/")
    }

    /// `heph watch --follow`: under the writer lock, bring the files to evolution
    /// `target` (fetched from the remote by [`History::fetch_remote`]) and move the
    /// history to it. The files are first recorded when they changed (`manual`); they
    /// are written only when the local tip is an ancestor of `target`, or has the files
    /// of one of its ancestors (an instance set up from a copy of the project); else
    /// nothing is written and [`FollowStep::Refused`] says why.
    pub fn follow_apply(&mut self, target: &str) -> Result<FollowStep, HistoryError> {
        self.follow_apply_with(target, None)
    }

    /// [`History::follow_apply`], and with `require_signed` (an allowed-signers file,
    /// `--require-signed`) every evolution applied must carry a signature by one of its
    /// keys (git's ssh format, checked by `ssh-keygen -Y verify`), else nothing is
    /// written and [`FollowStep::Refused`] names the first that does not.
    pub fn follow_apply_with(
        &mut self,
        target: &str,
        require_signed: Option<&Path>,
    ) -> Result<FollowStep, HistoryError> {
        let lock = self.lock("follow")?;
        self.repo_for_write()?;
        let target = Oid::from_str(target).map_err(HistoryError::git("reading an id"))?;
        let pre_state = self.record_manual_if_changed()?;
        let local = self.tip()?;
        let repo = self.repo_ref()?;
        if local == Some(target) {
            return Ok(FollowStep::UpToDate);
        }
        if let Some(l) = local
            && repo.graph_descendant_of(l, target).unwrap_or(false)
        {
            return Ok(FollowStep::Ahead);
        }
        if let Some(allowed) = require_signed {
            for (oid, subject) in evolutions_applied(repo, target, local) {
                if let Some(why) = super::signing::refusal(self, repo, oid, allowed)? {
                    return Ok(FollowStep::Refused {
                        local: local.map(|o| o.to_string()),
                        pre_state: pre_state.map(Box::new),
                        reason: format!(
                            "commit {} ({subject}) of the remote's history is not signed by \
                             an allowed key: {why}; with --require-signed {} only signed \
                             evolutions are applied, nothing was written",
                            &oid.to_string()[..7],
                            allowed.display()
                        ),
                    });
                }
            }
        }
        if let Some((foreign, subject)) = foreign_evolution(repo, target, local) {
            return Ok(FollowStep::Refused {
                local: local.map(|o| o.to_string()),
                pre_state: pre_state.map(Box::new),
                reason: format!(
                    "commit {} ({subject}) of the remote's history was not recorded by heph \
                     (it has no `{}` trailer); only heph's evolutions are applied, nothing \
                     was written",
                    &foreign.to_string()[..7],
                    super::message::keys::KIND
                ),
            });
        }
        let target_tree = self.tree_of(target)?;
        let from_tree = match local {
            None => empty_tree(repo)?,
            Some(l) => {
                let tree = self.tree_of(l)?;
                let known = repo.graph_descendant_of(target, l).unwrap_or(false)
                    || holds_tree(repo, target, tree);
                if !known {
                    let short = l.to_string()[..7].to_owned();
                    let reason = match &pre_state {
                        Some(e) => format!(
                            "the files have hand edits the remote's history does not hold; \
                             they were recorded as evolution {} and nothing was overwritten",
                            e.short_id
                        ),
                        None => {
                            let subject = repo
                                .find_commit(l)
                                .ok()
                                .and_then(|c| c.summary().ok().flatten().map(str::to_owned))
                                .unwrap_or_default();
                            format!(
                                "the files were changed here: local evolution {short} \
                                 ({subject}) is not in the remote's history; nothing was \
                                 overwritten (`heph history` lists it, `heph rollback` \
                                 or `heph sync --keep` settles it)"
                            )
                        }
                    };
                    return Ok(FollowStep::Refused {
                        local: local.map(|o| o.to_string()),
                        pre_state: pre_state.map(Box::new),
                        reason,
                    });
                }
                tree
            }
        };
        // The write-ahead record: a follower killed half-way is finished by the next
        // command that takes the lock (the files are a published evolution's), never
        // left for the next snapshot to record as a hand edit.
        let change = super::restore::plan_trees(self, repo, from_tree, target_tree)?;
        let (restored, deleted) = change.paths();
        let journal = change.begin_journal(
            self,
            &lock,
            TxStart {
                kind: TxKind::Follow,
                operation: format!("follow {}", &target.to_string()[..12]),
                pre_state: local.map(|o| o.to_string()),
                history: true,
                meta: None,
                target: Some(target.to_string()),
            },
        )?;
        let journal = super::restore::apply_journaled(self, repo, &change, journal)?;
        self.follow_move(local, target)?;
        journal
            .finish()
            .map_err(|e| HistoryError::Journal(Box::new(e)))?;
        Ok(FollowStep::Applied {
            from: local.map(|o| o.to_string()),
            to: target.to_string(),
            restored,
            deleted,
        })
    }

    /// Move the history reference from `from` (None: no history yet) to the followed
    /// evolution `target`, by compare-and-swap, durably.
    pub(crate) fn follow_move(&self, from: Option<Oid>, target: Oid) -> Result<(), HistoryError> {
        let repo = self.repo_ref()?;
        let name = self.reference.name();
        self.update_ref(&name, target, || match from {
            Some(l) => repo.reference_matching(&name, target, true, l, "heph follow"),
            None => repo.reference(&name, target, false, "heph follow"),
        })?;
        Ok(())
    }

    /// [`History::follow_move`] with hex ids (finishing a follower's transaction the
    /// journal kept).
    pub(crate) fn follow_finish(
        &self,
        from: Option<&str>,
        target: &str,
    ) -> Result<(), HistoryError> {
        let oid = |s: &str| Oid::from_str(s).map_err(HistoryError::git("reading an id"));
        let from = from.map(oid).transpose()?;
        self.follow_move(from, oid(target)?)
    }

    /// The rollout reference (`refs/heph/rollout/current` for the project at the root),
    /// and where this repository keeps its copy of it.
    fn rollout_refs(&self) -> (String, String, String) {
        let name = self.reference.name();
        let base = name.strip_suffix("history").unwrap_or(&name);
        let remote_dir = format!("{base}rollout/");
        let fetched = remote_dir.replacen("refs/heph/", "refs/heph/fleet-remote/", 1);
        (format!("{remote_dir}current"), remote_dir, fetched)
    }

    /// `--canary`: whether the local tip is strictly ahead of `remote`'s history (a
    /// fast-forward of it): the local tip and the remote's, else None (nothing to roll
    /// out, the remote has no history yet, or the histories diverged: a plain publish
    /// reports it).
    pub fn rollout_candidate(
        &mut self,
        remote: &str,
        transport: SyncTransport,
    ) -> Result<Option<(String, String)>, HistoryError> {
        let _lock = self.lock("publish")?;
        let f = self.fetch_locked(remote, transport)?;
        let repo = self.repo_ref()?;
        Ok(match (f.local, f.theirs) {
            (Some(l), Some(r)) if l != r && repo.graph_descendant_of(l, r).unwrap_or(false) => {
                Some((l.to_string(), r.to_string()))
            }
            _ => None,
        })
    }

    /// `--canary`: publish `rollout` on `remote` (`refs/heph/rollout/current`, replaced;
    /// the evolution's objects go with it); the server's refusal, if any.
    pub fn start_rollout(
        &mut self,
        remote: &str,
        transport: SyncTransport,
        rollout: &Rollout,
    ) -> Result<Option<String>, HistoryError> {
        let _lock = self.lock("publish")?;
        self.repo_for_write()?;
        let repo = self.repo_ref()?;
        let evolution = Oid::from_str(&rollout.evolution)
            .and_then(|o| repo.find_commit(o))
            .map_err(HistoryError::git("reading the evolution rolled out"))?;
        let tree = repo
            .find_tree(empty_tree(repo)?)
            .map_err(HistoryError::git("reading the empty tree"))?;
        let sig = self.signature(repo, &self.options.committer)?;
        let oid = repo
            .commit(None, &sig, &sig, &rollout.message(), &tree, &[&evolution])
            .map_err(HistoryError::git("writing the rollout"))?;
        let (reference, _, _) = self.rollout_refs();
        let local_ref = reference.replacen("refs/heph/", "refs/heph/outgoing/", 1);
        repo.reference(&local_ref, oid, true, "heph rollout")
            .map_err(HistoryError::git("writing the rollout reference"))?;
        self.push_owned_ref(remote, transport, &local_ref, &reference)
    }

    /// `--canary`: push evolution `evolution` (an ancestor of the local tip, or the
    /// tip) to `remote`'s history reference, only as a fast-forward; the server's
    /// refusal, if any.
    pub fn promote(
        &mut self,
        remote: &str,
        transport: SyncTransport,
        evolution: &str,
    ) -> Result<Option<String>, HistoryError> {
        let _lock = self.lock("publish")?;
        self.repo_for_write()?;
        let repo = self.repo_ref()?;
        let oid = Oid::from_str(evolution).map_err(HistoryError::git("reading an id"))?;
        let name = self.reference.name();
        let local_ref = format!(
            "{}promote",
            self.rollout_refs()
                .1
                .replacen("refs/heph/", "refs/heph/outgoing/", 1)
        );
        repo.reference(&local_ref, oid, true, "heph rollout: promote")
            .map_err(HistoryError::git("writing the promoted reference"))?;
        self.push_ref_fast_forward(remote, transport, &local_ref, &name)
    }

    /// `heph watch --follow`: fetch `remote`'s history and rollout; the evolution this
    /// instance (`instance`) applies next: the rollout's when it is one of its
    /// canaries and the rollout is ahead of the remote's history, else the history's
    /// tip (None when the remote has no history).
    pub fn follow_target(
        &mut self,
        remote: &str,
        transport: SyncTransport,
        instance: &str,
    ) -> Result<Option<String>, HistoryError> {
        let tip = {
            let _lock = self.lock("follow")?;
            let (_, dir, fetched) = self.rollout_refs();
            let also = super::transport::AlsoFetch {
                from: &dir,
                into: &fetched,
            };
            // One connection for both: an idle follower costs one fetch per interval.
            self.fetch_locked_also(remote, transport, Some(also))?
                .theirs
                .map(|o| o.to_string())
        };
        let Some(rollout) = self.read_rollout()? else {
            return Ok(tip);
        };
        if !rollout.canaries.iter().any(|c| c == instance) {
            return Ok(tip);
        }
        let repo = self.repo_ref()?;
        let Ok(evolution) = Oid::from_str(&rollout.evolution) else {
            return Ok(tip);
        };
        let ahead = match tip.as_deref().map(Oid::from_str) {
            Some(Ok(t)) => {
                evolution != t && repo.graph_descendant_of(evolution, t).unwrap_or(false)
            }
            Some(Err(_)) => false,
            None => true,
        };
        Ok(if ahead && repo.find_commit(evolution).is_ok() {
            Some(rollout.evolution)
        } else {
            tip
        })
    }

    /// The rollout in `remote`, if any (fetched with its evolution).
    pub fn fetch_rollout(
        &mut self,
        remote: &str,
        transport: SyncTransport,
    ) -> Result<Option<Rollout>, HistoryError> {
        {
            let _lock = self.lock("follow")?;
            let (_, dir, fetched) = self.rollout_refs();
            self.fetch_glob(remote, transport, &format!("{dir}*"), &fetched)?;
        }
        self.read_rollout()
    }

    /// The rollout last fetched, if any.
    fn read_rollout(&self) -> Result<Option<Rollout>, HistoryError> {
        let (_, _, fetched) = self.rollout_refs();
        let repo = self.repo_ref()?;
        let Ok(r) = repo.find_reference(&format!("{fetched}current")) else {
            return Ok(None);
        };
        let Some(commit) = r.target().and_then(|o| repo.find_commit(o).ok()) else {
            return Ok(None);
        };
        let parsed = commit.message().ok().and_then(Rollout::parse);
        // The evolution must be the commit's parent: its objects came with it.
        Ok(parsed.filter(|p| {
            commit
                .parent_id(0)
                .is_ok_and(|parent| parent.to_string() == p.evolution)
        }))
    }

    /// Publish this instance's status on `remote` (`refs/heph/fleet/INSTANCE`, replaced
    /// each time); the server's refusal, if any.
    pub fn report_fleet_status(
        &mut self,
        remote: &str,
        transport: SyncTransport,
        status: &FleetStatus,
    ) -> Result<Option<String>, HistoryError> {
        let _lock = self.lock("fleet status")?;
        self.repo_for_write()?;
        let repo = self.repo_ref()?;
        let tree = empty_tree(repo)?;
        let tree = repo
            .find_tree(tree)
            .map_err(HistoryError::git("reading the empty tree"))?;
        let sig = self.signature(repo, &self.options.committer)?;
        let oid = repo
            .commit(None, &sig, &sig, &status.message(), &tree, &[])
            .map_err(HistoryError::git("writing the fleet status"))?;
        let reference = format!(
            "{}{}",
            self.fleet_prefix(),
            instance_component(&status.instance)
        );
        let local_ref = reference.replacen("refs/heph/", "refs/heph/outgoing/", 1);
        repo.reference(&local_ref, oid, true, "heph fleet status")
            .map_err(HistoryError::git("writing the fleet status reference"))?;
        self.push_owned_ref(remote, transport, &local_ref, &reference)
    }

    /// `heph fleet status REMOTE`: every instance's report in the remote, by name.
    pub fn fleet_status(
        &mut self,
        remote: &str,
        transport: SyncTransport,
    ) -> Result<Vec<FleetStatus>, HistoryError> {
        let _lock = self.lock("fleet status")?;
        let prefix = self.fleet_prefix();
        let into = prefix.replacen("refs/heph/", "refs/heph/fleet-remote/", 1);
        self.fetch_glob(remote, transport, &format!("{prefix}*"), &into)?;
        let repo = self.repo_ref()?;
        let mut out = Vec::new();
        let refs = repo
            .references_glob(&format!("{into}*"))
            .map_err(HistoryError::git("listing the fleet references"))?;
        for r in refs.flatten() {
            let Some(commit) = r.target().and_then(|o| repo.find_commit(o).ok()) else {
                continue;
            };
            if let Some(s) = commit.message().ok().and_then(FleetStatus::parse) {
                out.push(s);
            }
        }
        out.sort_by(|a, b| a.instance.cmp(&b.instance));
        Ok(out)
    }
}

/// The commits between `local` (excluded; unrelated histories: the target's own) and
/// `target`, with their subjects, at most [`BASE_SEARCH`].
fn evolutions_applied(repo: &Repository, target: Oid, local: Option<Oid>) -> Vec<(Oid, String)> {
    let Ok(mut walk) = repo.revwalk() else {
        return Vec::new();
    };
    if walk.push(target).is_err() {
        return Vec::new();
    }
    if let Some(l) = local {
        let _ = walk.hide(l);
    }
    walk.flatten()
        .take(BASE_SEARCH)
        .map(|oid| {
            let subject = repo
                .find_commit(oid)
                .ok()
                .and_then(|c| c.summary().ok().flatten().map(str::to_owned))
                .unwrap_or_default();
            (oid, subject)
        })
        .collect()
}

/// The first commit between `local` (excluded) and `target` whose message lacks heph's
/// trailers, with its subject.
fn foreign_evolution(repo: &Repository, target: Oid, local: Option<Oid>) -> Option<(Oid, String)> {
    let mut walk = repo.revwalk().ok()?;
    walk.push(target).ok()?;
    if let Some(l) = local {
        // Unrelated histories: only the target's own evolutions are looked at then.
        let _ = walk.hide(l);
    }
    walk.flatten().take(BASE_SEARCH).find_map(|oid| {
        let commit = repo.find_commit(oid).ok()?;
        let message = String::from_utf8_lossy(commit.message_bytes()).into_owned();
        let (_, trailers) = super::message::split(&message);
        let heph = trailers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(super::message::keys::KIND));
        (!heph).then(|| {
            let subject = message.lines().next().unwrap_or_default().to_owned();
            (oid, subject)
        })
    })
}

fn empty_tree(repo: &Repository) -> Result<Oid, HistoryError> {
    repo.treebuilder(None)
        .and_then(|b| b.write())
        .map_err(HistoryError::git("writing the empty tree"))
}

/// Does an evolution of `from`'s history (at most [`BASE_SEARCH`] of them) have `tree`?
fn holds_tree(repo: &Repository, from: Oid, tree: Oid) -> bool {
    let Ok(mut walk) = repo.revwalk() else {
        return false;
    };
    if walk.push(from).is_err() {
        return false;
    }
    walk.flatten()
        .take(BASE_SEARCH)
        .any(|c| repo.find_commit(c).is_ok_and(|c| c.tree_id() == tree))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_survives_its_message() {
        let mut s = FleetStatus::now("web-1", Some("abc123".into()), FleetState::BuildFailed);
        s.detail = Some("error[E0308]: mismatched\n types".into());
        let back = FleetStatus::parse(&s.message()).expect("parses");
        assert_eq!(
            back.detail.as_deref(),
            Some("error[E0308]: mismatched types")
        );
        assert_eq!(back.state, FleetState::BuildFailed);
        assert_eq!(back.instance, "web-1");
        assert_eq!(back.evolution, s.evolution);
    }

    use crate::history::tests::{project, write};

    fn bare_remote(dir: &std::path::Path) -> String {
        let path = dir.join("fleet.git");
        Repository::init_bare(&path).expect("bare remote");
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn a_follower_applies_published_evolutions_and_never_overwrites_hand_edits() {
        let (dir_a, a_root) = project(false);
        let (_dir_b, b_root) = project(false);
        let remote = bare_remote(dir_a.path());
        let auto = SyncTransport::Auto;
        let mut a = History::open(&a_root).expect("open a");
        a.snapshot(Some("start")).expect("snapshot a");
        let pushed = a.publish(&remote, auto).expect("publish");
        assert!(matches!(
            pushed.outcome,
            super::super::SyncOutcome::Pushed { .. }
        ));

        // B holds a copy of the same files: it adopts the remote's history.
        let mut b = History::open(&b_root).expect("open b");
        let tip = b
            .fetch_remote(&remote, auto)
            .expect("fetch")
            .expect("a tip");
        let step = b.follow_apply(&tip).expect("apply");
        assert!(
            matches!(&step, FollowStep::Applied { restored, deleted, .. } if restored.is_empty() && deleted.is_empty()),
            "{step:?}"
        );

        // A change published by A is written into B.
        write(&a_root, "src/lib.rs", "pub fn a() -> u32 { 2 }\n");
        a.snapshot(Some("two")).expect("snapshot");
        a.publish(&remote, auto).expect("publish");
        let tip = b
            .fetch_remote(&remote, auto)
            .expect("fetch")
            .expect("a tip");
        let step = b.follow_apply(&tip).expect("apply");
        assert!(matches!(step, FollowStep::Applied { .. }), "{step:?}");
        assert_eq!(
            std::fs::read_to_string(b_root.join("src/lib.rs")).expect("read"),
            "pub fn a() -> u32 { 2 }\n"
        );
        assert!(matches!(
            b.follow_apply(&tip).expect("again"),
            FollowStep::UpToDate
        ));

        // A hand edit in B: recorded, and the next evolution is refused.
        write(&b_root, "src/lib.rs", "pub fn a() -> u32 { 99 }\n");
        write(&a_root, "src/lib.rs", "pub fn a() -> u32 { 3 }\n");
        a.snapshot(Some("three")).expect("snapshot");
        a.publish(&remote, auto).expect("publish");
        let tip = b
            .fetch_remote(&remote, auto)
            .expect("fetch")
            .expect("a tip");
        match b.follow_apply(&tip).expect("apply") {
            FollowStep::Refused {
                pre_state, reason, ..
            } => {
                assert!(pre_state.is_some(), "the hand edit is recorded");
                assert!(reason.contains("hand edits"), "{reason}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(
            std::fs::read_to_string(b_root.join("src/lib.rs")).expect("read"),
            "pub fn a() -> u32 { 99 }\n"
        );

        // B's own evolution is not a fast-forward of the remote: refused, not forced.
        let before = b.fetch_remote(&remote, auto).expect("fetch");
        let refused = b.publish(&remote, auto).expect("publish b");
        assert!(
            matches!(
                refused.outcome,
                super::super::SyncOutcome::Diverged {
                    ahead: 1,
                    behind: 1,
                    ..
                }
            ),
            "{:?}",
            refused.outcome
        );
        assert_eq!(b.fetch_remote(&remote, auto).expect("fetch"), before);
    }

    #[test]
    fn fleet_status_round_trips_through_the_remote() {
        let (dir, root) = project(false);
        let remote = bare_remote(dir.path());
        let mut h = History::open(&root).expect("open");
        h.snapshot(None).expect("snapshot");
        assert!(
            h.fleet_status(&remote, SyncTransport::Auto)
                .expect("empty")
                .is_empty()
        );
        let mut s = FleetStatus::now("web 1", Some("abc".into()), FleetState::Applying);
        assert_eq!(
            h.report_fleet_status(&remote, SyncTransport::Auto, &s)
                .expect("report"),
            None
        );
        s.state = FleetState::Applied;
        h.report_fleet_status(&remote, SyncTransport::Git, &s)
            .expect("replaced");
        let other = FleetStatus::now("web-2", None, FleetState::Stopped);
        h.report_fleet_status(&remote, SyncTransport::Auto, &other)
            .expect("report");
        for transport in [SyncTransport::Libgit2, SyncTransport::Git] {
            let list = h.fleet_status(&remote, transport).expect("list");
            assert_eq!(list, vec![s.clone(), other.clone()], "{transport:?}");
        }
    }

    #[test]
    fn canaries_are_the_first_followers_by_name_and_a_rollout_survives_its_message() {
        let statuses = [
            FleetStatus::now("web-3", None, FleetState::Applied),
            FleetStatus::now("web-1", None, FleetState::Stopped),
            FleetStatus::now("web-2", None, FleetState::Unhealthy),
            FleetStatus::now("web-4", None, FleetState::Applied),
        ];
        assert_eq!(choose_canaries(&statuses, 2), ["web-2", "web-3"]);
        assert_eq!(choose_canaries(&statuses, 9).len(), 3);
        let r = Rollout {
            evolution: "abc".into(),
            canaries: vec!["web-2".into(), "web 3".into()],
            since: 42,
        };
        assert_eq!(Rollout::parse(&r.message()), Some(r));
    }

    #[test]
    fn a_canary_follows_the_rollout_and_the_others_the_history() {
        let (dir_a, a_root) = project(false);
        let (_dir_b, b_root) = project(false);
        let remote = bare_remote(dir_a.path());
        let auto = SyncTransport::Auto;
        let mut a = History::open(&a_root).expect("open a");
        let first = a.snapshot(Some("start")).expect("snapshot").expect("one");
        a.publish(&remote, auto).expect("publish");
        assert_eq!(a.rollout_candidate(&remote, auto).expect("none"), None);
        write(&a_root, "src/lib.rs", "pub fn a() -> u32 { 2 }\n");
        let second = a.snapshot(Some("two")).expect("snapshot").expect("two");
        assert_eq!(
            a.rollout_candidate(&remote, auto).expect("candidate"),
            Some((second.id.clone(), first.id.clone()))
        );
        let rollout = Rollout {
            evolution: second.id.clone(),
            canaries: vec!["canary".into()],
            since: 1,
        };
        assert_eq!(
            a.start_rollout(&remote, auto, &rollout).expect("rollout"),
            None
        );

        let mut b = History::open(&b_root).expect("open b");
        for transport in [SyncTransport::Libgit2, SyncTransport::Git] {
            assert_eq!(
                b.follow_target(&remote, transport, "other")
                    .expect("other")
                    .as_deref(),
                Some(first.id.as_str()),
                "{transport:?}"
            );
            assert_eq!(
                b.follow_target(&remote, transport, "canary")
                    .expect("canary")
                    .as_deref(),
                Some(second.id.as_str()),
                "{transport:?}"
            );
        }
        assert_eq!(
            b.fetch_rollout(&remote, auto).expect("fetch"),
            Some(rollout)
        );
        // Promoted: everyone follows the history, which holds it.
        assert_eq!(a.promote(&remote, auto, &second.id).expect("promote"), None);
        for who in ["other", "canary"] {
            assert_eq!(
                b.follow_target(&remote, auto, who)
                    .expect("target")
                    .as_deref(),
                Some(second.id.as_str())
            );
        }
        // A rollout gone from the remote is gone here too.
        let ok = std::process::Command::new("git")
            .args([
                "--git-dir",
                &remote,
                "update-ref",
                "-d",
                "refs/heph/rollout/current",
            ])
            .status()
            .expect("git update-ref")
            .success();
        assert!(ok);
        for transport in [SyncTransport::Libgit2, SyncTransport::Git] {
            b.follow_target(&remote, transport, "canary")
                .expect("target");
            assert_eq!(b.read_rollout().expect("read"), None, "{transport:?}");
        }
    }

    #[test]
    fn instance_names_become_one_reference_part() {
        assert_eq!(instance_component("web 1/a"), "web_1_a");
        assert_eq!(instance_component(".."), "_");
        assert_eq!(instance_component("a..b.lock"), "a_b");
        assert_eq!(instance_component(""), "_");
    }
}
