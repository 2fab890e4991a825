//! Property tests of the edit engine: random modules (every item kind, comments and
//! doc comments everywhere, odd layout, CRLF, BOM, shebang, inner attributes, nested
//! inline modules, `#[cfg]` twins) under random merge, remove and replace edits. The
//! invariant: every byte outside the spans of the items an edit touches is unchanged,
//! and the result parses.
//!
//! The generator renders each module itself and records every item's span, so the
//! checks do not depend on the engine's own idea of where items are.

use std::collections::BTreeSet;
use std::ops::Range;

use hephaestus_core::edit::{ChangeAction, Edit, EditError, EditOutcome, apply_to_text};
use hephaestus_core::item::{ItemKey, ItemKind, impl_name};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use quote::ToTokens;

// ------------------------------------------------------------------------ the model

/// Item kinds the generator knows (impl members use `Fn`, `Const` and `Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum K {
    Fn,
    Struct,
    Enum,
    Union,
    Trait,
    Type,
    Const,
    Static,
    Macro,
    Use,
    Impl,
    Mod,
    ModDecl,
    ExternCrate,
    /// An item-position macro call, named by its text.
    ItemMacro,
}

const LINE: &[&str] = &[
    "// a plain comment",
    "// héllo wörld ✓ — ünïcode",
    "//// four slashes are not a doc comment",
    "// fn fake() {} looks like code }",
    "//",
];

const BLOCK: &[&str] = &[
    "/* block */",
    "/* multi\n   line é */",
    "/* nested /* inner */ outer */",
    "/**/",
    "/* } unbalanced { */",
    "/* a block comment\n// whose second line looks like a line comment */",
];

/// Leading doc comments of an item; a `//` line is a plain comment inside the span.
const DOCS: &[&[&str]] = &[
    &[],
    &["/// Doc line."],
    &["/// Doc one.", "/// Doc two é."],
    &["/** Block doc. */"],
    &[
        "/// Doc.",
        "// a plain comment between the doc and the item",
    ],
    &["#[doc = \"attribute doc\"]"],
];

const INDENTS: &[&str] = &["", "  ", "    ", "\t", " "];

#[derive(Debug, Clone)]
enum Comment {
    /// A `//` comment on its own line.
    Line(usize),
    /// A block comment on its own line(s).
    Block(usize),
    /// A block comment before the item, on the item's line.
    Inline(usize),
}

/// What comes before an item: blank lines, then comments.
#[derive(Debug, Clone, Default)]
struct Trivia {
    blank: u8,
    /// Blank lines hold spaces.
    spaces: bool,
    comments: Vec<Comment>,
}

/// Layout and decoration shared by every generated item.
#[derive(Debug, Clone)]
struct Common {
    /// Picks the item's variant: its text, an impl's form, a braced item's layout.
    style: u8,
    docs: usize,
    attr: bool,
    vis: bool,
    /// 0: none; 1: `#[cfg(unix)]` + `#[cfg(not(unix))]`; 2: plain + `#[cfg(test)]`;
    /// 3 (impls): an inherent and a trait impl of one type with the same members.
    twin: u8,
    before: Trivia,
    indent: u8,
    same_line: bool,
    trailing: Option<usize>,
    /// Braced items: a `//` comment after the `{`, and trivia before the `}`.
    open_comment: bool,
    tail: Trivia,
}

/// An item as generated, before it is named.
#[derive(Debug, Clone)]
struct Spec {
    kind: K,
    c: Common,
    children: Vec<Spec>,
}

/// An item with its name, ready to render.
#[derive(Debug, Clone)]
struct Plan {
    kind: K,
    member: bool,
    name: String,
    cfg: Option<&'static str>,
    version: u32,
    c: Common,
    children: Vec<Plan>,
}

#[derive(Debug)]
struct Names(u32);

impl Names {
    fn fresh(&mut self) -> u32 {
        self.0 += 1;
        self.0
    }
}

fn name_of(kind: K, member: bool, style: u8, n: u32) -> String {
    match kind {
        K::Fn if member => format!("g{n}"),
        K::Const if member => format!("K{n}"),
        K::Type if member => format!("Ty{n}"),
        K::Fn => format!("f{n}"),
        K::Struct => format!("S{n}"),
        K::Enum => format!("E{n}"),
        K::Union => format!("U{n}"),
        K::Trait => format!("T{n}"),
        K::Type => format!("A{n}"),
        K::Const => format!("C{n}"),
        K::Static => format!("X{n}"),
        K::Macro => format!("m{n}"),
        K::Mod => format!("md{n}"),
        K::ModDecl => format!("d{n}"),
        K::ExternCrate => format!("alloc as a{n}"),
        K::ItemMacro => format!("Z{n}"),
        K::Use => match style % 3 {
            0 => format!("std::collections::HashMap as H{n}"),
            1 => format!("crate::md{n}::*"),
            _ => format!("std::{{fmt as F{n}, io as I{n}}}"),
        },
        K::Impl if style % 4 < 2 => format!("P{n}"),
        K::Impl => format!("W{n}"),
    }
}

fn resolve(specs: &[Spec], member: bool, names: &mut Names) -> Vec<Plan> {
    let mut out = Vec::new();
    for s in specs {
        let n = names.fresh();
        let mut plan = Plan {
            kind: s.kind,
            member,
            name: name_of(s.kind, member, s.c.style, n),
            cfg: None,
            version: 0,
            c: s.c.clone(),
            children: resolve(&s.children, s.kind == K::Impl, names),
        };
        let twinnable = !matches!(s.kind, K::Use | K::Mod | K::ModDecl);
        if s.kind == K::Impl && s.c.twin == 3 {
            // `impl P` and `impl fmt::Display for P` with the same member names.
            plan.c.style -= plan.c.style % 4;
            plan.name = name_of(K::Impl, false, 0, n);
            let mut twin = plan.clone();
            twin.c.style += 1;
            twin.c.before = Trivia::default();
            twin.c.same_line = false;
            out.push(plan);
            out.push(twin);
        } else if twinnable && (1..=2).contains(&s.c.twin) {
            let (first, second) = if s.c.twin == 1 {
                (Some("cfg(unix)"), "cfg(not(unix))")
            } else {
                (None, "cfg(test)")
            };
            plan.cfg = first;
            let mut twin = plan.clone();
            twin.cfg = Some(second);
            twin.c.before = Trivia::default();
            twin.c.same_line = false;
            twin.c.docs = 0;
            twin.children = resolve(&s.children, s.kind == K::Impl, names);
            out.push(plan);
            out.push(twin);
        } else {
            out.push(plan);
        }
    }
    out
}

// ------------------------------------------------------------------------ rendering

/// Writes text with the chosen line ending and records comment ranges.
struct W {
    out: String,
    crlf: bool,
    comments: Vec<Range<usize>>,
}

impl W {
    fn new(crlf: bool) -> W {
        W {
            out: String::new(),
            crlf,
            comments: Vec::new(),
        }
    }

    fn push(&mut self, s: &str) {
        if self.crlf {
            self.out.push_str(&s.replace('\n', "\r\n"));
        } else {
            self.out.push_str(s);
        }
    }

    fn pos(&self) -> usize {
        self.out.len()
    }

    fn comment(&mut self, s: &str) {
        let start = self.pos();
        self.push(s);
        self.comments.push(start..self.pos());
    }
}

/// A rendered item and where it is.
#[derive(Debug, Clone)]
struct RItem {
    plan: Plan,
    /// First doc comment or attribute to last token.
    span: Range<usize>,
    /// Where the item continues after its leading doc comments.
    body_start: usize,
    /// Between the braces, for impls and inline modules.
    braces: Option<Range<usize>>,
    children: Vec<RItem>,
}

fn attr_of(p: &Plan) -> &'static str {
    match p.kind {
        K::Fn => "#[inline]",
        K::Struct | K::Enum | K::Union => "#[derive(Clone, Copy)]",
        K::Macro => "#[macro_export]",
        K::Use => "#[allow(unused_imports)]",
        _ => "#[allow(dead_code)]",
    }
}

fn header_of(p: &Plan) -> String {
    let n = &p.name;
    match p.kind {
        K::Mod => format!("mod {n}"),
        _ => match p.c.style % 4 {
            0 => format!("impl {n}"),
            1 => format!("impl fmt::Display for {n}"),
            2 => format!("impl<T: Clone> {n}<T>"),
            _ => format!("impl<'a, T> From<&'a T> for {n}<T>\nwhere\n    T: Copy,"),
        },
    }
}

/// The text of a leaf item, lines separated by `\n`, inner lines indented by four.
fn core_text(p: &Plan) -> String {
    let n = &p.name;
    let v = p.version;
    let style = p.c.style;
    match p.kind {
        K::Fn if p.member => match style % 3 {
            0 => format!("fn {n}(&self) -> u32 {{ {v} }}"),
            1 => format!("fn {n}(&self) -> u32 {{\n    // the version\n    {v}\n}}"),
            _ => format!(
                "fn {n}<U>(&self, u: U) -> U\nwhere\n    U: Copy,\n{{\n    let _ = {v};\n    u\n}}"
            ),
        },
        K::Const if p.member => format!("const {n}: u32 = {v};"),
        K::Type if p.member => format!("type {n} = [u8; {v}];"),
        K::Fn => match style % 6 {
            0 => format!("fn {n}() -> u32 {{ {v} }}"),
            5 => format!("const unsafe extern \"C\" fn {n}() -> u32 {{ {v} }}"),
            1 => format!("fn {n}(x: u32) -> u32 {{\n    // adds the version\n    x + {v}\n}}"),
            2 => format!("fn  {n} ( )  ->  u32\n{{\n        {v}\n}}"),
            3 => format!("fn {n}() -> &'static str {{\n    \"version {v}\nsecond line é\"\n}}"),
            _ => format!(
                "fn {n}(x: u32) -> u32 {{\n    if x > {v} {{ /* big */ x }} else {{\n        {{ {v} }}\n    }}\n}}"
            ),
        },
        K::Struct => match style % 3 {
            0 => format!("struct {n} {{ a: [u8; {v}], b: u16 }}"),
            1 => format!("struct {n}([u8; {v}]);"),
            _ => format!(
                "struct {n} {{\n    /// Field a.\n    a: [u8; {v}], // trailing\n    b: u16,\n}}"
            ),
        },
        K::Enum => match style % 2 {
            0 => format!("enum {n} {{ A = {v}, B }}"),
            _ => format!("enum {n} {{\n    /// Variant A.\n    A = {v},\n    B,\n}}"),
        },
        K::Union => format!("union {n} {{ a: [u8; {v}], b: u16 }}"),
        K::Trait => match style % 2 {
            0 => format!("trait {n} {{ const N: u32 = {v}; fn t(&self) -> u32; }}"),
            _ => format!(
                "trait {n}: Clone {{\n    /// Method.\n    fn t(&self) -> u32 {{\n        {v}\n    }}\n}}"
            ),
        },
        K::Type => format!("type {n} = [u8; {v}];"),
        K::Const => match style % 2 {
            0 => format!("const {n}: u32 = {v};"),
            _ => format!("const {n}: &str =\n    \"c{v}\";"),
        },
        K::Static => format!("static {n}: u32 = {v};"),
        K::Macro => match style % 3 {
            0 => format!("macro_rules! {n} {{ () => {{ {v} }}; }}"),
            1 => format!("macro_rules! {n} {{\n    ($e:expr) => {{\n        $e + {v}\n    }};\n}}"),
            _ => format!("macro_rules! {n} ( () => {{ {v} }} );"),
        },
        K::Use => format!("use {n};"),
        K::ModDecl => format!("mod {n};"),
        K::ExternCrate => format!("extern crate {n};"),
        K::ItemMacro => format!("thread_local! {{\n    static {n}: u32 = {v};\n}}"),
        K::Impl | K::Mod => unreachable!("braced items are rendered by render_item"),
    }
}

/// Render items one after another. The writer is at the start of a line, or right
/// after `{ ` when `inline_first`; it is left after the last item.
fn render_items(w: &mut W, plans: &[Plan], base: &str, inline_first: bool) -> Vec<RItem> {
    let mut out = Vec::new();
    let mut after_line_comment = false;
    for (i, p) in plans.iter().enumerate() {
        let indent = format!("{base}{}", INDENTS[p.c.indent as usize % INDENTS.len()]);
        if i == 0 && inline_first {
        } else if i > 0 && p.c.same_line && !after_line_comment {
            w.push(" ");
        } else {
            if i > 0 {
                w.push("\n");
            }
            render_trivia(w, &p.c.before, &indent, false);
            w.push(&indent);
            for c in &p.c.before.comments {
                if let Comment::Inline(k) = *c {
                    w.comment(BLOCK[k % BLOCK.len()]);
                    w.push(" ");
                }
            }
        }
        out.push(render_item(w, p, &indent));
        if let Some(t) = p.c.trailing {
            w.push(" ");
            w.comment(LINE[t % LINE.len()]);
        }
        after_line_comment = p.c.trailing.is_some();
    }
    out
}

/// Blank lines and own-line comments (`Inline` block comments go on the item's line,
/// unless `all`).
fn render_trivia(w: &mut W, t: &Trivia, indent: &str, all: bool) {
    for _ in 0..t.blank {
        if t.spaces {
            w.push(indent);
            w.push("  ");
        }
        w.push("\n");
    }
    for c in &t.comments {
        match *c {
            Comment::Line(k) => {
                w.push(indent);
                w.comment(LINE[k % LINE.len()]);
                w.push("\n");
            }
            Comment::Inline(_) if !all => {}
            Comment::Block(k) | Comment::Inline(k) => {
                w.push(indent);
                w.comment(BLOCK[k % BLOCK.len()]);
                w.push("\n");
            }
        }
    }
}

fn render_item(w: &mut W, p: &Plan, indent: &str) -> RItem {
    let nl = format!("\n{indent}");
    let start = w.pos();
    for line in DOCS[p.c.docs % DOCS.len()] {
        if line.starts_with("// ") {
            w.comment(line);
        } else {
            w.push(line);
        }
        w.push(&nl);
    }
    let body_start = w.pos();
    if let Some(cfg) = p.cfg {
        w.push(&format!("#[{cfg}]"));
        w.push(&nl);
    }
    if p.c.attr {
        w.push(attr_of(p));
        w.push(&nl);
    }
    if p.c.vis && !matches!(p.kind, K::Macro | K::Impl | K::ItemMacro) {
        w.push(if p.c.style.is_multiple_of(2) {
            "pub "
        } else {
            "pub(crate) "
        });
    }
    let mut braces = None;
    let mut children = Vec::new();
    match p.kind {
        K::Impl | K::Mod => {
            w.push(&header_of(p).replace('\n', &nl));
            w.push(" {");
            let open = w.pos();
            let inner = format!("{indent}    ");
            let layout = (p.c.style / 4) % 3;
            let attrs = if p.kind == K::Mod { p.c.style % 4 } else { 0 };
            let tail = !p.c.tail.comments.is_empty() || p.c.tail.blank > 0;
            if layout == 0 || attrs != 0 || p.c.open_comment || tail {
                if p.c.open_comment {
                    w.push(" ");
                    w.comment(LINE[p.c.style as usize % LINE.len()]);
                }
                if attrs & 1 != 0 {
                    w.push(&format!("\n{inner}//! Inner doc."));
                }
                if attrs & 2 != 0 {
                    w.push(&format!("\n{inner}#![allow(unused)]"));
                }
                if !p.children.is_empty() {
                    w.push("\n");
                    children = render_items(w, &p.children, &inner, false);
                }
                if tail {
                    w.push("\n");
                    render_trivia(w, &p.c.tail, &inner, true);
                    w.out.truncate(w.out.trim_end_matches(['\r', '\n']).len());
                }
                w.push(&nl);
            } else if p.children.is_empty() {
                if layout == 2 {
                    w.push(" ");
                }
            } else {
                w.push(" ");
                children = render_items(w, &p.children, &inner, true);
                let last_trailing = p.children.last().is_some_and(|c| c.c.trailing.is_some());
                if layout == 2 && !last_trailing {
                    w.push(" ");
                } else {
                    w.push(&nl);
                }
            }
            let close = w.pos();
            w.push("}");
            braces = Some(open..close);
        }
        _ => w.push(&core_text(p).replace('\n', &nl)),
    }
    RItem {
        plan: p.clone(),
        span: start..w.pos(),
        body_start,
        braces,
        children,
    }
}

#[derive(Debug, Clone)]
struct ModSpec {
    bom: bool,
    shebang: bool,
    inner: u8,
    crlf: bool,
    final_newline: bool,
    items: Vec<Spec>,
    /// Comments and blank lines after the last item.
    tail: Trivia,
}

/// A rendered module file.
#[derive(Debug)]
struct Module {
    text: String,
    /// BOM and shebang line, without its line break (as rustc skips them).
    prefix: usize,
    items: Vec<RItem>,
    comments: Vec<Range<usize>>,
    crlf: bool,
    names: Names,
}

fn render_module(m: &ModSpec) -> Module {
    let mut names = Names(0);
    let plans = resolve(&m.items, false, &mut names);
    let mut w = W::new(m.crlf);
    if m.bom {
        w.out.push('\u{feff}');
    }
    let mut prefix = w.pos();
    if m.shebang {
        w.push("#!/usr/bin/env run-cargo-script\n");
        prefix = w.pos() - 1;
    }
    match m.inner % 4 {
        1 => w.push("//! Module docs.\n"),
        2 => w.push("#![allow(dead_code)]\n"),
        3 => {
            w.push("#![allow(dead_code)]\n//! Module docs é.\n");
            w.comment("// a comment after the inner attributes");
            w.push("\n");
        }
        _ => {}
    }
    if !m.inner.is_multiple_of(4) && m.items.first().is_some_and(|i| i.c.before.blank == 0) {
        w.push("\n");
    }
    let items = render_items(&mut w, &plans, "", false);
    if !m.tail.comments.is_empty() {
        w.push("\n");
        render_trivia(&mut w, &m.tail, "", true);
        w.out.truncate(w.out.trim_end_matches(['\r', '\n']).len());
    }
    if m.final_newline && !w.out.is_empty() {
        w.push("\n");
    }
    Module {
        text: w.out,
        prefix,
        items,
        comments: w.comments,
        crlf: m.crlf,
        names,
    }
}

// ------------------------------------------------------------------------ strategies

fn trivia() -> impl Strategy<Value = Trivia> {
    let comment = prop_oneof![
        (0..LINE.len()).prop_map(Comment::Line),
        (0..BLOCK.len()).prop_map(Comment::Block),
        (0..BLOCK.len()).prop_map(Comment::Inline),
    ];
    (
        prop_oneof![2 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)],
        prop::bool::weighted(0.15),
        prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(comment, 1..3)],
    )
        .prop_map(|(blank, spaces, comments)| Trivia {
            blank,
            spaces,
            comments,
        })
}

fn common() -> impl Strategy<Value = Common> {
    (
        0u8..12,
        prop_oneof![3 => Just(0usize), 2 => 1..DOCS.len()],
        prop::bool::weighted(0.2),
        any::<bool>(),
        prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)],
        trivia(),
        prop_oneof![6 => Just(0u8), 1 => 1u8..5],
        prop::bool::weighted(0.1),
        prop_oneof![6 => Just(None), 1 => (0..LINE.len()).prop_map(Some)],
        (
            prop::bool::weighted(0.15),
            prop_oneof![3 => Just(Trivia::default()), 1 => trivia()],
        ),
    )
        .prop_map(
            |(
                style,
                docs,
                attr,
                vis,
                twin,
                before,
                indent,
                same_line,
                trailing,
                (open_comment, tail),
            )| Common {
                style,
                docs,
                attr,
                vis,
                twin,
                before,
                indent,
                same_line,
                trailing,
                open_comment,
                tail,
            },
        )
}

fn member() -> impl Strategy<Value = Spec> {
    (
        prop_oneof![3 => Just(K::Fn), 1 => Just(K::Const), 1 => Just(K::Type)],
        common(),
    )
        .prop_map(|(kind, c)| Spec {
            kind,
            c,
            children: Vec::new(),
        })
}

fn item() -> impl Strategy<Value = Spec> {
    let kind = prop_oneof![
        3 => Just(K::Fn),
        1 => Just(K::Struct),
        1 => Just(K::Enum),
        1 => Just(K::Union),
        1 => Just(K::Trait),
        1 => Just(K::Type),
        1 => Just(K::Const),
        1 => Just(K::Static),
        1 => Just(K::Macro),
        2 => Just(K::Use),
        1 => Just(K::ModDecl),
        1 => Just(K::ExternCrate),
        1 => Just(K::ItemMacro),
    ];
    let leaf = prop_oneof![
        6 => (kind, common()).prop_map(|(kind, c)| Spec { kind, c, children: Vec::new() }),
        2 => (common(), prop::collection::vec(member(), 0..4))
            .prop_map(|(c, children)| Spec { kind: K::Impl, c, children }),
    ];
    leaf.prop_recursive(2, 24, 5, |inner| {
        (common(), prop::collection::vec(inner, 0..5)).prop_map(|(c, children)| Spec {
            kind: K::Mod,
            c,
            children,
        })
    })
}

fn module() -> impl Strategy<Value = ModSpec> {
    (
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
        0u8..4,
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.8),
        prop::collection::vec(item(), 0..8),
        prop_oneof![3 => Just(Trivia::default()), 1 => trivia()],
    )
        .prop_map(
            |(bom, shebang, inner, crlf, final_newline, items, tail)| ModSpec {
                bom,
                shebang,
                inner,
                crlf,
                final_newline,
                items,
                tail,
            },
        )
}

/// An existing impl to merge into: (selector, member picks, new members).
type ImplPick = (usize, Vec<(usize, u8)>, Vec<Spec>);

/// What to submit; selectors are resolved against the generated module.
#[derive(Debug, Clone)]
struct EditSpec {
    /// Which container: 0 the file, else an inline module (modulo their number).
    target: usize,
    verbatim: bool,
    crlf_code: bool,
    code_indent: u8,
    /// Existing items to resubmit: (selector, 0 same, 1 new version, 2 new version
    /// without docs, 3 new version with other docs).
    picks: Vec<(usize, u8)>,
    new_items: Vec<Spec>,
    /// Existing impls to merge into: (selector, member picks, new members).
    impl_picks: Vec<ImplPick>,
    /// `use` items: (selector of an existing one, or a new one when true).
    uses: Vec<(usize, bool)>,
    /// Items and members to remove: (selector, key form).
    removes: Vec<(usize, u8)>,
    replacement: Vec<Spec>,
    shuffle: u64,
}

fn edit_spec() -> impl Strategy<Value = EditSpec> {
    let pick = (any::<usize>(), 0u8..4);
    (
        (
            any::<usize>(),
            any::<bool>(),
            prop::bool::weighted(0.3),
            0u8..3,
            any::<u64>(),
        ),
        (
            prop::collection::vec(pick.clone(), 0..4),
            prop::collection::vec(item(), 0..3),
            prop::collection::vec(
                (
                    any::<usize>(),
                    prop::collection::vec(pick, 0..3),
                    prop::collection::vec(member(), 0..3),
                ),
                0..3,
            ),
            prop::collection::vec((any::<usize>(), any::<bool>()), 0..3),
            prop::collection::vec((any::<usize>(), 0u8..4), 1..4),
            prop::collection::vec(item(), 0..4),
        ),
    )
        .prop_map(
            |(
                (target, verbatim, crlf_code, code_indent, shuffle),
                (picks, new_items, impl_picks, uses, removes, replacement),
            )| EditSpec {
                target,
                verbatim,
                crlf_code,
                code_indent,
                picks,
                new_items,
                impl_picks,
                uses,
                removes,
                replacement,
                shuffle,
            },
        )
}

// ------------------------------------------------------------------------ helpers

type Check = Result<(), TestCaseError>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(TestCaseError::fail(format!($($fmt)+)));
        }
    };
}

fn show(text: &str) -> String {
    text.replace('\r', "␍").replace('\u{feff}', "<BOM>")
}

/// The inline modules of the tree, as name paths.
fn containers(items: &[RItem], path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    for it in items {
        if it.plan.kind == K::Mod {
            path.push(it.plan.name.clone());
            out.push(path.clone());
            containers(&it.children, path, out);
            path.pop();
        }
    }
}

/// The items of the container at `path`, and its body range.
fn container_of<'m>(m: &'m Module, path: &[String]) -> (&'m [RItem], Range<usize>) {
    let mut items: &[RItem] = &m.items;
    let mut body = m.prefix..m.text.len();
    for name in path {
        let it = items
            .iter()
            .find(|i| i.plan.kind == K::Mod && &i.plan.name == name)
            .expect("container exists");
        body = it.braces.clone().expect("braced");
        items = &it.children;
    }
    (items, body)
}

fn parse(text: &str) -> Result<syn::File, TestCaseError> {
    syn::parse_file(text)
        .map_err(|e| TestCaseError::fail(format!("text does not parse: {e}\n{}", show(text))))
}

fn syn_container<'f>(
    file: &'f syn::File,
    path: &[String],
) -> Result<&'f [syn::Item], TestCaseError> {
    let mut items: &[syn::Item] = &file.items;
    for name in path {
        items = items
            .iter()
            .find_map(|i| match i {
                syn::Item::Mod(m) if m.ident == name && m.content.is_some() => {
                    m.content.as_ref().map(|(_, v)| v.as_slice())
                }
                _ => None,
            })
            .ok_or_else(|| TestCaseError::fail(format!("inline module {name} is gone")))?;
    }
    Ok(items)
}

fn span_of(node: &impl syn::spanned::Spanned, base: usize) -> Range<usize> {
    let r = node.span().byte_range();
    r.start + base..r.end + base
}

/// The generator's spans agree with syn's (a check of the test itself).
fn check_model(m: &Module) -> Check {
    let file: syn::File = syn::parse_str(&m.text[m.prefix..]).map_err(|e| {
        TestCaseError::fail(format!(
            "generated module does not parse: {e}\n{}",
            show(&m.text)
        ))
    })?;
    fn walk(items: &[syn::Item], model: &[RItem], base: usize, text: &str) -> Check {
        ensure!(
            items.len() == model.len(),
            "item count {} != {}\n{}",
            items.len(),
            model.len(),
            show(text)
        );
        for (it, r) in items.iter().zip(model) {
            ensure!(
                span_of(it, base) == r.span,
                "span of {:?}: syn {:?} model {:?}\n{}",
                r.plan.name,
                span_of(it, base),
                r.span,
                show(text)
            );
            match it {
                syn::Item::Impl(imp) => {
                    ensure!(
                        imp.items.len() == r.children.len(),
                        "member count of {}",
                        r.plan.name
                    );
                    for (mi, mr) in imp.items.iter().zip(&r.children) {
                        ensure!(
                            span_of(mi, base) == mr.span,
                            "span of member {}",
                            mr.plan.name
                        );
                    }
                }
                syn::Item::Mod(md) => {
                    let kids = md.content.as_ref().map_or(&[][..], |(_, v)| v.as_slice());
                    walk(kids, &r.children, base, text)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
    walk(&file.items, &m.items, m.prefix, &m.text)
}

fn is_doc(a: &syn::Attribute) -> bool {
    a.path().is_ident("doc")
}

/// An item's attributes (`None` for the kinds without: verbatim tokens).
fn item_attrs_mut(item: &mut syn::Item) -> Option<&mut Vec<syn::Attribute>> {
    use syn::Item;
    Some(match item {
        Item::Const(i) => &mut i.attrs,
        Item::Enum(i) => &mut i.attrs,
        Item::ExternCrate(i) => &mut i.attrs,
        Item::Fn(i) => &mut i.attrs,
        Item::ForeignMod(i) => &mut i.attrs,
        Item::Impl(i) => &mut i.attrs,
        Item::Macro(i) => &mut i.attrs,
        Item::Mod(i) => &mut i.attrs,
        Item::Static(i) => &mut i.attrs,
        Item::Struct(i) => &mut i.attrs,
        Item::Trait(i) => &mut i.attrs,
        Item::TraitAlias(i) => &mut i.attrs,
        Item::Type(i) => &mut i.attrs,
        Item::Union(i) => &mut i.attrs,
        Item::Use(i) => &mut i.attrs,
        _ => return None,
    })
}

fn member_attrs_mut(m: &mut syn::ImplItem) -> Option<&mut Vec<syn::Attribute>> {
    match m {
        syn::ImplItem::Const(i) => Some(&mut i.attrs),
        syn::ImplItem::Fn(i) => Some(&mut i.attrs),
        syn::ImplItem::Type(i) => Some(&mut i.attrs),
        syn::ImplItem::Macro(i) => Some(&mut i.attrs),
        _ => None,
    }
}

/// Items and impl members, handled alike.
trait Node: Clone + ToTokens {
    fn attrs_mut(&mut self) -> Option<&mut Vec<syn::Attribute>>;
    fn pretty(&self) -> String;
}

impl Node for syn::Item {
    fn attrs_mut(&mut self) -> Option<&mut Vec<syn::Attribute>> {
        item_attrs_mut(self)
    }
    fn pretty(&self) -> String {
        prettyplease::unparse(&syn::File {
            shebang: None,
            frontmatter: None,
            attrs: Vec::new(),
            items: vec![self.clone()],
        })
    }
}

impl Node for syn::ImplItem {
    fn attrs_mut(&mut self) -> Option<&mut Vec<syn::Attribute>> {
        member_attrs_mut(self)
    }
    fn pretty(&self) -> String {
        let imp: syn::ItemImpl = syn::parse_quote!(impl X {});
        let mut imp = imp;
        imp.items.push(self.clone());
        syn::Item::Impl(imp).pretty()
    }
}

fn has_docs<N: Node>(n: &N) -> bool {
    n.clone().attrs_mut().is_some_and(|a| a.iter().any(is_doc))
}

fn docs_of<N: Node>(n: &N) -> Vec<syn::Attribute> {
    n.clone()
        .attrs_mut()
        .map(|a| a.iter().filter(|a| is_doc(a)).cloned().collect())
        .unwrap_or_default()
}

fn without_docs<N: Node>(n: &N) -> N {
    let mut n = n.clone();
    if let Some(a) = n.attrs_mut() {
        a.retain(|a| !is_doc(a));
    }
    n
}

/// Token text; CRLF inside literals counts as LF, as rustc reads it.
fn tokens(n: &impl ToTokens) -> String {
    n.to_token_stream().to_string().replace("\r\n", "\n")
}

/// Does submitting `new` over `old` change nothing (the engine keeps the old doc
/// comments when `new` has none)?
fn same<N: Node>(old: &N, new: &N) -> bool {
    if has_docs(new) {
        tokens(old) == tokens(new)
    } else {
        tokens(&without_docs(old)) == tokens(new)
    }
}

/// What the item must look like after `new` replaced `old`.
fn expected_after<N: Node>(old: &N, new: &N) -> N {
    if has_docs(new) {
        return new.clone();
    }
    let mut n = new.clone();
    if let Some(a) = n.attrs_mut() {
        let mut docs = docs_of(old);
        docs.append(a);
        *a = docs;
    }
    n
}

fn equivalent<N: Node>(a: &N, b: &N, verbatim: bool) -> bool {
    if verbatim {
        tokens(a) == tokens(b)
    } else {
        a.pretty().replace("\r\n", "\n") == b.pretty().replace("\r\n", "\n")
    }
}

/// The old text with the splices applied, checking they are sorted and disjoint.
fn check_splices(old: &str, out: &EditOutcome) -> Check {
    let mut pos = 0;
    let mut rebuilt = String::new();
    for s in &out.splices {
        ensure!(
            s.range.start >= pos && s.range.start <= s.range.end,
            "splices overlap or are unsorted: {:?}",
            out.splices
                .iter()
                .map(|s| s.range.clone())
                .collect::<Vec<_>>()
        );
        rebuilt.push_str(&old[pos..s.range.start]);
        rebuilt.push_str(&s.text);
        pos = s.range.end;
    }
    rebuilt.push_str(&old[pos..]);
    ensure!(
        rebuilt == out.text,
        "result is not the old text with the splices applied"
    );
    Ok(())
}

/// Where byte `pos` of the old text is in the new text (`pos` outside every splice;
/// an insertion at `pos` goes before it).
fn map_pos(pos: usize, out: &EditOutcome) -> usize {
    let mut delta: isize = 0;
    for s in &out.splices {
        if s.range.end <= pos {
            delta += s.text.len() as isize - s.range.len() as isize;
        }
    }
    (pos as isize + delta) as usize
}

/// Every item of the tree that no splice reaches into is byte-identical in the result.
fn check_untouched(old: &str, items: &[RItem], out: &EditOutcome) -> Check {
    for it in items {
        let inside = out.splices.iter().any(|s| {
            (s.range.is_empty() && it.span.start < s.range.start && s.range.start < it.span.end)
                || (!s.range.is_empty()
                    && s.range.start < it.span.end
                    && it.span.start < s.range.end)
        });
        if inside {
            check_untouched(old, &it.children, out)?;
            continue;
        }
        let start = map_pos(it.span.start, out);
        let new = out.text.get(start..start + it.span.len());
        ensure!(
            new == Some(&old[it.span.clone()]),
            "item {} changed:\n{:?}\nvs\n{:?}",
            it.plan.name,
            &old[it.span.clone()],
            new
        );
    }
    Ok(())
}

/// Line endings: a CRLF file gets no bare LF, an LF file gets no CR.
fn check_eol(m: &Module, out: &EditOutcome) -> Check {
    if !m.text.contains('\n') {
        // No line break to follow: the engine writes LF.
        return Ok(());
    }
    if m.crlf {
        let bare = out.text.replace("\r\n", "").contains('\n');
        ensure!(!bare, "bare LF in a CRLF file:\n{}", show(&out.text));
    } else {
        ensure!(
            !out.text.contains('\r'),
            "CR in an LF file:\n{}",
            show(&out.text)
        );
    }
    Ok(())
}

fn keys_of(items: &[syn::Item]) -> Vec<ItemKey> {
    let mut keys: Vec<ItemKey> = items.iter().map(ItemKey::of_item).collect();
    keys.sort();
    keys
}

fn member_keys(items: &[syn::Item], key: &ItemKey) -> Vec<ItemKey> {
    let mut keys = Vec::new();
    for it in items {
        if let syn::Item::Impl(imp) = it
            && ItemKey::of_item(it) == *key
        {
            let owner = impl_name(imp);
            keys.extend(imp.items.iter().map(|m| ItemKey::of_member(&owner, m)));
        }
    }
    keys.sort();
    keys
}

fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.swap(i, (seed >> 33) as usize % (i + 1));
    }
}

fn leaf(kind: K, member: bool, name: String, version: u32) -> Plan {
    Plan {
        kind,
        member,
        name,
        cfg: None,
        version,
        c: Common {
            style: 0,
            docs: 0,
            attr: false,
            vis: false,
            twin: 0,
            before: Trivia::default(),
            indent: 0,
            same_line: false,
            trailing: None,
            open_comment: false,
            tail: Trivia::default(),
        },
        children: Vec::new(),
    }
}

/// A resubmission of an existing item: the same, a new version, without docs, or with
/// other docs.
fn revise(p: &Plan, variant: u8) -> Plan {
    let mut p = p.clone();
    if variant != 0 {
        p.version += 1;
        if p.kind == K::Mod {
            p.children = vec![leaf(K::Const, false, format!("V{}", p.version), p.version)];
        }
    }
    match variant {
        2 => p.c.docs = 0,
        3 => p.c.docs = p.c.docs % (DOCS.len() - 1) + 1,
        _ => {}
    }
    p
}

fn render_code(plans: &[Plan], e: &EditSpec) -> String {
    let mut w = W::new(e.crlf_code);
    let base = ["", "    ", "  "][e.code_indent as usize % 3];
    render_items(&mut w, plans, base, false);
    w.push("\n");
    w.out
}

/// Apply, and say why when the engine fails.
fn apply(
    text: &str,
    path: &[String],
    edit: &Edit,
) -> Result<Result<EditOutcome, EditError>, TestCaseError> {
    let names: Vec<&str> = path.iter().map(String::as_str).collect();
    Ok(apply_to_text(text, &names, edit))
}

fn ok(
    r: Result<EditOutcome, EditError>,
    text: &str,
    code: &str,
) -> Result<EditOutcome, TestCaseError> {
    r.map_err(|e| {
        TestCaseError::fail(format!(
            "edit failed: {e}\n--- module\n{}\n--- code\n{}",
            show(text),
            show(code)
        ))
    })
}

fn pick_container(m: &Module, e: &EditSpec) -> Vec<String> {
    let mut all = vec![Vec::new()];
    containers(&m.items, &mut Vec::new(), &mut all);
    all[e.target % all.len()].clone()
}

// ------------------------------------------------------------------------ merge

fn check_merge(spec: &ModSpec, e: &EditSpec) -> Check {
    let mut m = render_module(spec);
    check_model(&m)?;
    let path = pick_container(&m, e);
    let (items, body) = container_of(&m, &path);
    let items = items.to_vec();

    // Build the submitted code.
    let mut plans = Vec::new();
    let replaceable: Vec<&RItem> = items
        .iter()
        .filter(|r| !matches!(r.plan.kind, K::Impl | K::Use))
        .collect();
    let mut chosen = BTreeSet::new();
    for &(sel, variant) in &e.picks {
        if let Some(r) = replaceable.get(sel % replaceable.len().max(1))
            && chosen.insert(sel % replaceable.len())
        {
            plans.push(revise(&r.plan, variant));
        }
    }
    plans.extend(resolve(&e.new_items, false, &mut m.names));
    let impls: Vec<&RItem> = items.iter().filter(|r| r.plan.kind == K::Impl).collect();
    // Now and then a member is submitted twice, which must be refused.
    let allow_twice = e.shuffle.is_multiple_of(8);
    let mut chosen_members = BTreeSet::new();
    for (sel, picks, new) in &e.impl_picks {
        let Some(imp) = impls.get(sel % impls.len().max(1)) else {
            break;
        };
        let mut p = imp.plan.clone();
        p.children.clear();
        for &(ms, variant) in picks {
            if let Some(mr) = imp.children.get(ms % imp.children.len().max(1))
                && (chosen_members.insert(mr.span.start) || allow_twice)
            {
                p.children.push(revise(&mr.plan, variant));
            }
        }
        p.children.extend(resolve(new, true, &mut m.names));
        plans.push(p);
    }
    let uses: Vec<&RItem> = items.iter().filter(|r| r.plan.kind == K::Use).collect();
    let twice = m.names.fresh();
    for &(sel, new) in &e.uses {
        match uses.get(sel % uses.len().max(1)) {
            Some(u) if !new => plans.push(revise(&u.plan, 0)),
            _ => {
                // Now and then one new tree twice: it is added once.
                let n = if sel % 2 == 0 { twice } else { m.names.fresh() };
                plans.push(leaf(K::Use, false, name_of(K::Use, false, 0, n), 0));
            }
        }
    }
    if plans.is_empty() {
        let n = m.names.fresh();
        plans.push(leaf(K::Fn, false, format!("f{n}"), 0));
    }
    shuffle(&mut plans, e.shuffle);
    let code = render_code(&plans, e);
    let edit = if e.verbatim {
        Edit::merge(code.clone()).verbatim()
    } else {
        Edit::merge(code.clone())
    };

    // What must happen, from syn's view of the old module and the code.
    let old_file = parse(&m.text)?;
    let old_items = syn_container(&old_file, &path)?.to_vec();
    // rustc reads CRLF as LF, also inside literals.
    let code_file = parse(&code.replace("\r\n", "\n"))?;
    let mut members_seen = BTreeSet::new();
    let twice = code_file.items.iter().any(|it| match it {
        syn::Item::Impl(imp) => imp.items.iter().any(|mm| {
            !members_seen.insert((
                ItemKey::of_item(it),
                ItemKey::of_member(&impl_name(imp), mm),
            ))
        }),
        _ => false,
    });
    if twice {
        let r = apply(&m.text, &path, &edit)?;
        ensure!(
            matches!(r, Err(EditError::DuplicateInCode { .. })),
            "a member submitted twice must be refused: {r:?}\n{}",
            show(&code)
        );
        return Ok(());
    }
    // The actions each change may have: a resubmitted item whose tokens differ may
    // still be unchanged when the file already holds it as the engine would format it.
    let mut expected: Vec<(Vec<ChangeAction>, String)> = Vec::new();
    let may_be_unchanged = if e.verbatim {
        vec![ChangeAction::Replaced]
    } else {
        vec![ChangeAction::Replaced, ChangeAction::Unchanged]
    };
    // The same tokens: unchanged, except in verbatim mode, where only the same bytes
    // are (a comment or layout change is written).
    let same_tokens = if e.verbatim {
        vec![ChangeAction::Unchanged, ChangeAction::Replaced]
    } else {
        vec![ChangeAction::Unchanged]
    };
    let mut added: Vec<ItemKey> = Vec::new();
    // Ranges a replacement may cover, and impls that may receive members.
    let mut replace_ranges: Vec<Range<usize>> = Vec::new();
    let mut open_impls: Vec<usize> = Vec::new();
    for new in &code_file.items {
        let key = ItemKey::of_item(new);
        let matches: Vec<usize> = old_items
            .iter()
            .enumerate()
            .filter(|(_, o)| ItemKey::of_item(o) == key)
            .map(|(i, _)| i)
            .collect();
        if let syn::Item::Impl(imp) = new {
            if matches.is_empty() {
                expected.push((vec![ChangeAction::Added], key.to_string()));
                added.push(key);
                continue;
            }
            if imp.items.is_empty() {
                expected.push((vec![ChangeAction::Unchanged], key.to_string()));
                continue;
            }
            let owner = impl_name(imp);
            for nm in &imp.items {
                let mkey = ItemKey::of_member(&owner, nm);
                let mut found = None;
                for &i in &matches {
                    let syn::Item::Impl(oi) = &old_items[i] else {
                        unreachable!()
                    };
                    for (j, om) in oi.items.iter().enumerate() {
                        if ItemKey::of_member(&owner, om) == mkey {
                            found = Some((i, j, om));
                        }
                    }
                }
                match found {
                    None => {
                        expected.push((vec![ChangeAction::Added], mkey.to_string()));
                        open_impls.push(*matches.last().expect("an impl"));
                    }
                    Some((i, j, om)) if same(om, nm) => {
                        expected.push((same_tokens.clone(), mkey.to_string()));
                        let r = &items[i].children[j];
                        replace_ranges.push(if has_docs(nm) || !has_docs(om) {
                            r.span.clone()
                        } else {
                            r.body_start..r.span.end
                        });
                    }
                    Some((i, j, om)) => {
                        expected.push((may_be_unchanged.clone(), mkey.to_string()));
                        let r = &items[i].children[j];
                        replace_ranges.push(if has_docs(nm) || !has_docs(om) {
                            r.span.clone()
                        } else {
                            r.body_start..r.span.end
                        });
                    }
                }
            }
            continue;
        }
        match matches.as_slice() {
            [] if key.kind == ItemKind::Use && added.contains(&key) => {
                expected.push((vec![ChangeAction::Unchanged], key.to_string()));
            }
            [] => {
                expected.push((vec![ChangeAction::Added], key.to_string()));
                added.push(key);
            }
            [_] if key.kind == ItemKind::Use || key.kind.named_by_text() => {
                expected.push((vec![ChangeAction::Unchanged], key.to_string()));
            }
            [i] if same(&old_items[*i], new) => {
                expected.push((same_tokens.clone(), key.to_string()));
                let r = &items[*i];
                replace_ranges.push(if has_docs(new) || !has_docs(&old_items[*i]) {
                    r.span.clone()
                } else {
                    r.body_start..r.span.end
                });
            }
            [i] => {
                expected.push((may_be_unchanged.clone(), key.to_string()));
                let r = &items[*i];
                replace_ranges.push(if has_docs(new) || !has_docs(&old_items[*i]) {
                    r.span.clone()
                } else {
                    r.body_start..r.span.end
                });
            }
            _ => unreachable!("generated keys are unique"),
        }
    }

    let out = ok(apply(&m.text, &path, &edit)?, &m.text, &code)?;
    let got: Vec<(ChangeAction, String)> = out
        .changes
        .iter()
        .map(|c| (c.action, c.key.clone()))
        .collect();
    let fits = got.len() == expected.len()
        && got
            .iter()
            .zip(&expected)
            .all(|(g, x)| x.0.contains(&g.0) && g.1 == x.1);
    ensure!(
        fits,
        "changes:\n{got:?}\nexpected:\n{expected:?}\n--- module\n{}\n--- code\n{}",
        show(&m.text),
        show(&code)
    );

    // (b) old text + splices; each splice replaces exactly a named item or inserts at a
    // safe point.
    check_splices(&m.text, &out)?;
    let ctx = || {
        format!(
            "--- module\n{}\n--- code\n{}\n--- result\n{}",
            show(&m.text),
            show(&code),
            show(&out.text)
        )
    };
    for s in &out.splices {
        if s.range.is_empty() {
            let p = s.range.start;
            ensure!(
                body.start <= p && p <= body.end,
                "insertion at {p} outside the container {body:?}\n{}",
                ctx()
            );
            for (i, it) in items.iter().enumerate() {
                if it.span.start < p && p < it.span.end {
                    let Some(b) = it.braces.clone().filter(|_| open_impls.contains(&i)) else {
                        return Err(TestCaseError::fail(format!(
                            "insertion at {p} inside item {}\n{}",
                            it.plan.name,
                            ctx()
                        )));
                    };
                    ensure!(
                        b.start <= p && p <= b.end,
                        "insertion at {p} in the header of impl {}\n{}",
                        it.plan.name,
                        ctx()
                    );
                    for mem in &it.children {
                        ensure!(
                            !(mem.span.start < p && p < mem.span.end),
                            "insertion at {p} inside member {}\n{}",
                            mem.plan.name,
                            ctx()
                        );
                    }
                }
            }
            for c in &m.comments {
                ensure!(
                    !(c.start < p && p < c.end),
                    "insertion at {p} inside the comment {:?}\n{}",
                    &m.text[c.clone()],
                    ctx()
                );
            }
        } else {
            ensure!(
                replace_ranges.contains(&s.range),
                "splice {:?} ({:?}) is not an item's span; allowed: {replace_ranges:?}\n{}",
                s.range,
                &m.text[s.range.clone()],
                ctx()
            );
        }
    }
    let replaced = got
        .iter()
        .filter(|(a, _)| *a == ChangeAction::Replaced)
        .count();
    let inserted = got
        .iter()
        .filter(|(a, _)| *a == ChangeAction::Added)
        .count();
    ensure!(
        out.splices.iter().filter(|s| !s.range.is_empty()).count() == replaced,
        "one splice per replaced item\n{}",
        ctx()
    );
    ensure!(
        out.splices.iter().filter(|s| s.range.is_empty()).count() == inserted,
        "one insertion per added item\n{}",
        ctx()
    );
    check_untouched(&m.text, &m.items, &out)?;
    ensure!(
        out.text.starts_with(&m.text[..m.prefix]),
        "the BOM/shebang changed\n{}",
        ctx()
    );
    check_eol(&m, &out)?;

    // (a) it parses; (c) keys are old ∪ added and replaced items have the new tokens.
    let new_file = parse(&out.text)?;
    let new_items = syn_container(&new_file, &path)?;
    let mut want = keys_of(&old_items);
    want.extend(added.iter().cloned());
    want.sort();
    ensure!(
        keys_of(new_items) == want,
        "keys after the merge:\n{:?}\nexpected:\n{want:?}\n{}",
        keys_of(new_items),
        ctx()
    );
    for new in &code_file.items {
        let key = ItemKey::of_item(new);
        let found: Vec<&syn::Item> = new_items
            .iter()
            .filter(|i| ItemKey::of_item(i) == key)
            .collect();
        if let syn::Item::Impl(imp) = new {
            let owner = impl_name(imp);
            if !old_items.iter().any(|o| ItemKey::of_item(o) == key) {
                // A whole new impl.
                ensure!(
                    found.iter().any(|f| equivalent(*f, new, e.verbatim)),
                    "added impl differs\n{}",
                    ctx()
                );
                continue;
            }
            let old_members = member_keys(&old_items, &key);
            let mut want = old_members.clone();
            for other in &code_file.items {
                if let syn::Item::Impl(o) = other
                    && ItemKey::of_item(other) == key
                {
                    want.extend(
                        o.items
                            .iter()
                            .map(|mm| ItemKey::of_member(&owner, mm))
                            .filter(|k| !old_members.contains(k)),
                    );
                }
            }
            want.sort();
            ensure!(
                member_keys(new_items, &key) == want,
                "members of {key} after the merge:\n{:?}\nexpected:\n{want:?}\n{}",
                member_keys(new_items, &key),
                ctx()
            );
            for nm in &imp.items {
                let mkey = ItemKey::of_member(&owner, nm);
                let after: Vec<&syn::ImplItem> = found
                    .iter()
                    .filter_map(|i| match i {
                        syn::Item::Impl(i) => Some(i),
                        _ => None,
                    })
                    .flat_map(|i| i.items.iter())
                    .filter(|x| ItemKey::of_member(&owner, x) == mkey)
                    .collect();
                ensure!(
                    after.len() == 1,
                    "{mkey} occurs {} times\n{}",
                    after.len(),
                    ctx()
                );
                let before = old_items
                    .iter()
                    .filter_map(|i| match i {
                        syn::Item::Impl(i)
                            if ItemKey::of_item(&syn::Item::Impl(i.clone())) == key =>
                        {
                            Some(i)
                        }
                        _ => None,
                    })
                    .flat_map(|i| i.items.iter())
                    .find(|x| ItemKey::of_member(&owner, x) == mkey);
                let want = match before {
                    Some(b) if same(b, nm) => b.clone(),
                    Some(b) => expected_after(b, nm),
                    None => nm.clone(),
                };
                let exact = e.verbatim || before.is_some_and(|b| same(b, nm));
                ensure!(
                    equivalent(after[0], &want, exact),
                    "member {mkey} is not the submitted one:\n{}\nwant\n{}\n{}",
                    tokens(after[0]),
                    tokens(&want),
                    ctx()
                );
            }
            continue;
        }
        ensure!(
            found.len() == 1,
            "{key} occurs {} times\n{}",
            found.len(),
            ctx()
        );
        let before = old_items.iter().find(|i| ItemKey::of_item(i) == key);
        let want = match before {
            Some(b) if same(b, new) || key.kind == ItemKind::Use || key.kind.named_by_text() => {
                b.clone()
            }
            Some(b) => expected_after(b, new),
            None => new.clone(),
        };
        let exact = e.verbatim
            || before.is_some_and(|b| {
                same(b, new) || key.kind == ItemKind::Use || key.kind.named_by_text()
            });
        ensure!(
            equivalent(found[0], &want, exact),
            "item {key} is not the submitted one:\n{}\nwant\n{}\n{}",
            tokens(found[0]),
            tokens(&want),
            ctx()
        );
    }

    // (d) the same merge again changes nothing.
    let again = ok(apply(&out.text, &path, &edit)?, &out.text, &code)?;
    let not_unchanged: Vec<_> = again
        .changes
        .iter()
        .filter(|c| c.action != ChangeAction::Unchanged)
        .collect();
    ensure!(
        not_unchanged.is_empty(),
        "second merge changed {not_unchanged:?}\n{}",
        ctx()
    );
    ensure!(
        again.text == out.text && again.splices.is_empty(),
        "second merge changed the text:\n{}\n{}",
        show(&again.text),
        ctx()
    );
    Ok(())
}

// ------------------------------------------------------------------------ remove

fn keyword(kind: K) -> &'static str {
    match kind {
        K::Fn => "fn",
        K::Struct => "struct",
        K::Enum => "enum",
        K::Union => "union",
        K::Trait => "trait",
        K::Type => "type",
        K::Const => "const",
        K::Static => "static",
        K::Macro => "macro_rules!",
        K::Use => "use",
        K::Impl => "impl",
        K::Mod | K::ModDecl => "mod",
        K::ExternCrate => "extern crate",
        K::ItemMacro => "macro",
    }
}

/// A `--item` string naming `it` (a member of `owner` when given).
fn key_string(it: &RItem, owner: Option<&RItem>, key: &ItemKey, mut form: u8) -> String {
    let p = &it.plan;
    let cfg = p.cfg.map(|c| format!("#[{c}] ")).unwrap_or_default();
    let kw = keyword(p.kind);
    if let Some(o) = owner {
        let ty = match o.plan.c.style % 4 {
            0 | 1 => o.plan.name.clone(),
            _ => format!("{}<T>", o.plan.name),
        };
        let tr = match o.plan.c.style % 4 {
            0 | 2 => None,
            1 => Some("fmt::Display".to_owned()),
            _ => Some("From<&'a T>".to_owned()),
        };
        if tr.is_some() && o.plan.c.twin == 3 {
            // `P::name` is the inherent twin's member: name the trait's by its trait.
            form = 1;
        }
        return match (form % 3, tr) {
            (0, _) => format!("{cfg}{ty}::{}", p.name),
            (1, Some(tr)) => format!("{cfg}{kw} <{ty} as {tr}>::{}", p.name),
            _ => format!("{cfg}{kw} {ty}::{}", p.name),
        };
    }
    match p.kind {
        K::Impl => format!("{cfg}impl {}", key.name),
        K::Use if form.is_multiple_of(2) => format!("use {};", p.name),
        K::Use => format!("use {}", p.name),
        K::Macro if form.is_multiple_of(2) => format!("{cfg}macro_rules! {}", p.name),
        _ if form.is_multiple_of(3) && p.kind != K::ExternCrate => format!("{cfg}{}", p.name),
        _ => format!("{cfg}{kw} {}", p.name),
    }
}

fn check_remove(spec: &ModSpec, e: &EditSpec) -> Check {
    let m = render_module(spec);
    check_model(&m)?;
    let path = pick_container(&m, e);
    let (items, _) = container_of(&m, &path);
    let old_file = parse(&m.text)?;
    let old_items = syn_container(&old_file, &path)?;
    // Candidates: (item, owner impl, its key).
    let mut cands: Vec<(&RItem, Option<&RItem>, ItemKey)> = Vec::new();
    for (it, si) in items.iter().zip(old_items) {
        if it.plan.kind != K::ItemMacro {
            // Item macros are named by their whole text: not something to type.
            cands.push((it, None, ItemKey::of_item(si)));
        }
        if let syn::Item::Impl(imp) = si {
            let owner = impl_name(imp);
            for (mr, mi) in it.children.iter().zip(&imp.items) {
                cands.push((mr, Some(it), ItemKey::of_member(&owner, mi)));
            }
        }
    }
    if cands.is_empty() {
        return Ok(());
    }
    let mut keys = Vec::new();
    let mut targets: Vec<usize> = Vec::new();
    for &(sel, form) in &e.removes {
        let i = sel % cands.len();
        let (it, owner, key) = &cands[i];
        keys.push(key_string(it, *owner, key, form));
        targets.push(i);
    }
    let edit = Edit::remove(keys.clone());
    let out = ok(apply(&m.text, &path, &edit)?, &m.text, &keys.join(" | "))?;
    let ctx = || {
        format!(
            "--- module\n{}\n--- keys\n{keys:?}\n--- result\n{}",
            show(&m.text),
            show(&out.text)
        )
    };

    // Targets inside an impl that is removed too go with it.
    let removed_items: BTreeSet<usize> = targets
        .iter()
        .copied()
        .filter(|&i| cands[i].1.is_none())
        .collect();
    let gone = |i: usize| -> bool {
        match cands[i].1 {
            None => true,
            Some(o) => !removed_items.iter().any(|&j| std::ptr::eq(cands[j].0, o)),
        }
    };
    let mut expected: Vec<(ChangeAction, String)> = Vec::new();
    let mut seen = BTreeSet::new();
    for &i in &targets {
        if seen.insert(i) && gone(i) {
            expected.push((ChangeAction::Removed, cands[i].2.to_string()));
        }
    }
    let got: Vec<(ChangeAction, String)> = out
        .changes
        .iter()
        .map(|c| (c.action, c.key.clone()))
        .collect();
    let mut got_sorted = got.clone();
    got_sorted.sort_by(|a, b| a.1.cmp(&b.1));
    let mut expected_sorted = expected.clone();
    expected_sorted.sort_by(|a, b| a.1.cmp(&b.1));
    // A member named before its impl may be reported too; every removed key is reported.
    for x in &expected_sorted {
        ensure!(
            got_sorted.contains(x),
            "changes {got:?} lack {x:?}\n{}",
            ctx()
        );
    }
    for g in &got {
        ensure!(
            g.0 == ChangeAction::Removed && targets.iter().any(|&i| cands[i].2.to_string() == g.1),
            "unexpected change {g:?}\n{}",
            ctx()
        );
    }

    // (f) every splice removes one target's span plus whitespace only.
    check_splices(&m.text, &out)?;
    for s in &out.splices {
        ensure!(
            s.text.is_empty() && !s.range.is_empty(),
            "remove inserted text\n{}",
            ctx()
        );
        let hit: Vec<&Range<usize>> = targets
            .iter()
            .map(|&i| &cands[i].0.span)
            .filter(|sp| s.range.start <= sp.start && sp.end <= s.range.end)
            .collect();
        let outer = hit.iter().max_by_key(|r| r.len());
        ensure!(
            outer.is_some(),
            "splice {:?} removes no target\n{}",
            s.range,
            ctx()
        );
        let sp = outer.expect("checked");
        let rest = format!(
            "{}{}",
            &m.text[s.range.start..sp.start],
            &m.text[sp.end..s.range.end]
        );
        ensure!(
            rest.trim().is_empty(),
            "remove took more than whitespace: {rest:?}\n{}",
            ctx()
        );
    }
    check_untouched(&m.text, &m.items, &out)?;
    check_eol(&m, &out)?;
    let new_file = parse(&out.text)?;
    let new_items = syn_container(&new_file, &path)?;
    let mut want = keys_of(old_items);
    for &i in &removed_items {
        let k = &cands[i].2;
        if let Some(pos) = want.iter().position(|x| x == k) {
            want.remove(pos);
        }
    }
    ensure!(
        keys_of(new_items) == want,
        "keys after remove:\n{:?}\nexpected\n{want:?}\n{}",
        keys_of(new_items),
        ctx()
    );
    for &i in &targets {
        if let (Some(o), true) = (cands[i].1, gone(i)) {
            let oi = items
                .iter()
                .position(|x| std::ptr::eq(x, o))
                .expect("owner");
            let key = ItemKey::of_item(&old_items[oi]);
            ensure!(
                !member_keys(new_items, &key).contains(&cands[i].2),
                "{} is still there\n{}",
                cands[i].2,
                ctx()
            );
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------ replace

fn check_replace(spec: &ModSpec, e: &EditSpec) -> Check {
    let mut m = render_module(spec);
    check_model(&m)?;
    let path = pick_container(&m, e);
    let (_, body) = container_of(&m, &path);
    let plans = resolve(&e.replacement, false, &mut m.names);
    let code = render_code(&plans, e);
    let out = apply(&m.text, &path, &Edit::replace(code.clone()))?;
    if plans.is_empty() {
        ensure!(
            matches!(out, Err(EditError::EmptyCode)),
            "empty code must be refused: {out:?}"
        );
        return Ok(());
    }
    let out = ok(out, &m.text, &code)?;
    let ctx = || {
        format!(
            "--- module\n{}\n--- code\n{}\n--- result\n{}",
            show(&m.text),
            show(&code),
            show(&out.text)
        )
    };
    check_splices(&m.text, &out)?;
    ensure!(out.splices.len() == 1, "replace is one splice\n{}", ctx());
    let r = &out.splices[0].range;
    if path.is_empty() {
        // Everything after the BOM and the shebang line with its line break.
        let start = if spec.shebang && m.text[body.start..].starts_with('\n') {
            body.start + 1
        } else {
            body.start
        };
        ensure!(
            *r == (start..m.text.len()),
            "replace range {r:?}, body {body:?}\n{}",
            ctx()
        );
    } else {
        ensure!(*r == body, "replace range {r:?}, body {body:?}\n{}", ctx());
    }
    check_eol(&m, &out)?;
    let new_file = parse(&out.text)?;
    // rustc reads CRLF as LF, also inside literals.
    let code_file = parse(&code.replace("\r\n", "\n"))?;
    ensure!(
        keys_of(syn_container(&new_file, &path)?) == keys_of(&code_file.items),
        "keys after replace\n{}",
        ctx()
    );
    Ok(())
}

// 256 cases each: about four seconds for the three in a debug build. For a deeper
// search: `PROPTEST_CASES=5000 cargo test -p hephaestus-core --test edit_props`.
proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Merge: the changes are the expected ones; the result is the old text plus the
    /// splices, each replacing exactly a named item's span (or what follows its doc
    /// comments) or inserting outside every item, comment and BOM/shebang; every other
    /// item is byte-identical; the result parses; its keys are the old ones plus the
    /// added ones and replaced items hold the new tokens; line endings are kept; the
    /// same merge again reports only `unchanged` and changes no byte.
    #[test]
    fn merge_touches_only_the_named_items(m in module(), e in edit_spec()) {
        check_merge(&m, &e)?;
    }

    /// Remove by `--item` key strings: each splice is one named item's span plus
    /// whitespace; the keys are gone, every other item is byte-identical, the result
    /// parses, line endings are kept.
    #[test]
    fn remove_takes_only_the_named_items(m in module(), e in edit_spec()) {
        check_remove(&m, &e)?;
    }

    /// Replace: one splice, exactly the module's body (after the BOM and shebang line,
    /// or between the inline module's braces); the result parses with the code's keys.
    #[test]
    fn replace_keeps_everything_outside_the_module_body(m in module(), e in edit_spec()) {
        check_replace(&m, &e)?;
    }
}
