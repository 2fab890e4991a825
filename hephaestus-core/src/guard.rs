//! Child processes that die with heph, even when heph is killed with SIGKILL.
//!
//! `unsafe` is denied in this crate, so a death signal (`prctl(PR_SET_PDEATHSIG)` in a
//! `pre_exec` hook) is not available. Instead every child heph starts for a while
//! (verification, `--run`, evolve stages, runs launched by the API, the program under
//! `heph watch`) runs in a process [`Group`] led by a *keeper*: a tiny `/bin/sh` that
//! ignores the signals heph sends to the group and blocks reading a pipe whose only
//! write end heph holds (opened close-on-exec, so no other child inherits it). When
//! heph exits or dies, the kernel closes that end, the keeper's read returns at
//! end-of-file, and it SIGKILLs its whole group: the child and everything it started
//! (rustc under cargo, a server's workers) that did not leave the group. Dropping the
//! [`Group`] does the same on purpose, so a group outlives neither its handle nor heph.
//!
//! The keeper is started first and the child joins its group, so there is no moment
//! when the child runs unguarded. The child is still heph's own child: exit statuses,
//! piped output and signals work as without the keeper; only the group id differs from
//! the child's pid ([`Group::pgid`]).
//!
//! ```no_run
//! use std::process::Command;
//! let (mut child, group) = hephaestus_core::guard::spawn(Command::new("sleep").arg("60"))?;
//! // ... if heph is killed here, `sleep` dies with it.
//! group.kill(); // or drop(group)
//! child.wait()?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The keeper: ignore what heph sends the group (a `--signal HUP` reload, the SIGTERM of
/// a graceful stop), say so on stdout (heph waits for that line, so no signal can
/// arrive before the traps are set), wait for end-of-file on stdin (heph's end
/// closed), then kill the group. `command trap` keeps a signal name this shell lacks
/// from ending the script.
const KEEPER: &str = "for s in HUP INT QUIT TRAP ABRT USR1 USR2 PIPE ALRM TERM TSTP TTIN TTOU \
                      XCPU XFSZ VTALRM PROF IO PWR SYS; do command trap '' $s 2>/dev/null; done; \
                      echo ready; exec >/dev/null; while read -r _; do :; done; kill -KILL 0";

/// A process group whose processes die with this process (see the module docs).
#[derive(Debug)]
pub struct Group {
    keeper: Child,
    /// heph's end of the pipe; closing it tells the keeper to kill the group.
    pipe: Option<OwnedFd>,
    pgid: u32,
}

impl Group {
    /// Start a keeper in a new process group; returns once it guards (about a
    /// millisecond: one `/bin/sh` start).
    pub fn new() -> io::Result<Group> {
        // Both ends are close-on-exec: the read end reaches the keeper as its stdin
        // (dup2 clears the flag there), the write end reaches no process at all.
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let keeper = Command::new("/bin/sh")
            .arg("-c")
            .arg(KEEPER)
            .arg("heph-keeper")
            .stdin(Stdio::from(read))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot start the process keeper /bin/sh: {e}"),
                )
            })?;
        let pgid = keeper.id();
        let mut group = Group {
            keeper,
            pipe: Some(write),
            pgid,
        };
        let mut ready = [0u8; 6];
        let said = group
            .keeper
            .stdout
            .take()
            .map(|mut out| io::Read::read_exact(&mut out, &mut ready));
        if !matches!(said, Some(Ok(()))) || &ready != b"ready\n" {
            // Dropping the group reaps the keeper.
            return Err(io::Error::other(
                "the process keeper (/bin/sh) did not start",
            ));
        }
        Ok(group)
    }

    /// The process group id (the keeper's pid) to signal with `killpg`.
    pub fn pgid(&self) -> u32 {
        self.pgid
    }

    /// The keeper's pid (equal to [`Group::pgid`]); it is not the program's.
    pub fn keeper_pid(&self) -> u32 {
        self.keeper.id()
    }

    /// Spawn `cmd` into this group (any `process_group` set on it is replaced).
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Child> {
        cmd.process_group(pid_i32(self.pgid)?).spawn()
    }

    /// Send `signal` to every process of the group. The keeper ignores the usual ones
    /// (SIGKILL excepted) and keeps guarding.
    pub fn signal(&self, signal: Signal) -> nix::Result<()> {
        killpg(Pid::from_raw(pid_i32(self.pgid)?), signal)
    }

    /// SIGKILL the whole group at once (the keeper too: the group is spent).
    pub fn kill(&self) {
        let _ = self.signal(Signal::SIGKILL);
    }

    /// Is any live process other than the keeper left in the group? Reads `/proc`
    /// (a zombie does not count); where it is missing, says whether the group exists.
    pub fn alive(&self) -> bool {
        members_alive(self.pgid, Some(self.keeper.id()))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // End-of-file for the keeper: it kills what is left and itself. A keeper
        // stopped by a SIGSTOP sent to the group is woken first (it is not reaped yet,
        // so its pid cannot belong to another process).
        drop(self.pipe.take());
        if let Ok(pid) = pid_i32(self.keeper.id()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
        let _ = self.keeper.wait();
    }
}

/// Spawn `cmd` in a new [`Group`]: it and its descendants die with heph. The group's
/// handle must live as long as the child is meant to run.
pub fn spawn(cmd: &mut Command) -> io::Result<(Child, Group)> {
    let group = Group::new()?;
    let child = group.spawn(cmd)?;
    Ok((child, group))
}

fn pid_i32(pid: u32) -> Result<i32, nix::errno::Errno> {
    i32::try_from(pid).map_err(|_| nix::errno::Errno::EINVAL)
}

/// Is a live (not zombie) process left in group `pgid`, other than `except`?
pub(crate) fn members_alive(pgid: u32, except: Option<u32>) -> bool {
    let Ok(pgid_i) = pid_i32(pgid) else {
        return false;
    };
    if killpg(Pid::from_raw(pgid_i), None).is_err() {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if Some(pid) == except {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let pgrp = fields.nth(1).and_then(|f| f.parse::<u32>().ok());
        if pgrp == Some(pgid) && state != "Z" && state != "X" {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn gone(pid: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next().map(str::to_owned));
            if !matches!(state.as_deref(), Some(s) if s != "Z" && s != "X") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn dropping_the_group_kills_the_child_and_its_children() {
        let (mut child, group) = spawn(
            Command::new("sh")
                .arg("-c")
                .arg("sleep 60 & echo $!; wait")
                .stdout(Stdio::piped()),
        )
        .expect("spawn");
        let mut line = String::new();
        io::BufRead::read_line(
            &mut io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("read");
        let grandchild: u32 = line.trim().parse().expect("pid");
        assert!(group.alive());
        drop(group);
        let status = child.wait().expect("wait");
        assert!(status.code().is_none(), "killed by a signal: {status:?}");
        assert!(gone(grandchild), "the grandchild is gone too");
    }

    #[test]
    fn signals_reach_the_child_and_spare_the_keeper() {
        let (mut child, group) = spawn(Command::new("sleep").arg("60")).expect("spawn");
        group.signal(Signal::SIGTERM).expect("signal");
        let status = child.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(15)
        );
        // The keeper still guards: a second child in the group dies on drop.
        let mut second = group
            .spawn(Command::new("sleep").arg("60"))
            .expect("spawn again");
        assert!(group.alive());
        drop(group);
        assert!(second.wait().expect("wait").code().is_none());
    }

    #[test]
    fn a_stopped_group_is_still_killed_on_drop() {
        let (mut child, group) = spawn(Command::new("sleep").arg("60")).expect("spawn");
        group.signal(Signal::SIGSTOP).expect("stop");
        drop(group);
        assert!(child.wait().expect("wait").code().is_none(), "killed");
    }

    #[test]
    fn exit_codes_and_output_are_the_childs() {
        let (child, group) = spawn(
            Command::new("sh")
                .arg("-c")
                .arg("echo out; echo err >&2; exit 7")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .expect("spawn");
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(7));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert!(!group.alive(), "only the keeper is left");
    }
}
