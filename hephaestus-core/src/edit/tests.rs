//! Table of edit-engine cases. Each case checks the invariant (every byte outside the
//! splices is unchanged, the result parses) and snapshots the changes and the result.

use super::*;
use crate::cfg::{CfgOption, CfgSet};

/// Apply, check the invariant, and render changes + result for a snapshot.
fn run(text: &str, names: &[&str], edit: &Edit) -> String {
    let out = apply_to_text(text, names, edit).unwrap_or_else(|e| panic!("edit failed: {e}"));
    assert_untouched(text, &out);
    let mut shown = String::new();
    for c in &out.changes {
        shown.push_str(&format!("{} {}\n", c.action.as_str(), c.key));
    }
    shown.push_str("---\n");
    shown.push_str(&out.text.replace('\r', "␍").replace('\u{feff}', "<BOM>"));
    shown
}

/// Every byte of `old` outside the splices appears unchanged, in order, in the result.
pub(super) fn assert_untouched(old: &str, out: &EditOutcome) {
    let mut pos = 0;
    let mut rebuilt = String::new();
    for s in &out.splices {
        assert!(s.range.start >= pos, "splices overlap or are unsorted");
        rebuilt.push_str(&old[pos..s.range.start]);
        rebuilt.push_str(&s.text);
        pos = s.range.end;
    }
    rebuilt.push_str(&old[pos..]);
    assert_eq!(rebuilt, out.text, "result is not old text + splices");
    if !out.splices.is_empty() {
        syn::parse_str::<syn::File>(&out.text[crate::source::prefix_len(&out.text)..])
            .unwrap_or_else(|e| panic!("result does not parse: {e}\n{}", out.text));
    }
}

fn err(text: &str, names: &[&str], edit: &Edit) -> String {
    apply_to_text(text, names, edit)
        .expect_err("edit must fail")
        .to_string()
}

const AGENT: &str = r#"//! The hot-reload test module.

use std::fmt;

// The generation of this module's text.
/// How many times this module has been reloaded.
pub const RELOAD_GENERATION: u32 = 2;

/// The function the demo rewrites.
// A comment between the doc comment and the item.
pub fn test_function() -> &'static str {
    // The text is what the demo prints.
    "version 2 - MODIFIED!"
}

/// A point.
#[derive(Debug)]
pub struct Point { x: f64, y: f64 }

impl Point {
    /// Length.
    pub fn norm(&self) -> f64 { (self.x * self.x + self.y * self.y).sqrt() }

    pub fn x(&self) -> f64
    {
        self.x
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.x, self.y)
    }
}

#[cfg(unix)]
pub fn platform() -> &'static str { "unix" }
#[cfg(not(unix))]
pub fn platform() -> &'static str { "other" }

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn works() {
        assert!(test_function().starts_with("version"));
    }
}

// End of the module.
"#;

#[test]
fn seed_example_replaces_one_fn_and_adds_another() {
    let edit = Edit::merge(
        "fn test_function() -> &'static str { \"version 3 - SELF MODIFIED!\" }\n\
         fn new_awesome_function() -> &'static str { \"This was added by self-modification!\" }",
    );
    insta::assert_snapshot!(run(AGENT, &[], &edit));
}

#[test]
fn replacing_an_identical_item_changes_nothing() {
    let edit = Edit::merge("pub fn platform() -> &'static str { \"x\" }");
    // No cfg, and no build configuration to choose among the cfg twins: refused.
    let e = err(AGENT, &[], &edit);
    assert!(
        e.contains("heph has no build configuration to choose with"),
        "{e}"
    );
    assert!(e.contains("`#[cfg(unix)] fn platform` (line"), "{e}");
    let same = Edit::merge("#[cfg(unix)]\npub fn platform() -> &'static str { \"unix\" }");
    let out = apply_to_text(AGENT, &[], &same).expect("edit");
    assert_eq!(out.changes[0].action, ChangeAction::Unchanged);
    assert!(out.is_noop());
    assert_eq!(out.text, AGENT);
}

#[test]
fn cfg_twin_is_replaced_alone() {
    let edit =
        Edit::merge("#[cfg(not(unix))]\npub fn platform() -> &'static str { \"elsewhere\" }");
    insta::assert_snapshot!(run(AGENT, &[], &edit));
}

#[test]
fn inherent_impl_merges_method_by_method() {
    let edit = Edit::merge(
        "impl Point {\n    /// Squared length.\n    pub fn norm2(&self) -> f64 { self.x * self.x + self.y * self.y }\n    pub fn x(&self) -> f64 { self.x + 0.0 }\n}",
    );
    insta::assert_snapshot!(run(AGENT, &[], &edit));
}

#[test]
fn trait_impl_method_is_replaced() {
    let edit = Edit::merge(
        "impl fmt::Display for Point { fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { write!(f, \"<{} {}>\", self.x, self.y) } }",
    );
    insta::assert_snapshot!(run(AGENT, &[], &edit));
}

#[test]
fn new_impl_block_goes_after_the_last_impl() {
    let edit =
        Edit::merge("impl Default for Point { fn default() -> Self { Point { x: 0.0, y: 0.0 } } }");
    insta::assert_snapshot!(run(AGENT, &[], &edit));
}

#[test]
fn use_is_added_only_when_missing() {
    let edit = Edit::merge("use std::fmt;\nuse std::collections::HashMap;");
    insta::assert_snapshot!(run(AGENT, &[], &edit));
}

#[test]
fn first_use_goes_before_the_first_item_and_its_comments() {
    let text = "//! Crate docs.\n#![allow(dead_code)]\n\n// About f.\nfn f() {}\n";
    insta::assert_snapshot!(run(text, &[], &Edit::merge("use std::io;")));
}

#[test]
fn struct_enum_union_trait_type_const_static_are_added_at_the_end() {
    let text = "fn f() {}\n";
    let edit = Edit::merge(
        "struct S;\nenum E { A }\nunion U { a: u8 }\ntrait T {}\ntype A = u8;\nconst C: u8 = 1;\nstatic X: u8 = 2;",
    );
    insta::assert_snapshot!(run(text, &[], &edit));
}

#[test]
fn every_kind_is_replaced_in_place() {
    let text = "struct S;\n\nenum E { A }\n\nunion U { a: u8 }\n\ntrait T {}\n\ntype A = u8;\n\nconst C: u8 = 1;\n\nstatic X: u8 = 2;\n\nmacro_rules! m { () => {} }\n\nextern crate alloc;\n";
    let edit = Edit::merge(
        "struct S(u8);\nenum E { A, B }\nunion U { a: u16 }\ntrait T { fn t(&self); }\ntype A = u16;\nconst C: u8 = 3;\nstatic X: u8 = 4;\nmacro_rules! m { ($e:expr) => { $e } }\nextern crate alloc;",
    );
    insta::assert_snapshot!(run(text, &[], &edit));
}

#[test]
fn item_macros_are_named_by_their_text() {
    let text = "thread_local! { static A: u8 = 1; }\n";
    let same = apply_to_text(
        text,
        &[],
        &Edit::merge("thread_local! { static A: u8 = 1; }"),
    )
    .expect("edit");
    assert_eq!(same.changes[0].action, ChangeAction::Unchanged);
    insta::assert_snapshot!(run(
        text,
        &[],
        &Edit::merge("thread_local! { static B: u8 = 2; }")
    ));
}

#[test]
fn generic_impl_merges() {
    let text = "pub struct W<T>(T);\n\nimpl<T: Clone> W<T> {\n    pub fn get(&self) -> T { self.0.clone() }\n}\n";
    let edit = Edit::merge(
        "impl<T: Clone> W<T> { pub fn twice(&self) -> (T, T) { (self.0.clone(), self.0.clone()) } }",
    );
    insta::assert_snapshot!(run(text, &[], &edit));
}

#[test]
fn method_in_the_second_of_two_impl_blocks_is_found() {
    let text = "struct S;\nimpl S {\n    fn a(&self) {}\n}\nimpl S {\n    fn b(&self) {}\n}\n";
    insta::assert_snapshot!(run(
        text,
        &[],
        &Edit::merge("impl S { fn b(&self) { let _ = 1; } }")
    ));
}

#[test]
fn inline_module_items_are_indented_like_their_neighbours() {
    let text = "pub mod outer {\n    //! Inner docs.\n\n    pub fn a() {}\n\n    pub mod nested {\n        pub fn b() -> u8 { 1 }\n    }\n}\n";
    insta::assert_snapshot!(run(
        text,
        &["outer", "nested"],
        &Edit::merge("pub fn b() -> u8 {\n    2\n}\npub fn c() -> &'static str { \"c\" }")
    ));
    insta::assert_snapshot!(
        "inline_outer",
        run(text, &["outer"], &Edit::merge("pub fn z() {}"))
    );
}

#[test]
fn empty_inline_module_gets_its_first_item() {
    insta::assert_snapshot!(run("mod x {}\n", &["x"], &Edit::merge("fn a() {}")));
    insta::assert_snapshot!(
        "empty_braces_on_two_lines",
        run("    mod x {\n    }\n", &["x"], &Edit::merge("fn a() {}"))
    );
}

#[test]
fn one_line_inline_module_gets_a_new_item() {
    insta::assert_snapshot!(run(
        "mod x { fn a() {} }\n",
        &["x"],
        &Edit::merge("fn b() {}")
    ));
}

#[test]
fn tab_indented_module_uses_tabs() {
    let text = "mod x {\n\tfn a() {}\n}\n";
    insta::assert_snapshot!(run(
        text,
        &["x"],
        &Edit::merge("fn b() {\n    let _ = 1;\n}")
    ));
}

#[test]
fn multiline_string_literal_is_not_reindented() {
    let text = "mod x {\n    fn a() {}\n}\n";
    let edit = Edit::merge("fn b() -> &'static str {\n    \"line one\nline two\"\n}");
    let out = run(text, &["x"], &edit);
    assert!(out.contains("\"line one\nline two\""), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn crlf_line_endings_are_kept() {
    let text = "// c\r\nfn a() -> u8 { 1 }\r\n\r\nfn b() {}\r\n";
    let edit = Edit::merge("fn a() -> u8 {\n    2\n}\nfn c() {}");
    let out = apply_to_text(text, &[], &edit).expect("edit");
    assert_untouched(text, &out);
    assert!(
        !out.text.replace("\r\n", "").contains('\n'),
        "bare LF in {:?}",
        out.text
    );
    insta::assert_snapshot!(run(text, &[], &edit));
}

#[test]
fn bom_and_shebang_are_kept() {
    let text = "\u{feff}#!/usr/bin/env rust-script\n// c\nfn a() {}\n";
    insta::assert_snapshot!(run(
        text,
        &[],
        &Edit::merge("fn a() { let _ = 0; }\nfn b() {}")
    ));
}

#[test]
fn comments_after_the_last_item_stay_after_it() {
    let text = "fn a() {}\n\n// trailing comment\n";
    insta::assert_snapshot!(run(text, &[], &Edit::merge("struct S;")));
}

#[test]
fn trailing_comment_on_the_anchor_line_stays_with_it() {
    let text = "fn a() {} // about a\nstruct S;\n";
    insta::assert_snapshot!(run(text, &[], &Edit::merge("fn b() {}")));
}

#[test]
fn empty_file_gets_items() {
    insta::assert_snapshot!(run("", &[], &Edit::merge("fn a() {}\nfn b() {}")));
}

#[test]
fn file_without_final_newline() {
    insta::assert_snapshot!(run("fn a() {}", &[], &Edit::merge("fn b() {}")));
}

#[test]
fn doc_comments_of_new_items_are_kept() {
    let out = run(
        "fn a() {}\n",
        &[],
        &Edit::merge("/// Does b.\n/// Really.\nfn b() {}"),
    );
    assert!(out.contains("/// Does b.\n/// Really.\nfn b() {}"), "{out}");
}

#[test]
fn verbatim_keeps_comments_and_layout() {
    let code = "fn b() {\n    // why\n    let _ = 1;   // aligned\n}";
    insta::assert_snapshot!(run(
        "mod x {\n    fn a() {}\n}\n",
        &["x"],
        &Edit::merge(code).verbatim()
    ));
}

#[test]
fn remove_collapses_blank_lines() {
    let text = "fn a() {}\n\n/// doc\nfn b() {}\n\nfn c() {}\n";
    insta::assert_snapshot!(run(text, &[], &Edit::remove(["fn b"])));
    insta::assert_snapshot!("remove_last", run(text, &[], &Edit::remove(["c"])));
}

#[test]
fn remove_member_and_cfg_twin() {
    insta::assert_snapshot!(run(
        AGENT,
        &[],
        &Edit::remove(["Point::norm", "#[cfg(not(unix))] fn platform"])
    ));
}

#[test]
fn remove_trait_impl_member_by_type() {
    let out = apply_to_text(AGENT, &[], &Edit::remove(["fn Point::fmt"])).expect("edit");
    assert_eq!(out.changes[0].key, "fn <Point as fmt::Display>::fmt");
}

#[test]
fn remove_whole_impl_and_use() {
    let out = run(AGENT, &[], &Edit::remove(["impl fmt::Display for Point"]));
    let (changes, text) = out.split_once("---\n").expect("separator");
    assert_eq!(changes, "removed impl fmt::Display for Point\n");
    assert!(
        !text.contains("impl fmt::Display") && text.contains("#[cfg(unix)]"),
        "{text}"
    );
    let out = run(AGENT, &[], &Edit::remove(["use std::fmt"]));
    let text = out.split_once("---\n").expect("separator").1;
    assert!(!text.contains("use std::fmt"), "{text}");
}

#[test]
fn remove_errors_are_precise() {
    let e = err(AGENT, &[], &Edit::remove(["fn nope"]));
    assert!(
        e.contains("no item `fn nope`") && e.contains("fn test_function"),
        "{e}"
    );
    let e = err(AGENT, &[], &Edit::remove(["platform"]));
    assert!(
        e.contains("matches several items") && e.contains("cfg(unix)"),
        "{e}"
    );
    let e = err(AGENT, &[], &Edit::remove(Vec::<String>::new()));
    assert!(e.contains("--item"), "{e}");
    let e = err(AGENT, &[], &Edit::remove(["fn 3"]));
    assert!(e.contains("cannot understand"), "{e}");
}

#[test]
fn replace_mode_replaces_the_whole_file_but_keeps_the_prefix() {
    let text = "\u{feff}#!/usr/bin/env x\r\nfn a() {}\r\nfn b() {}\r\n";
    insta::assert_snapshot!(run(
        text,
        &[],
        &Edit::replace("fn a() { let _ = 1; }\n\n// new\nfn c() {}\n")
    ));
}

#[test]
fn replace_mode_in_an_inline_module() {
    let text = "fn top() {}\n\nmod x {\n    fn a() {}\n    fn b() {}\n}\n";
    insta::assert_snapshot!(run(
        text,
        &["x"],
        &Edit::replace("fn a() {}\nfn c() {\n    1;\n}")
    ));
}

#[test]
fn submitted_code_errors() {
    let e = err(AGENT, &[], &Edit::merge("fn a() {}\nfn b( {}"));
    assert!(e.contains("<submitted code>:2:"), "{e}");
    let e = err(AGENT, &[], &Edit::merge("fn a() {}\nfn a() {}"));
    assert!(e.contains("defines `fn a` twice (at lines 1 and 2)"), "{e}");
    let e = err(AGENT, &[], &Edit::merge("   \n"));
    assert!(e.contains("no code"), "{e}");
    let e = err(AGENT, &[], &Edit::merge("#![allow(x)]\nfn a() {}"));
    assert!(e.contains("inner attributes"), "{e}");
    let e = err("fn a() {}\nfn a() {}\n", &[], &Edit::merge("fn a() {}"));
    assert!(e.contains("matches several items"), "{e}");
}

#[test]
fn inner_attributes_and_module_docs_survive_every_edit() {
    let text = "#![allow(dead_code)]\n//! Docs.\n\nuse std::fmt;\n\nfn a() {}\n";
    for edit in [
        Edit::merge("fn a() { let _ = 1; }"),
        Edit::merge("use std::io;"),
        Edit::remove(["fn a"]),
    ] {
        let out = apply_to_text(text, &[], &edit).expect("edit");
        assert_untouched(text, &out);
        assert!(
            out.text.starts_with("#![allow(dead_code)]\n//! Docs.\n"),
            "{}",
            out.text
        );
    }
}

#[test]
fn mod_declaration_is_added_after_the_last_mod() {
    let text = "pub mod a;\nmod b;\n\nfn f() {}\n";
    insta::assert_snapshot!(run(text, &[], &Edit::merge("pub mod c;")));
}

#[test]
fn extern_crate_goes_first_when_there_is_none() {
    insta::assert_snapshot!(run(
        "use std::io;\n",
        &[],
        &Edit::merge("extern crate alloc;")
    ));
}

// ----- regressions found by the property tests (tests/edit_props.rs) -----

#[test]
fn merging_twice_reports_unchanged_though_formatting_changed_tokens() {
    // prettyplease adds trailing commas and trims a one-line block doc: the second
    // merge must still see the file's text as the item it would write.
    let code = "struct S { a: u8, b: u16 }\n/** Block doc. */\nfn f() {}\nimpl S { fn g(&self) -> [u8; 2] { [self.a, 0] } }\nstruct S2 { x: u8 }\nimpl S2 { fn h(&self, a: u8, b: u8) -> (u8, u8) { (a, b) } }";
    for text in [
        "fn z() {}\n",
        "fn z() {}\n\nstruct S2 { x: u8 }\n\nimpl S2 {}\n",
        "mod m {\n\tfn z() {}\n}\n",
    ] {
        let names: &[&str] = if text.starts_with("mod") { &["m"] } else { &[] };
        let once = apply_to_text(text, names, &Edit::merge(code)).expect("edit");
        assert_untouched(text, &once);
        let twice = apply_to_text(&once.text, names, &Edit::merge(code)).expect("edit");
        assert!(twice.is_noop(), "{:?}\n{}", twice.changes, once.text);
        assert!(
            twice
                .changes
                .iter()
                .all(|c| c.action == ChangeAction::Unchanged),
            "{:?}",
            twice.changes
        );
    }
}

#[test]
fn crlf_in_submitted_multiline_literals_follows_the_file() {
    let code = "fn s() -> &'static str {\r\n    \"one\r\ntwo\"\r\n}\r\n";
    for edit in [Edit::merge(code), Edit::merge(code).verbatim()] {
        let lf = apply_to_text("fn a() {}\n", &[], &edit).expect("edit");
        assert!(!lf.text.contains('\r'), "CR in an LF file: {:?}", lf.text);
        let crlf = apply_to_text("fn a() {}\r\n", &[], &edit).expect("edit");
        assert!(
            !crlf.text.contains("\r\r") && !crlf.text.replace("\r\n", "").contains('\n'),
            "{:?}",
            crlf.text
        );
    }
}

#[test]
fn crlf_file_item_with_multiline_literal_equals_its_lf_submission() {
    let text = "fn s() -> &'static str {\r\n    \"one\r\ntwo\"\r\n}\r\n";
    let out = apply_to_text(text, &[], &Edit::merge(text.replace("\r\n", "\n"))).expect("edit");
    assert_eq!(out.changes[0].action, ChangeAction::Unchanged);
    assert!(out.is_noop());
}

#[test]
fn crlf_file_item_named_by_a_multiline_literal_is_found() {
    // Keys hold literal text (item macros, cfgs): CRLF in the file must not make the
    // same item a different key, or it would be added a second time.
    let text = "thread_local! {\r\n    static S: &str = \"a\r\nb\";\r\n}\r\n";
    let out = apply_to_text(text, &[], &Edit::merge(text.replace("\r\n", "\n"))).expect("edit");
    assert_eq!(out.changes[0].action, ChangeAction::Unchanged);
    assert!(out.is_noop());
}

#[test]
fn verbatim_dedent_leaves_multiline_literals_alone() {
    let code = "    fn s() -> &'static str {\n        \"one\n    two\"\n    }\n";
    let out = run("fn a() {}\n", &[], &Edit::merge(code).verbatim());
    assert!(out.contains("\"one\n    two\""), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn remove_prefers_the_exact_match_of_a_loose_key() {
    let text = "fn f() {}\n#[cfg(test)]\nfn f() {}\n\nstruct P;\n\nimpl P {\n    fn g(&self) {}\n    #[cfg(test)]\n    fn g(&self) {}\n}\n\nimpl T for P {\n    fn g(&self) {}\n}\n";
    insta::assert_snapshot!(run(text, &[], &Edit::remove(["fn f", "P::g"])));
    // Still ambiguous: two cfgs and no plain one.
    let e = err(
        "#[cfg(unix)]\nfn f() {}\n#[cfg(not(unix))]\nfn f() {}\n",
        &[],
        &Edit::remove(["fn f"]),
    );
    assert!(e.contains("matches several items"), "{e}");
}

#[test]
fn remove_a_member_then_its_impl_and_neighbours_sharing_a_blank_line() {
    let text = "struct P;\n\nimpl P {\n    fn a(&self) {}\n\n    fn b(&self) {}\n}\n\nfn c() {}\n";
    insta::assert_snapshot!(run(text, &[], &Edit::remove(["P::a", "impl P"])));
    insta::assert_snapshot!(
        "remove_neighbours_sharing_a_blank_line",
        run(text, &[], &Edit::remove(["P::a", "P::b"]))
    );
}

#[test]
fn first_use_does_not_land_inside_a_block_comment() {
    let text = "mod m {\n    /* a block comment\n// whose second line looks like a line comment */\n    fn f() {}\n}\n";
    let out = run(text, &["m"], &Edit::merge("use std::io;"));
    assert!(
        out.contains("comment */\n    use std::io;\n\n    fn f() {}"),
        "{out}"
    );
    insta::assert_snapshot!(out);
}

#[test]
fn new_item_does_not_split_a_doc_comment_from_its_item() {
    let text = "mod a {\n} /// Doc of f.\nfn f() {}\n";
    let out = run(text, &[], &Edit::merge("mod b {}"));
    assert!(out.contains("/// Doc of f.\nfn f() {}"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn indentation_style_comes_from_the_module_and_stays_stable() {
    // Tabs are the file's majority, but the inline module indents with spaces.
    let text = "\tfn a() {}\n\tfn b() {}\nmod m {\n}\n";
    let code = "struct S { a: u8, b: u16 }";
    let once = apply_to_text(text, &["m"], &Edit::merge(code)).expect("edit");
    let twice = apply_to_text(&once.text, &["m"], &Edit::merge(code)).expect("edit");
    assert!(twice.is_noop(), "{}", twice.text);
    insta::assert_snapshot!(run(text, &["m"], &Edit::merge(code)));
    // At the top level the file's majority decides, but not the lines of the items
    // the merge writes: replacing the item holding most indented lines, which starts
    // with a stray tab, must not turn a second identical merge to tabs.
    let text = "fn z() {}\n\tmod t {\n    fn a() {}\n    fn b() {}\n}\n";
    let code =
        "mod t {\n    fn a() {}\n    fn b() {}\n    fn c() {}\n}\nstruct S { a: u8, b: u16 }";
    let once = apply_to_text(text, &[], &Edit::merge(code)).expect("edit");
    let twice = apply_to_text(&once.text, &[], &Edit::merge(code)).expect("edit");
    assert!(twice.is_noop(), "{:?}\n{}", twice.changes, once.text);
}

#[test]
fn members_and_uses_submitted_twice() {
    let text = "struct P;\nimpl P {\n    fn g(&self) -> u8 { 0 }\n}\n";
    let e = err(
        text,
        &[],
        &Edit::merge("impl P { fn g(&self) -> u8 { 1 } }\nimpl P { fn g(&self) -> u8 { 2 } }"),
    );
    assert!(
        e.contains("defines `fn P::g` twice (at lines 1 and 2)"),
        "{e}"
    );
    let e = err(
        text,
        &[],
        &Edit::merge("impl Q { fn h() {} }\nimpl Q {\n    fn h() {}\n}"),
    );
    assert!(
        e.contains("defines `fn Q::h` twice (at lines 1 and 3)"),
        "{e}"
    );
    insta::assert_snapshot!(run(text, &[], &Edit::merge("use std::fmt;\nuse std::fmt;")));
}

#[test]
fn extern_crate_with_alias_can_be_removed() {
    let text = "extern crate alloc as a;\nextern crate core;\n\nfn f() {}\n";
    insta::assert_snapshot!(run(text, &[], &Edit::remove(["extern crate alloc as a"])));
    let out = apply_to_text(text, &[], &Edit::remove(["extern crate core;"])).expect("edit");
    assert_eq!(out.text, "extern crate alloc as a;\n\nfn f() {}\n");
}

#[test]
fn what_prettyplease_cannot_print_is_kept_as_written() {
    // syn keeps these as raw tokens or odd macro bodies, on which prettyplease panics.
    let text = "fn a() {}\n";
    for code in [
        "fn f() -> u8;",
        "macro_rules! m { x }",
        "impl S { fn g(&self); }",
        "const C: u8;",
    ] {
        let out = apply_to_text(text, &[], &Edit::merge(code)).expect("edit");
        assert_untouched(text, &out);
        assert!(out.text.contains(code), "{code}: {}", out.text);
    }
    insta::assert_snapshot!(run(
        "mod x {\n    fn a() {}\n}\n",
        &["x"],
        &Edit::merge("macro_rules! m {\n  x\n}")
    ));
    // prettyplease writes a bare trait object with `dyn`: another key, so the item
    // would not be found by the same merge again.
    let code = "impl P + Q { fn f() {} }";
    let once = apply_to_text(text, &[], &Edit::merge(code)).expect("edit");
    assert!(once.text.contains(code), "{}", once.text);
    let twice = apply_to_text(&once.text, &[], &Edit::merge(code)).expect("edit");
    assert!(twice.is_noop(), "{:?}", twice.changes);
}

#[test]
fn replace_keeps_the_shebang_line_as_it_is() {
    // The `\r` is the shebang's own byte here, not half of a CRLF.
    let out = apply_to_text("#!z\r", &[], &Edit::replace("fn a() {}")).expect("edit");
    assert_eq!(out.text, "#!z\r\nfn a() {}\n");
    // A CRLF shebang line in an LF file keeps its CRLF.
    let out = apply_to_text(
        "#!z\r\nfn b() {}\nfn c() {}\n",
        &[],
        &Edit::replace("fn a() {}"),
    )
    .expect("edit");
    assert_eq!(out.text, "#!z\r\nfn a() {}\n");
    let out =
        apply_to_text("#!z\r\nfn b() {}\r\n", &[], &Edit::replace("fn a() {}")).expect("edit");
    assert_eq!(out.text, "#!z\r\nfn a() {}\r\n");
}

#[test]
fn replace_with_code_that_starts_with_a_bom_keeps_one_bom_at_the_file_start() {
    // Code read from a file saved with a BOM: the BOM is not part of the items.
    let code = "\u{feff}pub fn f() {}\npub fn g() {}\n";
    let out = apply_to_text(
        "#!/usr/bin/env x\npub fn f() {}\n",
        &[],
        &Edit::replace(code),
    )
    .expect("edit");
    assert_eq!(out.text, "#!/usr/bin/env x\npub fn f() {}\npub fn g() {}\n");
    let out = apply_to_text("\u{feff}fn a() {}\n", &[], &Edit::replace(code)).expect("edit");
    assert_eq!(out.text, "\u{feff}pub fn f() {}\npub fn g() {}\n");
}

/// Apply with a build configuration of these `rustc --print cfg` lines.
fn apply_cfg(text: &str, edit: &Edit, cfg: &str) -> Result<EditOutcome, EditError> {
    let file = SourceFile::parse(Origin::File("<input>".into()), text.to_owned()).expect("parses");
    let set = Rc::new(CfgSet::from_rustc(cfg));
    let lookup = || Ok(Rc::clone(&set));
    let out = apply_within(&file, Within::Chain(&[]), edit, Some(&lookup))?;
    assert_untouched(text, &out);
    Ok(out)
}

#[test]
fn cfg_copy_the_build_compiles_is_replaced_keeping_its_cfg() {
    let edit = Edit::merge("pub fn platform() -> &'static str { \"edited\" }");
    let out = apply_cfg(AGENT, &edit, "unix\n").expect("edit");
    assert_eq!(out.changes[0].key, "#[cfg(unix)] fn platform");
    assert_eq!(out.changes[0].action, ChangeAction::Replaced);
    assert!(
        out.text.contains(
            "#[cfg(unix)]\npub fn platform() -> &'static str {\n    \"edited\"\n}\n#[cfg(not(unix))]"
        ),
        "{}",
        out.text
    );
    assert!(
        out.notes[0].contains("replaced `#[cfg(unix)] fn platform` (line"),
        "{:?}",
        out.notes
    );
    // Elsewhere, the other copy.
    let out = apply_cfg(AGENT, &edit, "windows\n").expect("edit");
    assert_eq!(out.changes[0].key, "#[cfg(not(unix))] fn platform");
    // Removing by the loose key: the compiled copy, said so.
    let out = apply_cfg(AGENT, &Edit::remove(["fn platform"]), "unix\n").expect("edit");
    assert_eq!(out.changes[0].key, "#[cfg(unix)] fn platform");
    assert!(
        out.notes[0].contains("the copy the build compiles"),
        "{:?}",
        out.notes
    );
    // Copies of which the build compiles none: refused, with the list.
    let text = "#[cfg(feature = \"a\")]\nfn f() {}\n#[cfg(feature = \"b\")]\nfn f() {}\n";
    let e = apply_cfg(text, &Edit::merge("fn f() { let _ = 1; }"), "unix\n")
        .expect_err("refused")
        .to_string();
    assert!(e.contains("the build compiles none of them"), "{e}");
    assert!(e.contains("`#[cfg(feature = \"b\")] fn f` (line 3)"), "{e}");
    // A given option picks it.
    let set = CfgSet::from_rustc("unix\n")
        .with_given(&[CfgOption::parse("feature = \"b\"").expect("cfg")]);
    let file = SourceFile::parse(Origin::File("<input>".into()), text.to_owned()).expect("parses");
    let lookup = || Ok(Rc::new(set.clone()));
    let out = apply_within(
        &file,
        Within::Chain(&[]),
        &Edit::merge("fn f() { let _ = 1; }"),
        Some(&lookup),
    )
    .expect("edit");
    assert_eq!(out.changes[0].key, "#[cfg(feature = \"b\")] fn f");
}

#[test]
fn verbatim_compares_bytes_and_formatted_says_what_it_ignored() {
    let text = "fn f() {\n    let x = 1;\n}\n";
    let commented = "fn f() {\n    // Why x is one.\n    let x = 1;\n}";
    let out = apply_to_text(text, &[], &Edit::merge(commented).verbatim()).expect("edit");
    assert_eq!(out.changes[0].action, ChangeAction::Replaced);
    assert_eq!(out.text, format!("{commented}\n"));
    // The same bytes: unchanged, in both modes, with nothing to note.
    for edit in [Edit::merge(text).verbatim(), Edit::merge(text)] {
        let out = apply_to_text(text, &[], &edit).expect("edit");
        assert_eq!(out.changes[0].action, ChangeAction::Unchanged);
        assert!(out.is_noop() && out.notes.is_empty(), "{:?}", out.notes);
    }
    // A whitespace-only change is a change too.
    let spaced = "fn f() {\n    let x  = 1;\n}";
    let out = apply_to_text(text, &[], &Edit::merge(spaced).verbatim()).expect("edit");
    assert_eq!(out.changes[0].action, ChangeAction::Replaced);
    // But not the indentation of lines alone: heph indents items to their place (and
    // where a comment before an item on its line hides it, can only guess it).
    let shallow = "fn f() {\n  let x = 1;\n}";
    let out = apply_to_text(text, &[], &Edit::merge(shallow).verbatim()).expect("edit");
    assert_eq!(out.changes[0].action, ChangeAction::Unchanged);
    assert!(out.is_noop());
    // Formatted: the same tokens are unchanged, and the note says why.
    let out = apply_to_text(text, &[], &Edit::merge(commented)).expect("edit");
    assert_eq!(out.changes[0].action, ChangeAction::Unchanged);
    assert!(out.notes[0].contains("pass --verbatim"), "{:?}", out.notes);
    // Members of impls likewise.
    let text = "struct S;\nimpl S {\n    fn g(&self) {}\n}\n";
    let code = "impl S {\n    fn g(&self) {\n        // later\n    }\n}";
    let out = apply_to_text(text, &[], &Edit::merge(code).verbatim()).expect("edit");
    assert_eq!(out.changes[0].action, ChangeAction::Replaced);
    let out = apply_to_text(text, &[], &Edit::merge(code)).expect("edit");
    assert_eq!(out.changes[0].action, ChangeAction::Unchanged);
    assert_eq!(out.notes.len(), 1, "{:?}", out.notes);
}

#[test]
fn raw_span_input_is_reindented_once() {
    let text = "mod m {\n    fn f() {\n        let x = 1;\n        x;\n    }\n}\n";
    // The byte span of `f`, with one more statement.
    let code = "fn f() {\n        let x = 1;\n        x;\n        let _y = 2;\n    }";
    let out = apply_to_text(text, &["m"], &Edit::merge(code).verbatim()).expect("edit");
    assert_eq!(
        out.text,
        "mod m {\n    fn f() {\n        let x = 1;\n        x;\n        let _y = 2;\n    }\n}\n"
    );
    // The unchanged span is unchanged.
    let span = "fn f() {\n        let x = 1;\n        x;\n    }";
    let out = apply_to_text(text, &["m"], &Edit::merge(span).verbatim()).expect("edit");
    assert!(out.is_noop(), "{}", out.text);
}

#[test]
fn impl_headers_merge() {
    let text = "struct W<T>(T);\n\n/// Doc.\n#[allow(dead_code)]\nimpl<T: Clone> W<T> {\n    fn get(&self) -> T {\n        self.0.clone()\n    }\n}\n";
    // An attribute: it replaces the existing ones, the doc comment stays.
    insta::assert_snapshot!(run(
        text,
        &[],
        &Edit::merge("#[allow(unused)]\nimpl<T: Clone> W<T> {}")
    ));
    // A where clause instead of the bound; no attributes given: they are kept.
    insta::assert_snapshot!(run(
        text,
        &[],
        &Edit::merge(
            "impl<T> W<T> where T: Clone + Default { fn get(&self) -> T { T::default() } }"
        )
    ));
    // Verbatim: the submitted header as written.
    let out = run(
        text,
        &[],
        &Edit::merge("impl<T>   W<T>\nwhere\n    T: Clone,\n{\n}").verbatim(),
    );
    assert!(
        out.contains("#[allow(dead_code)]\nimpl<T>   W<T>\nwhere\n    T: Clone,\n{\n    fn get"),
        "{out}"
    );
    // The same header: nothing to change, with or without its attributes and docs.
    for code in [
        "impl<T: Clone> W<T> {}",
        "#[allow(dead_code)]\nimpl<T: Clone> W<T> {}",
        "/// Doc.\n#[allow(dead_code)]\nimpl<T: Clone> W<T> {}",
    ] {
        let same = apply_to_text(text, &[], &Edit::merge(code)).expect("edit");
        assert!(same.is_noop(), "{code}: {}", same.text);
        assert_eq!(same.changes[0].action, ChangeAction::Unchanged, "{code}");
    }
    // New docs replace the old ones.
    let out = apply_to_text(
        text,
        &[],
        &Edit::merge("/// New doc.\n#[allow(dead_code)]\nimpl<T: Clone> W<T> {}"),
    )
    .expect("edit");
    assert!(
        out.text
            .contains("\n/// New doc.\n#[allow(dead_code)]\nimpl<T: Clone> W<T> {")
            && !out.text.contains("/// Doc."),
        "{}",
        out.text
    );
    // Two blocks, a header that differs from both: which one is meant is unclear.
    let two = "struct S;\nimpl S {\n    fn a(&self) {}\n}\nimpl S {\n    fn b(&self) {}\n}\n";
    let e = err(two, &[], &Edit::merge("#[inline]\nimpl S {}"));
    assert!(e.contains("its header differs from every block"), "{e}");
    assert!(
        e.contains("`impl S#1` (line 2), `impl S#2` (line 5)"),
        "{e}"
    );
}

#[test]
fn identical_items_are_numbered_and_addressable() {
    let text = "mod a {\n    use super::*;\n    use super::*;\n\n    fn f() {}\n}\n";
    let e = err(text, &["a"], &Edit::remove(["use super::*"]));
    assert!(
        e.contains("`use super::*#1` (line 2), `use super::*#2` (line 3)"),
        "{e}"
    );
    let out = apply_to_text(text, &["a"], &Edit::remove(["use super::*#2"])).expect("edit");
    assert_eq!(out.changes[0].key, "use super::*#2");
    assert_eq!(out.text, "mod a {\n    use super::*;\n\n    fn f() {}\n}\n");
    let e = err(text, &["a"], &Edit::remove(["use super::*#3"]));
    assert!(
        e.contains("it has: use super::*#1, use super::*#2, fn f"),
        "{e}"
    );
    let e = err(text, &["a"], &Edit::remove(["use super::*#0"]));
    assert!(e.contains("counts from 1"), "{e}");
    // `#1` of a unique key is that item.
    let out = apply_to_text(text, &["a"], &Edit::remove(["fn f#1"])).expect("edit");
    assert_eq!(out.changes[0].key, "fn f");
    // Two inherent impls of one type: each addressable.
    let two = "struct S;\nimpl S {\n    fn a(&self) {}\n}\nimpl S {\n    fn b(&self) {}\n}\n";
    let out = apply_to_text(two, &[], &Edit::remove(["impl S#2"])).expect("edit");
    assert_eq!(out.text, "struct S;\nimpl S {\n    fn a(&self) {}\n}\n");
}
