//! The edit engine: merge, replace or remove items of one module by splicing text
//! into byte ranges of its file.
//!
//! Architecture invariant: no edit writes a byte outside the spans it names. An edit
//! is a list of [`Splice`]s (a byte range of the old text and its new text); every byte
//! outside those ranges is copied unchanged, so comments, blank lines, odd formatting,
//! CRLF line endings, a BOM, a shebang and inner attributes survive. A replaced item's
//! range is its span (first outer attribute or doc comment to last token); an added
//! item is a zero-length splice; a removed item's range is its span widened to the
//! whole lines it occupies when nothing else shares them (plus one blank line so no
//! double blank is left behind).

mod check;
mod format;
mod merge;
mod place;

use std::cell::OnceCell;
use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use quote::ToTokens;
use serde::Serialize;

use crate::cfg::{CfgError, CfgOption, CfgSet};
use crate::item::{ItemKey, ItemKind, KeyParseError, KeyQuery, impl_name};
use crate::source::{LineEnding, Origin, SourceFile, SyntaxError};

/// Where an edit finds the build configuration when it must choose among `#[cfg]`
/// copies (asked only then).
pub type CfgLookup<'a> = &'a dyn Fn() -> Result<Rc<CfgSet>, CfgError>;

/// How the module is changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EditMode {
    /// Each submitted item replaces the item with the same key, or is added; `impl`
    /// blocks merge member by member; `use` items are added when missing.
    Merge,
    /// The module's whole content is replaced by the submitted code, kept as written.
    Replace,
    /// The named items are removed.
    Remove,
}

/// How new item text is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Formatting {
    /// Formatted with prettyplease (doc comments kept, `//` comments dropped).
    #[default]
    Pretty,
    /// Kept exactly as submitted (comments included), only re-indented.
    Verbatim,
}

/// A change to apply to one module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// Merge, replace or remove.
    pub mode: EditMode,
    /// The submitted code (merge and replace).
    pub code: String,
    /// The item keys to remove (remove mode), as the user wrote them.
    pub items: Vec<String>,
    /// Layout of new item text (merge mode).
    pub formatting: Formatting,
    /// Options set on top of the default build when choosing among `#[cfg]` copies
    /// of a module or item (`--cfg 'feature = "x"'`).
    pub cfg: Vec<CfgOption>,
}

impl Edit {
    /// Merge `code` into the module.
    pub fn merge(code: impl Into<String>) -> Edit {
        Edit {
            mode: EditMode::Merge,
            code: code.into(),
            items: Vec::new(),
            formatting: Formatting::Pretty,
            cfg: Vec::new(),
        }
    }

    /// Replace the module's whole content with `code`.
    pub fn replace(code: impl Into<String>) -> Edit {
        Edit {
            mode: EditMode::Replace,
            code: code.into(),
            items: Vec::new(),
            formatting: Formatting::Verbatim,
            cfg: Vec::new(),
        }
    }

    /// Remove the items named by these keys (`fn helper`, `Point::norm`, ...).
    pub fn remove<I, S>(keys: I) -> Edit
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Edit {
            mode: EditMode::Remove,
            code: String::new(),
            items: keys.into_iter().map(Into::into).collect(),
            formatting: Formatting::Pretty,
            cfg: Vec::new(),
        }
    }

    /// Keep submitted items exactly as written instead of formatting them.
    pub fn verbatim(mut self) -> Edit {
        self.formatting = Formatting::Verbatim;
        self
    }

    /// Choose `#[cfg]` copies as a build with these options set too would.
    pub fn with_cfg(mut self, options: Vec<CfgOption>) -> Edit {
        self.cfg = options;
        self
    }
}

/// What happened to one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeAction {
    /// The item is new.
    Added,
    /// The item existed and its text changed.
    Replaced,
    /// The item was removed.
    Removed,
    /// The submitted item equals the existing one (same tokens): nothing was written.
    Unchanged,
}

impl ChangeAction {
    /// `added`, `replaced`, `removed`, `unchanged`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeAction::Added => "added",
            ChangeAction::Replaced => "replaced",
            ChangeAction::Removed => "removed",
            ChangeAction::Unchanged => "unchanged",
        }
    }
}

/// One item-level change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemChange {
    /// What happened.
    pub action: ChangeAction,
    /// The item's key, rendered (`fn test_function`, `fn Point::norm`).
    pub key: String,
    /// The item's kind.
    pub kind: ItemKind,
}

/// A replacement of a byte range of the old text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splice {
    /// The range of the old text (empty for an insertion).
    pub range: Range<usize>,
    /// The new text.
    pub text: String,
}

/// The result of an edit of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditOutcome {
    /// The file's new text.
    pub text: String,
    /// The item-level changes, in the order of the submitted code.
    pub changes: Vec<ItemChange>,
    /// The splices applied, sorted by position, non-overlapping.
    pub splices: Vec<Splice>,
    /// What the engine decided or ignored, for the user (the `#[cfg]` copy it chose,
    /// comments a formatted merge did not compare).
    pub notes: Vec<String>,
}

impl EditOutcome {
    /// True when the text did not change.
    pub fn is_noop(&self) -> bool {
        self.splices.is_empty()
    }
}

/// Why an edit cannot be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// The submitted code does not parse (or is not UTF-8).
    #[error("the submitted code is not valid Rust: {0}")]
    Syntax(Box<SyntaxError>),
    /// The edit produced a file that does not parse (a bug of heph, or code that only
    /// parses on its own): nothing was written.
    #[error("the edited file would not parse, so nothing was written: {0}")]
    ResultSyntax(Box<SyntaxError>),
    /// Merge or replace with no code.
    #[error("no code was given: submit at least one item")]
    EmptyCode,
    /// Remove mode without keys.
    #[error("no item to remove was named: pass --item KEY (e.g. `--item 'fn helper'`)")]
    NoItems,
    /// The submitted code holds two items with the same key.
    #[error(
        "the submitted code defines `{key}` twice (at lines {first} and {second}); submit each item once"
    )]
    DuplicateInCode {
        /// The key.
        key: String,
        /// 1-based line of the first.
        first: usize,
        /// 1-based line of the second.
        second: usize,
    },
    /// The module holds several items with the key an edit refers to.
    #[error("`{key}` matches several items of the module: {}; name it more precisely (kind, `#[cfg(..)]`, `Type::member`, or `KEY#N` for the N-th of identical items, as listed)", .candidates.join(", "))]
    Ambiguous {
        /// The key as given or derived.
        key: String,
        /// Keys of the matching items, with their lines.
        candidates: Vec<String>,
    },
    /// A key to remove matches nothing.
    #[error("the module has no item `{key}`{}", list_available(.available))]
    NoSuchItem {
        /// The key as given.
        key: String,
        /// The module's items, for the message.
        available: Vec<String>,
    },
    /// A key string could not be parsed.
    #[error(transparent)]
    Key(#[from] KeyParseError),
    /// The submission names no `#[cfg]`, the module has several `#[cfg]` copies of
    /// the item, and the build configuration does not tell which one is meant.
    #[error("`{key}` has no copy without #[cfg] but #[cfg] copies, and {reason}: {}; add the copy's #[cfg(..)] to the submitted item, or pick one with --cfg", .candidates.join(", "))]
    CfgCopies {
        /// The submitted key.
        key: String,
        /// Why no copy could be chosen.
        reason: String,
        /// The copies, with their lines.
        candidates: Vec<String>,
    },
    /// The build configuration could not be read.
    #[error(transparent)]
    Cfg(#[from] CfgError),
    /// The module to edit was not found inside its file.
    #[error("the inline module `{0}` was not found in its file")]
    NoInlineModule(String),
}

fn list_available(keys: &[String]) -> String {
    if keys.is_empty() {
        "; it has no items".to_owned()
    } else {
        let shown: Vec<&str> = keys.iter().take(12).map(String::as_str).collect();
        let more = if keys.len() > shown.len() {
            ", …"
        } else {
            ""
        };
        format!("; it has: {}{more}", shown.join(", "))
    }
}

impl crate::Categorized for EditError {
    fn category(&self) -> crate::ErrorCategory {
        match self {
            EditError::Cfg(e) => e.category(),
            _ => crate::ErrorCategory::BadInput,
        }
    }
}

/// Where items live: a file's top level, an inline module's braces, an impl's braces.
struct Container<'a> {
    items: Vec<Entry<'a>>,
    /// Bytes between the braces (or the file after its BOM/shebang).
    body: Range<usize>,
    /// The closing brace's offset, for braced containers.
    close: Option<usize>,
    /// Indentation of items inside.
    indent: String,
}

/// An existing item of a container. Only its key is computed up front: the token
/// text and the span cost a walk over the item's tokens each, and an edit needs them
/// for the few items it names or anchors on, not for every item of a large module.
struct Entry<'a> {
    key: ItemKey,
    node: Node<'a>,
    file: &'a SourceFile,
    data: OnceCell<EntryData>,
    /// Which of the items with this same key it is (1-based, in source order).
    occurrence: usize,
    /// How many items of its container have this same key.
    twins: usize,
}

/// What an entry's tokens say, computed on first use.
struct EntryData {
    range: Range<usize>,
    tokens: String,
    /// Where the item continues after its leading doc comments, when it has some.
    doc_end: Option<usize>,
    /// The tokens without the leading doc comments.
    tokens_nodoc: String,
}

impl<'a> Entry<'a> {
    fn new(file: &'a SourceFile, key: ItemKey, node: Node<'a>) -> Entry<'a> {
        Entry {
            key,
            node,
            file,
            data: OnceCell::new(),
            occurrence: 1,
            twins: 1,
        }
    }

    /// The key as heph shows it: `use super::*#2` when several items share it.
    fn shown(&self) -> String {
        if self.twins > 1 {
            format!("{}#{}", self.key, self.occurrence)
        } else {
            self.key.to_string()
        }
    }

    /// The item's outer attributes.
    fn attrs(&self) -> &'a [syn::Attribute] {
        match self.node {
            Node::Item(i) => crate::item::item_attrs(i),
            Node::Member(m) => member_attrs(m),
        }
    }

    fn data(&self) -> &EntryData {
        self.data.get_or_init(|| {
            let tokens = match self.node {
                Node::Item(i) => i.to_token_stream(),
                Node::Member(m) => m.to_token_stream(),
            };
            let (doc_end, tokens_nodoc) = split_docs(self.file, tokens.clone());
            EntryData {
                range: self.file.range_of(&tokens),
                tokens: token_text(&tokens),
                doc_end,
                tokens_nodoc,
            }
        })
    }

    /// The item's byte range: from its first outer attribute to its last token.
    fn range(&self) -> Range<usize> {
        self.data().range.clone()
    }

    /// The range a replacement by `new` covers, and whether `new` equals the item:
    /// when `new` has no doc comment, the existing doc comments are kept.
    fn replacement(&self, new: &impl ToTokens, new_has_docs: bool) -> (Range<usize>, bool) {
        let d = self.data();
        let new_tokens = token_text(&new.to_token_stream());
        match d.doc_end {
            Some(start) if !new_has_docs => (start..d.range.end, d.tokens_nodoc == new_tokens),
            _ => (d.range.clone(), d.tokens == new_tokens),
        }
    }
}

/// Tokens as text for comparisons; a CRLF inside a multi-line literal reads as LF, as
/// rustc reads it, so a CRLF file's items equal the (LF) submitted code.
fn token_text(tokens: &TokenStream) -> String {
    tokens.to_string().replace("\r\n", "\n")
}

/// Split leading doc attributes off an item's tokens: the offset where the rest
/// starts (None when there is no leading doc) and the rest's token text.
fn split_docs(file: &SourceFile, tokens: TokenStream) -> (Option<usize>, String) {
    let trees: Vec<TokenTree> = tokens.into_iter().collect();
    let mut i = 0;
    while i + 1 < trees.len() {
        let is_doc = matches!(&trees[i], TokenTree::Punct(p) if p.as_char() == '#')
            && matches!(&trees[i + 1], TokenTree::Group(g)
                if g.delimiter() == Delimiter::Bracket
                && matches!(g.stream().into_iter().next(), Some(TokenTree::Ident(id)) if id == "doc"));
        if !is_doc {
            break;
        }
        i += 2;
    }
    if i == 0 || i >= trees.len() {
        return (None, String::new());
    }
    let rest: TokenStream = trees[i..].iter().cloned().collect();
    (Some(file.range(trees[i].span()).start), token_text(&rest))
}

/// Does prettyplease print `item` as an item with the same key?
fn pretty_is_same_item(item: &syn::Item) -> bool {
    format::printable(item)
        && syn::parse_str::<syn::Item>(&format::pretty_item(item))
            .is_ok_and(|p| ItemKey::of_item(&p) == ItemKey::of_item(item))
}

fn has_docs(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| a.path().is_ident("doc"))
}

/// Number the entries that share a key (`#1`, `#2`, ...), in source order.
fn number(entries: &mut [Entry<'_>]) {
    let mut seen: HashMap<&ItemKey, usize> = HashMap::new();
    let occurrences: Vec<usize> = entries
        .iter()
        .map(|e| {
            let n = seen.entry(&e.key).or_insert(0);
            *n += 1;
            *n
        })
        .collect();
    let totals: Vec<usize> = entries.iter().map(|e| seen[&e.key]).collect();
    for ((e, occurrence), twins) in entries.iter_mut().zip(occurrences).zip(totals) {
        e.occurrence = occurrence;
        e.twins = twins;
    }
}

fn member_attrs(m: &syn::ImplItem) -> &[syn::Attribute] {
    match m {
        syn::ImplItem::Const(i) => &i.attrs,
        syn::ImplItem::Fn(i) => &i.attrs,
        syn::ImplItem::Type(i) => &i.attrs,
        syn::ImplItem::Macro(i) => &i.attrs,
        _ => &[],
    }
}

fn item_has_docs(item: &syn::Item) -> bool {
    let mut item = item.clone();
    crate::item::item_attrs_mut(&mut item).is_some_and(|a| has_docs(a))
}

enum Node<'a> {
    Item(&'a syn::Item),
    Member(&'a syn::ImplItem),
}

/// Which module of a file an edit works on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Within<'a> {
    /// The file's top level (empty) or the inline module reached by these item indices.
    Chain(&'a [usize]),
    /// This inline module item (read from a macro expansion; its spans point into the
    /// file).
    Module(&'a syn::ItemMod),
}

/// Apply `edit` to the module whose items are `file`'s top level (when `inline` is
/// empty) or the inline module reached by the item indices in `inline`. Without a
/// build configuration, a choice among `#[cfg]` copies is refused.
pub fn apply(file: &SourceFile, inline: &[usize], edit: &Edit) -> Result<EditOutcome, EditError> {
    apply_within(file, Within::Chain(inline), edit, None)
}

/// Apply `edit` to a module of `file`, asking `cfg` for the build configuration when
/// a submitted item has several `#[cfg]` copies.
pub(crate) fn apply_within(
    file: &SourceFile,
    within: Within<'_>,
    edit: &Edit,
    cfg: Option<CfgLookup<'_>>,
) -> Result<EditOutcome, EditError> {
    let mut engine = Engine::new(file, within, cfg)?;
    match edit.mode {
        EditMode::Merge => engine.merge(&edit.code, edit.formatting)?,
        EditMode::Replace => engine.replace(&edit.code)?,
        EditMode::Remove => engine.remove(&edit.items)?,
    }
    engine.finish()
}

/// Apply `edit` to `module` (resolved by [`crate::resolve::Resolver`]) inside its parsed
/// `file`, asking `cfg` for the build configuration when a submitted item has several
/// `#[cfg]` copies.
pub fn apply_to_module(
    file: &SourceFile,
    module: &crate::resolve::Module,
    edit: &Edit,
    cfg: Option<CfgLookup<'_>>,
) -> Result<EditOutcome, EditError> {
    apply_within(file, module.within(), edit, cfg)
}

/// Apply `edit` to the inline module named by `names` (outermost first) in `text`, or to
/// the whole file when `names` is empty. Convenient for tests and tools without a
/// project.
pub fn apply_to_text(text: &str, names: &[&str], edit: &Edit) -> Result<EditOutcome, EditError> {
    let file = SourceFile::parse(Origin::File("<input>".into()), text.to_owned())
        .map_err(EditError::ResultSyntax)?;
    let mut chain = Vec::new();
    let mut items: &[syn::Item] = &file.syntax().items;
    for name in names {
        let (i, m) = items
            .iter()
            .enumerate()
            .find_map(|(i, it)| match it {
                syn::Item::Mod(m) if m.ident == name && m.content.is_some() => Some((i, m)),
                _ => None,
            })
            .ok_or_else(|| EditError::NoInlineModule((*name).to_owned()))?;
        chain.push(i);
        items = m.content.as_ref().map_or(&[], |(_, v)| v.as_slice());
    }
    apply(&file, &chain, edit)
}

struct Engine<'a> {
    file: &'a SourceFile,
    text: &'a str,
    eol: LineEnding,
    module: Container<'a>,
    splices: Vec<Pending>,
    changes: Vec<ItemChange>,
    order: usize,
    /// The module indents with tabs: formatted text is converted.
    tabs: bool,
    /// The end of the module's inner attributes (or its body's start).
    after_attrs: usize,
    /// Notes for the outcome.
    notes: Vec<String>,
    /// The build configuration, asked for when `#[cfg]` copies must be chosen among.
    cfg: Option<CfgLookup<'a>>,
}

/// A splice before sorting, with the order it was made in and whether it must be
/// separated by a blank line from an insertion made at the same point before it.
struct Pending {
    splice: Splice,
    order: usize,
    separate: bool,
}

/// An item a key to remove designates.
struct Hit {
    key: ItemKey,
    shown: String,
    occurrence: usize,
    range: Range<usize>,
    attrs: Vec<syn::Attribute>,
    /// The container's body and closing brace.
    body: Range<usize>,
    close: Option<usize>,
}

/// How an insertion is laid out relative to its neighbours.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spacing {
    /// Separated by blank lines (most items).
    Blank,
    /// On the next line, no blank line (`use`, `extern crate`, `mod x;`).
    Tight,
}

impl<'a> Engine<'a> {
    fn new(
        file: &'a SourceFile,
        within: Within<'a>,
        cfg: Option<CfgLookup<'a>>,
    ) -> Result<Self, EditError> {
        let text = file.text();
        let mut items: &'a [syn::Item] = &file.syntax().items;
        let mut braced: Option<&'a syn::ItemMod> = None;
        match within {
            Within::Chain(inline) => {
                for &i in inline {
                    match items.get(i) {
                        Some(syn::Item::Mod(m)) if m.content.is_some() => {
                            braced = Some(m);
                            items = m.content.as_ref().map_or(&[], |(_, v)| v.as_slice());
                        }
                        _ => return Err(EditError::NoInlineModule(format!("#{i}"))),
                    }
                }
            }
            Within::Module(m) => match &m.content {
                Some((_, v)) => {
                    braced = Some(m);
                    items = v.as_slice();
                }
                None => return Err(EditError::NoInlineModule(m.ident.to_string())),
            },
        }
        let (body, close, default_indent) = match braced {
            None => (file.prefix_len()..text.len(), None, String::new()),
            Some(m) => {
                let brace = &m.content.as_ref().map(|(b, _)| b).expect("braced");
                let open = file.range(brace.span.open()).end;
                let close = file.range(brace.span.close()).start;
                let outer = line_indent(text, file.range_of(m).start);
                (
                    open..close,
                    Some(close),
                    format!("{outer}{}", indent_unit(&outer)),
                )
            }
        };
        // The module's inner attributes (`#![..]`, `//!`) end where only comments and
        // whitespace are left before its first item.
        let inner_attrs = braced.map_or(&file.syntax().attrs, |m| &m.attrs);
        let after_attrs = inner_attrs
            .iter()
            .filter(|a| matches!(a.style, syn::AttrStyle::Inner(_)))
            .map(|a| file.range_of(a).end)
            .fold(body.start, usize::max);
        let mut entries: Vec<Entry<'a>> = items
            .iter()
            .map(|it| Entry::new(file, ItemKey::of_item(it), Node::Item(it)))
            .collect();
        number(&mut entries);
        let indent = entries
            .first()
            .and_then(|e| own_line_indent(text, e.range().start))
            .unwrap_or(default_indent);
        // The module's own indentation decides; at the top level (no indentation) the
        // file's majority does. Either way new text never tips the decision.
        let tabs = if indent.is_empty() {
            tabs_majority(text, &[])
        } else {
            indent.contains('\t')
        };
        Ok(Engine {
            file,
            text,
            eol: file.line_ending(),
            module: Container {
                items: entries,
                body,
                close,
                indent,
            },
            splices: Vec::new(),
            changes: Vec::new(),
            order: 0,
            tabs,
            after_attrs,
            notes: Vec::new(),
            cfg,
        })
    }

    fn splice(&mut self, range: Range<usize>, text: String) {
        self.splice_with(range, text, false);
    }

    fn splice_with(&mut self, range: Range<usize>, text: String, separate: bool) {
        self.order += 1;
        self.splices.push(Pending {
            splice: Splice { range, text },
            order: self.order,
            separate,
        });
    }

    /// Formatted (prettyplease) text in the file's indentation style.
    fn styled(&self, raw: String, formatting: Formatting) -> String {
        if self.tabs && formatting == Formatting::Pretty {
            format::tabify(&raw)
        } else {
            raw
        }
    }

    fn change(&mut self, action: ChangeAction, key: &ItemKey) {
        self.change_shown(action, &key.to_string(), key.kind);
    }

    fn change_shown(&mut self, action: ChangeAction, shown: &str, kind: ItemKind) {
        self.changes.push(ItemChange {
            action,
            key: shown.to_owned(),
            kind,
        });
    }

    fn ambiguous(&self, key: &str, candidates: impl Iterator<Item = (String, usize)>) -> EditError {
        EditError::Ambiguous {
            key: key.to_owned(),
            candidates: candidates
                .map(|(k, off)| {
                    let (l, _) = crate::source::line_col(self.text, off);
                    format!("`{k}` (line {l})")
                })
                .collect(),
        }
    }

    // ----- replace -----

    fn replace(&mut self, code: &str) -> Result<(), EditError> {
        // A BOM belongs at the start of a file only: the module keeps its own.
        let code = code.strip_prefix('\u{feff}').unwrap_or(code);
        let code = code.replace("\r\n", "\n");
        let parsed =
            SourceFile::parse(Origin::Submitted, code.clone()).map_err(EditError::Syntax)?;
        if parsed.syntax().items.is_empty() && parsed.syntax().attrs.is_empty() {
            return Err(EditError::EmptyCode);
        }
        // Item changes: compare old and new keys.
        let old: Vec<(ItemKey, String)> = self
            .module
            .items
            .iter()
            .map(|e| (e.key.clone(), e.data().tokens.clone()))
            .collect();
        let new: Vec<(ItemKey, String)> = parsed
            .syntax()
            .items
            .iter()
            .map(|i| (ItemKey::of_item(i), token_text(&i.to_token_stream())))
            .collect();
        for (k, t) in &new {
            match old.iter().find(|(ok, _)| ok == k) {
                None => self.change(ChangeAction::Added, k),
                Some((_, ot)) if ot == t => self.change(ChangeAction::Unchanged, k),
                Some(_) => self.change(ChangeAction::Replaced, k),
            }
        }
        for (k, _) in &old {
            if !new.iter().any(|(nk, _)| nk == k) {
                self.change(ChangeAction::Removed, k);
            }
        }
        let body = code.trim_matches('\n');
        let eol = self.eol.as_str();
        match self.module.close {
            None => {
                // Keep a BOM and a shebang line with its line break, as they are.
                let mut start = self.module.body.start;
                let shebang = self.text[..start]
                    .trim_start_matches('\u{feff}')
                    .starts_with("#!");
                let lead = if !shebang {
                    ""
                } else if self.text[start..].starts_with('\n') {
                    start += 1;
                    ""
                } else {
                    eol
                };
                let text = format!("{lead}{}{eol}", self.eol.apply(body));
                self.splice(start..self.text.len(), text);
            }
            Some(close) => {
                let indent = self.module.indent.clone();
                let close_indent = line_indent(self.text, close);
                let indented = format::indent(body, &indent, true);
                let text = format!("{eol}{}{eol}{close_indent}", self.eol.apply(&indented));
                self.splice(self.module.body.start..close, text);
            }
        }
        Ok(())
    }

    // ----- remove -----

    fn remove(&mut self, keys: &[String]) -> Result<(), EditError> {
        if keys.is_empty() {
            return Err(EditError::NoItems);
        }
        let mut removed: Vec<Range<usize>> = Vec::new();
        for text in keys {
            let query = KeyQuery::parse(text)?;
            let mut hits: Vec<Hit> = Vec::new();
            let hit = |e: &Entry<'_>, body: Range<usize>, close: Option<usize>| Hit {
                key: e.key.clone(),
                shown: e.shown(),
                occurrence: e.occurrence,
                range: e.range(),
                attrs: e.attrs().to_vec(),
                body,
                close,
            };
            if query.key.owner.is_none() {
                for e in &self.module.items {
                    if query.matches(&e.key) {
                        hits.push(hit(e, self.module.body.clone(), self.module.close));
                    }
                }
            } else {
                for e in &self.module.items {
                    if let Node::Item(syn::Item::Impl(imp)) = e.node {
                        let owner = impl_name(imp);
                        // `Point::fmt` designates members of `impl Point` and of
                        // `impl Trait for Point`.
                        let wanted = query.key.owner.as_deref().unwrap_or_default();
                        let owner_matches = owner == wanted
                            || owner
                                .strip_suffix(wanted)
                                .is_some_and(|h| h.ends_with(" for "));
                        if !owner_matches {
                            continue;
                        }
                        let c = self.impl_container(imp, &owner);
                        for m in &c.items {
                            let mut q = query.clone();
                            q.key.owner = m.key.owner.clone();
                            if q.matches(&m.key) {
                                hits.push(hit(m, c.body.clone(), c.close));
                            }
                        }
                    }
                }
            }
            // `KEY#N`: the N-th of the items that share that key.
            if let Some(n) = query.occurrence {
                hits.retain(|h| h.occurrence == n);
            }
            // Several loose matches: the one that matches exactly wins, so every item
            // can be named: `fn f` is the `f` without cfg beside a `#[cfg(test)] fn f`,
            // `Point::fmt` the inherent method beside `<Point as Display>::fmt`.
            if hits.len() > 1 && !query.cfg_given && hits.iter().any(|h| h.key.cfg.is_empty()) {
                hits.retain(|h| h.key.cfg.is_empty());
            }
            if hits.len() > 1 && hits.iter().any(|h| h.key.owner == query.key.owner) {
                hits.retain(|h| h.key.owner == query.key.owner);
            }
            // `#[cfg]` copies of one item, none named: the one the build compiles.
            let copies = hits.len() > 1
                && !query.cfg_given
                && hits.iter().all(|h| {
                    h.key.kind == hits[0].key.kind
                        && h.key.name == hits[0].key.name
                        && h.key.owner == hits[0].key.owner
                        && !h.key.cfg.is_empty()
                });
            if copies && let Some(lookup) = self.cfg {
                let set = lookup()?;
                let attrs: Vec<&[syn::Attribute]> =
                    hits.iter().map(|h| h.attrs.as_slice()).collect();
                if let crate::cfg::Pick::One(i) = crate::cfg::pick(&set, &attrs) {
                    let others: Vec<String> = hits
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, h)| format!("`{}`", h.shown))
                        .collect();
                    self.notes.push(format!(
                        "`{text}`: removed `{}`, the copy the build compiles; other copies: {}",
                        hits[i].shown,
                        others.join(", ")
                    ));
                    hits = vec![hits.swap_remove(i)];
                }
            }
            match hits.len() {
                0 => {
                    return Err(EditError::NoSuchItem {
                        key: text.clone(),
                        available: self.module.items.iter().map(Entry::shown).collect(),
                    });
                }
                1 => {
                    let Hit {
                        shown,
                        range,
                        body,
                        close,
                        key,
                        ..
                    } = hits.remove(0);
                    if removed
                        .iter()
                        .any(|r| r.start <= range.start && range.end <= r.end)
                    {
                        continue; // already removed (named twice)
                    }
                    let mut r = self.removal_range(range, body, close);
                    // A removal that contains earlier ones (a member, then its impl)
                    // replaces them; a blank line two removals share goes once.
                    removed.retain(|p| !(r.start <= p.start && p.end <= r.end));
                    self.splices.retain(|p| {
                        !(r.start <= p.splice.range.start && p.splice.range.end <= r.end)
                    });
                    for p in &removed {
                        if p.start < r.end && r.start < p.end {
                            if p.start <= r.start {
                                r.start = p.end;
                            } else {
                                r.end = p.start;
                            }
                        }
                    }
                    removed.push(r.clone());
                    self.splice(r, String::new());
                    self.change_shown(ChangeAction::Removed, &shown, key.kind);
                }
                _ => {
                    return Err(
                        self.ambiguous(text, hits.into_iter().map(|h| (h.shown, h.range.start)))
                    );
                }
            }
        }
        Ok(())
    }

    /// Widen an item's span to its whole lines when it has them to itself, plus one
    /// blank line so that no double blank line is left.
    fn removal_range(
        &self,
        range: Range<usize>,
        body: Range<usize>,
        close: Option<usize>,
    ) -> Range<usize> {
        let t = self.text;
        let line_start = t[..range.start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = t[range.end..]
            .find('\n')
            .map_or(t.len(), |i| range.end + i + 1);
        let own_lines = t[line_start..range.start].trim().is_empty()
            && t[range.end..line_end].trim().is_empty()
            && line_start >= body.start
            && close.is_none_or(|c| line_end <= c);
        if !own_lines {
            return range;
        }
        let mut start = line_start;
        let mut end = line_end;
        let is_blank = |r: Range<usize>| t[r].trim().is_empty();
        let body_start = body.start;
        let next_end = t[end..].find('\n').map_or(t.len(), |i| end + i + 1);
        let next_is_blank = end < t.len() && is_blank(end..next_end);
        let next_is_close =
            end >= t.len() || close.is_some_and(|c| end <= c && t[end..c].trim().is_empty());
        // The line before: blank, or the container's opening line (or the file start).
        let prev_start = if start > 0 {
            t[..start - 1].rfind('\n').map_or(0, |i| i + 1)
        } else {
            0
        };
        let prev_is_blank = start > 0 && prev_start >= body_start && is_blank(prev_start..start);
        let prev_is_open =
            start == 0 || start <= body_start || t[body_start..start].trim().is_empty();
        if prev_is_blank && (next_is_blank || next_is_close) {
            start = prev_start;
        } else if prev_is_open && next_is_blank {
            end = next_end;
        }
        start..end
    }

    // ----- finish -----

    fn finish(self) -> Result<EditOutcome, EditError> {
        let mut splices = self.splices;
        splices.sort_by_key(|p| (p.splice.range.start, p.splice.range.end, p.order));
        let eol = self.eol.as_str();
        let mut out = String::with_capacity(self.text.len() + 256);
        let mut pos = 0;
        let mut applied: Vec<Splice> = Vec::with_capacity(splices.len());
        for p in splices {
            let mut s = p.splice;
            // Two insertions at one point: keep a blank line between them.
            if let Some(prev) = applied.last()
                && prev.range.is_empty()
                && s.range.is_empty()
                && prev.range.start == s.range.start
                && p.separate
                && !s.text.starts_with(eol)
            {
                s.text.insert_str(0, eol);
            }
            debug_assert!(s.range.start >= pos, "overlapping splices");
            let start = s.range.start.max(pos);
            out.push_str(&self.text[pos..start]);
            out.push_str(&s.text);
            pos = s.range.end.max(start);
            applied.push(s);
        }
        out.push_str(&self.text[pos..]);
        let path = match self.file.origin() {
            Origin::File(p) | Origin::Result(p) => p.clone(),
            Origin::Submitted => "<module>".into(),
        };
        if !applied.is_empty() {
            check::check_result(self.file, &applied, &out, &path)
                .map_err(EditError::ResultSyntax)?;
        }
        Ok(EditOutcome {
            text: out,
            changes: self.changes,
            splices: applied,
            notes: self.notes,
        })
    }
}

/// Do more lines of `text` start with a tab than with four spaces? Lines that overlap
/// a range of `skip` do not count.
fn tabs_majority(text: &str, skip: &[Range<usize>]) -> bool {
    let (mut tabs, mut spaces, mut start) = (0usize, 0usize, 0usize);
    for line in text.split_inclusive('\n') {
        let end = start + line.len();
        if !skip.iter().any(|r| start < r.end && r.start < end) {
            if line.starts_with('\t') {
                tabs += 1;
            } else if line.starts_with("    ") {
                spaces += 1;
            }
        }
        start = end;
    }
    tabs > spaces
}

/// Offsets of the `//` comments in `trivia`, which holds only whitespace and comments
/// (block comments nest, as in Rust).
fn line_comments(trivia: &str) -> Vec<usize> {
    let b = trivia.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            out.push(i);
            i = b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |n| i + n);
        } else if b[i..].starts_with(b"/*") {
            i = crate::source::block_comment_end(&trivia[i..]).map_or(b.len(), |n| i + n);
        } else {
            i += 1;
        }
    }
    out
}

/// The whitespace at the start of the line holding byte `pos`, up to the first
/// non-whitespace character.
fn line_indent(text: &str, pos: usize) -> String {
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    text[line_start..]
        .chars()
        .take_while(|c| *c == ' ' || *c == '\t')
        .collect()
}

/// The indentation of the line holding byte `pos` when only whitespace precedes `pos`
/// on that line.
fn own_line_indent(text: &str, pos: usize) -> Option<String> {
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let lead = &text[line_start..pos];
    lead.trim().is_empty().then(|| lead.to_owned())
}

/// One level of indentation in the style of `outer`.
fn indent_unit(outer: &str) -> &'static str {
    if outer.starts_with('\t') {
        "\t"
    } else {
        "    "
    }
}

#[cfg(test)]
mod tests;
