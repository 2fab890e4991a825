//! Candidates: rule matches on the current baseline, proposer rounds, and each
//! candidate's change planned on the current baseline.

use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::baseline::*;
use super::coordinator::*;
use super::worker::*;
use super::*;
use crate::apply::{ApplyError, Operation, PatchFile};
use crate::edit::{ChangeAction, Edit, EditError, EditMode, ItemChange, Splice};
use crate::evolve::log::LogRecord;
use crate::evolve::proposer::{self, HistoryEntry, Proposal, TargetSource};
use crate::evolve::{CandidateRecord, FitnessRecord};
use crate::evolve::{EvolveError, EvolveEvent, Source, Stage};
use crate::item::ItemKind;
use crate::resolve::Resolver;

/// A candidate waiting, or being evaluated.
#[derive(Debug, Clone)]
pub(super) struct Cand {
    pub(super) id: usize,
    pub(super) key: String,
    pub(super) source: Source,
    pub(super) description: String,
    pub(super) module: Option<String>,
    pub(super) recipe: Recipe,
    pub(super) requeued: u32,
    /// Set when it is revisited after an inconclusive comparison.
    pub(super) revisit: Option<Box<Revisit>>,
}

/// What a revisited candidate brings back from its first evaluation.
#[derive(Debug, Clone)]
pub(super) struct Revisit {
    /// Its record then (verdict rejected, inconclusive).
    pub(super) earlier: CandidateRecord,
    /// The comparison to continue: None when the baseline changed since.
    pub(super) resume: Option<FitnessRecord>,
    /// The baseline version that comparison was measured on.
    pub(super) version: u64,
}

#[derive(Debug, Clone)]
pub(super) enum Recipe {
    Rule {
        rule: String,
        module: String,
        item: Option<String>,
        before: String,
        occurrence: usize,
    },
    Edit {
        module: String,
        edit: Edit,
    },
}

/// A candidate's change, computed on the current baseline.
#[derive(Debug, Clone)]
pub(super) struct Planned {
    pub(super) module: String,
    pub(super) files: Vec<PatchFile>,
    pub(super) changes: Vec<ItemChange>,
}

/// The smallest single splice turning `before` into `after`.
pub(super) fn diff_splice(before: &str, after: &str) -> Vec<Splice> {
    let p = before
        .bytes()
        .zip(after.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let mut p = p;
    while !before.is_char_boundary(p) || !after.is_char_boundary(p) {
        p -= 1;
    }
    let mut q = before[p..]
        .bytes()
        .rev()
        .zip(after[p..].bytes().rev())
        .take_while(|(a, b)| a == b)
        .count();
    while !before.is_char_boundary(before.len() - q) || !after.is_char_boundary(after.len() - q) {
        q -= 1;
    }
    if before == after {
        return Vec::new();
    }
    vec![Splice {
        range: p..before.len() - q,
        text: after[p..after.len() - q].to_owned(),
    }]
}

pub(super) fn short_hash(text: &str) -> String {
    // FNV-1a: stable across runs and platforms (keys are stored in logs).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl<'a, 'p> Run<'a, 'p> {
    pub(super) fn scan_rules(&mut self, base: &Mutex<Baseline>) {
        let _guard = lock(base);
        let resolver = Resolver::new(&self.slot_project);
        let mut found = Vec::new();
        for m in &self.targets {
            let Ok(file) = resolver.file(&m.file) else {
                continue;
            };
            let Some(items) = m.items(&file) else {
                continue;
            };
            let rel = self.slot_project.relative(&m.file);
            for mt in self.ev.rules.find(&file, items) {
                let key = format!(
                    "rule:{}:{}:{}:{}:{}",
                    mt.rule,
                    rel,
                    mt.item.as_deref().unwrap_or("-"),
                    mt.occurrence,
                    short_hash(&mt.before)
                );
                let description = format!(
                    "{} in {}:{}: {} → {}",
                    mt.rule,
                    rel,
                    mt.line,
                    one_line(&mt.before),
                    one_line(&mt.after)
                );
                found.push((key, mt, m.path.clone(), description));
            }
        }
        drop(resolver);
        for (key, mt, module, description) in found {
            if !self.seen.insert(key.clone()) {
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.queue.push_back(Cand {
                id,
                key,
                source: Source::Rule {
                    rule: mt.rule.clone(),
                },
                description,
                module: Some(module.clone()),
                recipe: Recipe::Rule {
                    rule: mt.rule,
                    module,
                    item: mt.item,
                    before: mt.before,
                    occurrence: mt.occurrence,
                },
                requeued: 0,
                revisit: None,
            });
        }
        let (pending, total) = (self.queue.len(), self.next_id - 1);
        self.emit(EvolveEvent::Queued { pending, total });
    }

    /// The candidate's change on the current baseline: Ok(None) when the rule's match
    /// is gone (an accepted change rewrote it), Err((stage, reason)) when invalid.
    pub(super) fn plan(&self, c: &Cand) -> Result<Option<Planned>, (Stage, String)> {
        match &c.recipe {
            Recipe::Rule {
                rule,
                module,
                item,
                before,
                occurrence,
            } => {
                let resolver = Resolver::new(&self.slot_project);
                let m = resolver
                    .resolve(module)
                    .map_err(|e| (Stage::Syntax, e.to_string()))?;
                let file = resolver
                    .file(&m.file)
                    .map_err(|e| (Stage::Syntax, e.to_string()))?;
                let Some(items) = m.items(&file) else {
                    return Ok(None);
                };
                let Some(r) = self.ev.rules.rules().iter().find(|r| &r.id == rule) else {
                    return Ok(None);
                };
                let found = crate::evolve::rules::find_matches(r, &file, items)
                    .into_iter()
                    .find(|x| {
                        &x.item == item && &x.before == before && x.occurrence == *occurrence
                    });
                let Some(found) = found else {
                    return Ok(None);
                };
                let rel = self.slot_project.relative(&m.file);
                let kind = found.item_kind.unwrap_or(ItemKind::Fn);
                Ok(Some(Planned {
                    module: m.path.clone(),
                    files: vec![PatchFile {
                        path: rel,
                        before: file.text().to_owned(),
                        splices: found.splices,
                    }],
                    changes: vec![ItemChange {
                        action: ChangeAction::Replaced,
                        key: found.item.unwrap_or_else(|| m.path.clone()),
                        kind,
                    }],
                }))
            }
            Recipe::Edit { module, edit } => {
                let op = Operation::SelfModify {
                    module: module.clone(),
                    edit: edit.clone(),
                };
                let plan = self.slot_project.plan(&op).map_err(|e| match e {
                    ApplyError::Resolve(e) => (Stage::Proposal, e.to_string()),
                    ApplyError::Edit(EditError::Syntax(e)) => {
                        (Stage::Syntax, format!("the code does not parse: {e}"))
                    }
                    other => (Stage::Syntax, other.to_string()),
                })?;
                if plan.is_noop() {
                    return Err((Stage::Syntax, "the code changes nothing".into()));
                }
                let mut files = Vec::new();
                for f in &plan.files {
                    let Some(before) = &f.before else {
                        return Err((Stage::Syntax, "candidates cannot create files".into()));
                    };
                    let before = String::from_utf8_lossy(before).into_owned();
                    let after = String::from_utf8_lossy(&f.after).into_owned();
                    files.push(PatchFile {
                        path: self.slot_project.relative(&f.path),
                        splices: diff_splice(&before, &after),
                        before,
                    });
                }
                Ok(Some(Planned {
                    module: plan.module.clone(),
                    files,
                    changes: plan.changes,
                }))
            }
        }
    }

    /// Start the next proposer round; false when there is none to start.
    pub(super) fn start_proposer<'s>(
        &mut self,
        scope: &'s std::thread::Scope<'s, '_>,
        tx: &Sender<Msg>,
        base: &Mutex<Baseline>,
    ) -> bool {
        let Some(command) = self.ev.opts.proposer.clone() else {
            return false;
        };
        if self.proposer_round >= self.ev.opts.proposer_rounds || self.proposer_dry {
            return false;
        }
        self.proposer_round += 1;
        self.proposer_running = true;
        let round = self.proposer_round;
        let dir = lock(base).slot.dir().to_path_buf();
        let context = self.context(round, &dir);
        let timeout = self.ev.opts.proposer_timeout;
        let cancel = Some(Arc::clone(&self.settings.stop));
        let tx = tx.clone();
        self.emit(EvolveEvent::ProposerStarted { round });
        scope.spawn(move || {
            let t = Instant::now();
            let result = match proposer::run(&command, &dir, &context, timeout, cancel) {
                Ok(r) => r,
                Err(e) => Err(e.to_string()),
            };
            let _ = tx.send(Msg::Proposed {
                round,
                result,
                duration: t.elapsed(),
            });
        });
        true
    }

    pub(super) fn context(&self, round: usize, dir: &Path) -> serde_json::Value {
        let targets: Vec<TargetSource> = self
            .targets
            .iter()
            .filter(|m| m.inline.is_empty())
            .filter_map(|m| {
                let rel = self.slot_project.relative(&m.file);
                let source = std::fs::read_to_string(dir.join(&rel)).ok()?;
                Some(TargetSource {
                    module: m.path.clone(),
                    file: rel,
                    source,
                })
            })
            .collect();
        let history: Vec<HistoryEntry> = self
            .prior
            .iter()
            .chain(&self.records)
            .map(|r| HistoryEntry {
                id: r.id,
                source: match &r.source {
                    Source::Rule { rule } => format!("rule:{rule}"),
                    Source::Proposer { .. } => "proposer".into(),
                },
                description: r.description.clone(),
                module: r.module.clone(),
                verdict: r.verdict.as_str().into(),
                stage: r.stage.map(|s| s.as_str().to_owned()),
                reason: r.reason.clone(),
                fitness_before: r.fitness.as_ref().map(|f| f.baseline_median),
                fitness_after: r.fitness.as_ref().map(|f| f.candidate_median),
            })
            .collect();
        let packages: Vec<serde_json::Value> = self
            .ev
            .project
            .packages()
            .iter()
            .map(|p| json!({"name": p.name, "targets": p.targets.iter().map(|t| json!({"name": t.name, "kind": format!("{:?}", t.kind).to_lowercase()})).collect::<Vec<_>>()}))
            .collect();
        json!({
            "protocol": proposer::PROTOCOL,
            "run_id": self.ev.run_id,
            "round": round,
            "project": { "root": self.ev.project.root(), "packages": packages },
            "fitness": {
                "command": self.ev.opts.fitness,
                "metric": self.ev.opts.metric,
                "maximize": self.ev.opts.maximize,
                "baseline": self.baseline_median,
                "current": self.current,
            },
            "targets": targets,
            "history": history,
            "max_candidates": 20,
        })
    }

    pub(super) fn take_proposals(
        &mut self,
        round: usize,
        result: Result<Vec<Proposal>, String>,
        duration: Duration,
    ) -> Result<(), EvolveError> {
        let (ok, reason, proposals) = match result {
            Ok(p) => (true, None, p),
            Err(e) => (false, Some(e), Vec::new()),
        };
        self.log.append(&LogRecord::Proposer {
            round,
            ok,
            reason: reason.clone(),
            candidates: proposals.len(),
            duration_ms: ms(duration),
        })?;
        self.emit(EvolveEvent::ProposerFinished {
            round,
            candidates: proposals.len(),
            error: reason.clone(),
        });
        if let Some(reason) = reason {
            // The whole answer is unusable: one rejected entry says why.
            let c = Cand {
                id: self.next_id,
                key: format!(
                    "proposer:{}:round{round}:{}",
                    self.ev.run_id,
                    short_hash(&reason)
                ),
                source: Source::Proposer { round },
                description: format!("proposer round {round}"),
                module: None,
                recipe: Recipe::Edit {
                    module: String::new(),
                    edit: Edit::merge(""),
                },
                requeued: 0,
                revisit: None,
            };
            self.next_id += 1;
            return self.rejected_early(&c, Stage::Proposal, reason);
        }
        let mut new = 0;
        let mut front = Vec::new();
        for p in proposals {
            let id = self.next_id;
            match p {
                Proposal::Invalid {
                    description,
                    module,
                    reason,
                } => {
                    self.next_id += 1;
                    let c = Cand {
                        id,
                        key: format!(
                            "proposer:invalid:{}",
                            short_hash(&format!("{description}{module:?}{reason}"))
                        ),
                        source: Source::Proposer { round },
                        description,
                        module,
                        recipe: Recipe::Edit {
                            module: String::new(),
                            edit: Edit::merge(""),
                        },
                        requeued: 0,
                        revisit: None,
                    };
                    self.rejected_early(&c, Stage::Proposal, reason)?;
                    new += 1;
                }
                Proposal::Edit {
                    module,
                    code,
                    mode,
                    description,
                } => {
                    let key = format!(
                        "proposer:{}",
                        short_hash(&format!("{module}\n{mode:?}\n{code}"))
                    );
                    if !self.seen.insert(key.clone()) {
                        continue;
                    }
                    self.next_id += 1;
                    new += 1;
                    let edit = match mode {
                        EditMode::Replace => Edit::replace(code),
                        _ => Edit::merge(code),
                    };
                    front.push(Cand {
                        id,
                        key,
                        source: Source::Proposer { round },
                        description,
                        module: Some(module.clone()),
                        recipe: Recipe::Edit { module, edit },
                        requeued: 0,
                        revisit: None,
                    });
                }
            }
        }
        if new == 0 {
            self.proposer_dry = true;
        }
        // Proposals go first: they are targeted.
        for c in front.into_iter().rev() {
            self.queue.push_front(c);
        }
        let (pending, total) = (self.queue.len(), self.next_id - 1);
        self.emit(EvolveEvent::Queued { pending, total });
        Ok(())
    }
}
