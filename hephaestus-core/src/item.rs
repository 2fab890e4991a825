//! Item keys: how heph names the items of a module (`fn test_function`,
//! `impl Display for Point`, `fn Point::norm`, `#[cfg(test)] mod tests`) and finds the
//! item an edit refers to.
//!
//! A key is a kind plus a name plus the item's `#[cfg]` attributes, so two items that
//! differ only in their cfg are distinct. `use` items are named by their tree's text;
//! `impl` blocks by their trait and self type; members of an impl by name.

use std::fmt;

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};
use quote::ToTokens;
use serde::Serialize;

/// The kind of an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// `fn`
    Fn,
    /// `struct`
    Struct,
    /// `enum`
    Enum,
    /// `union`
    Union,
    /// `trait` (and trait aliases)
    Trait,
    /// `type`
    Type,
    /// `const`
    Const,
    /// `static`
    Static,
    /// `macro_rules! name`
    MacroRules,
    /// Any other item-position macro invocation (`thread_local! { .. }`), named by its text.
    Macro,
    /// `mod name;` or `mod name { .. }`
    Mod,
    /// `use` trees, named by their text.
    Use,
    /// `extern crate`
    ExternCrate,
    /// `impl` blocks, named by trait and self type.
    Impl,
    /// `extern "C" { .. }` blocks, named by their text.
    ForeignMod,
    /// Tokens syn does not interpret, named by their text.
    Verbatim,
}

impl ItemKind {
    /// The keyword shown for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Fn => "fn",
            ItemKind::Struct => "struct",
            ItemKind::Enum => "enum",
            ItemKind::Union => "union",
            ItemKind::Trait => "trait",
            ItemKind::Type => "type",
            ItemKind::Const => "const",
            ItemKind::Static => "static",
            ItemKind::MacroRules => "macro_rules!",
            ItemKind::Macro => "macro",
            ItemKind::Mod => "mod",
            ItemKind::Use => "use",
            ItemKind::ExternCrate => "extern crate",
            ItemKind::Impl => "impl",
            ItemKind::ForeignMod => "extern",
            ItemKind::Verbatim => "item",
        }
    }

    /// The kind named by a keyword of a key string (`fn`, `macro_rules!`, ...).
    pub fn from_keyword(word: &str) -> Option<ItemKind> {
        Some(match word {
            "fn" => ItemKind::Fn,
            "struct" => ItemKind::Struct,
            "enum" => ItemKind::Enum,
            "union" => ItemKind::Union,
            "trait" => ItemKind::Trait,
            "type" => ItemKind::Type,
            "const" => ItemKind::Const,
            "static" => ItemKind::Static,
            "macro_rules!" | "macro_rules" => ItemKind::MacroRules,
            "macro" => ItemKind::Macro,
            "mod" => ItemKind::Mod,
            "use" => ItemKind::Use,
            "impl" => ItemKind::Impl,
            "extern" => ItemKind::ForeignMod,
            _ => return None,
        })
    }

    /// Kinds whose name is their whole text: only an identical item matches.
    pub fn named_by_text(self) -> bool {
        matches!(
            self,
            ItemKind::Macro | ItemKind::ForeignMod | ItemKind::Verbatim
        )
    }
}

impl fmt::Display for ItemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity of an item within its module (or of a member within its impl).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemKey {
    /// The kind.
    pub kind: ItemKind,
    /// For impl members, the impl's name (`Point`, `Display for Point`); else `None`.
    pub owner: Option<String>,
    /// The name: an identifier, a use tree's text, an impl's `Trait for Type`.
    pub name: String,
    /// The item's `#[cfg(..)]` attributes, as text (`cfg(test)`), in source order.
    pub cfg: Vec<String>,
}

impl ItemKey {
    /// A key of a top-level item without cfg.
    pub fn new(kind: ItemKind, name: impl Into<String>) -> Self {
        ItemKey {
            kind,
            owner: None,
            name: name.into(),
            cfg: Vec::new(),
        }
    }

    /// The key of a module-level item. With [`ItemKey::of_member`] and [`impl_name`],
    /// the one place the library's interface names syn: the bridge for callers that
    /// parse Rust with syn themselves (the fuzz target does). Everything else gives
    /// heph types (`Module::item_spans`).
    pub fn of_item(item: &syn::Item) -> ItemKey {
        use syn::Item;
        let (kind, name, attrs): (ItemKind, String, &[syn::Attribute]) = match item {
            Item::Const(i) => (
                ItemKind::Const,
                ident_or_text(&i.ident.to_string(), item),
                &i.attrs,
            ),
            Item::Enum(i) => (ItemKind::Enum, i.ident.to_string(), &i.attrs),
            Item::ExternCrate(i) => (
                ItemKind::ExternCrate,
                match &i.rename {
                    Some((_, alias)) => format!("{} as {}", i.ident, alias),
                    None => i.ident.to_string(),
                },
                &i.attrs,
            ),
            Item::Fn(i) => (ItemKind::Fn, i.sig.ident.to_string(), &i.attrs),
            Item::ForeignMod(i) => (ItemKind::ForeignMod, tidy(&strip_attrs(item)), &i.attrs),
            Item::Impl(i) => (ItemKind::Impl, impl_name(i), &i.attrs),
            Item::Macro(i) => match &i.ident {
                Some(ident) if i.mac.path.is_ident("macro_rules") => {
                    (ItemKind::MacroRules, ident.to_string(), &i.attrs)
                }
                _ => (ItemKind::Macro, tidy(&strip_attrs(item)), &i.attrs),
            },
            Item::Mod(i) => (ItemKind::Mod, i.ident.to_string(), &i.attrs),
            Item::Static(i) => (ItemKind::Static, i.ident.to_string(), &i.attrs),
            Item::Struct(i) => (ItemKind::Struct, i.ident.to_string(), &i.attrs),
            Item::Trait(i) => (ItemKind::Trait, i.ident.to_string(), &i.attrs),
            Item::TraitAlias(i) => (ItemKind::Trait, i.ident.to_string(), &i.attrs),
            Item::Type(i) => (ItemKind::Type, i.ident.to_string(), &i.attrs),
            Item::Union(i) => (ItemKind::Union, i.ident.to_string(), &i.attrs),
            Item::Use(i) => (ItemKind::Use, tidy(&i.tree.to_token_stream()), &i.attrs),
            _ => (ItemKind::Verbatim, tidy(&item.to_token_stream()), &[]),
        };
        ItemKey {
            kind,
            owner: None,
            name,
            cfg: cfgs(attrs),
        }
    }

    /// The key of a member of the impl named `owner`.
    pub fn of_member(owner: &str, member: &syn::ImplItem) -> ItemKey {
        use syn::ImplItem;
        let (kind, name, attrs): (ItemKind, String, &[syn::Attribute]) = match member {
            ImplItem::Const(i) => (ItemKind::Const, i.ident.to_string(), &i.attrs),
            ImplItem::Fn(i) => (ItemKind::Fn, i.sig.ident.to_string(), &i.attrs),
            ImplItem::Type(i) => (ItemKind::Type, i.ident.to_string(), &i.attrs),
            ImplItem::Macro(i) => (ItemKind::Macro, tidy(&i.mac.to_token_stream()), &i.attrs),
            _ => (ItemKind::Verbatim, tidy(&member.to_token_stream()), &[]),
        };
        ItemKey {
            kind,
            owner: Some(owner.to_owned()),
            name,
            cfg: cfgs(attrs),
        }
    }

    /// Does this key (possibly partial, as parsed from a user's `--item`) designate
    /// `other`? A key without kind matches any kind; without cfg, any cfg.
    pub fn matches(&self, other: &ItemKey, any_kind: bool, any_cfg: bool) -> bool {
        (any_kind || self.kind == other.kind)
            && self.name == other.name
            && self.owner == other.owner
            && (any_cfg || self.cfg == other.cfg)
    }
}

impl fmt::Display for ItemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for cfg in &self.cfg {
            write!(f, "#[{cfg}] ")?;
        }
        let name = shorten(&self.name, 60);
        match (&self.owner, self.kind) {
            (Some(owner), kind) => {
                let path = match owner.split_once(" for ") {
                    Some((tr, ty)) => format!("<{ty} as {tr}>"),
                    None => owner.clone(),
                };
                write!(f, "{} {path}::{name}", kind.as_str())
            }
            (None, ItemKind::Impl) => write!(f, "impl {name}"),
            (None, ItemKind::Macro | ItemKind::ForeignMod | ItemKind::Verbatim) => {
                f.write_str(&name)
            }
            (None, kind) => write!(f, "{} {name}", kind.as_str()),
        }
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// `const _: () = ..;` items are all named `_`: name them by their text instead.
fn ident_or_text(ident: &str, item: &syn::Item) -> String {
    if ident == "_" {
        tidy(&strip_attrs(item))
    } else {
        ident.to_owned()
    }
}

fn strip_attrs(item: &syn::Item) -> TokenStream {
    let mut item = item.clone();
    if let Some(attrs) = item_attrs_mut(&mut item) {
        attrs.clear();
    }
    item.to_token_stream()
}

/// The outer attributes of an item (none for tokens syn does not interpret).
pub(crate) fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item;
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// The outer attributes of an item, when it has them.
pub(crate) fn item_attrs_mut(item: &mut syn::Item) -> Option<&mut Vec<syn::Attribute>> {
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

/// The name of an impl block: `Type` or `Trait for Type` (`!Trait for Type` for
/// negative impls), as tidy text.
pub fn impl_name(i: &syn::ItemImpl) -> String {
    let ty = tidy(&i.self_ty.to_token_stream());
    match &i.trait_ {
        Some((path, _)) => {
            let neg = if i.modifiers.polarity.is_some() {
                "!"
            } else {
                ""
            };
            format!("{neg}{} for {ty}", tidy(&path.to_token_stream()))
        }
        None => ty,
    }
}

/// The `#[cfg(..)]` attributes, as tidy text.
pub(crate) fn cfgs(attrs: &[syn::Attribute]) -> Vec<String> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg"))
        .map(|a| tidy(&a.meta.to_token_stream()))
        .collect()
}

/// Render tokens as compact, readable text: `Wrapper<T>`, `fmt::Display`,
/// `std::{fmt, io}`, `cfg(not(unix))`. Equal token streams give equal text.
pub(crate) fn tidy(tokens: &TokenStream) -> String {
    let mut out = String::new();
    write_tidy(tokens.clone(), &mut out);
    out
}

fn write_tidy(tokens: TokenStream, out: &mut String) {
    let mut prev_joint = false;
    for tt in tokens {
        match tt {
            TokenTree::Group(g) => {
                let (open, close) = match g.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::None => ("", ""),
                };
                // `std::{fmt, io}` hugs its path; other braces are spaced.
                let spaced_brace = g.delimiter() == Delimiter::Brace && !out.ends_with("::");
                if spaced_brace {
                    space(out);
                } else if needs_space_before_group(out) {
                    out.push(' ');
                }
                out.push_str(open);
                let mut inner = String::new();
                write_tidy(g.stream(), &mut inner);
                if spaced_brace && !inner.is_empty() {
                    out.push(' ');
                    out.push_str(inner.trim_end());
                    out.push(' ');
                } else {
                    out.push_str(&inner);
                }
                out.push_str(close);
                prev_joint = false;
            }
            TokenTree::Punct(p) => {
                let c = p.as_char();
                // A glob (`super::*`) hugs its path.
                let glob = c == '*' && out.ends_with("::");
                match c {
                    _ if glob => {}
                    ',' | ';' => {}
                    ':' if prev_joint || p.spacing() == Spacing::Joint => {}
                    '<' | '>' | '.' | '!' | '&' | '\'' | '?' | ':' => {}
                    _ if prev_joint => {}
                    _ => space(out),
                }
                out.push(c);
                let alone = p.spacing() == Spacing::Alone;
                let separator = matches!(c, ',' | ';') || (c == ':' && alone && !prev_joint);
                let operator =
                    matches!(c, '=' | '+' | '|' | '*' | '/' | '%' | '^') && alone && !glob;
                if separator || operator {
                    out.push(' ');
                }
                prev_joint = p.spacing() == Spacing::Joint;
            }
            TokenTree::Ident(i) => {
                if needs_space_before_word(out) {
                    out.push(' ');
                }
                out.push_str(&i.to_string());
                prev_joint = false;
            }
            TokenTree::Literal(l) => {
                if needs_space_before_word(out) {
                    out.push(' ');
                }
                // A CRLF file's multi-line literal reads as LF, as rustc reads it.
                out.push_str(&l.to_string().replace("\r\n", "\n"));
                prev_joint = false;
            }
        }
    }
}

fn space(out: &mut String) {
    if !out.is_empty() && !out.ends_with(' ') {
        out.push(' ');
    }
}

fn needs_space_before_word(out: &str) -> bool {
    match out.chars().last() {
        None => false,
        Some(c) => !matches!(
            c,
            ' ' | '(' | '[' | '<' | ':' | '.' | '&' | '\'' | '!' | '#' | '{'
        ),
    }
}

fn needs_space_before_group(out: &str) -> bool {
    match out.chars().last() {
        None => false,
        Some(c) => matches!(c, ',' | '=' | '>') && !out.ends_with("->"),
    }
}

/// A key as written by a user in `--item` (`fn helper`, `Point::norm`,
/// `impl Display for Point`, `#[cfg(test)] mod tests`, `helper`), before it is matched
/// against a module's items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyQuery {
    /// The key; its kind is meaningful only when `kind_given`.
    pub key: ItemKey,
    /// The user named a kind.
    pub kind_given: bool,
    /// The user named cfg attributes.
    pub cfg_given: bool,
    /// `KEY#N`: the N-th (1-based, in source order) of the items sharing the key.
    pub occurrence: Option<usize>,
    /// The original text.
    pub text: String,
}

/// Why a key string could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot understand the item key `{text}`: {reason} (examples: `fn helper`, `struct Point`, `Point::norm`, `impl Display for Point`, `use std::fmt`, `#[cfg(test)] mod tests`, `use super::*#2`)"
)]
pub struct KeyParseError {
    /// The key as given.
    pub text: String,
    /// What was wrong.
    pub reason: String,
}

impl KeyQuery {
    /// Parse a key string.
    pub fn parse(text: &str) -> Result<KeyQuery, KeyParseError> {
        let err = |reason: &str| KeyParseError {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        // syn parses nested brackets and generics recursively: a key nested
        // thousands deep would overflow the stack instead of failing.
        if nesting(text) > MAX_KEY_NESTING {
            return Err(err("it is nested too deeply"));
        }
        let mut rest = text.trim();
        // `use super::*#2`: the second of two identical items.
        let mut occurrence = None;
        if let Some((head, n)) = rest.rsplit_once('#')
            && !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
        {
            let n: usize = n
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| err("`#N` counts from 1"))?;
            occurrence = Some(n);
            rest = head.trim_end();
        }
        let mut cfg = Vec::new();
        while let Some(after) = rest.strip_prefix("#[") {
            let end = matching_bracket(after).ok_or_else(|| err("unclosed `#[`"))?;
            let attr_src = format!("#[{}]", &after[..end]);
            let attrs = syn::parse::Parser::parse_str(syn::Attribute::parse_outer, &attr_src)
                .map_err(|_| err("invalid attribute"))?;
            let found = cfgs(&attrs);
            if found.is_empty() {
                return Err(err("only `#[cfg(..)]` attributes distinguish items"));
            }
            cfg.extend(found);
            rest = after[end + 1..].trim_start();
        }
        if rest.is_empty() {
            return Err(err("no item named"));
        }
        let (first, tail) = match rest.split_once(char::is_whitespace) {
            Some((a, b)) => (a, b.trim()),
            None => (rest, ""),
        };
        let (kind, body) = if first == "extern" && tail.starts_with("crate") {
            (Some(ItemKind::ExternCrate), tail["crate".len()..].trim())
        } else if let Some(k) = ItemKind::from_keyword(first).filter(|_| !tail.is_empty()) {
            (Some(k), tail)
        } else if let Some(name) = first.strip_prefix("macro_rules!").filter(|n| !n.is_empty()) {
            (Some(ItemKind::MacroRules), name)
        } else {
            (None, rest)
        };
        let mut key = match kind {
            Some(ItemKind::Impl) => {
                let item: syn::ItemImpl = syn::parse_str(&format!("impl {body} {{}}"))
                    .map_err(|_| err("expected `impl Type` or `impl Trait for Type`"))?;
                ItemKey::new(ItemKind::Impl, impl_name(&item))
            }
            Some(ItemKind::ExternCrate) => {
                let body = body.trim_end_matches(';');
                let item: syn::ItemExternCrate = syn::parse_str(&format!("extern crate {body};"))
                    .map_err(|_| {
                    err("expected `extern crate name` or `extern crate name as alias`")
                })?;
                ItemKey::of_item(&syn::Item::ExternCrate(item))
            }
            Some(ItemKind::Use) => {
                let body = body.trim_end_matches(';');
                let item: syn::ItemUse = syn::parse_str(&format!("use {body};"))
                    .map_err(|_| err("expected a use tree such as `std::fmt`"))?;
                ItemKey::new(ItemKind::Use, tidy(&item.tree.to_token_stream()))
            }
            kind => member_or_plain(kind.unwrap_or(ItemKind::Fn), body).ok_or_else(|| {
                err("expected a name such as `helper` or a member such as `Point::norm`")
            })?,
        };
        let cfg_given = !cfg.is_empty();
        key.cfg = cfg;
        Ok(KeyQuery {
            key,
            kind_given: kind.is_some(),
            cfg_given,
            occurrence,
            text: text.to_owned(),
        })
    }

    /// Does this query designate the item with key `key`?
    pub fn matches(&self, key: &ItemKey) -> bool {
        self.key.matches(key, !self.kind_given, !self.cfg_given)
    }
}

/// `name`, `Type::name` or `<Type as Trait>::name`.
fn member_or_plain(kind: ItemKind, body: &str) -> Option<ItemKey> {
    if let Ok(ident) = syn::parse_str::<syn::Ident>(body) {
        return Some(ItemKey::new(kind, ident.to_string()));
    }
    let ty: syn::TypePath = syn::parse_str(body).ok()?;
    let mut path = ty.path.clone();
    let last = path.segments.pop()?;
    if !last.arguments.is_none() {
        return None;
    }
    let owner = match &ty.qself {
        Some(q) => {
            // `<Type as Trait>::name`: the qself type, and the trait path is what remains.
            let trait_path = tidy(&path.to_token_stream());
            let trait_path = trait_path.trim_end_matches("::").to_owned();
            format!("{trait_path} for {}", tidy(&q.ty.to_token_stream()))
        }
        None => {
            let s = tidy(&path.to_token_stream());
            s.trim_end_matches("::").to_owned()
        }
    };
    if owner.is_empty() {
        return None;
    }
    Some(ItemKey {
        kind,
        owner: Some(owner),
        name: last.ident.to_string(),
        cfg: Vec::new(),
    })
}

/// How deep an item key may nest brackets and generics; real keys nest a few levels.
const MAX_KEY_NESTING: usize = 32;

/// The deepest nesting of `(`, `[`, `{` and `<` in `s` (a `>` of `->` closes nothing).
fn nesting(s: &str) -> usize {
    let (mut depth, mut max, mut prev) = (0usize, 0usize, ' ');
    for c in s.chars() {
        match c {
            '(' | '[' | '{' | '<' => {
                depth += 1;
                max = max.max(depth);
            }
            '>' if prev == '-' => {}
            ')' | ']' | '}' | '>' => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    max
}

fn matching_bracket(s: &str) -> Option<usize> {
    let mut depth = 1usize;
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: &str) -> ItemKey {
        ItemKey::of_item(&syn::parse_str(src).expect("item parses"))
    }

    #[test]
    fn keys_name_items_readably() {
        assert_eq!(key("pub fn f() {}").to_string(), "fn f");
        assert_eq!(
            key("impl<T: Clone> Wrapper<T> {}").to_string(),
            "impl Wrapper<T>"
        );
        assert_eq!(
            key("impl fmt::Display for Point {}").to_string(),
            "impl fmt::Display for Point"
        );
        assert_eq!(key("use std::{fmt, io};").to_string(), "use std::{fmt, io}");
        assert_eq!(key("use super::*;").to_string(), "use super::*");
        assert_eq!(key("use a::{b::*, c};").to_string(), "use a::{b::*, c}");
        assert_eq!(
            key("macro_rules! m { () => {} }").to_string(),
            "macro_rules! m"
        );
        assert_eq!(
            key("#[cfg(not(unix))] fn platform() {}").to_string(),
            "#[cfg(not(unix))] fn platform"
        );
        assert_eq!(
            key("extern crate alloc as a;").to_string(),
            "extern crate alloc as a"
        );
        assert_eq!(key("struct S<'a>(&'a str);").to_string(), "struct S");
        assert_eq!(
            key("impl<'a> From<&'a str> for S<'a> {}").to_string(),
            "impl From<&'a str> for S<'a>"
        );
    }

    #[test]
    fn cfg_twins_are_distinct() {
        assert_ne!(
            key("#[cfg(unix)] fn p() {}"),
            key("#[cfg(not(unix))] fn p() {}")
        );
        assert_ne!(key("#[cfg(unix)] fn p() {}"), key("fn p() {}"));
        // Other attributes and doc comments do not change the key.
        assert_eq!(key("/// doc\n#[inline] fn p() {}"), key("fn p() {}"));
    }

    #[test]
    fn queries_parse_every_form() {
        let q = KeyQuery::parse("fn helper").expect("parse");
        assert!(q.kind_given && q.matches(&key("fn helper() {}")));
        let q = KeyQuery::parse("helper").expect("parse");
        assert!(!q.kind_given && q.matches(&key("struct helper;")));
        let q = KeyQuery::parse("impl Display for Point").expect("parse");
        assert!(q.matches(&key("impl Display for Point {}")));
        let q = KeyQuery::parse("use std::fmt;").expect("parse");
        assert!(q.matches(&key("use std :: fmt;")));
        let q = KeyQuery::parse("#[cfg(test)] mod tests").expect("parse");
        assert!(q.matches(&key("#[cfg(test)] mod tests {}")));
        assert!(!q.matches(&key("mod tests {}")));
        let q = KeyQuery::parse("mod tests").expect("parse");
        assert!(
            q.matches(&key("#[cfg(test)] mod tests {}")),
            "no cfg given: any cfg"
        );
        let q = KeyQuery::parse("macro_rules! m").expect("parse");
        assert!(q.matches(&key("macro_rules! m { () => {} }")));
        let q = KeyQuery::parse("Point::norm").expect("parse");
        assert_eq!(q.key.owner.as_deref(), Some("Point"));
        let q = KeyQuery::parse("fn <Point as fmt::Display>::fmt").expect("parse");
        assert_eq!(q.key.owner.as_deref(), Some("fmt::Display for Point"));
        assert!(KeyQuery::parse("").is_err());
        assert!(KeyQuery::parse("fn 3x").is_err());
        assert!(KeyQuery::parse("#[inline] fn f").is_err());
    }

    #[test]
    fn deeply_nested_keys_fail_instead_of_overflowing_the_stack() {
        // Found by fuzzing: syn's recursive descent overflowed on a `<` run.
        for key in [
            format!("ex{}", "<".repeat(100_000)),
            format!("fn {}x{}", "(".repeat(100_000), ")".repeat(100_000)),
            format!(
                "impl A{}B{}",
                "<fn() -> A".repeat(50_000),
                ">".repeat(50_000)
            ),
        ] {
            let e = KeyQuery::parse(&key).expect_err("too deep");
            assert!(e.reason.contains("nested too deeply"), "{e}");
        }
        // Real keys are far from the limit.
        let q = KeyQuery::parse("fn <W<Vec<u8>> as From<&'a [u8; 4]>>::from").expect("parse");
        let imp: syn::ItemImpl =
            syn::parse_str("impl<'a> From<&'a [u8; 4]> for W<Vec<u8>> {}").expect("parses");
        assert_eq!(q.key.owner, Some(impl_name(&imp)));
    }
}
