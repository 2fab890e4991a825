//! Reading the history: listing evolutions (through the evolution index), finding one
//! by id (also among the evolutions fetched from remotes), the last that passed.

use git2::{ErrorCode, Oid, Repository};

use super::{
    History, HistoryError, ListFilter, SHORT_ID_LEN, evolution_from, evolution_of, index,
    index_record, normalize_module,
};
use crate::evolution::{Evolution, VerifyOutcome};

impl History {
    /// Evolutions, newest first, following the first parents from the tip.
    ///
    /// What the evolution index (`.heph/history-index`) holds is read from it, the rest
    /// from git; the index is then completed where it can be: commits newer than all of
    /// it are appended, and a walk that went down to the first evolution rewrites it
    /// whole when it was short (best effort: a listing never fails for the index).
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<Evolution>, HistoryError> {
        let mut out = Vec::new();
        let Some(tip) = self.tip()? else {
            return Ok(out);
        };
        let repo = self.repo_ref()?;
        let module = filter.module.as_deref().map(normalize_module);
        let limit = filter.limit.unwrap_or(usize::MAX);
        let index_path = self.index_path();
        let mut reader = index::Reader::open(&index_path);
        // Where the listing found the index ending (a file that is no index counts too:
        // a listing may start it over).
        let index_end = reader.as_ref().map_or_else(
            || std::fs::metadata(&index_path).map_or(0, |m| m.len()),
            index::Reader::end,
        );
        let mut indexed = reader.as_mut().and_then(index::Reader::prev);
        // The index's last record: what commits newer than all of it must descend from.
        let index_last = indexed.as_ref().map(|r| r.id);
        let mut foreign = false;
        // Every commit walked, as the index keeps it, newest first; how many came first
        // from git (before any the index has: newer than all of it), and from git in all.
        let mut walked: Vec<index::Record> = Vec::new();
        let mut fresh = 0;
        let mut from_git = 0;
        let mut next = Some(tip);
        while let Some(oid) = next {
            if out.len() >= limit {
                break;
            }
            let record = match indexed.take_if(|r| r.id == oid) {
                Some(r) => {
                    indexed = reader.as_mut().and_then(index::Reader::prev);
                    r
                }
                None => {
                    let commit = repo.find_commit(oid).map_err(|source| HistoryError::Git {
                        what: format!("reading evolution {oid} of {}", self.reference.name()),
                        source,
                    })?;
                    from_git += 1;
                    if from_git == walked.len() + 1 {
                        // Every commit so far came from git: newer than all of the index.
                        fresh = from_git;
                        if fresh > 64 && indexed.is_some() {
                            // So many commits without a match: not this history's index.
                            reader = None;
                            indexed = None;
                            foreign = true;
                        }
                    }
                    index_record(&commit)
                }
            };
            next = record.parent;
            let evolution = evolution_from(record.id, record.time, record.parent, &record.message);
            walked.push(record);
            if filter.kind.is_some_and(|k| k != evolution.meta.kind) {
                continue;
            }
            if let Some(want) = &module {
                let Some(have) = evolution.meta.module.as_deref().map(normalize_module) else {
                    continue;
                };
                if have != *want && !have.starts_with(&format!("{want}::")) {
                    continue;
                }
            }
            out.push(evolution);
        }
        if from_git > 0 && self.state.ensure().is_ok() {
            if next.is_none() {
                // The whole chain, down to the first evolution: the index, complete.
                walked.reverse();
                let _ = index::rewrite(&index_path, &walked, index_end);
            } else if fresh > 0 {
                let matched = fresh < walked.len();
                walked.truncate(fresh);
                let mut after = index_last.filter(|_| matched);
                if !matched
                    && !foreign
                    && let Some(last) = index_last
                {
                    // The walk stopped above the index: bridge the gap from git (a little
                    // way) so the index stays one unbroken stretch, or start it over.
                    let bridge = self.bridge(repo, next, last);
                    if let Some(bridge) = bridge {
                        walked.extend(bridge);
                        after = Some(last);
                    }
                }
                walked.reverse();
                let _ = index::fill(&index_path, &walked, index_end, after);
            }
        }
        Ok(out)
    }

    /// The commits from `from` down to, not including, `last`, newest first, read from
    /// git: at most 256 of them; None when `last` is not reached by then.
    fn bridge(
        &self,
        repo: &Repository,
        from: Option<Oid>,
        last: Oid,
    ) -> Option<Vec<index::Record>> {
        let mut out = Vec::new();
        let mut at = from;
        while let Some(oid) = at {
            if oid == last {
                return Some(out);
            }
            if out.len() >= 256 {
                return None;
            }
            let commit = repo.find_commit(oid).ok()?;
            at = commit.parent_id(0).ok();
            out.push(index_record(&commit));
        }
        None
    }

    /// The evolution with this id: full, or a prefix that only one evolution has.
    /// Evolutions fetched from remotes by `heph sync` are found too.
    pub fn get(&self, id: &str) -> Result<Evolution, HistoryError> {
        let oid = self.resolve(id)?;
        let commit = self
            .repo_ref()?
            .find_commit(oid)
            .map_err(HistoryError::git("reading an evolution"))?;
        Ok(evolution_of(&commit))
    }

    /// The heads whose ancestors are evolutions: the local history, then remote ones.
    fn heads(&self) -> Result<Vec<Oid>, HistoryError> {
        let mut heads: Vec<Oid> = self.tip()?.into_iter().collect();
        if let Some(repo) = &self.repo
            && let Ok(refs) = repo.references_glob("refs/heph/remotes/*")
        {
            // This project's tracking references only: another project's evolutions
            // are not this one's.
            heads.extend(
                refs.flatten()
                    .filter(|r| r.name().is_ok_and(|n| self.reference.is_tracking(n)))
                    .filter_map(|r| r.target()),
            );
        }
        Ok(heads)
    }

    fn resolve(&self, id: &str) -> Result<Oid, HistoryError> {
        let id = id.trim();
        if id.is_empty() || id.len() > 40 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(HistoryError::InvalidId { id: id.to_owned() });
        }
        let heads = self.heads()?;
        if heads.is_empty() {
            return Err(HistoryError::Empty {
                root: self.root.clone(),
            });
        }
        let repo = self.repo_ref()?;
        let lower = id.to_ascii_lowercase();
        let in_history = |oid: Oid| {
            heads
                .iter()
                .any(|&h| h == oid || repo.graph_descendant_of(h, oid).unwrap_or(false))
        };
        let unknown = || HistoryError::UnknownId {
            id: id.to_owned(),
            root: self.root.clone(),
        };
        // Fast path: the object database knows a unique object with this prefix.
        if lower.len() >= 4
            && let Ok(short) = Oid::from_str(&lower)
        {
            let odb = repo
                .odb()
                .map_err(HistoryError::git("opening the object database"))?;
            match odb.exists_prefix(short, lower.len()) {
                Ok(full) if in_history(full) => return Ok(full),
                Ok(_) => return Err(unknown()),
                Err(e) if e.code() == ErrorCode::NotFound => return Err(unknown()),
                Err(_) => {} // ambiguous in the database: look among evolutions only
            }
        }
        let mut found: Vec<Oid> = Vec::new();
        let mut walk = repo
            .revwalk()
            .map_err(HistoryError::git("walking the history"))?;
        for h in &heads {
            walk.push(*h)
                .map_err(HistoryError::git("walking the history"))?;
        }
        for oid in walk {
            let oid = oid.map_err(HistoryError::git("walking the history"))?;
            if oid.to_string().starts_with(&lower) {
                found.push(oid);
            }
        }
        match found.as_slice() {
            [] => Err(unknown()),
            [one] => Ok(*one),
            many => Err(HistoryError::AmbiguousId {
                id: id.to_owned(),
                candidates: many
                    .iter()
                    .take(10)
                    .map(|oid| {
                        let subject = repo
                            .find_commit(*oid)
                            .ok()
                            .and_then(|c| {
                                c.summary_bytes()
                                    .map(|s| String::from_utf8_lossy(s).into_owned())
                            })
                            .unwrap_or_default();
                        format!("  {}  {subject}", &oid.to_string()[..SHORT_ID_LEN])
                    })
                    .collect(),
            }),
        }
    }

    /// The last evolution whose verification passed (`Heph-Verify: passed`).
    pub fn last_passed(&self) -> Result<Option<Evolution>, HistoryError> {
        let Some(tip) = self.tip()? else {
            return Ok(None);
        };
        let repo = self.repo_ref()?;
        let mut next = Some(tip);
        while let Some(oid) = next {
            let commit = repo
                .find_commit(oid)
                .map_err(HistoryError::git("reading the history"))?;
            next = commit.parent_id(0).ok();
            let evolution = evolution_of(&commit);
            if evolution
                .meta
                .verify
                .is_some_and(|v| v.outcome == VerifyOutcome::Passed)
            {
                return Ok(Some(evolution));
            }
        }
        Ok(None)
    }
}
