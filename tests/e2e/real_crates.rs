//! The edit engine on real published crates the workspace already depends on (syn,
//! tokio, serde_json, regex-automata, clap_builder), found through `cargo metadata`
//! (their manifest paths in cargo's registry cache: no network), each copied to a
//! temp dir first: the registry is never touched.
//!
//! For each crate:
//! - every module path an independent walk of the `mod` tree finds resolves to the
//!   file (and inline module) rustc compiles. The walk below shares no code with
//!   heph's resolver: it scans raw tokens (not syn items), reads a cfg macro's added
//!   `#[cfg]`s from its `macro_rules!` text, and evaluates cfg predicates with its own
//!   evaluator, on the default build's cfg set (`rustc --print cfg` and the
//!   package's default features), which decides among `#[cfg]` copies as rustc would;
//! - submitting each item of each module back unchanged, in merge mode, verbatim and
//!   formatted, as its raw byte span, changes nothing (the library, every item), and
//!   the `heph` binary given whole modules (a deterministic sample) leaves every file
//!   byte-identical.
//!
//! The counts per crate are printed (run with `--nocapture`) and kept in
//! BENCHMARKS.md.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use hephaestus_core::Project;
use hephaestus_core::edit::{self, Edit};
use hephaestus_core::resolve::{ResolveError, Resolver};
use hephaestus_tests::{Run, TestEnv, copy_tree, snapshot_of, workspace_root};
use proc_macro2::{Delimiter, TokenStream, TokenTree};

/// The crates, by package name.
const CRATES: [&str; 5] = [
    "syn",
    "tokio",
    "serde_json",
    "regex-automata",
    "clap_builder",
];
/// How many whole modules of each crate the binary is run on (both modes), evenly
/// spaced in path order.
const BINARY_MODULES: usize = 3;
/// How many items of one module are round-tripped, evenly spaced (the largest modules
/// of syn hold hundreds: every item of every module would take minutes in debug).
const ITEMS_PER_MODULE: usize = 40;

struct Krate {
    name: String,
    version: String,
    dir: PathBuf,
    lib_root: PathBuf,
    features: BTreeMap<String, Vec<String>>,
}

/// The crates of the workspace's dependency graph, from `cargo metadata`.
fn registry_crates() -> Vec<Krate> {
    let host = rustc(&["-vV"])
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host");
    let out = Command::new("cargo")
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
            &host,
        ])
        .arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml"))
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let mut found: BTreeMap<String, Krate> = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let name = p["name"].as_str().unwrap_or_default();
        if !CRATES.contains(&name) {
            continue;
        }
        let version = p["version"].as_str().unwrap_or_default().to_owned();
        let newer = found
            .get(name)
            .is_none_or(|k| version_key(&version) > version_key(&k.version));
        if !newer {
            continue;
        }
        let manifest = PathBuf::from(p["manifest_path"].as_str().expect("manifest_path"));
        let lib_root = p["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .find(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "lib"))
            })
            .and_then(|t| t["src_path"].as_str())
            .map(PathBuf::from)
            .expect("a lib target");
        let features = p["features"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let list = v.as_array().into_iter().flatten();
                        (
                            k.clone(),
                            list.filter_map(|s| s.as_str().map(str::to_owned)).collect(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let dir = manifest.parent().expect("manifest dir").to_path_buf();
        found.insert(
            name.to_owned(),
            Krate {
                name: name.to_owned(),
                version,
                dir,
                lib_root,
                features,
            },
        );
    }
    found.into_values().collect()
}

/// The CPU time of the calling thread so far (Linux; zero elsewhere): the machine may
/// be busy, so wall time says little about the suite's own cost.
fn thread_cpu() -> std::time::Duration {
    fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(std::time::Duration::from_nanos)
        .unwrap_or_default()
}

fn version_key(v: &str) -> Vec<u64> {
    v.split(['.', '-', '+'])
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn rustc(args: &[&str]) -> String {
    let out = Command::new("rustc")
        .args(args)
        .output()
        .expect("running rustc");
    assert!(out.status.success(), "rustc {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------- the independent walk ----------

/// The default build's cfg set: (name, value) pairs.
struct Cfg(BTreeSet<(String, Option<String>)>);

impl Cfg {
    fn default_build(features: &BTreeMap<String, Vec<String>>) -> Cfg {
        let mut set: BTreeSet<(String, Option<String>)> = rustc(&["--print", "cfg"])
            .lines()
            .map(|l| match l.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.trim_matches('"').to_owned())),
                None => (l.to_owned(), None),
            })
            .collect();
        let mut todo = vec!["default".to_owned()];
        let mut on = BTreeSet::new();
        while let Some(f) = todo.pop() {
            let Some(list) = features.get(&f) else {
                continue;
            };
            if !on.insert(f) {
                continue;
            }
            for e in list {
                if let Some((dep, _)) = e.split_once('/') {
                    if !dep.ends_with('?') {
                        todo.push(dep.to_owned());
                    }
                } else if !e.starts_with("dep:") {
                    todo.push(e.clone());
                }
            }
        }
        set.extend(on.into_iter().map(|f| ("feature".to_owned(), Some(f))));
        Cfg(set)
    }

    /// The value of a predicate given as tokens (`unix`, `feature = "x"`, `all(..)`).
    fn eval(&self, tokens: &[TokenTree]) -> bool {
        let name = match tokens.first() {
            Some(TokenTree::Ident(i)) => i.to_string(),
            other => panic!("a cfg predicate starts with a name, not {other:?}"),
        };
        match tokens.get(1) {
            None => self.0.contains(&(name, None)),
            Some(TokenTree::Punct(p)) if p.as_char() == '=' => {
                let lit = tokens.get(2).map(ToString::to_string).unwrap_or_default();
                self.0
                    .contains(&(name, Some(lit.trim_matches('"').to_owned())))
            }
            Some(TokenTree::Group(g)) => {
                let inner: Vec<TokenTree> = g.stream().into_iter().collect();
                let args: Vec<bool> = inner
                    .split(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == ','))
                    .filter(|a| !a.is_empty())
                    .map(|a| self.eval(a))
                    .collect();
                match name.as_str() {
                    "all" => args.iter().all(|a| *a),
                    "any" => args.iter().any(|a| *a),
                    "not" => !args[0],
                    other => panic!("unknown cfg function {other}"),
                }
            }
            other => panic!("unexpected cfg token {other:?}"),
        }
    }
}

/// One `mod` declaration the walk found.
#[derive(Debug, Clone)]
struct Found {
    path: Vec<String>,
    file: PathBuf,
    inline: Vec<String>,
    active: bool,
    /// The file does not exist (a module left out of the published package).
    missing: bool,
    /// Declared with `#[cfg_attr(.., path = ..)]` (heph refuses those).
    cfg_attr_path: bool,
    /// Declared inside a macro call.
    in_call: bool,
    /// Where an inline module's name is (line, column), telling copies apart.
    pos: Option<(usize, usize)>,
    /// The declaring module: its file, inline chain and position.
    parent: Module,
}

/// A module's identity: its file, inline chain, and (inline) the position of its name.
type Module = (PathBuf, Vec<String>, Option<(usize, usize)>);

/// Where the walk is.
#[derive(Clone)]
struct Here {
    path: Vec<String>,
    file: PathBuf,
    inline: Vec<String>,
    pos: Option<(usize, usize)>,
    child_dir: PathBuf,
}

/// What a cfg macro adds: the `#[cfg(..)]` predicates of its repetition, `$meta`
/// standing for the call's `#![..]`.
type MacroCfgs = HashMap<String, Vec<Vec<TokenTree>>>;

fn tokens_of(file: &Path) -> Vec<TokenTree> {
    let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let body = if text.starts_with("#!") && !text.starts_with("#![") {
        &text[text.find('\n').unwrap_or(text.len())..]
    } else {
        text
    };
    let stream: TokenStream = body
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e:?}", file.display()));
    stream.into_iter().collect()
}

fn punct(t: Option<&TokenTree>, c: char) -> bool {
    matches!(t, Some(TokenTree::Punct(p)) if p.as_char() == c)
}

/// Every `macro_rules!` of the crate whose first rule repeats `$x:item` under
/// `#[cfg]` attributes: its name and those predicates.
fn macro_cfgs(src: &Path) -> MacroCfgs {
    let mut out = MacroCfgs::new();
    let mut files = Vec::new();
    rs_files(src, &mut files);
    for file in files {
        let toks = tokens_of(&file);
        scan_macro_defs(&toks, &mut out);
    }
    out
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn scan_macro_defs(toks: &[TokenTree], out: &mut MacroCfgs) {
    for i in 0..toks.len() {
        let TokenTree::Ident(kw) = &toks[i] else {
            continue;
        };
        if kw != "macro_rules" || !punct(toks.get(i + 1), '!') {
            continue;
        }
        let (Some(TokenTree::Ident(name)), Some(TokenTree::Group(body))) =
            (toks.get(i + 2), toks.get(i + 3))
        else {
            continue;
        };
        let rules: Vec<TokenTree> = body.stream().into_iter().collect();
        // The first rule: (matcher) => {transcriber}.
        let (Some(TokenTree::Group(matcher)), Some(TokenTree::Group(transcriber))) =
            (rules.first(), rules.get(3))
        else {
            continue;
        };
        if !matcher
            .stream()
            .to_string()
            .replace(' ', "")
            .contains(":item)*")
        {
            continue;
        }
        let t: Vec<TokenTree> = transcriber.stream().into_iter().collect();
        // `$( #[cfg(..)] .. $item )*`
        let Some(rep) = t.iter().position(
            |x| matches!(x, TokenTree::Group(g) if g.delimiter() == Delimiter::Parenthesis),
        ) else {
            continue;
        };
        let TokenTree::Group(rep) = &t[rep] else {
            continue;
        };
        let inner: Vec<TokenTree> = rep.stream().into_iter().collect();
        let mut cfgs = Vec::new();
        for (k, tt) in inner.iter().enumerate() {
            if let TokenTree::Group(g) = tt
                && g.delimiter() == Delimiter::Bracket
                && punct(k.checked_sub(1).and_then(|j| inner.get(j)), '#')
                && let Some(pred) = cfg_predicate(g.stream())
            {
                cfgs.push(pred);
            }
        }
        out.entry(name.to_string()).or_insert(cfgs);
    }
    // Definitions nest inside other items' bodies too.
    for t in toks {
        if let TokenTree::Group(g) = t {
            let inner: Vec<TokenTree> = g.stream().into_iter().collect();
            scan_macro_defs(&inner, out);
        }
    }
}

/// `cfg(PRED)` inside an attribute's brackets: PRED.
fn cfg_predicate(attr: TokenStream) -> Option<Vec<TokenTree>> {
    let a: Vec<TokenTree> = attr.into_iter().collect();
    match (a.first(), a.get(1)) {
        (Some(TokenTree::Ident(i)), Some(TokenTree::Group(g))) if i == "cfg" && a.len() == 2 => {
            Some(g.stream().into_iter().collect())
        }
        _ => None,
    }
}

/// Walk the items of one module (as tokens), recording every `mod` declaration and
/// descending into files and inline modules.
fn walk(
    items: &[TokenTree],
    here: &Here,
    extra: &[Vec<TokenTree>],
    in_call: bool,
    ctx: &Ctx<'_>,
    out: &mut Vec<Found>,
) {
    let mut attrs: Vec<TokenStream> = Vec::new();
    let mut i = 0;
    while i < items.len() {
        match &items[i] {
            TokenTree::Punct(p) if p.as_char() == '#' => {
                if punct(items.get(i + 1), '!') {
                    i += 3; // an inner attribute
                    continue;
                }
                if let Some(TokenTree::Group(g)) = items.get(i + 1) {
                    attrs.push(g.stream());
                    i += 2;
                    continue;
                }
                i += 1;
            }
            TokenTree::Ident(kw) if kw == "mod" => {
                let (Some(TokenTree::Ident(name)), Some(next)) =
                    (items.get(i + 1), items.get(i + 2))
                else {
                    i += 1;
                    continue;
                };
                let body = match next {
                    TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => Some(g.stream()),
                    _ => None,
                };
                declare(name, &attrs, body, here, (extra, in_call), ctx, out);
                attrs.clear();
                i += 3;
            }
            TokenTree::Ident(name) if punct(items.get(i + 1), '!') => {
                if name == "macro_rules" {
                    attrs.clear();
                    i += 4;
                    continue;
                }
                if let Some(TokenTree::Group(body)) = items.get(i + 2) {
                    let call: Vec<TokenTree> = body.stream().into_iter().collect();
                    let mut added: Vec<Vec<TokenTree>> = extra.to_vec();
                    if let Some(cfgs) = ctx.macros.get(&name.to_string()) {
                        // `feature! { #![meta] items }`: `$meta` is that meta.
                        let meta = match (call.first(), call.get(1), call.get(2)) {
                            (Some(h), Some(b), Some(TokenTree::Group(g)))
                                if punct(Some(h), '#') && punct(Some(b), '!') =>
                            {
                                Some(g.stream().into_iter().collect::<Vec<_>>())
                            }
                            _ => None,
                        };
                        for c in cfgs {
                            let is_meta = c.len() == 2 && punct(c.first(), '$');
                            match (&meta, is_meta) {
                                (Some(m), true) => added.push(m.clone()),
                                _ => added.push(c.clone()),
                            }
                        }
                    }
                    walk(&call, here, &added, true, ctx, out);
                }
                attrs.clear();
                i += 3;
            }
            TokenTree::Punct(p) if p.as_char() == ';' => {
                attrs.clear();
                i += 1;
            }
            TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => {
                attrs.clear();
                i += 1;
            }
            _ => i += 1,
        }
    }
}

struct Ctx<'a> {
    cfg: &'a Cfg,
    macros: &'a MacroCfgs,
}

#[allow(clippy::too_many_arguments)]
fn declare(
    ident: &proc_macro2::Ident,
    attrs: &[TokenStream],
    body: Option<TokenStream>,
    here: &Here,
    (extra, in_call): (&[Vec<TokenTree>], bool),
    ctx: &Ctx<'_>,
    out: &mut Vec<Found>,
) {
    let name = ident.to_string();
    let stem = name.strip_prefix("r#").unwrap_or(&name).to_owned();
    let at = ident.span().start();
    // Its own cfgs and those of the macro that declared it (rustc chooses among
    // copies by these; an ancestor's cfgs are the same for every copy).
    let mut active = true;
    let mut path_attr = None;
    let mut cfg_attr_path = false;
    for a in attrs {
        let toks: Vec<TokenTree> = a.clone().into_iter().collect();
        if let Some(pred) = cfg_predicate(a.clone()) {
            active &= ctx.cfg.eval(&pred);
        }
        match (toks.first(), toks.get(1), toks.get(2)) {
            (Some(TokenTree::Ident(i)), Some(eq), Some(TokenTree::Literal(l)))
                if i == "path" && punct(Some(eq), '=') =>
            {
                path_attr = Some(l.to_string().trim_matches('"').to_owned());
            }
            (Some(TokenTree::Ident(i)), _, _)
                if i == "cfg_attr" && a.to_string().contains("path") =>
            {
                cfg_attr_path = true;
            }
            _ => {}
        }
    }
    for pred in extra {
        active &= ctx.cfg.eval(pred);
    }
    let mut path = here.path.clone();
    path.push(stem.clone());
    if let Some(body) = body {
        let mut inline = here.inline.clone();
        inline.push(stem.clone());
        let child_dir = match &path_attr {
            Some(p) => here.child_dir.join(p),
            None => here.child_dir.join(&stem),
        };
        out.push(Found {
            path: path.clone(),
            file: here.file.clone(),
            inline: inline.clone(),
            active,
            missing: false,
            cfg_attr_path,
            in_call,
            pos: Some((at.line, at.column)),
            parent: (here.file.clone(), here.inline.clone(), here.pos),
        });
        let inner = Here {
            path,
            file: here.file.clone(),
            inline,
            pos: Some((at.line, at.column)),
            child_dir,
        };
        let toks: Vec<TokenTree> = body.into_iter().collect();
        walk(&toks, &inner, &[], false, ctx, out);
        return;
    }
    let (file, child_dir) = match &path_attr {
        Some(p) => {
            // Relative to the declaring file's directory, or the inline module's.
            let base = if here.inline.is_empty() {
                here.file.parent().expect("dir").to_path_buf()
            } else {
                here.child_dir.clone()
            };
            let file = base.join(p);
            let dir = file.parent().expect("dir").to_path_buf();
            (file, dir)
        }
        None => {
            let a = here.child_dir.join(format!("{stem}.rs"));
            let b = here.child_dir.join(&stem).join("mod.rs");
            let file = if a.is_file() { a } else { b };
            (file, here.child_dir.join(&stem))
        }
    };
    let missing = !file.is_file();
    out.push(Found {
        path: path.clone(),
        file: file.clone(),
        inline: Vec::new(),
        active,
        missing,
        cfg_attr_path,
        in_call,
        pos: None,
        parent: (here.file.clone(), here.inline.clone(), here.pos),
    });
    if missing || cfg_attr_path {
        return;
    }
    let inner = Here {
        path,
        file: file.clone(),
        inline: Vec::new(),
        pos: None,
        child_dir,
    };
    walk(&tokens_of(&file), &inner, &[], false, ctx, out);
}

// ---------- the suite ----------

#[derive(Default, Debug)]
struct Counts {
    paths: usize,
    resolved: usize,
    from_macros: usize,
    cfg_chosen: usize,
    refused_as_expected: usize,
    unreachable: usize,
    items_total: usize,
    files: usize,
    items: usize,
    binary_modules: usize,
}

#[test]
fn real_crates_resolve_like_rustc_and_round_trip_byte_for_byte() {
    let crates = registry_crates();
    let names: Vec<&str> = crates.iter().map(|k| k.name.as_str()).collect();
    assert!(
        names.len() >= 3,
        "the workspace's dependency graph should hold most of {CRATES:?}, found {names:?}"
    );
    let mut report = Vec::new();
    // `HEPH_REAL_CRATES=tokio,syn` checks only those (for working on one crate).
    let only = std::env::var("HEPH_REAL_CRATES").ok();
    for k in &crates {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|n| n == k.name))
        {
            continue;
        }
        let (start, cpu) = (std::time::Instant::now(), thread_cpu());
        let counts = check_crate(k);
        eprintln!(
            "{} checked in {:.1?} ({:.1?} of this thread's CPU time)",
            k.name,
            start.elapsed(),
            thread_cpu().saturating_sub(cpu)
        );
        report.push(format!(
            "{} {}: {} module paths: {} resolved like rustc ({} declared inside macro calls, {} chosen among #[cfg] copies), {} refused as expected (#[cfg] copies the default build compiles none or several of, files left out of the package), {} only inside copies of an ancestor the default build does not compile; {} files, {} of {} items round-tripped in 2 modes; the binary on {} whole modules in 2 modes",
            k.name,
            k.version,
            counts.paths,
            counts.resolved,
            counts.from_macros,
            counts.cfg_chosen,
            counts.refused_as_expected,
            counts.unreachable,
            counts.files,
            counts.items,
            counts.items_total,
            counts.binary_modules
        ));
    }
    for line in &report {
        println!("{line}");
    }
}

fn check_crate(k: &Krate) -> Counts {
    let env = TestEnv::empty(&k.name);
    copy_tree(&k.dir, env.project());
    let root = env.project().canonicalize().expect("canonical");
    let lib = root.join(
        k.lib_root
            .strip_prefix(&k.dir)
            .expect("lib root inside the crate"),
    );
    let cfg = Cfg::default_build(&k.features);
    let macros = macro_cfgs(&root.join("src"));
    let ctx = Ctx {
        cfg: &cfg,
        macros: &macros,
    };
    let top = Here {
        path: Vec::new(),
        file: lib.clone(),
        inline: Vec::new(),
        pos: None,
        child_dir: lib.parent().expect("dir").to_path_buf(),
    };
    let mut found = Vec::new();
    walk(&tokens_of(&lib), &top, &[], false, &ctx, &mut found);

    let project = Project::open(&root).expect("opening the copy");
    let resolver = Resolver::new(&project);
    let mut by_path: BTreeMap<Vec<String>, Vec<&Found>> = BTreeMap::new();
    for f in &found {
        by_path.entry(f.path.clone()).or_default().push(f);
    }
    let mut counts = Counts {
        paths: by_path.len(),
        ..Counts::default()
    };
    let mut modules = Vec::new();
    // The copy rustc compiles of each path, given the copies chosen for its ancestors
    // (paths come in order, each after its prefixes): `None` when not reachable or
    // not decided.
    let mut chosen: BTreeMap<Vec<String>, Option<Module>> = BTreeMap::new();
    for (path, decls) in &by_path {
        let text = format!("crate::{}", path.join("::"));
        let parent = &path[..path.len() - 1];
        let parent_module = if parent.is_empty() {
            Some((lib.clone(), Vec::new(), None))
        } else {
            chosen.get(parent).cloned().flatten()
        };
        let reachable: Vec<&Found> = decls
            .iter()
            .copied()
            .filter(|d| parent_module.as_ref() == Some(&d.parent))
            .collect();
        let distinct: BTreeSet<Module> = reachable
            .iter()
            .map(|d| (d.file.clone(), d.inline.clone(), d.pos))
            .collect();
        // (A file declared twice, from the same place in two copies of an ancestor
        // pointing at it, is walked twice: its declarations count once.)
        let mut ids = BTreeSet::new();
        let active: Vec<&Found> = reachable
            .iter()
            .copied()
            .filter(|d| d.active && ids.insert((&d.file, &d.inline, d.pos)))
            .collect();
        // The declaration rustc compiles: the only one, or the only active one.
        let expected: Option<&Found> = if distinct.len() == 1 {
            Some(reachable[0])
        } else if active.len() == 1 {
            Some(active[0])
        } else {
            None
        };
        chosen.insert(
            path.clone(),
            expected
                .filter(|e| !e.missing)
                .map(|e| (e.file.clone(), e.inline.clone(), e.pos)),
        );
        // Declared only inside copies of an ancestor the build does not compile (or
        // below a module heph refuses): unreachable without --cfg.
        let unreachable = reachable.is_empty();
        let got = resolver.resolve(&text);
        match (expected, got) {
            (_, Err(_)) if unreachable => counts.unreachable += 1,
            (Some(e), _) if e.cfg_attr_path => counts.refused_as_expected += 1,
            (Some(e), Err(ResolveError::MissingFile { .. })) if e.missing => {
                counts.refused_as_expected += 1
            }
            (Some(e), Ok(m)) => {
                assert!(
                    !e.missing,
                    "{text}: heph resolved {} but rustc finds no file",
                    m.file.display()
                );
                assert_eq!(
                    (&m.file, &m.inline, heph_pos(&resolver, &m)),
                    (&e.file, &e.inline, e.pos),
                    "{text}: heph and rustc disagree"
                );
                counts.resolved += 1;
                counts.cfg_chosen += usize::from(distinct.len() > 1);
                counts.from_macros += usize::from(e.in_call);
                modules.push(m);
            }
            (None, Err(ResolveError::CfgAlternatives { .. })) => counts.refused_as_expected += 1,
            (expected, got) => panic!(
                "{text}: expected {expected:?}, heph said {got:?}; parent module {parent_module:?}; declarations: {decls:#?}"
            ),
        }
    }

    // Round trips through the library: every item of every module, both modes.
    let before = snapshot_of(&root);
    let mut seen = BTreeSet::new();
    for m in &modules {
        if !seen.insert((m.file.clone(), m.inline.clone())) {
            continue;
        }
        let file = resolver.file(&m.file).expect("parsed");
        let lookup = || resolver.cfg_set(&m.package);
        let items = m.item_spans(&file).expect("module items");
        counts.items_total += items.len();
        // `HEPH_REAL_CRATES_ALL=1`: every item of every module.
        let cap = if std::env::var_os("HEPH_REAL_CRATES_ALL").is_some() {
            usize::MAX
        } else {
            ITEMS_PER_MODULE
        };
        for item in items.iter().step_by(items.len().div_ceil(cap).max(1)) {
            let span = &file.text()[item.range.clone()];
            for edit in [Edit::merge(span).verbatim(), Edit::merge(span)] {
                let out = edit::apply_to_module(&file, m, &edit, Some(&lookup))
                    .unwrap_or_else(|e| panic!("{} ({}): {e}\n{span}", m.path, m.file.display()));
                assert!(
                    out.is_noop() && out.text == file.text(),
                    "{}: submitting an item unchanged ({:?}) changed the file:\n{span}\n{:?}",
                    m.path,
                    edit.formatting,
                    out.splices
                );
            }
            counts.items += 1;
        }
        counts.files += usize::from(m.inline.is_empty());
    }

    // The binary, on whole modules (a deterministic sample), really writing.
    for m in modules
        .iter()
        .step_by(modules.len().div_ceil(BINARY_MODULES).max(1))
    {
        let file = resolver.file(&m.file).expect("parsed");
        let items = m.item_spans(&file).expect("module items");
        let mut keys = BTreeSet::new();
        let code: Vec<&str> = items
            .iter()
            .filter(|i| keys.insert(i.key.clone()))
            .map(|i| &file.text()[i.range.clone()])
            .collect();
        if code.is_empty() {
            continue;
        }
        let patch = env.temp().join("patch.rs");
        fs::write(&patch, code.join("\n\n")).expect("write patch");
        for verbatim in [true, false] {
            let mut args = vec!["self-modify", &m.path, "--no-verify", "--code-file"];
            let patch_arg = patch.to_string_lossy().into_owned();
            args.push(&patch_arg);
            if verbatim {
                args.push("--verbatim");
            }
            let output = env.heph().args(&args).output().expect("running heph");
            let run = Run::from_output(output, env.temp());
            run.expect_code(0);
            assert!(
                run.stderr.contains("nothing to change"),
                "{}: {}",
                m.path,
                run.stderr
            );
        }
        counts.binary_modules += 1;
    }
    let after = snapshot_of(&root);
    assert!(before == after, "{}: a file changed", k.name);
    counts
}

/// Where heph's inline module's name is (line, column); `None` for a file module.
fn heph_pos(resolver: &Resolver<'_>, m: &hephaestus_core::Module) -> Option<(usize, usize)> {
    let file = resolver.file(&m.file).expect("parsed");
    let start = m.name_range(&file)?.start;
    // As proc-macro2 counts: lines from 1, columns in characters from 0.
    let before = &file.text()[..start];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Some((
        before.matches('\n').count() + 1,
        before[line_start..].chars().count(),
    ))
}
