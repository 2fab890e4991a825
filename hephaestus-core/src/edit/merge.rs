//! Merge mode: each submitted item replaces the item with the same key (the `#[cfg]`
//! copy the build compiles when the submission names no cfg), or is added; an `impl`
//! merges its header and then member by member.
//!
//! What counts as "unchanged": in verbatim mode, the bytes that would be written equal
//! the file's (a comment or a blank line is a change); in formatted mode, the tokens
//! (comments and layout are not compared, and a note says so when they differed).
//!
//! An impl's header (attributes, generics, trait path, self type, where clause) is
//! replaced by the submitted one when their tokens differ. Attributes: a submission
//! without outer attributes keeps the existing impl's; one with attributes replaces
//! them, except doc comments, kept when the submission has none (as for every item).

use std::cell::OnceCell;
use std::collections::HashMap;
use std::ops::Range;

use proc_macro2::{Delimiter, TokenTree};
use quote::ToTokens;

use super::{
    ChangeAction, Container, EditError, Engine, Entry, Formatting, Node, Spacing, format, has_docs,
    impl_name, indent_unit, item_has_docs, line_indent, member_attrs, own_line_indent,
    pretty_is_same_item, tabs_majority, token_text,
};
use crate::cfg::{self, Pick};
use crate::item::{ItemKey, ItemKind};
use crate::source::parse_items;

/// The existing items a submitted item designates.
pub(super) struct Designated {
    /// Indices into the entries searched.
    pub indices: Vec<usize>,
    /// The one found is a `#[cfg]` copy chosen by the build configuration: its cfg
    /// attributes are kept in front of the submitted text.
    pub keep_cfg: bool,
    /// What to tell the user about the choice.
    pub note: Option<String>,
}

impl<'a> Engine<'a> {
    pub(super) fn merge(&mut self, code: &str, formatting: Formatting) -> Result<(), EditError> {
        // CRLF inside a multi-line literal would reach the file as written (prettyplease
        // prints literals as they are): work on LF, the file's ending is applied later.
        let code = &code.replace("\r\n", "\n");
        let (items, ranges) = parse_items(code).map_err(EditError::Syntax)?;
        if items.is_empty() {
            return Err(EditError::EmptyCode);
        }
        let line = |r: &Range<usize>| crate::source::line_col(code, r.start).0;
        if self.module.indent.is_empty() {
            // The file's majority decides, not counting the items this merge names:
            // the text it writes must not tip the decision for the same merge again.
            let keys: Vec<ItemKey> = items.iter().map(ItemKey::of_item).collect();
            let named: Vec<Range<usize>> = self
                .module
                .items
                .iter()
                .filter(|e| keys.contains(&e.key))
                .map(|e| e.range())
                .collect();
            self.tabs = tabs_majority(self.text, &named);
        }
        // Submitted impls with the same key are merged together, but a member twice is
        // refused like other duplicates; a repeated `use` is added once.
        let mut seen: HashMap<ItemKey, usize> = HashMap::new();
        let mut seen_members: HashMap<(ItemKey, ItemKey), usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let key = ItemKey::of_item(item);
            if let syn::Item::Impl(imp) = item {
                let owner = impl_name(imp);
                for m in &imp.items {
                    let mkey = ItemKey::of_member(&owner, m);
                    let at = syn::spanned::Spanned::span(m).byte_range();
                    if let Some(first) = seen_members.get(&(key.clone(), mkey.clone())) {
                        return Err(EditError::DuplicateInCode {
                            key: mkey.to_string(),
                            first: line(&(*first..*first)),
                            second: line(&at),
                        });
                    }
                    seen_members.insert((key.clone(), mkey), at.start);
                }
                continue;
            }
            if key.kind == ItemKind::Use {
                continue;
            }
            if let Some(&j) = seen.get(&key) {
                return Err(EditError::DuplicateInCode {
                    key: key.to_string(),
                    first: line(&ranges[j]),
                    second: line(&ranges[i]),
                });
            }
            seen.insert(key, i);
        }
        let mut added: Vec<ItemKey> = Vec::new();
        let requested = formatting;
        for (item, range) in items.iter().zip(&ranges) {
            // What prettyplease cannot print, or prints as another item (a bare trait
            // object gains a `dyn`: another key), is kept as written. (Asked only when
            // new text is needed: an unchanged item is never printed.)
            let printable = OnceCell::new();
            let effective = || {
                let pretty = requested == Formatting::Pretty;
                if pretty && !*printable.get_or_init(|| pretty_is_same_item(item)) {
                    Formatting::Verbatim
                } else {
                    requested
                }
            };
            let new_text = |indent: &str, first: bool| {
                let formatting = effective();
                let raw = match formatting {
                    Formatting::Pretty => format::pretty_item(item),
                    Formatting::Verbatim => format::verbatim(code, range.clone(), indent),
                };
                format::indent(&self.styled(raw, formatting), indent, first)
            };
            let key = ItemKey::of_item(item);
            if let syn::Item::Impl(imp) = item {
                self.merge_impl(imp, &key, code, range, effective())?;
                continue;
            }
            if key.kind == ItemKind::Use || key.kind.named_by_text() {
                let present = self.module.items.iter().any(|e| e.key == key);
                if !present && !added.contains(&key) {
                    let text = new_text(&self.module.indent.clone(), false);
                    self.add_item(&key, item, text);
                    added.push(key);
                } else {
                    self.change(ChangeAction::Unchanged, &key);
                }
                continue;
            }
            let refs: Vec<&Entry<'a>> = self.module.items.iter().collect();
            let found = self.designate(&refs, &key)?;
            match found.indices.as_slice() {
                [] => {
                    let text = new_text(&self.module.indent.clone(), false);
                    self.add_item(&key, item, text);
                }
                [i] => {
                    let entry = &self.module.items[*i];
                    let (r, same) = entry.replacement(item, item_has_docs(item));
                    let indent = self.item_indent(entry.range().start);
                    let prefix = self.cfg_prefix(entry, &found, &indent);
                    let as_sent = (requested == Formatting::Pretty).then(|| {
                        let raw = format::verbatim(code, range.clone(), &indent);
                        let text = self.eol.apply(&format::indent(&raw, &indent, false));
                        format!("{prefix}{text}")
                    });
                    let shown = entry.shown();
                    // Formatted and the same tokens: unchanged, never printed.
                    let text = match &as_sent {
                        Some(sent) if same => sent.clone(),
                        _ => format!("{prefix}{}", self.eol.apply(&new_text(&indent, false))),
                    };
                    let formatting = effective_mode(requested, same, &effective);
                    self.replace_or_keep(r, text, same, formatting, as_sent, &shown, key.kind);
                }
                many => {
                    return Err(self.ambiguous(
                        &key.to_string(),
                        many.iter().map(|&i| {
                            let e = &self.module.items[i];
                            (e.shown(), e.range().start)
                        }),
                    ));
                }
            }
            if let Some(note) = found.note {
                self.notes.push(note);
            }
        }
        Ok(())
    }

    /// The entries a submitted item with `key` designates: those with exactly that key;
    /// else, when the submission names no `#[cfg]`, the `#[cfg]` copy of that name the
    /// build compiles. Refuses when the build configuration cannot tell.
    pub(super) fn designate(
        &self,
        entries: &[&Entry<'a>],
        key: &ItemKey,
    ) -> Result<Designated, EditError> {
        let exact: Vec<usize> = (0..entries.len())
            .filter(|&i| entries[i].key == *key)
            .collect();
        let none = |indices| Designated {
            indices,
            keep_cfg: false,
            note: None,
        };
        if !exact.is_empty() || !key.cfg.is_empty() || key.kind.named_by_text() {
            return Ok(none(exact));
        }
        let copies: Vec<usize> = (0..entries.len())
            .filter(|&i| {
                let k = &entries[i].key;
                k.kind == key.kind && k.name == key.name && k.owner == key.owner
            })
            .collect();
        if copies.is_empty() {
            return Ok(none(exact));
        }
        let show = |i: usize| {
            let (l, _) = crate::source::line_col(self.text, entries[i].range().start);
            format!("`{}` (line {l})", entries[i].shown())
        };
        let set = match self.cfg {
            Some(lookup) => Some(lookup().map_err(EditError::Cfg)?),
            None => None,
        };
        let attrs: Vec<&[syn::Attribute]> = copies.iter().map(|&i| entries[i].attrs()).collect();
        let picked = match &set {
            Some(set) => cfg::pick(set, &attrs),
            None => Pick::Several((0..copies.len()).collect()),
        };
        let reason = match picked {
            Pick::One(c) => {
                let i = copies[c];
                let others: Vec<String> = copies
                    .iter()
                    .filter(|&&j| j != i)
                    .map(|&j| show(j))
                    .collect();
                let by = match &set {
                    Some(s) if !s.given().is_empty() => "the build with the given --cfg compiles",
                    _ => "the default build compiles",
                };
                let others = if others.is_empty() {
                    String::new()
                } else {
                    format!("; other copies: {}", others.join(", "))
                };
                return Ok(Designated {
                    indices: vec![i],
                    keep_cfg: true,
                    note: Some(format!(
                        "`{key}` has no copy without #[cfg]: replaced {}, the copy {by}, keeping its #[cfg]{others}",
                        show(i)
                    )),
                });
            }
            Pick::NoneActive => "the build compiles none of them",
            Pick::Several(_) if set.is_none() => "heph has no build configuration to choose with",
            Pick::Several(_) => "the build compiles more than one of them",
        };
        Err(EditError::CfgCopies {
            key: key.to_string(),
            reason: reason.to_owned(),
            candidates: copies.iter().map(|&i| show(i)).collect(),
        })
    }

    /// The `#[cfg]` attributes of a copy chosen by the build configuration, as written,
    /// each followed by a line break and `indent`, to go before the submitted text.
    fn cfg_prefix(&self, entry: &Entry<'a>, found: &Designated, indent: &str) -> String {
        if !found.keep_cfg {
            return String::new();
        }
        let eol = self.eol.as_str();
        entry
            .attrs()
            .iter()
            .filter(|a| a.path().is_ident("cfg"))
            .map(|a| format!("{}{eol}{indent}", &self.text[self.file.range_of(a)]))
            .collect()
    }

    /// Replace `range` with `text` unless it is unchanged: in verbatim mode, when the
    /// bytes are equal; in formatted mode, when the tokens are (`same`) or the bytes.
    /// `as_sent` is the submission's own text (formatted mode), to say what was
    /// ignored when only comments or layout differed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn replace_or_keep(
        &mut self,
        range: Range<usize>,
        text: String,
        same: bool,
        formatting: Formatting,
        as_sent: Option<String>,
        shown: &str,
        kind: ItemKind,
    ) {
        let bytes_equal = self.text[range.clone()] == text;
        let unchanged = match formatting {
            // Only the indentation differs: heph would indent it to its place anyway.
            Formatting::Verbatim => {
                bytes_equal
                    || (same && format::same_but_indentation(&self.text[range.clone()], &text))
            }
            Formatting::Pretty => same || bytes_equal,
        };
        if unchanged {
            if let Some(sent) = as_sent
                && self.text[range.clone()] != sent
            {
                self.notes.push(format!(
                    "`{shown}`: the submission has the same tokens as the file; its comments and layout were not compared (formatted mode drops `//` comments): pass --verbatim to write it as submitted"
                ));
            }
            self.change_shown(ChangeAction::Unchanged, shown, kind);
        } else {
            self.splice(range, text);
            self.change_shown(ChangeAction::Replaced, shown, kind);
        }
    }

    fn merge_impl(
        &mut self,
        imp: &syn::ItemImpl,
        key: &ItemKey,
        code: &str,
        range: &Range<usize>,
        formatting: Formatting,
    ) -> Result<(), EditError> {
        let refs: Vec<&Entry<'a>> = self.module.items.iter().collect();
        let found = self.designate(&refs, key)?;
        let targets: Vec<(usize, &'a syn::ItemImpl)> = found
            .indices
            .iter()
            .filter_map(|&i| match self.module.items[i].node {
                Node::Item(syn::Item::Impl(t)) => Some((i, t)),
                _ => None,
            })
            .collect();
        if let Some(note) = found.note.clone() {
            self.notes.push(note);
        }
        if targets.is_empty() {
            let whole = syn::Item::Impl(imp.clone());
            let raw = match formatting {
                Formatting::Pretty => format::pretty_item(&whole),
                Formatting::Verbatim => format::verbatim(code, range.clone(), &self.module.indent),
            };
            let text = format::indent(&self.styled(raw, formatting), &self.module.indent, false);
            self.add_item(key, &whole, text);
            return Ok(());
        }
        self.merge_header(imp, key, &targets, code, formatting)?;
        let owner = impl_name(imp);
        let containers: Vec<Container<'a>> = targets
            .iter()
            .map(|(_, t)| self.impl_container(t, &owner))
            .collect();
        let index: Vec<(usize, usize)> = containers
            .iter()
            .enumerate()
            .flat_map(|(ci, c)| (0..c.items.len()).map(move |ei| (ci, ei)))
            .collect();
        for member in &imp.items {
            let mkey = ItemKey::of_member(&owner, member);
            let member_range = syn::spanned::Spanned::span(member).byte_range();
            let member_text = |indent: &str, formatting: Formatting| {
                let raw = match formatting {
                    Formatting::Pretty => format::pretty_member(imp, member),
                    // Spans of submitted code are offsets into the code string.
                    Formatting::Verbatim => format::verbatim(code, member_range.clone(), indent),
                };
                format::indent(&self.styled(raw, formatting), indent, false)
            };
            let all: Vec<&Entry<'a>> = index
                .iter()
                .map(|&(ci, ei)| &containers[ci].items[ei])
                .collect();
            let found = self.designate(&all, &mkey)?;
            match found.indices.as_slice() {
                [] => {
                    let c = containers.last().expect("at least one impl");
                    let text = member_text(&c.indent, formatting);
                    let anchor = c.items.iter().rev().find(|e| e.key.kind == mkey.kind);
                    let (pos, ins, sep) = self.insertion(c, anchor, text, Spacing::Blank);
                    self.splice_with(pos..pos, ins, sep);
                    self.change(ChangeAction::Added, &mkey);
                }
                [i] => {
                    let e = all[*i];
                    let (r, same) = e.replacement(member, has_docs(member_attrs(member)));
                    let indent = self.item_indent_in(
                        e.range().start,
                        &containers[index[*i].0].indent,
                        containers[index[*i].0].body.start,
                    );
                    let prefix = self.cfg_prefix(e, &found, &indent);
                    let as_sent = (formatting == Formatting::Pretty).then(|| {
                        let sent = member_text(&indent, Formatting::Verbatim);
                        format!("{prefix}{}", self.eol.apply(&sent))
                    });
                    let shown = e.shown();
                    let same = same || mkey.kind.named_by_text();
                    // Formatted and the same tokens: unchanged, never printed.
                    let text = match &as_sent {
                        Some(sent) if same => sent.clone(),
                        _ => {
                            let written = member_text(&indent, formatting);
                            format!("{prefix}{}", self.eol.apply(&written))
                        }
                    };
                    self.replace_or_keep(r, text, same, formatting, as_sent, &shown, mkey.kind);
                }
                many => {
                    let cands: Vec<(String, usize)> = many
                        .iter()
                        .map(|&i| (all[i].shown(), all[i].range().start))
                        .collect();
                    return Err(self.ambiguous(&mkey.to_string(), cands.into_iter()));
                }
            }
            if let Some(note) = found.note {
                self.notes.push(note);
            }
        }
        Ok(())
    }

    /// Replace the header of the impl block the submission designates when it differs
    /// (see the module docs for attributes).
    fn merge_header(
        &mut self,
        imp: &syn::ItemImpl,
        key: &ItemKey,
        targets: &[(usize, &'a syn::ItemImpl)],
        code: &str,
        formatting: Formatting,
    ) -> Result<(), EditError> {
        let with_attrs = !imp.attrs.is_empty();
        let keep_docs = with_attrs && !has_docs(&imp.attrs);
        // Header tokens to compare: the impl without its items (and without the
        // attributes the submission leaves alone).
        let header = |i: &syn::ItemImpl, own: bool| {
            let mut h = i.clone();
            h.items.clear();
            if !with_attrs {
                h.attrs.clear();
            } else if keep_docs && own {
                h.attrs.retain(|a| !a.path().is_ident("doc"));
            }
            // Doc comments compare by their text, line by line without the spaces
            // around it: `/** Doc. */` and the `/// Doc.` it is printed as are one doc.
            let docs = doc_text(&h.attrs);
            h.attrs.retain(|a| !a.path().is_ident("doc"));
            format!("{docs}\u{0}{}", token_text(&h.to_token_stream()))
        };
        let submitted = header(imp, false);
        let differs: Vec<&(usize, &'a syn::ItemImpl)> = targets
            .iter()
            .filter(|(_, t)| header(t, true) != submitted)
            .collect();
        if differs.len() < targets.len() {
            // The header equals one of the blocks: nothing to change.
            if imp.items.is_empty() {
                self.change(ChangeAction::Unchanged, key);
            }
            return Ok(());
        }
        let (index, target) = match targets {
            [one] => *one,
            many => {
                let cands: Vec<(String, usize)> = many
                    .iter()
                    .map(|(i, _)| {
                        let e = &self.module.items[*i];
                        (e.shown(), e.range().start)
                    })
                    .collect();
                return Err(self.ambiguous(
                    &format!("{key} (its header differs from every block)"),
                    cands.into_iter(),
                ));
            }
        };
        let entry = &self.module.items[index];
        // The file's header: from the first attribute replaced (all of them, those
        // after the doc comments, or none) to the opening brace.
        // Where an impl continues after its outer attributes.
        let after_attrs = |i: &syn::ItemImpl| {
            let trees: Vec<TokenTree> = i.to_token_stream().into_iter().collect();
            let mut k = 0;
            while k + 1 < trees.len()
                && matches!(&trees[k], TokenTree::Punct(p) if p.as_char() == '#')
                && matches!(&trees[k + 1], TokenTree::Group(g) if g.delimiter() == Delimiter::Bracket)
            {
                k += 2;
            }
            trees.get(k).map(TokenTree::span)
        };
        let start = if !with_attrs {
            after_attrs(target).map_or(entry.range().start, |sp| self.file.range(sp).start)
        } else if keep_docs {
            entry.data().doc_end.unwrap_or_else(|| entry.range().start)
        } else {
            entry.range().start
        };
        let open = self.file.range(target.brace_token.span.open()).start;
        let indent = self.item_indent(entry.range().start);
        let raw = match formatting {
            Formatting::Pretty => {
                let mut shell = imp.clone();
                shell.items.clear();
                if !with_attrs {
                    shell.attrs.clear();
                }
                let text = format::pretty_item(&syn::Item::Impl(shell));
                let brace = text.rfind('{').unwrap_or(text.len());
                self.styled(text[..brace].to_owned(), formatting)
            }
            Formatting::Verbatim => {
                let from = if with_attrs {
                    syn::spanned::Spanned::span(imp).byte_range().start
                } else {
                    after_attrs(imp).map_or(0, |sp| sp.byte_range().start)
                };
                let to = imp.brace_token.span.open().byte_range().start;
                format::verbatim(code, from..to, &indent)
            }
        };
        let text = self.eol.apply(&format::indent(&raw, &indent, false));
        let shown = entry.shown();
        let bytes_equal = self.text[start..open] == text;
        if formatting == Formatting::Verbatim && bytes_equal {
            if imp.items.is_empty() {
                self.change_shown(ChangeAction::Unchanged, &shown, ItemKind::Impl);
            }
            return Ok(());
        }
        self.splice(start..open, text);
        self.change_shown(ChangeAction::Replaced, &shown, ItemKind::Impl);
        Ok(())
    }

    pub(super) fn impl_container(&self, imp: &'a syn::ItemImpl, owner: &str) -> Container<'a> {
        let open = self.file.range(imp.brace_token.span.open()).end;
        let close = self.file.range(imp.brace_token.span.close()).start;
        let mut items: Vec<Entry<'a>> = imp
            .items
            .iter()
            .map(|m| Entry::new(self.file, ItemKey::of_member(owner, m), Node::Member(m)))
            .collect();
        super::number(&mut items);
        let outer = line_indent(self.text, self.file.range_of(imp).start);
        let indent = items
            .first()
            .and_then(|e| own_line_indent(self.text, e.range().start))
            .unwrap_or_else(|| format!("{outer}{}", indent_unit(&outer)));
        Container {
            items,
            body: open..close,
            close: Some(close),
            indent,
        }
    }
}

/// The mode the unchanged test uses: the one asked for when the tokens are the same
/// (an item prettyplease cannot print is still compared by tokens in formatted mode),
/// else the one the text is written in.
fn effective_mode(
    requested: Formatting,
    same: bool,
    effective: &dyn Fn() -> Formatting,
) -> Formatting {
    if same { requested } else { effective() }
}

/// The doc comment of these attributes as text: every `#[doc = "..."]` joined, each
/// line trimmed, blank lines dropped (how `/** */`, `///` and `#[doc]` spell one doc).
fn doc_text(attrs: &[syn::Attribute]) -> String {
    let joined: Vec<String> = attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    joined
        .join("\n")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}
