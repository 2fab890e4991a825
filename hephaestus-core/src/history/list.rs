//! Reading the history: listing evolutions, finding one by id (also among the
//! evolutions fetched from remotes), the last that passed.

use git2::{ErrorCode, Oid};

use super::{History, HistoryError, ListFilter, SHORT_ID_LEN, evolution_of, normalize_module};
use crate::evolution::{Evolution, VerifyOutcome};

impl History {
    /// Evolutions, newest first, following the first parents from the tip.
    ///
    /// Each listed evolution is one commit read through libgit2 (its header and message);
    /// a filter reads every commit of the chain until `limit` evolutions matched.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<Evolution>, HistoryError> {
        let mut out = Vec::new();
        let Some(tip) = self.tip()? else {
            return Ok(out);
        };
        let repo = self.repo_ref()?;
        let module = filter.module.as_deref().map(normalize_module);
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut next = Some(tip);
        while let Some(oid) = next {
            if out.len() >= limit {
                break;
            }
            let commit = repo.find_commit(oid).map_err(|source| HistoryError::Git {
                what: format!("reading evolution {oid} of {}", self.reference.name()),
                source,
            })?;
            next = commit.parent_id(0).ok();
            let evolution = evolution_of(&commit);
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
        Ok(out)
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
