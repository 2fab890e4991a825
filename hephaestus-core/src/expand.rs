//! A small `macro_rules!` expander, enough to read the items a macro call at item
//! position declares (`cfg_fs! { pub mod fs; }`), with the attributes the expansion
//! adds (`#[cfg(feature = "fs")]`), before any real expansion (as rust-analyzer reads
//! them).
//!
//! Matchers support literal tokens, delimited groups, repetitions (`$( .. ) sep op`)
//! and the fragments `item`, `tt`, `ident`, `lifetime`, `literal`, `meta`, `vis`,
//! `path`, `ty`, `expr`, `pat`, `pat_param`, `block` and `stmt` (parsed with syn);
//! transcribers substitute them and expand repetitions. Tokens keep their spans, so an
//! item taken from the call's input still points at its bytes in the file. Anything
//! else (proc macros, macros of other crates, rules this expander cannot match) is
//! *opaque*: the caller says so instead of guessing.
//!
//! Hostile input is bounded: an expansion stops at [`MAX_TOKENS`] tokens.

use std::collections::HashMap;

use proc_macro2::{Delimiter, Group, Ident, Spacing, TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};

/// The most tokens one expansion may produce.
pub(crate) const MAX_TOKENS: usize = 1 << 18;

/// The rules of one `macro_rules!` definition.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    rules: Vec<(Vec<Matcher>, Vec<Part>)>,
}

#[derive(Debug, Clone)]
enum Matcher {
    Token(TokenTree),
    Group(Delimiter, Vec<Matcher>),
    Var(String, Fragment),
    Repeat(Vec<Matcher>, Option<TokenTree>, char),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fragment {
    Item,
    Tt,
    Ident,
    Lifetime,
    Literal,
    Meta,
    Vis,
    Path,
    Ty,
    Expr,
    Pat,
    Block,
    Stmt,
}

#[derive(Debug, Clone)]
enum Part {
    Token(TokenTree),
    Group(Group, Vec<Part>),
    Var(Ident),
    Repeat(Vec<Part>, Option<TokenTree>),
}

#[derive(Debug, Clone)]
enum Binding {
    One(TokenStream),
    Many(Vec<Binding>),
}

impl Rules {
    /// The rules of a `macro_rules! name { .. }` item, or `None` when they are not
    /// `(matcher) => {transcriber}` pairs this expander reads.
    pub(crate) fn of(def: &syn::ItemMacro) -> Option<Rules> {
        if !def.mac.path.is_ident("macro_rules") || def.ident.is_none() {
            return None;
        }
        let trees: Vec<TokenTree> = def.mac.tokens.clone().into_iter().collect();
        let mut rules = Vec::new();
        let mut i = 0;
        while i < trees.len() {
            let (TokenTree::Group(m), Some(TokenTree::Punct(eq)), Some(TokenTree::Punct(gt))) =
                (&trees[i], trees.get(i + 1), trees.get(i + 2))
            else {
                return None;
            };
            let Some(TokenTree::Group(body)) = trees.get(i + 3) else {
                return None;
            };
            if eq.as_char() != '=' || gt.as_char() != '>' {
                return None;
            }
            rules.push((matchers(m.stream())?, parts(body.stream())?));
            i += 4;
            if matches!(trees.get(i), Some(TokenTree::Punct(p)) if p.as_char() == ';') {
                i += 1;
            }
        }
        Some(Rules { rules })
    }

    /// Does a transcriber of these rules write a `mod` token?
    pub(crate) fn writes_mod(&self) -> bool {
        fn any_mod(parts: &[Part]) -> bool {
            parts.iter().any(|p| match p {
                Part::Token(TokenTree::Ident(i)) => i == "mod",
                Part::Group(_, inner) | Part::Repeat(inner, _) => any_mod(inner),
                _ => false,
            })
        }
        self.rules.iter().any(|(_, body)| any_mod(body))
    }

    /// Expand a call with these input tokens: the first rule that matches.
    pub(crate) fn expand(&self, input: &TokenStream) -> Option<TokenStream> {
        self.expand_within(input, MAX_TOKENS)
    }

    fn expand_within(&self, input: &TokenStream, max_tokens: usize) -> Option<TokenStream> {
        for (matcher, body) in &self.rules {
            let mut binds = HashMap::new();
            let parsed = (|stream: ParseStream<'_>| {
                match_all(matcher, stream, &mut binds)?;
                if stream.is_empty() {
                    Ok(())
                } else {
                    Err(stream.error("unexpected tokens"))
                }
            })
            .parse2(input.clone());
            if parsed.is_ok() {
                let mut out = Vec::new();
                let mut budget = max_tokens;
                transcribe(body, &binds, &mut Vec::new(), &mut out, &mut budget)?;
                return Some(out.into_iter().collect());
            }
        }
        None
    }
}

/// Does this token stream hold a `mod` keyword (at any depth)?
pub(crate) fn has_mod_token(tokens: &TokenStream) -> bool {
    tokens.clone().into_iter().any(|t| match t {
        TokenTree::Ident(i) => i == "mod",
        TokenTree::Group(g) => has_mod_token(&g.stream()),
        _ => false,
    })
}

/// Does this token stream hold `mod NAME` (at any depth)?
pub(crate) fn declares_mod_named(tokens: &TokenStream, name: &str) -> bool {
    let trees: Vec<TokenTree> = tokens.clone().into_iter().collect();
    trees.iter().enumerate().any(|(i, t)| match t {
        TokenTree::Ident(m) if m == "mod" => {
            matches!(trees.get(i + 1), Some(TokenTree::Ident(n)) if n.unraw() == name)
        }
        TokenTree::Group(g) => declares_mod_named(&g.stream(), name),
        _ => false,
    })
}

/// Parse tokens as a list of items (the body of a module).
pub(crate) fn parse_items(tokens: TokenStream) -> Option<Vec<syn::Item>> {
    (|input: ParseStream<'_>| {
        let mut items = Vec::new();
        while !input.is_empty() {
            items.push(input.parse::<syn::Item>()?);
        }
        Ok(items)
    })
    .parse2(tokens)
    .ok()
}

fn punct_is(t: &TokenTree, c: char) -> bool {
    matches!(t, TokenTree::Punct(p) if p.as_char() == c)
}

fn matchers(tokens: TokenStream) -> Option<Vec<Matcher>> {
    let trees: Vec<TokenTree> = tokens.into_iter().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < trees.len() {
        let t = &trees[i];
        if punct_is(t, '$') {
            match trees.get(i + 1) {
                Some(TokenTree::Ident(name)) => {
                    let (Some(colon), Some(TokenTree::Ident(frag))) =
                        (trees.get(i + 2), trees.get(i + 3))
                    else {
                        return None;
                    };
                    if !punct_is(colon, ':') {
                        return None;
                    }
                    out.push(Matcher::Var(name.unraw().to_string(), fragment(frag)?));
                    i += 4;
                }
                Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis => {
                    let inner = matchers(g.stream())?;
                    let (sep, op, used) = repetition(&trees[i + 2..])?;
                    out.push(Matcher::Repeat(inner, sep, op));
                    i += 2 + used;
                }
                _ => return None,
            }
        } else if let TokenTree::Group(g) = t {
            out.push(Matcher::Group(g.delimiter(), matchers(g.stream())?));
            i += 1;
        } else {
            out.push(Matcher::Token(t.clone()));
            i += 1;
        }
    }
    Some(out)
}

/// After `$( .. )`: an optional separator and the operator; how many trees they take.
fn repetition(rest: &[TokenTree]) -> Option<(Option<TokenTree>, char, usize)> {
    let op = |t: &TokenTree| match t {
        TokenTree::Punct(p) if matches!(p.as_char(), '*' | '+' | '?') => Some(p.as_char()),
        _ => None,
    };
    let first = rest.first()?;
    if let Some(c) = op(first) {
        return Some((None, c, 1));
    }
    let c = op(rest.get(1)?)?;
    Some((Some(first.clone()), c, 2))
}

fn fragment(frag: &Ident) -> Option<Fragment> {
    Some(match frag.to_string().as_str() {
        "item" => Fragment::Item,
        "tt" => Fragment::Tt,
        "ident" => Fragment::Ident,
        "lifetime" => Fragment::Lifetime,
        "literal" => Fragment::Literal,
        "meta" => Fragment::Meta,
        "vis" => Fragment::Vis,
        "path" => Fragment::Path,
        "ty" => Fragment::Ty,
        "expr" | "expr_2021" => Fragment::Expr,
        "pat" | "pat_param" => Fragment::Pat,
        "block" => Fragment::Block,
        "stmt" => Fragment::Stmt,
        _ => return None,
    })
}

fn parts(tokens: TokenStream) -> Option<Vec<Part>> {
    let trees: Vec<TokenTree> = tokens.into_iter().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < trees.len() {
        let t = &trees[i];
        if punct_is(t, '$') {
            match trees.get(i + 1) {
                Some(TokenTree::Ident(name)) if name == "crate" => {
                    out.push(Part::Token(TokenTree::Ident(name.clone())));
                    i += 2;
                }
                Some(TokenTree::Ident(name)) => {
                    out.push(Part::Var(name.clone()));
                    i += 2;
                }
                Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis => {
                    let inner = parts(g.stream())?;
                    let (sep, _, used) = repetition(&trees[i + 2..])?;
                    out.push(Part::Repeat(inner, sep));
                    i += 2 + used;
                }
                _ => {
                    out.push(Part::Token(t.clone()));
                    i += 1;
                }
            }
        } else if let TokenTree::Group(g) = t {
            out.push(Part::Group(g.clone(), parts(g.stream())?));
            i += 1;
        } else {
            out.push(Part::Token(t.clone()));
            i += 1;
        }
    }
    Some(out)
}

fn match_all(
    matchers: &[Matcher],
    input: ParseStream<'_>,
    binds: &mut HashMap<String, Binding>,
) -> syn::Result<()> {
    for m in matchers {
        match m {
            Matcher::Token(t) => match_token(t, input)?,
            Matcher::Group(delim, inner) => {
                let tree: TokenTree = input.parse()?;
                let TokenTree::Group(g) = tree else {
                    return Err(input.error("expected a group"));
                };
                if g.delimiter() != *delim {
                    return Err(input.error("another delimiter"));
                }
                (|s: ParseStream<'_>| {
                    match_all(inner, s, binds)?;
                    if s.is_empty() {
                        Ok(())
                    } else {
                        Err(s.error("unexpected tokens"))
                    }
                })
                .parse2(g.stream())?;
            }
            Matcher::Var(name, frag) => {
                let tokens = match_fragment(*frag, input)?;
                binds.insert(name.clone(), Binding::One(tokens));
            }
            Matcher::Repeat(inner, sep, op) => {
                let mut rounds: Vec<HashMap<String, Binding>> = Vec::new();
                loop {
                    if *op == '?' && !rounds.is_empty() {
                        break;
                    }
                    let fork = input.fork();
                    if !rounds.is_empty()
                        && let Some(sep) = sep
                        && match_token(sep, &fork).is_err()
                    {
                        break;
                    }
                    let mut round = HashMap::new();
                    if match_all(inner, &fork, &mut round).is_err() {
                        break;
                    }
                    if fork.cursor() == input.cursor() {
                        break; // no progress: stop instead of looping
                    }
                    syn::parse::discouraged::Speculative::advance_to(input, &fork);
                    rounds.push(round);
                }
                if *op == '+' && rounds.is_empty() {
                    return Err(input.error("expected at least one repetition"));
                }
                for name in names(inner) {
                    let seq = rounds
                        .iter_mut()
                        .map(|r| r.remove(&name).unwrap_or(Binding::Many(Vec::new())))
                        .collect();
                    binds.insert(name, Binding::Many(seq));
                }
            }
        }
    }
    Ok(())
}

fn names(matchers: &[Matcher]) -> Vec<String> {
    let mut out = Vec::new();
    for m in matchers {
        match m {
            Matcher::Var(n, _) => out.push(n.clone()),
            Matcher::Group(_, inner) | Matcher::Repeat(inner, _, _) => out.extend(names(inner)),
            Matcher::Token(_) => {}
        }
    }
    out
}

fn match_token(want: &TokenTree, input: ParseStream<'_>) -> syn::Result<()> {
    input.step(|cursor| {
        let ok = match want {
            TokenTree::Ident(w) => cursor.ident().filter(|(i, _)| i == w).map(|(_, next)| next),
            TokenTree::Punct(w) => cursor
                .punct()
                .filter(|(p, _)| p.as_char() == w.as_char())
                .map(|(_, next)| next),
            TokenTree::Literal(w) => cursor
                .literal()
                .filter(|(l, _)| l.to_string() == w.to_string())
                .map(|(_, next)| next),
            TokenTree::Group(_) => None,
        };
        ok.map(|next| ((), next))
            .ok_or_else(|| cursor.error("another token"))
    })
}

fn match_fragment(frag: Fragment, input: ParseStream<'_>) -> syn::Result<TokenStream> {
    Ok(match frag {
        Fragment::Item => input.parse::<syn::Item>()?.into_token_stream(),
        Fragment::Tt => input.parse::<TokenTree>()?.into_token_stream(),
        Fragment::Ident => input.call(Ident::parse_any)?.into_token_stream(),
        Fragment::Lifetime => input.parse::<syn::Lifetime>()?.into_token_stream(),
        Fragment::Literal => {
            let mut out = TokenStream::new();
            if input.peek(syn::Token![-]) {
                input.parse::<syn::Token![-]>()?.to_tokens(&mut out);
            }
            input.parse::<syn::Lit>()?.to_tokens(&mut out);
            out
        }
        Fragment::Meta => input.parse::<syn::Meta>()?.into_token_stream(),
        Fragment::Vis => input.parse::<syn::Visibility>()?.into_token_stream(),
        Fragment::Path => input.parse::<syn::Path>()?.into_token_stream(),
        Fragment::Ty => input.parse::<syn::Type>()?.into_token_stream(),
        Fragment::Expr => input.parse::<syn::Expr>()?.into_token_stream(),
        Fragment::Pat => syn::Pat::parse_single(input)?.into_token_stream(),
        Fragment::Block => input.parse::<syn::Block>()?.into_token_stream(),
        Fragment::Stmt => input.parse::<syn::Stmt>()?.into_token_stream(),
    })
}

/// Write `parts` with the bindings at repetition indices `at`; `None` when a
/// repetition cannot be sized or the budget runs out.
fn transcribe(
    parts: &[Part],
    binds: &HashMap<String, Binding>,
    at: &mut Vec<usize>,
    out: &mut Vec<TokenTree>,
    budget: &mut usize,
) -> Option<()> {
    for p in parts {
        match p {
            Part::Token(t) => push(out, t.clone(), budget)?,
            Part::Group(g, inner) => {
                let mut content = Vec::new();
                transcribe(inner, binds, at, &mut content, budget)?;
                let mut group = Group::new(g.delimiter(), content.into_iter().collect());
                group.set_span(g.span());
                push(out, TokenTree::Group(group), budget)?;
            }
            Part::Var(name) => match binds.get(&name.unraw().to_string()) {
                Some(b) => match lookup(b, at)? {
                    Binding::One(tokens) => {
                        for t in tokens.clone() {
                            push(out, t, budget)?;
                        }
                    }
                    Binding::Many(_) => return None,
                },
                None => {
                    // Not a variable of the matcher (`$` kept for a nested macro).
                    let mut dollar = proc_macro2::Punct::new('$', Spacing::Alone);
                    dollar.set_span(name.span());
                    push(out, TokenTree::Punct(dollar), budget)?;
                    push(out, TokenTree::Ident(name.clone()), budget)?;
                }
            },
            Part::Repeat(inner, sep) => {
                let n = repeat_count(inner, binds, at)?;
                for i in 0..n {
                    if i > 0
                        && let Some(sep) = sep
                    {
                        push(out, sep.clone(), budget)?;
                    }
                    at.push(i);
                    let done = transcribe(inner, binds, at, out, budget);
                    at.pop();
                    done?;
                }
            }
        }
    }
    Some(())
}

fn push(out: &mut Vec<TokenTree>, t: TokenTree, budget: &mut usize) -> Option<()> {
    *budget = budget.checked_sub(1)?;
    out.push(t);
    Some(())
}

/// The binding at repetition indices `at` (a binding of a shallower depth is used at
/// every index below it).
fn lookup<'b>(mut b: &'b Binding, at: &[usize]) -> Option<&'b Binding> {
    for &i in at {
        match b {
            Binding::Many(v) => b = v.get(i)?,
            Binding::One(_) => return Some(b),
        }
    }
    Some(b)
}

/// How many times a repetition runs: the length of the sequences its variables are
/// bound to at this depth.
fn repeat_count(parts: &[Part], binds: &HashMap<String, Binding>, at: &[usize]) -> Option<usize> {
    fn vars(parts: &[Part], out: &mut Vec<String>) {
        for p in parts {
            match p {
                Part::Var(n) => out.push(n.unraw().to_string()),
                Part::Group(_, inner) | Part::Repeat(inner, _) => vars(inner, out),
                Part::Token(_) => {}
            }
        }
    }
    let mut names = Vec::new();
    vars(parts, &mut names);
    names
        .iter()
        .filter_map(|n| binds.get(n))
        .filter_map(|b| match lookup(b, at) {
            Some(Binding::Many(v)) => Some(v.len()),
            _ => None,
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(src: &str) -> Rules {
        let def: syn::ItemMacro = syn::parse_str(src).expect("parses");
        Rules::of(&def).expect("rules")
    }

    fn expand(def: &str, call: &str) -> Option<String> {
        let call: TokenStream = call.parse().expect("tokens");
        rules(def)
            .expand(&call)
            .map(|t| crate::item::tidy(&t).trim_end().to_owned())
    }

    #[test]
    fn item_repetitions_gain_the_attributes_of_the_body() {
        let def = "macro_rules! cfg_fs { ($($item:item)*) => { $( #[cfg(feature = \"fs\")] #[cfg_attr(docsrs, doc(cfg(feature = \"fs\")))] $item )* } }";
        let out = expand(def, "pub mod fs; mod other { fn f() {} }").expect("expands");
        let items = parse_items(out.parse().expect("tokens")).expect("items");
        assert_eq!(items.len(), 2);
        for item in &items {
            let syn::Item::Mod(m) = item else {
                panic!("a module")
            };
            assert_eq!(crate::item::cfgs(&m.attrs), ["cfg(feature = \"fs\")"]);
        }
        assert!(!rules(def).writes_mod());
    }

    #[test]
    fn meta_idents_separators_and_optional_parts() {
        let feature = "macro_rules! feature { (#![$meta:meta] $($item:item)*) => { $( #[cfg($meta)] $item )* } }";
        assert_eq!(
            expand(feature, "#![any(feature = \"a\", unix)] mod x;").as_deref(),
            Some("#[cfg(any(feature = \"a\", unix))] mod x;")
        );
        let decl = "macro_rules! mods { ($($v:vis $m:ident),+ $(,)?) => { $( $v mod $m; )+ } }";
        assert_eq!(
            expand(decl, "pub a, b,").as_deref(),
            Some("pub mod a; mod b;")
        );
        assert!(rules(decl).writes_mod());
        // The first rule that matches wins; none matching is `None`.
        let two = "macro_rules! two { (a $i:ident) => { mod $i; }; ($i:ident) => { struct $i; } }";
        assert_eq!(expand(two, "a x").as_deref(), Some("mod x;"));
        assert_eq!(expand(two, "x").as_deref(), Some("struct x;"));
        assert_eq!(expand(two, "1 2"), None);
        // Nested macros keep their own `$` variables.
        let nested = "macro_rules! outer { ($($t:tt)*) => { inner! { $($t)* } macro_rules! m { ($x:ident) => {} } } }";
        assert_eq!(
            expand(nested, "mod a;").as_deref(),
            Some("inner! { mod a; } macro_rules!m { ($ x: ident) => {} }")
        );
    }

    #[test]
    fn spans_of_the_input_survive() {
        let src = "pub mod fs;";
        let call: TokenStream = src.parse().expect("tokens");
        let out = rules("macro_rules! c { ($($i:item)*) => { $( #[cfg(x)] $i )* } }")
            .expand(&call)
            .expect("expands");
        let items = parse_items(out).expect("items");
        let syn::Item::Mod(m) = &items[0] else {
            panic!("a module")
        };
        assert_eq!(m.ident.span().byte_range(), 8..10);
    }

    #[test]
    fn mod_tokens_are_found_at_any_depth() {
        let t: TokenStream = "a! { b { pub mod r#fs; } }".parse().expect("tokens");
        assert!(has_mod_token(&t));
        assert!(declares_mod_named(&t, "fs"));
        assert!(!declares_mod_named(&t, "net"));
        let t: TokenStream = "a! { modx }".parse().expect("tokens");
        assert!(!has_mod_token(&t));
    }

    #[test]
    fn runaway_expansions_stop() {
        let def = "macro_rules! d { ($($t:tt)*) => { $($t)* $($t)* } }";
        let call: TokenStream = "a b c (d e) f".parse().expect("tokens");
        // Each copy writes 5 trees: a, b, c, the captured group, f.
        assert!(rules(def).expand_within(&call, 10).is_some());
        assert!(rules(def).expand_within(&call, 9).is_none());
        assert!(rules(def).expand(&call).is_some());
    }
}
