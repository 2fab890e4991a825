//! Tidy checks that keep ARCHITECTURE.md's dependency invariants true: each external
//! crate is used only by the modules the map below names (and ARCHITECTURE lists), the
//! CLI never touches git2, and the library without features pulls in no async runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use hephaestus_tests::workspace_root;

/// External crate (as it is named in code) → the top-level modules of
/// `hephaestus-core/src` allowed to name it. Keep in step with ARCHITECTURE.md
/// ("each external crate lives in one module").
const CORE_MAP: &[(&str, &[&str])] = &[
    // The parsing and editing layer.
    (
        "syn",
        &[
            "cfg", "edit", "evolve", "expand", "hot", "import", "item", "modpath", "nesting",
            "outline", "resolve", "source",
        ],
    ),
    (
        "proc_macro2",
        &[
            "edit", "evolve", "expand", "item", "modpath", "nesting", "resolve", "source",
        ],
    ),
    (
        "quote",
        &["edit", "evolve", "expand", "hot", "item", "nesting"],
    ),
    ("prettyplease", &["edit", "nesting"]),
    ("strsim", &["resolve"]),
    ("similar", &["apply"]),
    // Cargo and processes.
    ("cargo_metadata", &["project", "verify"]),
    ("socket2", &["supervise"]),
    ("command_fds", &["supervise"]),
    // The history store.
    ("git2", &["history"]),
    ("ignore", &["history", "watch"]),
    // Watching.
    ("notify", &["watch"]),
    ("notify_debouncer_full", &["watch"]),
    ("globset", &["config", "watch"]),
    // The HTTP API and the MCP server (cargo features `api` and `mcp`).
    ("axum", &["api", "mcp"]),
    ("hyper", &["api"]),
    ("hyper_util", &["api"]),
    ("http_body_util", &["api"]),
    ("tokio", &["api", "mcp"]),
    ("constant_time_eq", &["api"]),
    ("getrandom", &["api"]),
    ("rmcp", &["mcp"]),
    ("schemars", &["mcp"]),
    ("tokio_util", &["mcp"]),
    ("futures", &["api", "mcp"]),
];

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Does this line of code (comments and string contents aside) name `krate` as a path
/// root (`krate::`, `use krate`, `krate::{`)?
fn names(line: &str, krate: &str) -> bool {
    let code = line.trim_start();
    if code.starts_with("//") {
        return false;
    }
    // Cut a trailing comment and whatever is inside string literals, roughly: enough for
    // this code base, where crate paths never hide in strings that matter.
    let mut clean = String::with_capacity(code.len());
    let mut in_str = false;
    let mut prev = ' ';
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        if !in_str && c == '/' && chars.peek() == Some(&'/') {
            break;
        }
        if c == '"' && prev != '\\' {
            in_str = !in_str;
        } else if !in_str {
            clean.push(c);
        }
        prev = c;
    }
    let bytes = clean.as_bytes();
    let mut from = 0;
    while let Some(at) = clean[from..].find(krate) {
        let start = from + at;
        let end = start + krate.len();
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let after = &clean[end..];
        let after_ok = after.starts_with("::")
            || (clean[..start].trim_end().ends_with("use") && {
                after.is_empty() || after.starts_with(';') || after.starts_with(' ')
            });
        if before_ok && after_ok && !clean[..start].ends_with("::") {
            return true;
        }
        from = end;
    }
    false
}

#[test]
fn each_external_crate_lives_where_architecture_says() {
    let src = workspace_root().join("hephaestus-core/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 50, "found the sources");
    let mut wrong: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let module = rel
            .components()
            .next()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_owned()
            })
            .expect("a module");
        let text = fs::read_to_string(file).expect("read");
        for (krate, allowed) in CORE_MAP {
            if allowed.contains(&module.as_str()) {
                continue;
            }
            if text.lines().any(|l| names(l, krate)) {
                wrong
                    .entry(krate)
                    .or_default()
                    .insert(rel.display().to_string());
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "crates used outside the modules ARCHITECTURE.md gives them (move the code, or \
         change the map here and ARCHITECTURE.md together): {wrong:#?}"
    );
}

#[test]
fn the_cli_never_touches_git2_and_uses_nix_only_for_the_terminal() {
    let src = workspace_root().join("hephaestus-cli/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for file in &files {
        let text = fs::read_to_string(file).expect("read");
        let rel = file
            .strip_prefix(&src)
            .expect("under src")
            .display()
            .to_string();
        assert!(
            !text.lines().any(|l| names(l, "git2")),
            "{rel} uses git2: the history belongs to hephaestus-core"
        );
        if rel != "commands/watch/keys.rs" {
            assert!(
                !text.lines().any(|l| names(l, "nix")),
                "{rel} uses nix: only the terminal mode of commands/watch/keys.rs may"
            );
        }
    }
}

#[test]
fn the_tidy_scan_sees_paths_and_not_comments() {
    assert!(names("use syn::File;", "syn"));
    assert!(names("    let f: syn::File = x;", "syn"));
    assert!(names("use git2;", "git2"));
    assert!(!names("// syn::File in a comment", "syn"));
    assert!(!names("/// `#[tokio::test]` in a doc comment", "tokio"));
    assert!(!names("let s = \"tokio::spawn\";", "tokio"));
    assert!(!names("crate::nesting::x(); // a syn::File", "syn"));
    assert!(!names("hyper_util::rt::TokioIo", "hyper"));
    assert!(!names("my_syn::x", "syn"));
    assert!(!names("crate::tokio::x", "tokio"));
}

#[test]
fn the_library_without_features_pulls_in_no_async_runtime() {
    let out = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args([
            "tree",
            "-p",
            "hephaestus-core",
            "--no-default-features",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
            "--locked",
        ])
        .output()
        .expect("cargo tree");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tree.contains("git2 "), "a real tree: {tree}");
    for heavy in ["tokio ", "axum ", "hyper ", "hyper-util ", "rmcp "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(heavy)),
            "{heavy}in the library without features:\n{tree}"
        );
    }
}

/// The public signatures of the library that may name syn: the bridge from an item a
/// caller parsed with syn itself (the fuzz target does) to heph's keys. Everything else
/// takes and returns heph types (`ItemSpan`, `ItemKey`, `SourceFile`, byte ranges).
const SYN_BRIDGE: &[&str] = &["pub fn of_item(", "pub fn of_member(", "pub fn impl_name("];

/// The public declarations in `source` (not `pub(crate)`/`pub(super)`) whose signature
/// names a syn or proc-macro2 type, as (line, signature) pairs. A signature runs from
/// `pub` to its first `{`, `;` or, for a field, `,`.
fn syn_in_public_signatures(source: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut offset = 0;
    for line in source.split_inclusive('\n') {
        let code = line.trim_start();
        let start = offset + (line.len() - code.len());
        offset += line.len();
        let Some(rest) = code.strip_prefix("pub ") else {
            continue;
        };
        let is_decl = [
            "fn ", "type ", "const ", "static ", "struct ", "enum ", "trait ",
        ]
        .iter()
        .any(|k| rest.starts_with(k));
        let is_field = rest.split_once(':').is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        if !is_decl && !is_field {
            continue;
        }
        let stops: &[char] = if is_field { &[',', '\n'] } else { &['{', ';'] };
        let end = source[start..]
            .find(stops)
            .map_or(source.len(), |i| start + i);
        let sig = source[start..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let foreign = sig.contains("syn::")
            || sig.contains("proc_macro2::")
            || sig
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .any(|word| word == "TokenStream" || word == "Span");
        if foreign && !SYN_BRIDGE.iter().any(|b| sig.starts_with(b)) {
            out.push((source[..start].matches('\n').count() + 1, sig));
        }
    }
    out
}

#[test]
fn no_public_signature_of_the_library_names_syn() {
    let src = workspace_root().join("hephaestus-core/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src").to_path_buf();
        // Unit-test files are not the library's interface.
        if rel
            .file_name()
            .is_some_and(|n| n == "tests.rs" || n.to_string_lossy().starts_with("tests_"))
        {
            continue;
        }
        let text = fs::read_to_string(&file).expect("read source");
        // `#[cfg(test)] mod tests { .. }` sits at the end of a file: stop there.
        let text = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default();
        for (line, sig) in syn_in_public_signatures(text) {
            found.push(format!("{}:{line}: {sig}", rel.display()));
        }
    }
    assert!(
        found.is_empty(),
        "public signatures naming syn or proc-macro2 (take or return a heph type, or make \
         them pub(crate)):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_syn_signature_scan_sees_functions_fields_and_the_bridge() {
    let src = "pub fn a(x: &syn::Item) -> u8 {}\n\
               pub(crate) fn b(x: &syn::Item) {}\n\
               pub struct S {\n    pub f: proc_macro2::TokenStream,\n    pub g: u8,\n}\n\
               pub fn of_item(item: &syn::Item) -> ItemKey {}\n\
               pub fn c(\n    span: Span,\n) {}\n\
               // pub fn d(x: &syn::Item) {}\n";
    let found: Vec<usize> = syn_in_public_signatures(src)
        .into_iter()
        .map(|(l, _)| l)
        .collect();
    assert_eq!(found, vec![1, 4, 8]);
}
