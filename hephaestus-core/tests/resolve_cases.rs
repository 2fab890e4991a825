//! Module resolution on small real crates written to temp dirs: every layout rustc
//! allows, `mod` declarations inside macro calls, `#[cfg]` copies, and the errors.

use std::fs;
use std::path::{Path, PathBuf};

use hephaestus_core::Project;
use hephaestus_core::cfg::CfgOption;
use hephaestus_core::edit::{self, Edit};
use hephaestus_core::resolve::{Layout, ResolveError, Resolver};

/// A crate in a temp dir with these files (and default features `a`).
fn krate(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().canonicalize().expect("canonical");
    fs::write(
        root.join("Cargo.toml"),
        "[package]\nname = \"k\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[features]\ndefault = [\"a\"]\na = [\"c\"]\nb = []\nc = []\n\n[workspace]\n",
    )
    .expect("manifest");
    for (path, text) in files {
        let p = root.join(path);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, text).expect("write");
    }
    (dir, root)
}

fn rel(root: &Path, m: &hephaestus_core::Module) -> String {
    m.file
        .strip_prefix(root)
        .expect("inside")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn every_layout_resolves_like_rustc() {
    let (_d, root) = krate(&[
        (
            "src/lib.rs",
            "mod a;\nmod b;\n#[path = \"other/c_file.rs\"]\nmod c;\nmod d {\n    mod e;\n    #[path = \"x.rs\"]\n    mod f;\n    mod g {}\n}\n",
        ),
        ("src/a.rs", "mod a1;\n"),
        ("src/a/a1.rs", ""),
        ("src/b/mod.rs", "mod b1;\n"),
        ("src/b/b1.rs", ""),
        ("src/other/c_file.rs", "mod c1;\n"),
        ("src/other/c1.rs", ""),
        ("src/d/e.rs", ""),
        ("src/d/x.rs", ""),
    ]);
    let project = Project::open(&root).expect("open");
    let r = Resolver::new(&project);
    let cases = [
        ("crate", "src/lib.rs", Layout::CrateRoot),
        ("a", "src/a.rs", Layout::File),
        ("a::a1", "src/a/a1.rs", Layout::File),
        ("b", "src/b/mod.rs", Layout::ModRs),
        ("b::b1", "src/b/b1.rs", Layout::File),
        ("c", "src/other/c_file.rs", Layout::PathAttr),
        ("c::c1", "src/other/c1.rs", Layout::File),
        ("d", "src/lib.rs", Layout::Inline),
        ("d::e", "src/d/e.rs", Layout::File),
        ("d::f", "src/d/x.rs", Layout::PathAttr),
        ("d::g", "src/lib.rs", Layout::Inline),
    ];
    for (path, file, layout) in cases {
        let m = r.resolve(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            (rel(&root, &m).as_str(), m.layout),
            (file, layout),
            "{path}"
        );
        assert!(m.notes.is_empty(), "{path}: {:?}", m.notes);
    }
    assert_eq!(r.resolve("d::g").expect("g").inline, ["d", "g"]);
    assert!(!r.resolve("d::g").expect("g").declared_in_macro());
    // Where each module's name is written (`mod g {}` inside `mod d`), and its items.
    let lib = r.file(&root.join("src/lib.rs")).expect("lib.rs");
    let name_at = |path: &str| {
        r.resolve(path)
            .expect(path)
            .name_range(&lib)
            .map(|range| &lib.text()[range])
    };
    assert_eq!(name_at("d::g"), Some("g"));
    assert_eq!(name_at("d"), Some("d"));
    assert_eq!(name_at("crate"), None, "a file module has no inline name");
    let d = r.resolve("d").expect("d");
    let spans: Vec<(String, &str)> = d
        .item_spans(&lib)
        .expect("items of d")
        .into_iter()
        .map(|s| (s.key.to_string(), &lib.text()[s.range]))
        .collect();
    assert_eq!(
        spans,
        [
            ("mod e".to_owned(), "mod e;"),
            ("mod f".to_owned(), "#[path = \"x.rs\"]\n    mod f;"),
            ("mod g".to_owned(), "mod g {}"),
        ]
    );
    let all: Vec<String> = r.all_modules(100).into_iter().map(|m| m.path).collect();
    assert_eq!(all.len(), cases.len(), "{all:?}");
    let e = r.resolve("a::zz").expect_err("missing").to_string();
    assert!(
        e.contains("`crate::a` (src/a.rs) declares no module `zz`"),
        "{e}"
    );
}

#[test]
fn layout_errors_say_what_to_do() {
    let (_d, root) = krate(&[
        (
            "src/lib.rs",
            "mod both;\nmod gone;\n#[cfg_attr(unix, path = \"p.rs\")]\nmod attr;\n",
        ),
        ("src/both.rs", ""),
        ("src/both/mod.rs", ""),
        ("src/attr.rs", ""),
    ]);
    let project = Project::open(&root).expect("open");
    let r = Resolver::new(&project);
    assert!(matches!(
        r.resolve("both"),
        Err(ResolveError::BothLayouts { .. })
    ));
    let e = r.resolve("gone").expect_err("missing");
    assert!(
        matches!(&e, ResolveError::MissingFile { declared, .. } if declared == "src/lib.rs:2:1"),
        "{e}"
    );
    assert!(matches!(
        r.resolve("attr"),
        Err(ResolveError::CfgAttrPath { .. })
    ));
}

const MACROS: &str = "macro_rules! cfg_a {\n    ($($item:item)*) => { $( #[cfg(feature = \"a\")] $item )* }\n}\nmacro_rules! cfg_b {\n    ($($item:item)*) => { $( #[cfg(feature = \"b\")] #[cfg_attr(docsrs, doc(cfg(feature = \"b\")))] $item )* }\n}\nmacro_rules! feature {\n    (#![$meta:meta] $($item:item)*) => { $( #[cfg($meta)] $item )* }\n}\nmacro_rules! mods {\n    ($($m:ident),*) => { $( pub mod $m; )* }\n}\nmacro_rules! both {\n    ($($t:tt)*) => { cfg_a! { $($t)* } }\n}\n";

#[test]
fn modules_declared_in_macro_calls_carry_the_expansions_cfg() {
    let (_d, root) = krate(&[
        (
            "src/lib.rs",
            "#[macro_use]\nmod macros;\n\ncfg_a! {\n    pub mod fs;\n    pub mod inl {\n        pub mod deep;\n        pub mod inner2 {\n            pub fn x() {}\n        }\n        pub fn f() {}\n    }\n}\ncfg_b! { pub mod net; }\nfeature! {\n    #![any(feature = \"a\", feature = \"b\")]\n    pub mod both_ab;\n}\nmods!(one, two);\nboth! { mod nested; }\ncrate::cfg_a! { mod pathed; }\nforeign::make! { pub mod guessed; }\n",
        ),
        ("src/macros.rs", MACROS),
        ("src/fs.rs", ""),
        ("src/inl/deep.rs", ""),
        ("src/net.rs", ""),
        ("src/both_ab.rs", ""),
        ("src/one.rs", ""),
        ("src/two.rs", ""),
        ("src/nested.rs", ""),
        ("src/pathed.rs", ""),
        ("src/guessed.rs", ""),
    ]);
    let project = Project::open(&root).expect("open");
    let r = Resolver::new(&project);
    let cfg = |p: &str| {
        let m = r.resolve(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        (rel(&root, &m), m.cfg)
    };
    assert_eq!(
        cfg("fs"),
        ("src/fs.rs".into(), vec!["cfg(feature = \"a\")".to_owned()])
    );
    assert_eq!(cfg("net").1, ["cfg(feature = \"b\")"]);
    assert_eq!(
        cfg("both_ab").1,
        ["cfg(any(feature = \"a\", feature = \"b\"))"]
    );
    assert_eq!(cfg("one"), ("src/one.rs".into(), Vec::new()));
    assert_eq!(cfg("two").0, "src/two.rs");
    assert_eq!(cfg("nested").1, ["cfg(feature = \"a\")"]);
    assert_eq!(cfg("pathed").1, ["cfg(feature = \"a\")"]);
    assert_eq!(
        cfg("inl::deep"),
        (
            "src/inl/deep.rs".into(),
            vec!["cfg(feature = \"a\")".to_owned()]
        )
    );
    // `net` needs feature `b`, off by default: the note says verification skips it.
    let net = r.resolve("net").expect("net");
    assert!(
        net.notes
            .iter()
            .any(|n| n.contains("verification will not check this edit")),
        "{:?}",
        net.notes
    );
    assert!(r.resolve("fs").expect("fs").notes.is_empty());
    // A macro heph cannot expand whose input is items: read as written, and said so.
    let g = r.resolve("guessed").expect("guessed");
    assert!(
        g.notes
            .iter()
            .any(|n| n.contains("`make!` at src/lib.rs:22:1, a macro heph cannot expand")),
        "{:?}",
        g.notes
    );
    // An inline module declared in a macro call is edited through its expanded item.
    let inl = r.resolve("inl").expect("inl");
    assert_eq!(
        (inl.layout, inl.inline.as_slice()),
        (Layout::Inline, &["inl".to_owned()][..])
    );
    assert!(inl.declared_in_macro(), "from an expansion");
    let file = r
        .resolve("crate")
        .map(|m| r.file(&m.file).expect("file"))
        .expect("root");
    assert_eq!(
        inl.name_range(&file).map(|range| &file.text()[range]),
        Some("inl"),
        "the name inside the macro call"
    );
    let out =
        edit::apply_to_module(&file, &inl, &Edit::merge("pub fn g() {}"), None).expect("edit");
    assert!(
        out.text
            .contains("        pub fn f() {}\n\n        pub fn g() {}\n    }\n}\ncfg_b!"),
        "{}",
        out.text
    );
    // An inline module inside one read from an expansion: its own items.
    let inner2 = r.resolve("inl::inner2").expect("inner2");
    let names: Vec<String> = inner2
        .item_spans(&file)
        .expect("items")
        .iter()
        .map(|i| i.key.to_string())
        .collect();
    assert_eq!(names, ["fn x"]);
    let modules: Vec<String> = r.all_modules(100).into_iter().map(|m| m.path).collect();
    for p in [
        "crate::fs",
        "crate::inl::deep",
        "crate::one",
        "crate::guessed",
    ] {
        assert!(modules.iter().any(|m| m == p), "{p} in {modules:?}");
    }
}

#[test]
fn a_macro_heph_cannot_expand_is_named_when_a_module_is_missing() {
    let (_d, root) = krate(&[
        (
            "src/lib.rs",
            "mod plain;\nproc::declare! { mod hidden = \"h.rs\" }\nother::thing!(x y);\n",
        ),
        ("src/plain.rs", ""),
    ]);
    let project = Project::open(&root).expect("open");
    let r = Resolver::new(&project);
    let e = r.resolve("hidden").expect_err("hidden").to_string();
    assert!(
        e.contains("it may be declared by `declare!` at src/lib.rs:2:1, which heph cannot expand"),
        "{e}"
    );
    assert!(!e.contains("thing!"), "{e}");
    // A name the opaque call does not mention: still the call with a `mod` in it.
    let e = r.resolve("other").expect_err("other").to_string();
    assert!(e.contains("`declare!` at src/lib.rs:2:1"), "{e}");
    // No macro with `mod`: the plain message.
    let (_d2, root2) = krate(&[("src/lib.rs", "other::thing!(x y);\n")]);
    let project2 = Project::open(&root2).expect("open");
    let e = Resolver::new(&project2).resolve("nope").expect_err("nope");
    assert!(matches!(e, ResolveError::NotFound { .. }), "{e}");
}

const COPIES: &str = "#[cfg(feature = \"b\")]\nmod inner {\n    fn which() {}\n}\n#[cfg(not(feature = \"b\"))]\nmod inner {\n    fn which() {}\n}\n#[cfg(feature = \"b\")]\nmod off1 {}\n#[cfg(feature = \"zz\")]\nmod off1 {}\n#[cfg(feature = \"a\")]\nmod on2 {}\n#[cfg(feature = \"c\")]\nmod on2 {}\n#[cfg(unix)]\nmod plat;\n#[cfg(windows)]\n#[path = \"win.rs\"]\nmod plat;\n#[cfg(feature = \"a\")]\nmod nocfg {}\nmod nocfg {}\n";

#[test]
fn cfg_copies_follow_the_default_build_and_cfg_options() {
    let (_d, root) = krate(&[
        ("src/lib.rs", COPIES),
        ("src/plat.rs", ""),
        ("src/win.rs", ""),
    ]);
    let project = Project::open(&root).expect("open");
    let r = Resolver::new(&project);
    let inner = r.resolve("inner").expect("inner");
    assert_eq!(inner.cfg, ["cfg(not(feature = \"b\"))"]);
    assert!(inner.notes[0].contains("chose the copy #[cfg(not(feature = \"b\"))] (inline, declared at src/lib.rs:5:1), since the default build compiles it; other copies: #[cfg(feature = \"b\")] (inline, declared at src/lib.rs:1:1)"), "{:?}", inner.notes);
    let plat = r.resolve("plat").expect("plat");
    assert_eq!(
        rel(&root, &plat),
        if cfg!(unix) {
            "src/plat.rs"
        } else {
            "src/win.rs"
        }
    );
    let e = r.resolve("off1").expect_err("none").to_string();
    assert!(e.contains("the build compiles none of them"), "{e}");
    // `c` is on through `a`: both copies are compiled.
    let e = r.resolve("on2").expect_err("several").to_string();
    assert!(
        e.contains("the build compiles more than one of them"),
        "{e}"
    );
    assert!(
        e.contains("#[cfg(feature = \"a\")] (inline, declared at src/lib.rs:13:1)"),
        "{e}"
    );
    let e = r.resolve("nocfg").expect_err("several").to_string();
    assert!(e.contains("#[cfg(feature = \"a\")] (inline, declared at src/lib.rs:22:1), no #[cfg] (inline, declared at src/lib.rs:24:1)"), "{e}");
    // Options given: `b` picks the other copy; a given option breaks a tie.
    let b = CfgOption::parse("feature = \"b\"").expect("cfg");
    let rb = Resolver::new(&project).with_cfg(std::slice::from_ref(&b));
    let inner_b = rb.resolve("inner").expect("inner");
    assert_eq!(inner_b.cfg, ["cfg(feature = \"b\")"]);
    assert!(
        inner_b.notes[0].contains("the build with --cfg 'feature = \"b\"' compiles it"),
        "{:?}",
        inner_b.notes
    );
    assert!(
        inner_b
            .notes
            .iter()
            .any(|n| n.contains("verification will not check")),
        "{:?}",
        inner_b.notes
    );
    let c = CfgOption::parse("feature = \"c\"").expect("cfg");
    let rc = Resolver::new(&project).with_cfg(std::slice::from_ref(&c));
    assert_eq!(
        rc.resolve("on2").expect("on2").cfg,
        ["cfg(feature = \"c\")"]
    );
    // The choice is cached in the project's .heph/cache when .heph exists.
    fs::create_dir_all(root.join(".heph")).expect("mkdir");
    Resolver::new(&project).resolve("inner").expect("inner");
    assert!(root.join(".heph/cache/cfg.json").is_file());
    assert!(Resolver::new(&project).resolve("inner").is_ok());
}

#[test]
fn notes_about_verification_follow_what_cargo_check_compiles() {
    let (_d, root) = krate(&[
        (
            "src/lib.rs",
            "#[cfg(test)]\nmod tests;\n#[cfg(all(test, unix))]\nmod unix_tests;\n#[cfg(feature = \"b\")]\n#[path = \"same.rs\"]\nmod twice;\n#[cfg(feature = \"zz\")]\n#[path = \"same.rs\"]\nmod twice;\n",
        ),
        ("src/tests.rs", ""),
        ("src/unix_tests.rs", ""),
        ("src/same.rs", ""),
    ]);
    fs::create_dir_all(root.join(".heph")).expect("mkdir");
    let project = Project::open(&root).expect("open");
    let r = Resolver::new(&project);
    // `#[cfg(test)]` alone: the test build compiles it, known without asking rustc.
    assert!(r.resolve("tests").expect("tests").notes.is_empty());
    assert!(
        !root.join(".heph/cache/cfg.json").exists(),
        "rustc was not needed"
    );
    // Compiled by the test build only (`cargo check --all-targets` builds it): no note.
    if cfg!(unix) {
        assert!(
            r.resolve("unix_tests")
                .expect("unix_tests")
                .notes
                .is_empty()
        );
    }
    // Two declarations of one file: that file, whatever their cfgs.
    let twice = r.resolve("twice").expect("one file");
    assert_eq!(rel(&root, &twice), "src/same.rs");
}
