//! Unit tests written for the mutants cargo-mutants left alive in `history/` (see
//! BENCHMARKS.md, "Mutation testing of the data-guarding code").

use std::fs;
use std::path::Path;

use super::tests::{git, meta, open, project, write};
use super::*;

/// A bare repository `name` in `dir`, as a URL (its path).
fn bare(dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    fs::create_dir_all(&p).expect("mkdir");
    git(&p, &["init", "-q", "--bare"]);
    p.to_string_lossy().into_owned()
}

/// The tip of reference `name` in the git directory `git_dir`.
fn rev(git_dir: &Path, name: &str) -> String {
    git(git_dir, &["rev-parse", name]).trim().to_owned()
}

/// A history behind the remote's (the remote's tip descends from the local one) is
/// fast-forwarded to it: not reported as diverged, nothing pushed.
#[test]
fn a_history_behind_the_remote_is_fast_forwarded() {
    let (dir, a_root) = project(false);
    let url = bare(dir.path(), "remote.git");
    let mut a = open(&a_root);
    a.record_manual_if_changed().expect("record").expect("new");
    a.sync(&url).expect("push");
    let (_other, b_root) = project(false);
    let mut b = open(&b_root);
    b.sync(&url).expect("fetch");
    write(&a_root, "src/lib.rs", "pub fn a() -> u32 { 2 }\n");
    a.record(&meta(EvolutionKind::SelfModify, None))
        .expect("record");
    let tip = a
        .record(&meta(EvolutionKind::Import, None))
        .expect("record");
    a.sync(&url).expect("push");
    let report = b.sync(&url).expect("sync");
    assert_eq!(report.outcome, SyncOutcome::FastForwarded { evolutions: 2 });
    assert_eq!(report.local_after.as_deref(), Some(tip.id.as_str()));
    assert_eq!(rev(&b_root.join(".heph/history.git"), HISTORY_REF), tip.id);
    assert_eq!(rev(Path::new(&url), HISTORY_REF), tip.id);
}
