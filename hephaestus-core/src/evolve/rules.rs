//! Rewrite rules for `heph evolve`: a pattern and a replacement written as Rust with
//! metavariables (`$x`), matched on syn's syntax tree (never on text), applied as byte
//! splices of the matched expression or statements.
//!
//! A rule is a TOML file (`templates/rules/*.toml`; the file stem is its id):
//!
//! ```toml
//! description = "Sort with sort_unstable: no allocation, faster on primitives"
//! risk = "low"                         # low | medium | high
//! notes = "equal elements may change order (unobservable for primitives)"
//! clippy = "stable_sort_primitive"     # the related clippy lint, if any
//! pattern = "$v.sort()"
//! replacement = "$v.sort_unstable()"
//! uses = []                            # `use` items the replacement needs
//! [metavars]                           # optional constraints: expr | ident | lit | pure
//! v = "expr"
//! ```
//!
//! Matching rules:
//! - A pattern that parses as one expression matches any expression of the module
//!   (nested ones too); otherwise it is parsed as a sequence of statements and matches
//!   consecutive statements of a block (`let mut $v = Vec::with_capacity($n); $v.resize($n, 0);`).
//! - `$x` in expression position matches any expression; in pattern position (`for $x in`,
//!   `let $x =`) any pattern; in type position (`Vec<$t>`) any type; a block holding only
//!   `$body` (`{ $body }`) any block; a macro whose whole input is `$args`
//!   (`format!($args)`) any input. A metavariable used twice must match equal tokens.
//! - Everything else must be equal token by token (spacing, comments and line breaks
//!   of the project's code do not matter).
//! - Test code (`#[test]` functions and `#[cfg(test)]` items) is never rewritten.
//!
//! The replacement is the template with each metavariable replaced by the exact source
//! text it matched (parenthesized where precedence requires it); the splice is then
//! trimmed to the bytes that differ, so comments inside matched sub-expressions survive
//! and no byte outside the matched node changes. `uses` items are added at the top of the
//! module (after its last `use`) when missing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use serde::{Deserialize, Serialize};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{Block, Expr, Pat, Stmt, Type};

use crate::edit::Splice;
use crate::item::ItemKey;
use crate::source::SourceFile;

/// The prefix metavariables are rewritten to before parsing (`$x` → `__heph_mv_x`).
const MV: &str = "__heph_mv_";

/// The rules shipped with heph (`templates/rules/`), embedded in the binary.
const BUILTIN: &[(&str, &str)] = &[
    (
        "sort-unstable",
        include_str!("../../../templates/rules/sort-unstable.toml"),
    ),
    (
        "sort-unstable-by-key",
        include_str!("../../../templates/rules/sort-unstable-by-key.toml"),
    ),
    (
        "collect-len-to-count",
        include_str!("../../../templates/rules/collect-len-to-count.toml"),
    ),
    (
        "collect-is-empty-to-next",
        include_str!("../../../templates/rules/collect-is-empty-to-next.toml"),
    ),
    (
        "format-to-string",
        include_str!("../../../templates/rules/format-to-string.toml"),
    ),
    (
        "format-push-string",
        include_str!("../../../templates/rules/format-push-string.toml"),
    ),
    (
        "push-str-format",
        include_str!("../../../templates/rules/push-str-format.toml"),
    ),
    (
        "to-string-eq",
        include_str!("../../../templates/rules/to-string-eq.toml"),
    ),
    (
        "for-clone-to-ref",
        include_str!("../../../templates/rules/for-clone-to-ref.toml"),
    ),
    (
        "cloned-filter-count",
        include_str!("../../../templates/rules/cloned-filter-count.toml"),
    ),
    (
        "bufwriter-file-create",
        include_str!("../../../templates/rules/bufwriter-file-create.toml"),
    ),
    (
        "clone-len",
        include_str!("../../../templates/rules/clone-len.toml"),
    ),
];

/// Errors of loading rules.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// A rule file or directory cannot be read.
    #[error("cannot read the rules at {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A rule file is invalid.
    #[error("rule `{id}` is invalid: {message}")]
    Invalid {
        /// The rule's id (file stem).
        id: String,
        /// What is wrong.
        message: String,
    },
}

impl crate::Categorized for RuleError {
    fn category(&self) -> crate::ErrorCategory {
        match self {
            // A rules directory that does not exist is a wrong setting.
            RuleError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                crate::ErrorCategory::BadInput
            }
            RuleError::Read { .. } => crate::ErrorCategory::Environment,
            RuleError::Invalid { .. } => crate::ErrorCategory::BadInput,
        }
    }
}

/// How likely a rewrite is to change behaviour (tests and check still gate it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    /// Same behaviour whenever it compiles.
    Low,
    /// Same behaviour for the common types; observable differences exist (e.g. the order
    /// of equal elements).
    Medium,
    /// Behaviour changes in some cases (error reporting, side effects).
    High,
}

/// What a metavariable may match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Constraint {
    /// Any expression (the default).
    #[default]
    Expr,
    /// A single identifier (`x`, not `a.b` or `f()`).
    Ident,
    /// A literal.
    Lit,
    /// An expression without calls, macros or assignments (safe to evaluate twice).
    Pure,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    description: String,
    risk: Risk,
    #[serde(default)]
    notes: Option<String>,
    #[serde(default)]
    clippy: Option<String>,
    #[serde(default)]
    measured: Option<String>,
    pattern: String,
    replacement: String,
    #[serde(default)]
    uses: Vec<String>,
    #[serde(default)]
    metavars: BTreeMap<String, Constraint>,
}

/// One rewrite rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    /// The id (the file stem).
    pub id: String,
    /// What it does and why it is faster.
    pub description: String,
    /// How likely it is to change behaviour.
    pub risk: Risk,
    /// Details of the risk.
    pub notes: Option<String>,
    /// The related clippy lint (`stable_sort_primitive`), if any.
    pub clippy: Option<String>,
    /// The speed-up measured by heph's rule micro-benchmarks.
    pub measured: Option<String>,
    /// The pattern as written.
    pub pattern: String,
    /// The replacement as written.
    pub replacement: String,
    /// `use` paths the replacement needs (`std::fmt::Write as _`).
    pub uses: Vec<String>,
    /// Constraints on metavariables.
    pub metavars: BTreeMap<String, Constraint>,
    /// Where it was loaded from (`builtin` or a file).
    pub origin: String,
}

/// A rule's parsed pattern and template. Holds syn trees, so it is made where it is used
/// (syn's spans are not `Send`).
struct Compiled {
    shape: Shape,
    template: Template,
}

enum Shape {
    Expr(Box<Expr>),
    Stmts(Vec<Stmt>),
}

struct Template {
    /// The replacement with metavariables rewritten to placeholders.
    text: String,
    /// Placeholders in `text`.
    holes: Vec<Hole>,
}

struct Hole {
    /// Byte range of the placeholder in the template.
    range: Range<usize>,
    /// With the braces around it, when it is alone in a block (`{ $body }`).
    braced: Option<Range<usize>>,
    name: String,
    /// The position binds tighter than a binary operator (receiver, operand, reference).
    tight: bool,
}

/// Rewrite `$name` to the placeholder identifier; returns the text and the names used.
fn preprocess(text: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len() + 32);
    let mut names = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '$' {
            let rest = &text[i + 1..];
            let len = rest
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                .unwrap_or(rest.len());
            if len > 0 {
                let name = &rest[..len];
                out.push_str(MV);
                out.push_str(name);
                names.push(name.to_owned());
                for _ in 0..len {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    (out, names)
}

fn parse_shape(text: &str) -> Result<Shape, String> {
    if let Ok(e) = syn::parse_str::<Expr>(text) {
        return Ok(Shape::Expr(Box::new(e)));
    }
    let block: Block = syn::parse_str(&format!("{{ {text} }}")).map_err(|e| e.to_string())?;
    if block.stmts.is_empty() {
        return Err("the pattern is empty".into());
    }
    Ok(Shape::Stmts(block.stmts))
}

impl Rule {
    /// Parse a rule file's text; `id` is its name, `origin` where it came from.
    pub fn parse(id: &str, text: &str, origin: &str) -> Result<Rule, RuleError> {
        let invalid = |message: String| RuleError::Invalid {
            id: id.to_owned(),
            message,
        };
        let file: RuleFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let rule = Rule {
            id: id.to_owned(),
            description: file.description,
            risk: file.risk,
            notes: file.notes,
            clippy: file.clippy,
            measured: file.measured,
            pattern: file.pattern,
            replacement: file.replacement,
            uses: file.uses,
            metavars: file.metavars,
            origin: origin.to_owned(),
        };
        for (what, text) in [
            ("pattern", &rule.pattern),
            ("replacement", &rule.replacement),
        ]
        .into_iter()
        .chain(rule.uses.iter().map(|u| ("uses", u)))
        {
            crate::nesting::check(&crate::source::Origin::Submitted, text)
                .map_err(|e| invalid(format!("the {what}: {}", e.message)))?;
        }
        let (_, pattern_names) = preprocess(&rule.pattern);
        let (_, replacement_names) = preprocess(&rule.replacement);
        for name in &replacement_names {
            if !pattern_names.contains(name) {
                return Err(invalid(format!(
                    "the replacement uses ${name}, which the pattern does not bind"
                )));
            }
        }
        for name in rule.metavars.keys() {
            if !pattern_names.contains(name) {
                return Err(invalid(format!(
                    "[metavars] constrains ${name}, which the pattern does not use"
                )));
            }
        }
        for u in &rule.uses {
            syn::parse_str::<syn::UseTree>(u)
                .map_err(|e| invalid(format!("uses: `{u}` is not a use path: {e}")))?;
        }
        rule.compile().map_err(invalid)?;
        Ok(rule)
    }

    fn compile(&self) -> Result<Compiled, String> {
        let (pattern, _) = preprocess(&self.pattern);
        let shape =
            parse_shape(&pattern).map_err(|e| format!("the pattern does not parse: {e}"))?;
        let (text, _) = preprocess(&self.replacement);
        let tight = match (&shape, parse_shape(&text)) {
            (_, Err(e)) => return Err(format!("the replacement does not parse: {e}")),
            (Shape::Expr(_), Ok(Shape::Stmts(_))) => {
                return Err("the pattern is an expression but the replacement is not".into());
            }
            (_, Ok(shape)) => tight_holes(&shape),
        };
        let mut holes = Vec::new();
        let mut from = 0;
        while let Some(i) = text[from..].find(MV) {
            let start = from + i;
            let len = text[start + MV.len()..]
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                .unwrap_or(text.len() - start - MV.len());
            let end = start + MV.len() + len;
            let before = text[..start].trim_end();
            let after = text[end..].trim_start();
            let braced = (before.ends_with('{') && after.starts_with('}'))
                .then(|| before.len() - 1..text.len() - after.len() + 1);
            holes.push(Hole {
                range: start..end,
                braced,
                name: text[start + MV.len()..end].to_owned(),
                tight: tight.contains(&start),
            });
            from = end;
        }
        Ok(Compiled {
            shape,
            template: Template { text, holes },
        })
    }
}

/// Byte offsets (in the template) of placeholders in positions binding tighter than
/// any binary operator.
fn tight_holes(shape: &Shape) -> HashSet<usize> {
    struct V(HashSet<usize>);
    impl V {
        fn mark(&mut self, e: &Expr) {
            if expr_metavar(e).is_some() {
                self.0.insert(e.span().byte_range().start);
            }
        }
    }
    impl<'a> Visit<'a> for V {
        fn visit_expr(&mut self, e: &'a Expr) {
            match e {
                Expr::MethodCall(m) => self.mark(&m.receiver),
                Expr::Field(f) => self.mark(&f.base),
                Expr::Index(i) => self.mark(&i.expr),
                Expr::Unary(u) => self.mark(&u.expr),
                Expr::Reference(r) => self.mark(&r.expr),
                Expr::Try(t) => self.mark(&t.expr),
                Expr::Await(a) => self.mark(&a.base),
                Expr::Cast(c) => self.mark(&c.expr),
                Expr::Binary(b) => {
                    self.mark(&b.left);
                    self.mark(&b.right);
                }
                Expr::Range(r) => {
                    if let Some(s) = &r.start {
                        self.mark(s);
                    }
                    if let Some(s) = &r.end {
                        self.mark(s);
                    }
                }
                _ => {}
            }
            syn::visit::visit_expr(self, e);
        }
    }
    let mut v = V(HashSet::new());
    match shape {
        Shape::Expr(e) => v.visit_expr(e),
        Shape::Stmts(stmts) => stmts.iter().for_each(|s| v.visit_stmt(s)),
    }
    v.0
}

/// The rules a run uses.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

impl RuleSet {
    /// The rules shipped with heph.
    pub fn builtin() -> RuleSet {
        let rules = BUILTIN
            .iter()
            .filter_map(|(id, text)| Rule::parse(id, text, "builtin").ok())
            .collect();
        RuleSet { rules }
    }

    /// Every `*.toml` file of `dir` (sorted by name), each a rule.
    pub fn load_dir(dir: &Path) -> Result<RuleSet, RuleError> {
        let read_err = |source| RuleError::Read {
            path: dir.to_owned(),
            source,
        };
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(read_err)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        let mut rules = Vec::new();
        for path in paths {
            let text = fs::read_to_string(&path).map_err(|source| RuleError::Read {
                path: path.clone(),
                source,
            })?;
            let id = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            rules.push(Rule::parse(&id, &text, &path.display().to_string())?);
        }
        Ok(RuleSet { rules })
    }

    /// Load `builtin` and/or directories (relative to `base`), later ids replacing earlier ones.
    pub fn load(sources: &[String], base: &Path) -> Result<RuleSet, RuleError> {
        let mut set = RuleSet::default();
        for s in sources {
            let more = if s == "builtin" {
                RuleSet::builtin()
            } else {
                RuleSet::load_dir(&base.join(s))?
            };
            for r in more.rules {
                set.rules.retain(|x| x.id != r.id);
                set.rules.push(r);
            }
        }
        Ok(set)
    }

    /// A set of these rules.
    pub fn from_rules(rules: Vec<Rule>) -> RuleSet {
        RuleSet { rules }
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Every match of every rule in `items` (a module's items inside `file`).
    pub(crate) fn find(&self, file: &SourceFile, items: &[syn::Item]) -> Vec<Match> {
        let mut out = Vec::new();
        for rule in &self.rules {
            out.extend(find_matches(rule, file, items));
        }
        out
    }
}

/// One place a rule applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Match {
    /// The rule's id.
    pub rule: String,
    /// The matched expression or statements (byte range of the file).
    pub range: Range<usize>,
    /// 1-based line of the match.
    pub line: usize,
    /// The matched text.
    pub before: String,
    /// Its replacement.
    pub after: String,
    /// The key of the enclosing item (`fn median`, `fn Stats::mean`).
    pub item: Option<String>,
    /// The enclosing item's kind.
    pub item_kind: Option<crate::item::ItemKind>,
    /// How many earlier matches of the same rule in the same item had the same text:
    /// with `rule`, `item` and `before`, identifies the match across edits elsewhere.
    pub occurrence: usize,
    /// The splices to apply, sorted, non-overlapping.
    #[serde(skip)]
    pub splices: Vec<Splice>,
}

impl Match {
    /// The file's text with this match rewritten.
    pub fn apply(&self, text: &str) -> String {
        apply_splices(text, &self.splices)
    }
}

/// Apply sorted, non-overlapping splices to `text`.
pub fn apply_splices(text: &str, splices: &[Splice]) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut at = 0;
    for s in splices {
        out.push_str(&text[at..s.range.start]);
        out.push_str(&s.text);
        at = s.range.end;
    }
    out.push_str(&text[at..]);
    out
}

/// Every match of `rule` in `items` of `file`.
pub(crate) fn find_matches(rule: &Rule, file: &SourceFile, items: &[syn::Item]) -> Vec<Match> {
    let Ok(compiled) = rule.compile() else {
        return Vec::new();
    };
    let mut finder = Finder {
        rule,
        compiled: &compiled,
        file,
        item: None,
        out: Vec::new(),
        module_items: items,
    };
    for item in items {
        if is_test_item(item) || matches!(item, syn::Item::Mod(_)) {
            continue;
        }
        finder.item = match item {
            syn::Item::Impl(_) => None,
            other => Some(ItemKey::of_item(other)),
        };
        finder.visit_item(item);
    }
    let mut seen: HashMap<(Option<String>, String), usize> = HashMap::new();
    for m in &mut finder.out {
        let n = seen.entry((m.item.clone(), m.before.clone())).or_insert(0);
        m.occurrence = *n;
        *n += 1;
    }
    finder.out
}

fn has_attr(attrs: &[syn::Attribute], test: impl Fn(&syn::Attribute) -> bool) -> bool {
    attrs.iter().any(test)
}

fn is_test_attr(a: &syn::Attribute) -> bool {
    if a.path().is_ident("test") {
        return true;
    }
    a.path().is_ident("cfg") && a.meta.to_token_stream().to_string().contains("test")
}

fn is_test_item(item: &syn::Item) -> bool {
    let attrs: &[syn::Attribute] = match item {
        syn::Item::Fn(f) => &f.attrs,
        syn::Item::Mod(m) => &m.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Const(c) => &c.attrs,
        syn::Item::Static(s) => &s.attrs,
        _ => return false,
    };
    has_attr(attrs, is_test_attr)
}

struct Finder<'a> {
    rule: &'a Rule,
    compiled: &'a Compiled,
    file: &'a SourceFile,
    item: Option<ItemKey>,
    out: Vec<Match>,
    module_items: &'a [syn::Item],
}

impl Finder<'_> {
    fn emit(&mut self, range: Range<usize>, bindings: &Bindings) {
        let text = self.file.text();
        let before = &text[range.clone()];
        let indent = line_indent(text, range.start);
        let nl = self.file.line_ending().as_str();
        let t = &self.compiled.template;
        let mut after = String::new();
        let mut at = 0;
        let push_template = |out: &mut String, chunk: &str| {
            // Lines of the template after its first get the match's indentation.
            out.push_str(&chunk.replace('\n', &format!("{nl}{indent}")));
        };
        for hole in &t.holes {
            let Some(b) = bindings.map.get(&hole.name) else {
                continue;
            };
            let (hole_range, bound) = match (&hole.braced, b.block) {
                (Some(r), true) => (r.clone(), &text[b.range.clone()]),
                (_, true) => (hole.range.clone(), inner_block(&text[b.range.clone()])),
                _ => (hole.range.clone(), &text[b.range.clone()]),
            };
            if hole_range.start < at {
                continue;
            }
            push_template(&mut after, &t.text[at..hole_range.start]);
            if hole.tight && !b.atomic {
                after.push('(');
                after.push_str(bound);
                after.push(')');
            } else {
                after.push_str(bound);
            }
            at = hole_range.end;
        }
        push_template(&mut after, &t.text[at..]);
        if after == before {
            return;
        }
        // Trim to the bytes that differ.
        let prefix = common_prefix(before, &after);
        let suffix = common_suffix(&before[prefix..], &after[prefix..]);
        let mut splices = vec![Splice {
            range: range.start + prefix..range.end - suffix,
            text: after[prefix..after.len() - suffix].to_owned(),
        }];
        if let Some(s) = self.use_splice() {
            splices.insert(0, s);
        }
        splices.sort_by_key(|s| s.range.start);
        let (line, _) = crate::source::line_col(text, range.start);
        self.out.push(Match {
            rule: self.rule.id.clone(),
            range: range.clone(),
            line,
            before: before.to_owned(),
            after,
            item: self.item.as_ref().map(ToString::to_string),
            item_kind: self.item.as_ref().map(|k| k.kind),
            occurrence: 0,
            splices,
        });
    }

    /// The insertion of the rule's missing `use` items at the top of the module.
    fn use_splice(&self) -> Option<Splice> {
        if self.rule.uses.is_empty() {
            return None;
        }
        let existing: HashSet<String> = self
            .module_items
            .iter()
            .filter_map(|i| match i {
                syn::Item::Use(u) => Some(u.tree.to_token_stream().to_string()),
                _ => None,
            })
            .collect();
        let missing: Vec<&String> = self
            .rule
            .uses
            .iter()
            .filter(|u| {
                syn::parse_str::<syn::UseTree>(u)
                    .map(|t| !existing.contains(&t.to_token_stream().to_string()))
                    .unwrap_or(false)
            })
            .collect();
        if missing.is_empty() {
            return None;
        }
        let text = self.file.text();
        let nl = self.file.line_ending().as_str();
        let last_use = self
            .module_items
            .iter()
            .rfind(|i| matches!(i, syn::Item::Use(_)));
        let (at, indent, lead) = match last_use.or(self.module_items.first()) {
            None => return None,
            Some(item) => {
                let r = self.file.range_of(item);
                let indent = line_indent(text, r.start).to_owned();
                if last_use.is_some() {
                    // After the end of the last use's line.
                    let end = text[r.end..]
                        .find('\n')
                        .map_or(text.len(), |i| r.end + i + 1);
                    (end, indent, String::new())
                } else {
                    let start = text[..r.start].rfind('\n').map_or(0, |i| i + 1);
                    (start, indent, String::new())
                }
            }
        };
        let mut insert = lead;
        for u in missing {
            insert.push_str(&format!("{indent}use {u};{nl}"));
        }
        if last_use.is_none() {
            insert.push_str(nl);
        }
        Some(Splice {
            range: at..at,
            text: insert,
        })
    }

    fn try_expr(&mut self, e: &Expr) {
        if let Shape::Expr(p) = &self.compiled.shape {
            let mut m = Matcher::new(self.file, &self.rule.metavars);
            if m.expr(p, e) {
                let bindings = m.bindings;
                self.emit(self.file.range_of(e), &bindings);
            }
        }
    }

    fn try_block(&mut self, b: &Block) {
        if let Shape::Stmts(p) = &self.compiled.shape {
            let n = p.len();
            if b.stmts.len() < n {
                return;
            }
            for i in 0..=b.stmts.len() - n {
                let window = &b.stmts[i..i + n];
                let mut m = Matcher::new(self.file, &self.rule.metavars);
                if p.iter().zip(window).all(|(ps, ts)| m.stmt(ps, ts)) {
                    let start = self.file.range_of(&window[0]).start;
                    let end = self.file.range_of(&window[n - 1]).end;
                    let bindings = m.bindings;
                    self.emit(start..end, &bindings);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Finder<'_> {
    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {
        // Inline child modules are modules of their own: matched when they are targets.
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !has_attr(&f.attrs, is_test_attr) {
            syn::visit::visit_item_fn(self, f);
        }
    }

    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        if has_attr(&i.attrs, is_test_attr) {
            return;
        }
        let owner = crate::item::impl_name(i);
        for member in &i.items {
            let saved = self.item.take();
            self.item = Some(ItemKey::of_member(&owner, member));
            self.visit_impl_item(member);
            self.item = saved;
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !has_attr(&f.attrs, is_test_attr) {
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_expr(&mut self, e: &'ast Expr) {
        self.try_expr(e);
        syn::visit::visit_expr(self, e);
    }

    fn visit_block(&mut self, b: &'ast Block) {
        self.try_block(b);
        syn::visit::visit_block(self, b);
    }
}

/// The leading whitespace of the line holding byte `at`.
fn line_indent(text: &str, at: usize) -> &str {
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = &text[start..];
    let len = line.len() - line.trim_start_matches([' ', '\t']).len();
    &line[..len]
}

/// The text between the braces of a block's text.
fn inner_block(block: &str) -> &str {
    let inner = block.strip_prefix('{').unwrap_or(block);
    inner.strip_suffix('}').unwrap_or(inner)
}

fn common_prefix(a: &str, b: &str) -> usize {
    let mut n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    while !a.is_char_boundary(n) || !b.is_char_boundary(n) {
        n -= 1;
    }
    n
}

fn common_suffix(a: &str, b: &str) -> usize {
    let mut n = a
        .bytes()
        .rev()
        .zip(b.bytes().rev())
        .take_while(|(x, y)| x == y)
        .count();
    while !a.is_char_boundary(a.len() - n) || !b.is_char_boundary(b.len() - n) {
        n -= 1;
    }
    n
}

/// The metavariable name of a placeholder identifier.
fn mv_name(ident: &proc_macro2::Ident) -> Option<String> {
    ident.to_string().strip_prefix(MV).map(str::to_owned)
}

/// `$x` as an expression.
fn expr_metavar(e: &Expr) -> Option<String> {
    match e {
        Expr::Path(p) if p.qself.is_none() && p.attrs.is_empty() => {
            let ident = p.path.get_ident()?;
            mv_name(ident)
        }
        _ => None,
    }
}

/// The token text of a node: equal for equal tokens, whatever the spacing.
fn tokens(node: &impl ToTokens) -> String {
    node.to_token_stream().to_string()
}

fn has_metavar(ts: TokenStream) -> bool {
    ts.into_iter().any(|tt| match tt {
        TokenTree::Ident(i) => i.to_string().starts_with(MV),
        TokenTree::Group(g) => has_metavar(g.stream()),
        _ => false,
    })
}

fn mentions_metavar(node: &impl ToTokens) -> bool {
    has_metavar(node.to_token_stream())
}

/// Expressions that never need parentheses as a receiver or operand.
fn is_atomic(e: &Expr) -> bool {
    matches!(
        e,
        Expr::Path(_)
            | Expr::Lit(_)
            | Expr::Call(_)
            | Expr::MethodCall(_)
            | Expr::Field(_)
            | Expr::Index(_)
            | Expr::Paren(_)
            | Expr::Macro(_)
            | Expr::Tuple(_)
            | Expr::Array(_)
            | Expr::Struct(_)
            | Expr::Try(_)
            | Expr::Await(_)
            | Expr::Block(_)
            | Expr::Repeat(_)
    )
}

fn is_pure(e: &Expr) -> bool {
    match e {
        Expr::Path(_) | Expr::Lit(_) => true,
        Expr::Field(f) => is_pure(&f.base),
        Expr::Paren(p) => is_pure(&p.expr),
        Expr::Reference(r) => is_pure(&r.expr),
        Expr::Unary(u) => is_pure(&u.expr),
        Expr::Index(i) => is_pure(&i.expr) && is_pure(&i.index),
        Expr::Cast(c) => is_pure(&c.expr),
        Expr::Binary(b) => {
            let op = tokens(&b.op);
            let assign = op.ends_with('=') && !matches!(op.as_str(), "==" | "<=" | ">=" | "!=");
            !assign && is_pure(&b.left) && is_pure(&b.right)
        }
        Expr::Tuple(t) => t.elems.iter().all(is_pure),
        Expr::Array(a) => a.elems.iter().all(is_pure),
        _ => false,
    }
}

#[derive(Default)]
struct Bindings {
    map: HashMap<String, Bound>,
}

struct Bound {
    range: Range<usize>,
    tokens: String,
    atomic: bool,
    /// A whole block, braces included (`{ $body }`).
    block: bool,
}

struct Matcher<'f> {
    file: &'f SourceFile,
    constraints: &'f BTreeMap<String, Constraint>,
    bindings: Bindings,
}

impl<'f> Matcher<'f> {
    fn new(file: &'f SourceFile, constraints: &'f BTreeMap<String, Constraint>) -> Self {
        Matcher {
            file,
            constraints,
            bindings: Bindings::default(),
        }
    }

    fn bind(&mut self, name: String, range: Range<usize>, tokens: String, atomic: bool) -> bool {
        if let Some(b) = self.bindings.map.get(&name) {
            return b.tokens == tokens;
        }
        self.bindings.map.insert(
            name,
            Bound {
                range,
                tokens,
                atomic,
                block: false,
            },
        );
        true
    }

    fn bind_expr(&mut self, name: String, e: &Expr) -> bool {
        let ok = match self.constraints.get(&name).copied().unwrap_or_default() {
            Constraint::Expr => true,
            Constraint::Ident => matches!(e, Expr::Path(p) if p.path.get_ident().is_some()),
            Constraint::Lit => matches!(e, Expr::Lit(_)),
            Constraint::Pure => is_pure(e),
        };
        ok && self.bind(name, self.file.range_of(e), tokens(e), is_atomic(e))
    }

    fn expr(&mut self, p: &Expr, t: &Expr) -> bool {
        if let Some(name) = expr_metavar(p) {
            return self.bind_expr(name, t);
        }
        if !mentions_metavar(p) {
            return tokens(p) == tokens(t);
        }
        match (p, t) {
            (Expr::MethodCall(a), Expr::MethodCall(b)) => {
                a.method == b.method
                    && match (&a.turbofish, &b.turbofish) {
                        (None, None) => true,
                        (Some(x), Some(y)) => self.generic_args(&x.args, &y.args),
                        _ => false,
                    }
                    && self.exprs(&a.args, &b.args)
                    && self.expr(&a.receiver, &b.receiver)
            }
            (Expr::Call(a), Expr::Call(b)) => {
                self.expr(&a.func, &b.func) && self.exprs(&a.args, &b.args)
            }
            (Expr::Binary(a), Expr::Binary(b)) => {
                tokens(&a.op) == tokens(&b.op)
                    && self.expr(&a.left, &b.left)
                    && self.expr(&a.right, &b.right)
            }
            (Expr::Unary(a), Expr::Unary(b)) => {
                tokens(&a.op) == tokens(&b.op) && self.expr(&a.expr, &b.expr)
            }
            (Expr::Reference(a), Expr::Reference(b)) => {
                a.mutability.is_some() == b.mutability.is_some() && self.expr(&a.expr, &b.expr)
            }
            (Expr::Field(a), Expr::Field(b)) => {
                tokens(&a.member) == tokens(&b.member) && self.expr(&a.base, &b.base)
            }
            (Expr::Index(a), Expr::Index(b)) => {
                self.expr(&a.expr, &b.expr) && self.expr(&a.index, &b.index)
            }
            (Expr::Paren(a), Expr::Paren(b)) => self.expr(&a.expr, &b.expr),
            (Expr::Try(a), Expr::Try(b)) => self.expr(&a.expr, &b.expr),
            (Expr::Await(a), Expr::Await(b)) => self.expr(&a.base, &b.base),
            (Expr::Cast(a), Expr::Cast(b)) => self.expr(&a.expr, &b.expr) && self.ty(&a.ty, &b.ty),
            (Expr::Assign(a), Expr::Assign(b)) => {
                self.expr(&a.left, &b.left) && self.expr(&a.right, &b.right)
            }
            (Expr::Tuple(a), Expr::Tuple(b)) => self.exprs(&a.elems, &b.elems),
            (Expr::Array(a), Expr::Array(b)) => self.exprs(&a.elems, &b.elems),
            (Expr::Macro(a), Expr::Macro(b)) => self.mac(&a.mac, &b.mac),
            (Expr::Block(a), Expr::Block(b)) => {
                a.label.is_none() && b.label.is_none() && self.block(&a.block, &b.block)
            }
            (Expr::ForLoop(a), Expr::ForLoop(b)) => {
                tokens(&a.label) == tokens(&b.label)
                    && self.pat(&a.pat, &b.pat)
                    && self.expr(&a.expr, &b.expr)
                    && self.block(&a.body, &b.body)
            }
            (Expr::Let(a), Expr::Let(b)) => self.pat(&a.pat, &b.pat) && self.expr(&a.expr, &b.expr),
            (Expr::Range(a), Expr::Range(b)) => {
                tokens(&a.limits) == tokens(&b.limits)
                    && self.opt_expr(a.start.as_deref(), b.start.as_deref())
                    && self.opt_expr(a.end.as_deref(), b.end.as_deref())
            }
            (Expr::Return(a), Expr::Return(b)) => {
                self.opt_expr(a.expr.as_deref(), b.expr.as_deref())
            }
            (Expr::Closure(a), Expr::Closure(b)) => {
                a.capture.is_some() == b.capture.is_some()
                    && a.inputs.len() == b.inputs.len()
                    && a.inputs.iter().zip(&b.inputs).all(|(x, y)| self.pat(x, y))
                    && tokens(&a.output) == tokens(&b.output)
                    && self.expr(&a.body, &b.body)
            }
            _ => false,
        }
    }

    fn opt_expr(&mut self, p: Option<&Expr>, t: Option<&Expr>) -> bool {
        match (p, t) {
            (None, None) => true,
            (Some(a), Some(b)) => self.expr(a, b),
            _ => false,
        }
    }

    fn exprs<P>(&mut self, p: &Punctuated<Expr, P>, t: &Punctuated<Expr, P>) -> bool {
        p.len() == t.len() && p.iter().zip(t).all(|(a, b)| self.expr(a, b))
    }

    fn generic_args<P>(
        &mut self,
        p: &Punctuated<syn::GenericArgument, P>,
        t: &Punctuated<syn::GenericArgument, P>,
    ) -> bool {
        p.len() == t.len()
            && p.iter().zip(t).all(|(a, b)| match (a, b) {
                (syn::GenericArgument::Type(x), syn::GenericArgument::Type(y)) => self.ty(x, y),
                (x, y) => !mentions_metavar(x) && tokens(x) == tokens(y),
            })
    }

    fn ty(&mut self, p: &Type, t: &Type) -> bool {
        if let Type::Path(tp) = p
            && tp.qself.is_none()
            && let Some(name) = tp.path.get_ident().and_then(mv_name)
        {
            return self.bind(name, self.file.range_of(t), tokens(t), true);
        }
        if !mentions_metavar(p) {
            return tokens(p) == tokens(t);
        }
        match (p, t) {
            (Type::Path(a), Type::Path(b)) => {
                a.qself.is_none()
                    && b.qself.is_none()
                    && a.path.leading_colon.is_some() == b.path.leading_colon.is_some()
                    && a.path.segments.len() == b.path.segments.len()
                    && a.path.segments.iter().zip(&b.path.segments).all(|(x, y)| {
                        x.ident == y.ident
                            && match (&x.arguments, &y.arguments) {
                                (syn::PathArguments::None, syn::PathArguments::None) => true,
                                (
                                    syn::PathArguments::AngleBracketed(xa),
                                    syn::PathArguments::AngleBracketed(ya),
                                ) => self.generic_args(&xa.args, &ya.args),
                                (xa, ya) => !mentions_metavar(xa) && tokens(xa) == tokens(ya),
                            }
                    })
            }
            (Type::Reference(a), Type::Reference(b)) => {
                a.mutability.is_some() == b.mutability.is_some() && self.ty(&a.elem, &b.elem)
            }
            _ => false,
        }
    }

    fn pat(&mut self, p: &Pat, t: &Pat) -> bool {
        if let Pat::Ident(pi) = p
            && let Some(name) = mv_name(&pi.ident)
        {
            if pi.by_ref.is_none() && pi.mutability.is_none() && pi.subpat.is_none() {
                return self.bind(name, self.file.range_of(t), tokens(t), true);
            }
            // `mut $v`: the same binding mode, any name.
            return match t {
                Pat::Ident(ti) => {
                    ti.by_ref.is_some() == pi.by_ref.is_some()
                        && ti.mutability.is_some() == pi.mutability.is_some()
                        && ti.subpat.is_none()
                        && self.bind(
                            name,
                            self.file.range(ti.ident.span()),
                            ti.ident.to_string(),
                            true,
                        )
                }
                _ => false,
            };
        }
        !mentions_metavar(p) && tokens(p) == tokens(t)
    }

    fn block(&mut self, p: &Block, t: &Block) -> bool {
        if let [Stmt::Expr(e, None)] = p.stmts.as_slice()
            && let Some(name) = expr_metavar(e)
        {
            let open = self.file.range(t.brace_token.span.open()).start;
            let close = self.file.range(t.brace_token.span.close()).end;
            let inner = t.stmts.iter().map(tokens).collect::<Vec<_>>().join(" ");
            let ok = self.bind(name.clone(), open..close, inner, true);
            if let Some(b) = self.bindings.map.get_mut(&name) {
                b.block = true;
            }
            return ok;
        }
        p.stmts.len() == t.stmts.len() && p.stmts.iter().zip(&t.stmts).all(|(a, b)| self.stmt(a, b))
    }

    fn stmt(&mut self, p: &Stmt, t: &Stmt) -> bool {
        match (p, t) {
            (Stmt::Local(a), Stmt::Local(b)) => {
                self.pat(&a.pat, &b.pat)
                    && match (&a.init, &b.init) {
                        (None, None) => true,
                        (Some(x), Some(y)) => {
                            x.diverge.is_none()
                                && y.diverge.is_none()
                                && self.expr(&x.expr, &y.expr)
                        }
                        _ => false,
                    }
            }
            (Stmt::Expr(a, sa), Stmt::Expr(b, sb)) => {
                sa.is_some() == sb.is_some() && self.expr(a, b)
            }
            (Stmt::Macro(a), Stmt::Macro(b)) => {
                a.semi_token.is_some() == b.semi_token.is_some() && self.mac(&a.mac, &b.mac)
            }
            (Stmt::Macro(a), Stmt::Expr(Expr::Macro(b), sb)) => {
                a.semi_token.is_some() == sb.is_some() && self.mac(&a.mac, &b.mac)
            }
            (Stmt::Expr(Expr::Macro(a), sa), Stmt::Macro(b)) => {
                sa.is_some() == b.semi_token.is_some() && self.mac(&a.mac, &b.mac)
            }
            (a, b) => !mentions_metavar(a) && tokens(a) == tokens(b),
        }
    }

    fn mac(&mut self, p: &syn::Macro, t: &syn::Macro) -> bool {
        if tokens(&p.path) != tokens(&t.path) {
            return false;
        }
        let ptoks: Vec<TokenTree> = p.tokens.clone().into_iter().collect();
        if let [TokenTree::Ident(i)] = ptoks.as_slice()
            && let Some(name) = mv_name(i)
        {
            let span = t.delimiter.span();
            let open = self.file.range(span.open()).end;
            let close = self.file.range(span.close()).start;
            return self.bind(name, open..close, t.tokens.to_string(), true);
        }
        if !has_metavar(p.tokens.clone()) {
            return p.tokens.to_string() == t.tokens.to_string();
        }
        let parse = |ts: &TokenStream| {
            syn::parse::Parser::parse2(
                Punctuated::<Expr, syn::Token![,]>::parse_terminated,
                ts.clone(),
            )
        };
        match (parse(&p.tokens), parse(&t.tokens)) {
            (Ok(a), Ok(b)) => self.exprs(&a, &b),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;
