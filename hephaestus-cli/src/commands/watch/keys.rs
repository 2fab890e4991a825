//! Single keys on a terminal for `heph watch`: `r` rebuild, `p` pause/resume, `q` quit.
//! The terminal goes to non-canonical mode without echo (output processing, and so
//! line breaks, stay as they are) and is restored when the guard is dropped.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::thread;

use hephaestus_core::watch::WatchHandle;
use nix::sys::termios::{self, LocalFlags, SetArg, Termios};

/// Restores the terminal when dropped.
pub struct KeyGuard {
    saved: Termios,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// Read keys from stdin on a thread and steer `handle`; None when stdin is not a
/// terminal that can be switched.
pub fn listen(handle: WatchHandle) -> Option<KeyGuard> {
    let stdin = io::stdin();
    // In the background (`heph watch &`) touching the terminal would stop heph.
    if nix::unistd::tcgetpgrp(stdin.as_fd()).ok()? != nix::unistd::getpgrp() {
        return None;
    }
    let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
    let mut raw = saved.clone();
    raw.local_flags
        .remove(LocalFlags::ICANON | LocalFlags::ECHO);
    raw.control_chars[termios::SpecialCharacterIndices::VMIN as usize] = 1;
    raw.control_chars[termios::SpecialCharacterIndices::VTIME as usize] = 0;
    termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
    thread::spawn(move || {
        let mut buf = [0u8; 1];
        let mut stdin = io::stdin();
        while let Ok(1) = stdin.read(&mut buf) {
            match buf[0] {
                b'r' | b'R' => handle.rebuild(),
                b'p' | b'P' => handle.toggle_pause(),
                b'q' | b'Q' => {
                    handle.quit();
                    break;
                }
                _ => {}
            }
        }
    });
    Some(KeyGuard { saved })
}
