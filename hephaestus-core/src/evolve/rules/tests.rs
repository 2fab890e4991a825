//! The table of rule cases: for each built-in rule, code it rewrites (byte for byte) and
//! code it must leave alone.

use super::*;
use crate::source::Origin;

/// A statement-sequence rule (not shipped: LLVM already turns `with_capacity` +
/// `resize(n, 0)` into `calloc`, so it measured no faster).
const VEC_ZEROED: &str = "description = \"vec![z; n]\"\nrisk = \"low\"\n\
    pattern = \"let mut $v = Vec::with_capacity($n); $v.resize($n, $z);\"\n\
    replacement = \"let mut $v = vec![$z; $n];\"\n[metavars]\nn = \"pure\"\n";

fn builtin(id: &str) -> Rule {
    if id == "vec-zeroed" {
        return Rule::parse(id, VEC_ZEROED, "test").expect("test rule");
    }
    RuleSet::builtin()
        .rules()
        .iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("no built-in rule {id}"))
        .clone()
}

fn matches_of(rule: &Rule, src: &str) -> Vec<Match> {
    let file = SourceFile::parse(Origin::Submitted, src.to_owned()).expect("test source parses");
    find_matches(rule, &file, &file.syntax().items)
}

/// Apply the first match of `id` to `src`.
fn rewrite(id: &str, src: &str) -> String {
    let rule = builtin(id);
    let ms = matches_of(&rule, src);
    assert!(!ms.is_empty(), "{id} does not match:\n{src}");
    let out = ms[0].apply(src);
    crate::source::check_file(Path::new("t.rs"), &out).expect("result parses");
    out
}

fn no_match(id: &str, src: &str) {
    let rule = builtin(id);
    let ms = matches_of(&rule, src);
    assert!(ms.is_empty(), "{id} must not match:\n{src}\n{ms:#?}");
}

/// (rule, before, after): every byte outside the matched node is kept.
const CASES: &[(&str, &str, &str)] = &[
    (
        "sort-unstable",
        "fn f(v: &mut Vec<u32>) {\n    // keep\n    v.sort(); // sorted\n}\n",
        "fn f(v: &mut Vec<u32>) {\n    // keep\n    v.sort_unstable(); // sorted\n}\n",
    ),
    (
        "sort-unstable",
        // Inside the match, the template's spacing replaces the code's between tokens
        // that are not metavariables.
        "fn f(s: &mut S) { s.items  .sort(); }\n",
        "fn f(s: &mut S) { s.items.sort_unstable(); }\n",
    ),
    (
        "sort-unstable-by-key",
        "fn f(v: &mut [(u8, u8)]) { v.sort_by_key(|p| p.1) }\n",
        "fn f(v: &mut [(u8, u8)]) { v.sort_unstable_by_key(|p| p.1) }\n",
    ),
    (
        "collect-len-to-count",
        "fn f(t: &str) -> usize { t.split(' ').filter(|w| w.len() > 3).collect::<Vec<_>>().len() }\n",
        "fn f(t: &str) -> usize { t.split(' ').filter(|w| w.len() > 3).count() }\n",
    ),
    (
        "collect-len-to-count",
        "fn f(t: &[u8]) -> usize { t.iter().collect::<Vec<&u8>>().len() }\n",
        "fn f(t: &[u8]) -> usize { t.iter().count() }\n",
    ),
    (
        "collect-is-empty-to-next",
        "fn f(t: &[u8]) -> bool { t.iter().filter(|b| **b > 1).collect::<Vec<_>>().is_empty() }\n",
        "fn f(t: &[u8]) -> bool { t.iter().filter(|b| **b > 1).next().is_none() }\n",
    ),
    (
        "format-to-string",
        "fn f(n: u32) -> String { format!(\"{}\", n) }\n",
        "fn f(n: u32) -> String { n.to_string() }\n",
    ),
    (
        "format-to-string",
        "fn f(a: u32, b: u32) -> String { format!(\"{}\", a + b) }\n",
        "fn f(a: u32, b: u32) -> String { (a + b).to_string() }\n",
    ),
    (
        "format-push-string",
        "use std::io;\n\nfn f(rows: &[u32]) -> String {\n    let mut s = String::new();\n    for r in rows {\n        s += &format!(\"{r},\\n\");\n    }\n    s\n}\n",
        "use std::io;\nuse std::fmt::Write as _;\n\nfn f(rows: &[u32]) -> String {\n    let mut s = String::new();\n    for r in rows {\n        let _ = write!(s, \"{r},\\n\");\n    }\n    s\n}\n",
    ),
    (
        "push-str-format",
        "//! Docs.\n\n/// Render.\nfn f(out: &mut String, k: &str, v: u32) {\n    out.push_str(&format!(\"{}={}\", k, v));\n}\n",
        "//! Docs.\n\nuse std::fmt::Write as _;\n\n/// Render.\nfn f(out: &mut String, k: &str, v: u32) {\n    let _ = write!(out, \"{}={}\", k, v);\n}\n",
    ),
    (
        "to-string-eq",
        "fn f(names: &[String], n: &str) -> Option<usize> { names.iter().position(|x| x.to_string() == n) }\n",
        "fn f(names: &[String], n: &str) -> Option<usize> { names.iter().position(|x| x == n) }\n",
    ),
    (
        "for-clone-to-ref",
        "fn f(g: &Vec<Vec<u64>>) -> u64 {\n    let mut t = 0;\n    for v in g.clone() {\n        // body comment\n        t += v.len() as u64;\n    }\n    t\n}\n",
        "fn f(g: &Vec<Vec<u64>>) -> u64 {\n    let mut t = 0;\n    for v in g.iter() {\n        // body comment\n        t += v.len() as u64;\n    }\n    t\n}\n",
    ),
    (
        "for-clone-to-ref",
        "fn f(s: &S) { for (a, b) in s.pairs.clone() { use_it(a, b); } }\n",
        "fn f(s: &S) { for (a, b) in s.pairs.iter() { use_it(a, b); } }\n",
    ),
    (
        "cloned-filter-count",
        "fn f(n: &[String]) -> usize { n.iter().cloned().filter(|s| s.starts_with('a')).count() }\n",
        "fn f(n: &[String]) -> usize { n.iter().filter(|s| s.starts_with('a')).count() }\n",
    ),
    (
        "bufwriter-file-create",
        "fn f(p: &Path) -> io::Result<()> {\n    let mut file = File::create(p)?;\n    writeln!(file, \"x\")\n}\n",
        "fn f(p: &Path) -> io::Result<()> {\n    let mut file = std::io::BufWriter::new(File::create(p)?);\n    writeln!(file, \"x\")\n}\n",
    ),
    (
        "vec-zeroed",
        "fn f(n: usize) -> Vec<u8> {\n    let mut buf = Vec::with_capacity(n);\n    buf.resize(n, 0);\n    buf\n}\n",
        "fn f(n: usize) -> Vec<u8> {\n    let mut buf = vec![0; n];\n    buf\n}\n",
    ),
    (
        "clone-len",
        "fn f(v: &Vec<String>) -> usize { v.clone().len() }\n",
        "fn f(v: &Vec<String>) -> usize { v.len() }\n",
    ),
];

/// (rule, code it must not rewrite).
const NON_MATCHES: &[(&str, &str)] = &[
    (
        "sort-unstable",
        "fn f(v: &mut Vec<u32>) { v.sort_by(|a, b| a.cmp(b)); }\n",
    ),
    (
        "sort-unstable",
        "fn f(v: &mut Vec<u32>) { v.sort_unstable(); }\n",
    ),
    ("sort-unstable", "fn f(v: &mut Vec<u32>) { sort(v); }\n"),
    // Test code is never rewritten.
    (
        "sort-unstable",
        "#[test]\nfn t() { let mut v = vec![2, 1]; v.sort(); }\n",
    ),
    (
        "sort-unstable",
        "#[cfg(test)]\nmod tests { fn t() { let mut v = vec![2, 1]; v.sort(); } }\n",
    ),
    // Text inside a string or comment is not code.
    (
        "sort-unstable",
        "fn f() -> &'static str { \"v.sort()\" } // v.sort()\n",
    ),
    (
        "collect-len-to-count",
        "fn f(t: &[u8]) -> usize { t.iter().collect::<HashSet<_>>().len() }\n",
    ),
    (
        "collect-len-to-count",
        "fn f(v: Vec<u8>) -> usize { v.len() }\n",
    ),
    (
        "format-to-string",
        "fn f(n: u32) -> String { format!(\"{:>4}\", n) }\n",
    ),
    (
        "format-to-string",
        "fn f(n: u32) -> String { format!(\"{} \", n) }\n",
    ),
    (
        "format-push-string",
        "fn f(s: &mut String) { *s += \"x\"; }\n",
    ),
    (
        "to-string-eq",
        "fn f(a: u32, b: &str) -> bool { a.to_string() != b }\n",
    ),
    (
        "for-clone-to-ref",
        "fn f(v: &[u8]) { for x in v.iter() { g(x); } }\n",
    ),
    (
        "cloned-filter-count",
        "fn f(n: &[u8]) -> usize { n.iter().cloned().count() }\n",
    ),
    (
        "vec-zeroed",
        "fn f(n: usize, m: usize) -> Vec<u8> { let mut b = Vec::with_capacity(n); b.resize(m, 0); b }\n",
    ),
    (
        "vec-zeroed",
        "fn f(n: usize) -> Vec<u8> { let mut b = Vec::with_capacity(n); c.resize(n, 0); b }\n",
    ),
    // `$n` must be pure: a call could differ between its two evaluations.
    (
        "vec-zeroed",
        "fn f() -> Vec<u8> { let mut b = Vec::with_capacity(len()); b.resize(len(), 0); b }\n",
    ),
    (
        "clone-len",
        "fn f(v: &Vec<String>) -> usize { v.clone().capacity() }\n",
    ),
    (
        "clone-len",
        "fn f(v: &Vec<String>) -> usize { v.to_vec().len() }\n",
    ),
    (
        "sort-unstable-by-key",
        "fn f(v: &mut [(u8, u8)]) { v.sort_by(|a, b| a.1.cmp(&b.1)) }\n",
    ),
    (
        "collect-is-empty-to-next",
        "fn f(t: &[u8]) -> bool { t.iter().collect::<Vec<_>>().len() == 0 }\n",
    ),
    (
        "push-str-format",
        "fn f(out: &mut String, k: &str) { out.push_str(k); out.push_str(&k.to_string()); }\n",
    ),
    (
        "bufwriter-file-create",
        "fn f(p: &Path) -> io::Result<File> { File::create(p) }\n",
    ),
    (
        "bufwriter-file-create",
        "fn f(p: &Path) -> io::Result<()> { let _f = File::open(p)?; Ok(()) }\n",
    ),
];

#[test]
fn every_builtin_rule_loads_and_has_a_case() {
    let set = RuleSet::builtin();
    assert_eq!(
        set.rules().len(),
        BUILTIN.len(),
        "a built-in rule failed to load"
    );
    assert!(set.rules().len() >= 10);
    for rule in set.rules() {
        assert!(
            CASES.iter().any(|(id, _, _)| *id == rule.id) && rule.measured.is_some(),
            "no rewrite case for {}",
            rule.id
        );
        assert!(!rule.description.is_empty());
    }
}

#[test]
fn rules_rewrite_byte_for_byte() {
    for (id, before, after) in CASES {
        assert_eq!(&rewrite(id, before), after, "rule {id}");
    }
}

#[test]
fn every_builtin_rule_has_a_non_match() {
    for rule in RuleSet::builtin().rules() {
        assert!(
            NON_MATCHES.iter().any(|(id, _)| *id == rule.id),
            "no non-matching case for {}",
            rule.id
        );
    }
}

#[test]
fn rules_leave_other_code_alone() {
    for (id, src) in NON_MATCHES {
        no_match(id, src);
    }
}

#[test]
fn splices_cover_only_the_bytes_that_differ() {
    let src = "fn f(v: &mut Vec<u32>) {\n    v.sort();\n}\n";
    let ms = matches_of(&builtin("sort-unstable"), src);
    assert_eq!(ms.len(), 1);
    let m = &ms[0];
    assert_eq!(&src[m.range.clone()], "v.sort()");
    assert_eq!(m.splices.len(), 1);
    // `v.sort` + `()`: only `_unstable` is inserted.
    assert_eq!(m.splices[0].text, "_unstable");
    assert!(m.splices[0].range.is_empty());
    assert_eq!(m.line, 2);
    assert_eq!(m.item.as_deref(), Some("fn f"));
}

#[test]
fn every_match_is_found_with_occurrences_and_items() {
    let src = "impl S {\n    fn a(&mut self) { self.v.sort(); self.v.sort(); }\n}\nfn b(mut w: Vec<u8>) { w.sort(); }\n";
    let ms = matches_of(&builtin("sort-unstable"), src);
    assert_eq!(ms.len(), 3);
    assert_eq!(ms[0].item.as_deref(), Some("fn S::a"));
    assert_eq!(
        (ms[0].occurrence, ms[1].occurrence, ms[2].occurrence),
        (0, 1, 0)
    );
    assert_eq!(ms[2].item.as_deref(), Some("fn b"));
}

#[test]
fn nested_matches_and_precedence() {
    let src = "fn f(a: &mut Vec<u8>, b: &mut Vec<u8>) { (if x { a } else { b }).sort(); }\n";
    let out = rewrite("sort-unstable", src);
    assert!(
        out.contains("(if x { a } else { b }).sort_unstable()"),
        "{out}"
    );
    // A metavariable bound to a binary expression is parenthesized as a receiver.
    let rule = Rule::parse(
        "neg",
        "description = \"d\"\nrisk = \"low\"\npattern = \"$x.abs()\"\nreplacement = \"$x.wrapping_abs()\"\n",
        "test",
    )
    .expect("rule");
    let ms = matches_of(&rule, "fn f(a: i32) -> i32 { (a - 1).abs() }\n");
    assert_eq!(ms[0].after, "(a - 1).wrapping_abs()");
    let rule = Rule::parse(
        "sq",
        "description = \"d\"\nrisk = \"low\"\npattern = \"$x.powi(2)\"\nreplacement = \"$x * $x\"\n[metavars]\nx = \"pure\"\n",
        "test",
    )
    .expect("rule");
    let ms = matches_of(
        &rule,
        "fn f(a: f64) -> f64 { (a + 1.0).powi(2) + g().powi(2) }\n",
    );
    assert_eq!(ms.len(), 1, "g() is not pure");
    assert_eq!(ms[0].after, "(a + 1.0) * (a + 1.0)");
}

#[test]
fn invalid_rules_are_refused_with_their_reason() {
    for (text, needle) in [
        (
            "risk = \"low\"\npattern = \"x\"\nreplacement = \"y\"\n",
            "description",
        ),
        (
            "description = \"d\"\nrisk = \"low\"\npattern = \"$x.sort(\"\nreplacement = \"y\"\n",
            "pattern does not parse",
        ),
        (
            "description = \"d\"\nrisk = \"low\"\npattern = \"$x.a()\"\nreplacement = \"$y.b()\"\n",
            "$y",
        ),
        (
            "description = \"d\"\nrisk = \"maybe\"\npattern = \"$x\"\nreplacement = \"$x\"\n",
            "maybe",
        ),
        (
            "description = \"d\"\nrisk = \"low\"\npattern = \"$x.a()\"\nreplacement = \"$x.b()\"\nextra = 1\n",
            "extra",
        ),
    ] {
        let err = Rule::parse("bad", text, "test").expect_err(text);
        assert!(err.to_string().contains(needle), "{text}: {err}");
    }
}

#[test]
fn deeply_nested_templates_are_refused_before_parsing() {
    let deep = format!("{}$x{}", "(".repeat(100_000), ")".repeat(100_000));
    for (pattern, replacement, part) in [
        (deep.as_str(), "$x", "the pattern"),
        ("$x", deep.as_str(), "the replacement"),
    ] {
        let text = format!(
            "description = \"d\"\nrisk = \"low\"\npattern = \"{pattern}\"\nreplacement = \"{replacement}\"\n"
        );
        let err = Rule::parse("deep", &text, "test").expect_err("refused");
        let shown = err.to_string();
        assert!(shown.contains(part), "{shown}");
        assert!(
            shown.contains("nesting deeper than 256 levels at 1:"),
            "{shown}"
        );
    }
}

#[test]
fn rules_load_from_a_directory_and_replace_builtins_by_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("sort-unstable.toml"),
        "description = \"mine\"\nrisk = \"high\"\npattern = \"$v.sort()\"\nreplacement = \"$v.sort_unstable()\"\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("README.md"), "not a rule").expect("write");
    let set = RuleSet::load(&["builtin".into(), ".".into()], dir.path()).expect("load");
    assert_eq!(set.rules().len(), BUILTIN.len());
    let mine = set
        .rules()
        .iter()
        .find(|r| r.id == "sort-unstable")
        .expect("rule");
    assert_eq!(mine.description, "mine");
    assert!(RuleSet::load(&["missing".into()], dir.path()).is_err());
}

#[test]
fn crlf_files_keep_their_line_endings() {
    let src = "fn f(n: usize) -> Vec<u8> {\r\n    let mut b = Vec::with_capacity(n);\r\n    b.resize(n, 0);\r\n    b\r\n}\r\n";
    let out = rewrite("vec-zeroed", src);
    assert_eq!(
        out,
        "fn f(n: usize) -> Vec<u8> {\r\n    let mut b = vec![0; n];\r\n    b\r\n}\r\n"
    );
}
