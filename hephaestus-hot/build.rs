//! Computes the build fingerprint every hot library and host compiled against this
//! crate carries: the compiler's version, the target and the profile. A library is
//! loaded only into a host whose fingerprint is the same.

use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let version = Command::new(&rustc)
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "rustc (unknown version)".to_owned());
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| "?".to_owned());
    println!(
        "cargo:rustc-env=HEPH_HOT_BUILD={version}; target {}; profile {}; opt-level {}",
        var("TARGET"),
        var("PROFILE"),
        var("OPT_LEVEL")
    );
    println!("cargo:rerun-if-changed=build.rs");
}
