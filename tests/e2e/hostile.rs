//! Hostile project contents (issue 19, item 3): a cloned repository that ships `.heph`,
//! or entries of it (`.heph/tmp`, `.heph/lock`, `.heph/history.git`, `.heph/cache`), as
//! symbolic links to files and directories outside the project. Every heph command
//! refuses with an error naming the link, and nothing outside the project changes:
//! the outside files keep their bytes, the outside directory its listing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use hephaestus_tests::TestEnv;

/// Everything under `dir`, links included (as their target), sorted: (path, what).
fn tree(dir: &Path) -> Vec<(PathBuf, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let rel = path.strip_prefix(root).expect("inside").to_path_buf();
            let meta = fs::symlink_metadata(&path).expect("lstat");
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).expect("readlink");
                out.push((rel, format!("link to {}", target.display())));
            } else if meta.is_dir() {
                out.push((rel, "dir".into()));
                walk(root, &path, out);
            } else {
                let bytes = fs::read(&path).expect("read");
                out.push((rel, format!("file {:?}", String::from_utf8_lossy(&bytes))));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A directory outside the project with a file and a sub-directory, as a user's home
/// might have.
fn outside(env: &TestEnv) -> PathBuf {
    let dir = env.temp().join("outside");
    fs::create_dir_all(dir.join("notes")).expect("mkdir");
    fs::write(dir.join("precious.txt"), "do not touch\n").expect("write");
    fs::write(dir.join("notes/diary.md"), "# dear diary\n").expect("write");
    dir
}

/// Commit the fixture with `links` (path in the project → target) to a git repository
/// and clone it, as a user would get it; the clone's root.
fn cloned_with(env: &TestEnv, links: &[(&str, PathBuf)]) -> PathBuf {
    for (rel, target) in links {
        let link = env.path(rel);
        fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(target, &link).expect("symlink");
    }
    env.git_ok(["init", "-q"]);
    env.git_ok(["add", "-A"]);
    for (rel, _) in links {
        env.git_ok(["add", "-f", rel]);
    }
    env.git_ok(["commit", "-q", "-m", "a repository with links in .heph"]);
    let clone = env.temp().join("clone");
    let out = env
        .git()
        .arg("clone")
        .arg("-q")
        .arg(env.project())
        .arg(&clone)
        .output()
        .expect("git clone");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (rel, _) in links {
        assert!(
            fs::symlink_metadata(clone.join(rel))
                .expect("cloned link")
                .file_type()
                .is_symlink(),
            "the clone ships {rel} as a link"
        );
    }
    clone
}

/// Each heph command tried in `project`; the refusal must name `link`.
fn every_command_refuses(env: &TestEnv, project: &Path, link: &str, outside: &Path) {
    let before_outside = tree(outside);
    let before_project = hephaestus_tests::snapshot_of(project);
    let commands: &[&[&str]] = &[
        &[
            "self-modify",
            "agent::example_module",
            "--code",
            "pub fn planted() -> u32 { 7 }",
        ],
        &["history"],
        &["snapshot", "-m", "hostile"],
        &["rollback", "--last"],
        &["status"],
        &["import", "agent::planted", "--code", "pub fn planted() {}"],
    ];
    for args in commands {
        let out = env
            .heph()
            .current_dir(project)
            .args(*args)
            .output()
            .expect("run heph");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(3),
            "heph {args:?} refuses (environment error): {stderr}"
        );
        assert!(
            stderr.contains("symbolic link") && stderr.contains(link),
            "heph {args:?} names the link {link}: {stderr}"
        );
        assert_eq!(
            tree(outside),
            before_outside,
            "heph {args:?} touched {outside:?}"
        );
    }
    // `heph watch` refuses at startup instead of watching.
    let mut watch = env
        .heph()
        .current_dir(project)
        .args(["watch", "--run", "sleep 300"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start heph watch");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = watch.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = watch.kill();
            let _ = watch.wait();
            panic!("heph watch did not refuse the state directory");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut watch.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert_eq!(status.code(), Some(3), "watch refuses: {stderr}");
    assert!(stderr.contains(link), "watch names the link: {stderr}");
    assert_eq!(
        tree(outside),
        before_outside,
        "heph watch touched {outside:?}"
    );
    assert_eq!(
        hephaestus_tests::snapshot_of(project),
        before_project,
        "the project's files are unchanged"
    );
}

#[test]
fn a_cloned_repository_whose_heph_dir_is_a_link_is_refused() {
    let env = TestEnv::new("agent-lib");
    let outside = outside(&env);
    let clone = cloned_with(&env, &[(".heph", outside.clone())]);
    every_command_refuses(&env, &clone, ".heph", &outside);
}

#[test]
fn linked_tmp_and_lock_in_a_cloned_repository_are_refused() {
    let env = TestEnv::new("agent-lib");
    let outside = outside(&env);
    let clone = cloned_with(
        &env,
        &[
            (".heph/lock", outside.join("precious.txt")),
            (".heph/tmp", outside.join("notes")),
        ],
    );
    every_command_refuses(&env, &clone, ".heph/", &outside);
}

#[test]
fn a_linked_private_history_store_or_cache_is_refused() {
    // No git repository: heph keeps its history in `.heph/history.git`.
    for entry in ["history.git", "cache"] {
        let env = TestEnv::new("agent-lib");
        let outside = outside(&env);
        fs::create_dir_all(env.path(".heph")).expect("mkdir");
        std::os::unix::fs::symlink(outside.join("notes"), env.path(".heph").join(entry))
            .expect("symlink");
        every_command_refuses(&env, env.project(), &format!(".heph/{entry}"), &outside);
    }
}
