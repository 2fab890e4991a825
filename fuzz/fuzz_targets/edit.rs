//! cargo-fuzz target for the edit engine: arbitrary bytes become (mode, module text,
//! code); `apply_to_text` must not panic, and what it returns must keep the invariant:
//! every byte outside the spans of the items it touches is unchanged, the result
//! parses, a merge applied twice changes nothing the second time, line endings stay.
//!
//! Input: byte 0 picks the mode (low two bits: merge, verbatim merge, remove, replace)
//! and which inline module to edit (the other bits: 0 is the file, else the n-th
//! inline module, depth first); then the module text, a NUL byte, and the code (for
//! remove, one item key per line). See `fuzz/README.md`.

#![no_main]

// proc-macro2 reports no span positions under `cfg(fuzzing)`, and the engine splices
// by span positions: run `cargo fuzz` with `--no-cfg-fuzzing`.
#[cfg(fuzzing)]
compile_error!("build this target with `cargo fuzz run --no-cfg-fuzzing edit`");

use std::ops::Range;
use std::str::FromStr;

use hephaestus_core::edit::{ChangeAction, Edit, EditMode, EditOutcome, apply_to_text};
use hephaestus_core::item::{ItemKey, impl_name};
use libfuzzer_sys::fuzz_target;
use proc_macro2::{Delimiter, TokenStream, TokenTree};
use syn::spanned::Spanned;

fuzz_target!(|data: &[u8]| {
    // syn parses recursively: a few thousand levels of nesting (`((((`, `<<<<`, `!!!!`)
    // in a module or in submitted code overflow an 8 MiB stack. That is a known
    // limit of the engine (callers that take untrusted code should run it on a thread
    // with a large stack); here every input runs on such a thread so that fuzzing
    // looks for other failures. A panic on it aborts the process, as libFuzzer wants.
    // (A fresh thread also starts with an empty proc-macro2 span table.)
    let data = data.to_vec();
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || run(&data))
        .expect("spawn")
        .join()
        .expect("no panic");
});

/// Enough for `-max_len=4096` inputs nested all the way in an instrumented build.
const STACK: usize = 512 << 20;

fn run(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let (text, code) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let (Ok(text), Ok(code)) = (std::str::from_utf8(text), std::str::from_utf8(code)) else {
        return;
    };
    let edit = match head & 3 {
        0 => Edit::merge(code),
        1 => Edit::merge(code).verbatim(),
        2 => Edit::remove(code.lines()),
        _ => Edit::replace(code),
    };
    let old = Parsed::new(text);
    let path = old
        .as_ref()
        .map(|p| p.container_path(usize::from(head >> 2)))
        .unwrap_or_default();
    let names: Vec<&str> = path.iter().map(String::as_str).collect();
    let Ok(out) = apply_to_text(text, &names, &edit) else {
        return;
    };
    let old = old.expect("the engine accepted a file syn does not parse");
    check(text, code, &old, &path, &edit, &out);
}

/// A file parsed by syn on its own terms, with spans as offsets into the text.
struct Parsed {
    file: syn::File,
    /// BOM and shebang line (without its line break).
    prefix: usize,
}

impl Parsed {
    fn new(text: &str) -> Option<Parsed> {
        let shebang = syn::parse_file(text).ok()?.shebang;
        let bom = if text.starts_with('\u{feff}') { 3 } else { 0 };
        let prefix = bom + shebang.map_or(0, |s| s.len());
        let file = syn::parse_str::<syn::File>(&text[prefix..]).ok()?;
        Some(Parsed { file, prefix })
    }

    fn span(&self, node: &impl Spanned) -> Range<usize> {
        let r = node.span().byte_range();
        r.start + self.prefix..r.end + self.prefix
    }

    /// The name path of the `n`-th inline module (depth first, 0 is the file).
    fn container_path(&self, n: usize) -> Vec<String> {
        fn walk(items: &[syn::Item], path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            for it in items {
                if let syn::Item::Mod(m) = it
                    && let Some((_, kids)) = &m.content
                {
                    path.push(m.ident.to_string());
                    out.push(path.clone());
                    walk(kids, path, out);
                    path.pop();
                }
            }
        }
        let mut all = vec![Vec::new()];
        walk(&self.file.items, &mut Vec::new(), &mut all);
        all.swap_remove(n % all.len())
    }

    /// The items of the container at `path` (as `apply_to_text` finds it: the first
    /// inline module of each name) and the byte range between its braces.
    fn container(&self, text: &str, path: &[String]) -> (&[syn::Item], Range<usize>) {
        let mut items: &[syn::Item] = &self.file.items;
        let mut body = self.prefix..text.len();
        for name in path {
            let m = items
                .iter()
                .find_map(|i| match i {
                    syn::Item::Mod(m) if m.ident == name && m.content.is_some() => Some(m),
                    _ => None,
                })
                .expect("the module the engine edited");
            let (brace, kids) = m.content.as_ref().expect("inline");
            body = self.span(&brace.span.open()).end..self.span(&brace.span.close()).start;
            items = kids;
        }
        (items, body)
    }
}

fn keys(items: &[syn::Item]) -> Vec<ItemKey> {
    let mut k: Vec<ItemKey> = items.iter().map(ItemKey::of_item).collect();
    k.sort();
    k
}

fn member_keys(items: &[syn::Item], key: &ItemKey) -> Vec<ItemKey> {
    let mut k = Vec::new();
    for it in items {
        if let syn::Item::Impl(imp) = it
            && ItemKey::of_item(it) == *key
        {
            let owner = impl_name(imp);
            k.extend(imp.items.iter().map(|m| ItemKey::of_member(&owner, m)));
        }
    }
    k.sort();
    k
}

/// Does `text` hold only doc comments (`///`, `/** */`, `#[doc ..]`) and whitespace?
fn only_docs(text: &str) -> bool {
    let Ok(tokens) = TokenStream::from_str(text) else {
        return false;
    };
    let trees: Vec<TokenTree> = tokens.into_iter().collect();
    !trees.is_empty()
        && trees.chunks(2).all(|pair| match pair {
            [TokenTree::Punct(p), TokenTree::Group(g)] => {
                p.as_char() == '#'
                    && g.delimiter() == Delimiter::Bracket
                    && matches!(g.stream().into_iter().next(),
                        Some(TokenTree::Ident(i)) if i == "doc")
            }
            _ => false,
        })
}

fn check(text: &str, code: &str, old: &Parsed, path: &[String], edit: &Edit, out: &EditOutcome) {
    // The result is the old text with the splices applied, in order.
    let mut pos = 0;
    let mut rebuilt = String::new();
    for s in &out.splices {
        assert!(
            pos <= s.range.start && s.range.start <= s.range.end && s.range.end <= text.len(),
            "splices overlap, are unsorted or out of range"
        );
        rebuilt.push_str(&text[pos..s.range.start]);
        rebuilt.push_str(&s.text);
        pos = s.range.end;
    }
    rebuilt.push_str(&text[pos..]);
    assert_eq!(
        rebuilt, out.text,
        "result is not the old text plus the splices"
    );
    if out.splices.is_empty() {
        assert_eq!(out.text, text);
        return;
    }

    // It parses, keeps the BOM and shebang, and keeps the line endings.
    let new = Parsed::new(&out.text).expect("the result does not parse");
    assert!(
        out.text.starts_with(&text[..old.prefix]),
        "BOM or shebang changed"
    );
    if text.contains('\n') && !text.replace("\r\n", "").contains('\n') {
        assert!(
            !out.text.replace("\r\n", "").contains('\n'),
            "bare LF in a CRLF file"
        );
    }
    if !text.contains('\r') && !code.contains('\r') {
        assert!(!out.text.contains('\r'), "CR in an LF file");
    }

    let (old_items, body) = old.container(text, path);
    let (new_items, _) = new.container(&out.text, path);
    let norm = code.replace("\r\n", "\n");
    match edit.mode {
        EditMode::Merge => {
            // Each splice replaces an item or member (its span, or what follows its
            // leading doc comments), or inserts at a point outside every item but the
            // impls that get members.
            for s in &out.splices {
                if s.range.is_empty() {
                    let p = s.range.start;
                    assert!(
                        body.start <= p && p <= body.end,
                        "insertion outside the module"
                    );
                    for it in old_items {
                        let r = old.span(it);
                        if r.start < p && p < r.end {
                            let syn::Item::Impl(imp) = it else {
                                panic!("insertion inside an item");
                            };
                            let open = old.span(&imp.brace_token.span.open()).end;
                            let close = old.span(&imp.brace_token.span.close()).start;
                            assert!(open <= p && p <= close, "insertion in an impl's header");
                            for m in &imp.items {
                                let mr = old.span(m);
                                assert!(!(mr.start < p && p < mr.end), "insertion inside a member");
                            }
                        }
                    }
                } else {
                    let spans = old_items.iter().flat_map(|it| {
                        let mut v = vec![old.span(it)];
                        if let syn::Item::Impl(imp) = it {
                            v.extend(imp.items.iter().map(|m| old.span(m)));
                        }
                        v
                    });
                    let ok = spans.into_iter().any(|r| {
                        r.end == s.range.end
                            && r.start <= s.range.start
                            && (r.start == s.range.start
                                || only_docs(&text[r.start..s.range.start]))
                    });
                    assert!(ok, "a splice is not an item's span: {:?}", s.range);
                }
            }
            // Keys: the old ones plus the added ones.
            let code_items = syn::parse_file(&norm).expect("merged code parses").items;
            let mut want = keys(old_items);
            // (Two new impls of one type are two blocks; a repeated `use` is added once;
            // other repeats are refused.)
            let old_keys = want.clone();
            let mut seen: Vec<ItemKey> = Vec::new();
            for it in &code_items {
                let k = ItemKey::of_item(it);
                let new_impl = matches!(it, syn::Item::Impl(_));
                if !old_keys.contains(&k) && (new_impl || !seen.contains(&k)) {
                    want.push(k.clone());
                }
                seen.push(k);
            }
            want.sort();
            assert_eq!(keys(new_items), want, "keys after the merge");
            for it in &code_items {
                if let syn::Item::Impl(imp) = it {
                    let k = ItemKey::of_item(it);
                    let before = member_keys(old_items, &k);
                    if before.is_empty() {
                        continue;
                    }
                    let owner = impl_name(imp);
                    let after = member_keys(new_items, &k);
                    for m in &imp.items {
                        assert!(
                            after.contains(&ItemKey::of_member(&owner, m)),
                            "member lost"
                        );
                    }
                    assert!(before.iter().all(|b| after.contains(b)), "member lost");
                }
            }
            // The same merge again changes nothing.
            let names: Vec<&str> = path.iter().map(String::as_str).collect();
            let again = apply_to_text(&out.text, &names, edit).expect("second merge");
            assert!(
                again
                    .changes
                    .iter()
                    .all(|c| c.action == ChangeAction::Unchanged),
                "second merge: {:?}",
                again.changes
            );
            assert_eq!(again.text, out.text, "second merge changed the text");
        }
        EditMode::Remove => {
            // Each splice removes one item's (or member's) span and whitespace around it.
            for s in &out.splices {
                assert!(s.text.is_empty() && !s.range.is_empty());
                let spans = old_items.iter().flat_map(|it| {
                    let mut v = vec![old.span(it)];
                    if let syn::Item::Impl(imp) = it {
                        v.extend(imp.items.iter().map(|m| old.span(m)));
                    }
                    v
                });
                let hit = spans
                    .filter(|r| s.range.start <= r.start && r.end <= s.range.end)
                    .max_by_key(|r| r.len())
                    .expect("a removal removes an item");
                let rest = format!(
                    "{}{}",
                    &text[s.range.start..hit.start],
                    &text[hit.end..s.range.end]
                );
                assert!(
                    rest.trim().is_empty(),
                    "a removal took more than whitespace"
                );
            }
            assert!(
                out.changes
                    .iter()
                    .all(|c| c.action == ChangeAction::Removed)
            );
            // The items whose spans went are gone, every other one is still there.
            let gone = |r: Range<usize>| {
                out.splices
                    .iter()
                    .any(|s| s.range.start <= r.start && r.end <= s.range.end)
            };
            let kept: Vec<syn::Item> = old_items
                .iter()
                .filter(|it| !gone(old.span(*it)))
                .cloned()
                .collect();
            assert_eq!(keys(new_items), keys(&kept), "keys after remove");
        }
        EditMode::Replace => {
            assert_eq!(out.splices.len(), 1);
            let r = &out.splices[0].range;
            if path.is_empty() {
                // After the BOM and the shebang line with its line break.
                let shebang = text[..body.start]
                    .trim_start_matches('\u{feff}')
                    .starts_with("#!");
                let start = if shebang && text[body.start..].starts_with('\n') {
                    body.start + 1
                } else {
                    body.start
                };
                assert_eq!(*r, start..text.len(), "replace range");
            } else {
                assert_eq!(*r, body, "replace range");
            }
            let code_items = syn::parse_file(&norm).expect("replacing code parses").items;
            assert_eq!(keys(new_items), keys(&code_items), "keys after replace");
        }
    }
}
