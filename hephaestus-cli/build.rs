//! Build script of `heph`: links it as a position-dependent executable on Linux.
//!
//! A position-independent (PIE) `heph` spends part of every start applying ~20,000
//! relative relocations, which writes (and so copies) ~90 pages of `.data.rel.ro`: ~100
//! page faults and ~0.2 ms per command, a sixth of `heph history`'s whole run. Linked
//! with `-no-pie`, those addresses are fixed at link time. The cost is that the
//! executable's own image is not randomized (shared libraries, stack and heap still are).
//! Set `HEPH_PIE=1` when building to keep the toolchain's default (PIE).

fn main() {
    println!("cargo:rerun-if-env-changed=HEPH_PIE");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let glibc_linux = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu";
    if glibc_linux && std::env::var_os("HEPH_PIE").is_none_or(|v| v.is_empty() || v == "0") {
        println!("cargo:rustc-link-arg-bin=heph=-no-pie");
    }
}
