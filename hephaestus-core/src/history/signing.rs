//! git's ssh signing format for evolutions (`gpg.format=ssh`), through `ssh-keygen -Y`,
//! the program git itself runs for it: a publisher signs the commits it records
//! (`[history] signing_key` in heph.toml: a private key, or a public key whose private
//! half is in ssh-agent), and a follower started with `--require-signed KEYS` applies
//! only commits whose signature verifies against KEYS, an allowed-signers file as
//! git's `gpg.ssh.allowedSignersFile` takes it. No key material is read or stored by
//! heph; ssh-keygen does the cryptography.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use git2::{Buf, Oid, Repository};

use super::{History, HistoryError};

/// The namespace git signs commits in.
const NAMESPACE: &str = "git";

fn failure(what: &str, message: impl Into<String>) -> HistoryError {
    HistoryError::Signing {
        what: what.to_owned(),
        message: message.into(),
    }
}

/// Run `ssh-keygen ARGS` with `input` on stdin; its stdout, or its stderr as the error.
fn ssh_keygen(args: &[&std::ffi::OsStr], input: &[u8], what: &str) -> Result<String, HistoryError> {
    let mut child = Command::new("ssh-keygen")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failure(what, format!("cannot run ssh-keygen (openssh-client): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A refusal before reading everything shows in the exit status.
        let _ = stdin.write_all(input);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failure(what, format!("ssh-keygen: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.split_whitespace().collect::<Vec<_>>().join(" ");
        Err(failure(
            what,
            if err.is_empty() {
                out.status.to_string()
            } else {
                err
            },
        ))
    }
}

/// The armored ssh signature of a commit buffer, made with `key`.
pub(super) fn sign(key: &Path, buffer: &[u8]) -> Result<String, HistoryError> {
    ssh_keygen(
        &[
            "-Y".as_ref(),
            "sign".as_ref(),
            "-n".as_ref(),
            NAMESPACE.as_ref(),
            "-f".as_ref(),
            key.as_os_str(),
        ],
        buffer,
        "signing an evolution",
    )
}

/// Write the commit `buffer`, signed with `key` when there is one; its id.
pub(super) fn write_commit(
    repo: &Repository,
    key: Option<&Path>,
    buffer: &Buf,
) -> Result<Oid, HistoryError> {
    match key {
        Some(key) => {
            let text = buffer
                .as_str()
                .map_err(|_| failure("signing an evolution", "the commit is not UTF-8"))?;
            let signature = sign(key, text.as_bytes())?;
            repo.commit_signed(text, signature.trim_end(), None)
                .map_err(HistoryError::git("writing the signed commit"))
        }
        None => repo
            .odb()
            .and_then(|odb| odb.write(git2::ObjectType::Commit, buffer))
            .map_err(HistoryError::git("writing the commit")),
    }
}

/// Why commit `oid` is not signed by a key of `allowed` (None: it is).
pub(super) fn refusal(
    history: &History,
    repo: &Repository,
    oid: Oid,
    allowed: &Path,
) -> Result<Option<String>, HistoryError> {
    let (signature, data) = match repo.extract_signature(&oid, None) {
        Ok(pair) => pair,
        Err(e) if e.code() == git2::ErrorCode::NotFound => {
            return Ok(Some("it is not signed".to_owned()));
        }
        Err(e) => return Err(HistoryError::git("reading a commit's signature")(e)),
    };
    let tmp = history.state.tmp_dir()?;
    let mut file = tempfile::Builder::new()
        .prefix("sig-")
        .tempfile_in(&tmp)
        .map_err(|source| HistoryError::Io {
            path: tmp.clone(),
            source,
        })?;
    file.write_all(&signature)
        .map_err(|source| HistoryError::Io {
            path: file.path().to_path_buf(),
            source,
        })?;
    let sig = file.path().as_os_str();
    let what = "verifying a signature";
    let principals = match ssh_keygen(
        &[
            "-Y".as_ref(),
            "find-principals".as_ref(),
            "-s".as_ref(),
            sig,
            "-f".as_ref(),
            allowed.as_os_str(),
        ],
        b"",
        what,
    ) {
        Ok(p) => p,
        Err(HistoryError::Signing { message, .. }) if !message.contains("cannot run") => {
            return Ok(Some(format!(
                "its signature is by no key of {} ({message})",
                allowed.display()
            )));
        }
        Err(e) => return Err(e),
    };
    let Some(principal) = principals.lines().map(str::trim).find(|l| !l.is_empty()) else {
        return Ok(Some(format!(
            "its signature is by no key of {}",
            allowed.display()
        )));
    };
    match ssh_keygen(
        &[
            "-Y".as_ref(),
            "verify".as_ref(),
            "-f".as_ref(),
            allowed.as_os_str(),
            "-I".as_ref(),
            principal.as_ref(),
            "-n".as_ref(),
            NAMESPACE.as_ref(),
            "-s".as_ref(),
            sig,
        ],
        &data,
        what,
    ) {
        Ok(_) => Ok(None),
        Err(HistoryError::Signing { message, .. }) if !message.contains("cannot run") => Ok(Some(
            format!("its signature does not verify for {principal} ({message})"),
        )),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::tests::{project, write};

    /// A new ed25519 key `name` in `dir` and an allowed-signers file holding it.
    fn key(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let path = dir.join(name);
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .status()
            .expect("ssh-keygen")
            .success();
        assert!(ok);
        let public = std::fs::read_to_string(path.with_extension("pub")).expect("pub");
        let public: Vec<&str> = public.split_whitespace().take(2).collect();
        let allowed = dir.join(format!("{name}.allowed"));
        std::fs::write(&allowed, format!("{name}@test {}\n", public.join(" "))).expect("write");
        (path, allowed)
    }

    /// Make the project at `root` sign its evolutions with `key` (`heph.toml`).
    fn sign_with(root: &Path, key: &Path) {
        write(
            root,
            "heph.toml",
            &format!(
                "[history]\nsigning_key = {:?}\n",
                key.to_str().expect("utf-8")
            ),
        );
    }

    /// A signature by an allowed key over other content (a commit whose message was
    /// changed after signing) is a refusal that says so, not an error.
    #[test]
    fn a_signature_over_other_content_is_refused_as_not_verifying() {
        let keys = tempfile::tempdir().expect("tempdir");
        let (a, allowed_a) = key(keys.path(), "a");
        let (_dir, root) = project(false);
        sign_with(&root, &a);
        let mut h = History::open(&root).expect("open");
        let signed = h.snapshot(Some("signed")).expect("snapshot").expect("one");
        let repo = h.repo_ref().expect("repo");
        let oid = Oid::from_str(&signed.id).expect("id");
        let (signature, data) = repo.extract_signature(&oid, None).expect("signed");
        let data = data.as_str().expect("utf-8").replace("signed", "forged");
        let forged = repo
            .commit_signed(&data, signature.as_str().expect("utf-8"), None)
            .expect("forged commit");
        let why = refusal(&h, repo, forged, &allowed_a)
            .expect("a refusal, not an error")
            .expect("refused");
        assert!(why.contains("does not verify for a@test"), "{why}");
    }

    #[test]
    fn a_signed_evolution_verifies_against_its_key_only_and_an_unsigned_one_never() {
        let keys = tempfile::tempdir().expect("tempdir");
        let (a, allowed_a) = key(keys.path(), "a");
        let (_, allowed_b) = key(keys.path(), "b");
        let (_dir, root) = project(false);
        let mut h = History::open(&root).expect("open");
        let unsigned = h
            .snapshot(Some("unsigned"))
            .expect("snapshot")
            .expect("one");
        sign_with(&root, &a);
        let mut h = History::open(&root).expect("open again");
        let signed = h.snapshot(Some("signed")).expect("snapshot").expect("two");
        let repo = h.repo_ref().expect("repo");
        let id = |e: &crate::evolution::Evolution| Oid::from_str(&e.id).expect("id");
        assert_eq!(refusal(&h, repo, id(&signed), &allowed_a).expect("a"), None);
        let other = refusal(&h, repo, id(&signed), &allowed_b)
            .expect("b")
            .expect("refused");
        assert!(other.contains("by no key of"), "{other}");
        assert_eq!(
            refusal(&h, repo, id(&unsigned), &allowed_a)
                .expect("unsigned")
                .as_deref(),
            Some("it is not signed")
        );
    }
}
