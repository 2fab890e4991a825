//! The syntax check of an edit's result, done where the edit happened.
//!
//! Re-parsing a whole 5,000-line file after replacing one function costs as much as
//! the edit itself. The result is the old file (which parsed) with a few splices, so
//! only *windows* around the splices are parsed: each window runs from the start of
//! the top-level item at or before the splice to the end of the first top-level item
//! that ends after it, both positions where the lexer is between tokens.
//!
//! Why a window that parses on its own means the file parses: the text before the
//! first window is unchanged and ends at an item start of the old file, so the lexer
//! reaches the window in its neutral state, exactly as when the window is lexed alone.
//! A window that ends with its last item's closing `}` or `;` (a token nothing can
//! extend) leaves the lexer neutral again, and the unchanged text after it lexes as it
//! did in the old file, into whole items. Between windows the same holds by induction.
//! The file's tokens are then whole items, window by window, which is what a file is.
//! Two premises are checked, not assumed: the result keeps the old BOM/shebang prefix
//! (text spliced right after a shebang would join its line), and no window starts
//! with a BOM (proc-macro2 drops one at the start of what it lexes, where the full
//! file has an error). Whenever a condition does not hold, or a window fails, the
//! whole file is parsed instead (which also gives the precise error). A property
//! test below compares both verdicts on random splices of tricky files.

use std::cell::OnceCell;
use std::ops::Range;
use std::path::Path;

use crate::source::{SourceFile, SyntaxError, check_file};

use super::Splice;

/// Check that `out`, which is `file`'s text with `splices` (sorted, non-overlapping)
/// applied, parses as a Rust file.
pub(super) fn check_result(
    file: &SourceFile,
    splices: &[Splice],
    out: &str,
    path: &Path,
) -> Result<(), Box<SyntaxError>> {
    // The result must keep the old BOM/shebang prefix: text spliced right after a
    // shebang would join its line (and the prefix is where every window check starts).
    if crate::source::prefix_len(out) == file.prefix_len()
        && let Some(windows) = windows(file, splices, out.len())
        && windows
            .iter()
            .all(|w| window_parses(out, w.clone(), w.start == file.prefix_len()))
    {
        debug_assert!(
            check_file(path, out).is_ok(),
            "the window check accepted a result of {} that does not parse",
            path.display()
        );
        return Ok(());
    }
    check_file(path, out)
}

/// The windows to parse, as ranges of the result; `None` when the shortcut does not
/// apply and the whole file must be parsed.
fn windows(file: &SourceFile, splices: &[Splice], out_len: usize) -> Option<Vec<Range<usize>>> {
    let text = file.text();
    let items = &file.syntax().items;
    let n = items.len();
    if n == 0 || splices.is_empty() {
        return None;
    }
    // An item's range walks its tokens: computed once per item the searches touch.
    let ranges: Vec<OnceCell<Range<usize>>> = (0..n).map(|_| OnceCell::new()).collect();
    let range = |i: usize| ranges[i].get_or_init(|| file.range_of(&items[i])).clone();
    // Windows in the old text's positions, merged when they overlap or touch.
    let mut old: Vec<Range<usize>> = Vec::new();
    for s in splices {
        let (a, b) = (s.range.start, s.range.end);
        // The first item that ends after `a`: `a` lies in it or in the gap before it.
        let i = partition_point(n, |i| range(i).end <= a);
        let start = if i < n && range(i).start <= a {
            range(i).start
        } else if i > 0 {
            range(i - 1).start
        } else {
            file.prefix_len()
        };
        // The first item that ends after `b`, so its last token is unchanged.
        let k = partition_point(n, |k| range(k).end <= b);
        let end = if k < n {
            let e = range(k).end;
            if !matches!(text.as_bytes()[e - 1], b'}' | b';') {
                return None;
            }
            e
        } else {
            text.len()
        };
        if start > a || end < b {
            return None;
        }
        match old.last_mut() {
            Some(w) if start <= w.end => w.end = w.end.max(end),
            _ => old.push(start..end),
        }
    }
    // Map to the result's positions: a splice lies wholly inside one window.
    // The end of the old file maps to the end of the result (text appended there
    // belongs to the last window).
    let shift = |pos: usize| -> Option<usize> {
        if pos == text.len() {
            return Some(out_len);
        }
        let mut delta = 0isize;
        for s in splices.iter().take_while(|s| s.range.start < pos) {
            if s.range.end > pos {
                return None;
            }
            delta += s.text.len() as isize - s.range.len() as isize;
        }
        pos.checked_add_signed(delta)
    };
    old.iter()
        .map(|w| Some(shift(w.start)?..shift(w.end)?))
        .collect()
}

/// Does the window `w` of `out` parse as whole items, its last token ending the
/// window (unless the window runs to the end of the file)? Inner attributes are
/// accepted only at the start of the file's body (`at_body_start`).
fn window_parses(out: &str, w: Range<usize>, at_body_start: bool) -> bool {
    let Some(slice) = out.get(w.clone()) else {
        return false;
    };
    // proc-macro2 drops a BOM at the start of what it lexes; in the middle of a file a
    // BOM is an error, which only the full parse reports.
    if slice.starts_with('\u{feff}') {
        return false;
    }
    let Ok(parsed) = syn::parse_str::<syn::File>(slice) else {
        return false;
    };
    if !at_body_start && !parsed.attrs.is_empty() {
        return false;
    }
    if w.end == out.len() {
        return true;
    }
    parsed
        .items
        .last()
        .is_some_and(|last| syn::spanned::Spanned::span(last).byte_range().end == slice.len())
}

/// The first index in `0..n` for which `pred` is false (`pred` is true then false).
fn partition_point(n: usize, mut pred: impl FnMut(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Origin;

    fn splice(range: Range<usize>, text: &str) -> Splice {
        Splice {
            range,
            text: text.to_owned(),
        }
    }

    fn apply(text: &str, splices: &[Splice]) -> String {
        let mut out = String::new();
        let mut pos = 0;
        for s in splices {
            out.push_str(&text[pos..s.range.start]);
            out.push_str(&s.text);
            pos = s.range.end;
        }
        out.push_str(&text[pos..]);
        out
    }

    fn check(text: &str, splices: &[Splice]) -> (Option<Vec<Range<usize>>>, bool) {
        let file = SourceFile::parse(Origin::File("t.rs".into()), text.to_owned()).expect("parses");
        let out = apply(text, splices);
        let w = windows(&file, splices, out.len());
        let ok = check_result(&file, splices, &out, Path::new("t.rs")).is_ok();
        assert_eq!(
            ok,
            syn::parse_file(&out).is_ok(),
            "disagrees with a full parse"
        );
        (w, ok)
    }

    const FILE: &str = "//! doc\nfn a() {}\n\n// note\nfn b() {}\n\nstruct S;\nfn c() {}\n";

    #[test]
    fn a_replacement_checks_one_window_around_it() {
        let b = FILE.find("fn b").expect("fn b");
        let (w, ok) = check(FILE, &[splice(b..b + 9, "fn b2() { 1; }")]);
        assert!(ok);
        // From `fn b` (its own start) to the end of `struct S;` (the next item).
        let w = w.expect("windows");
        assert_eq!(w.len(), 1);
        let out = apply(FILE, &[splice(b..b + 9, "fn b2() { 1; }")]);
        assert_eq!(&out[w[0].clone()], "fn b2() { 1; }\n\nstruct S;");
    }

    #[test]
    fn a_broken_splice_is_caught_with_the_full_error() {
        let b = FILE.find("fn b").expect("fn b");
        let (_, ok) = check(FILE, &[splice(b..b + 9, "fn b2( {")]);
        assert!(!ok);
    }

    #[test]
    fn text_swallowed_by_a_comment_is_decided_by_the_full_parse() {
        // An insertion right after `// note` lands inside the comment.
        let at = FILE.find("// note").expect("note") + 7;
        let (_, ok) = check(FILE, &[splice(at..at, " fn x() {")]);
        assert!(ok, "commented out, still a valid file");
        let (_, ok) = check(FILE, &[splice(at..at, "\nfn x() {")]);
        assert!(!ok);
    }

    #[test]
    fn insertions_at_the_end_and_start_of_the_file() {
        let (w, ok) = check(FILE, &[splice(FILE.len()..FILE.len(), "\nfn d() {}\n")]);
        assert!(ok);
        assert_eq!(w.expect("windows")[0].end, FILE.len() + 11);
        let at = FILE.find("fn a").expect("fn a");
        let (w, ok) = check(FILE, &[splice(at..at, "use x::y;\n")]);
        assert!(ok);
        assert_eq!(
            w.expect("windows")[0].start,
            FILE.find("fn a").expect("fn a")
        );
        // Before the first item: the window starts at the body, inner attributes and all.
        let (w, ok) = check(FILE, &[splice(0..0, "#![allow(dead_code)]\n")]);
        assert!(ok);
        assert_eq!(w.expect("windows")[0].start, 0);
    }

    #[test]
    fn a_bom_spliced_into_the_middle_is_refused() {
        // proc-macro2 would drop it at the start of a window.
        let b = FILE.find("fn b").expect("fn b");
        let (_, ok) = check(FILE, &[splice(b..b, "\u{feff}")]);
        assert!(!ok);
        let (_, ok) = check(FILE, &[splice(b..b + 9, "\u{feff}fn b2() {}")]);
        assert!(!ok);
    }

    #[test]
    fn text_joining_the_shebang_line_is_refused() {
        let text = "#!/bin/sh\nfn f() {\n}\n";
        let (_, ok) = check(text, &[splice(9..9, "fn x() {\n}")]);
        assert!(!ok);
        let (_, ok) = check(text, &[splice(9..10, "")]);
        assert!(!ok);
        // After the shebang's line break: fine, and checked by a window.
        let (w, ok) = check(text, &[splice(10..10, "fn x() {}\n")]);
        assert!(ok);
        assert!(w.is_some());
    }

    #[test]
    fn an_inner_attribute_in_the_middle_is_refused() {
        let at = FILE.find("struct S").expect("struct S");
        let (_, ok) = check(FILE, &[splice(at..at, "#![allow(dead_code)]\n")]);
        assert!(!ok);
    }

    #[test]
    fn distant_splices_get_separate_windows_and_close_ones_merge() {
        let a = FILE.find("fn a").expect("fn a");
        let c = FILE.find("fn c").expect("fn c");
        let (w, ok) = check(
            FILE,
            &[splice(a..a + 9, "fn a() { 2; }"), splice(c..c + 9, "")],
        );
        assert!(ok);
        assert_eq!(w.expect("windows").len(), 2);
        let b = FILE.find("fn b").expect("fn b");
        let (w, ok) = check(
            FILE,
            &[
                splice(a..a + 9, "fn a() { 2; }"),
                splice(b..b + 9, "fn b() { 3; }"),
            ],
        );
        assert!(ok);
        assert_eq!(w.expect("windows").len(), 1);
    }

    #[test]
    fn removing_every_item_and_empty_files_use_the_full_parse() {
        let (w, ok) = check(
            FILE,
            &[splice(FILE.find("fn a").expect("fn a")..FILE.len(), "")],
        );
        assert!(ok);
        assert!(w.is_some());
        let (w, ok) = check("// nothing\n", &[splice(0..0, "fn a() {}\n")]);
        assert!(ok);
        assert!(w.is_none());
    }

    #[test]
    fn a_splice_inside_an_impl_checks_the_whole_impl() {
        let text = "struct S;\nimpl S {\n    fn a() {}\n    fn b() {}\n}\nfn z() {}\n";
        let at = text.find("fn b").expect("fn b");
        let (w, ok) = check(text, &[splice(at..at + 9, "fn b() -> u8 { 1 }")]);
        assert!(ok);
        let w = w.expect("windows");
        let out = apply(text, &[splice(at..at + 9, "fn b() -> u8 { 1 }")]);
        assert!(out[w[0].clone()].starts_with("impl S {"));
        let (_, ok) = check(text, &[splice(at..at + 9, "fn b() -> u8 { 1 } }")]);
        assert!(!ok);
    }

    /// Files with the constructs that matter at window boundaries.
    const BASES: &[&str] = &[
        "//! inner doc\n#![allow(dead_code)]\n/// doc\nfn a() {}\n\n// c\nstruct S;\nimpl S {\n    fn m(&self) {}\n}\n",
        "\u{feff}#!/usr/bin/env run\nfn a() { let _ = r#\"}\"#; }\n/** block doc */\nfn b() {}\n",
        "macro_rules! m { () => {}; }\nm!();\nm! {}\n/* a /* nested */ comment */\nfn c() -> char { '}' }\n",
        "mod inner {\n    //! doc\n    fn x() {}\n    fn y() {}\n}\r\nfn z() {}\r\n",
        "fn only() {}",
    ];

    /// What may be spliced: whole items, and fragments that break lexing or parsing.
    const FRAGMENTS: &[&str] = &[
        "",
        "fn n() {}\n",
        "\nfn n() {}",
        "/*",
        "*/",
        "//",
        "\"",
        "r#\"",
        "{",
        "}",
        ";",
        "\u{feff}",
        "#![allow(unused)]\n",
        "/// doc\n",
        "struct T;",
        "\n",
        "impl S {}",
        "m!",
        "'",
        "#!/x\n",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 2000, ..proptest::prelude::ProptestConfig::default()
        })]

        /// The window check and the full parse agree on random splices.
        #[test]
        fn agrees_with_the_full_parse(
            base in 0..BASES.len(),
            cuts in proptest::collection::vec((0usize..1000, 0usize..8, 0..FRAGMENTS.len()), 1..4),
        ) {
            let text = BASES[base];
            let file = SourceFile::parse(Origin::File("t.rs".into()), text.to_owned())
                .expect("base parses");
            let bounds: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
            let mut ranges: Vec<(usize, usize, usize)> = cuts
                .iter()
                .map(|&(at, len, f)| {
                    let a = bounds[at % bounds.len()];
                    let b = bounds.iter().copied().filter(|&b| b >= a).nth(len).unwrap_or(a);
                    (a, b, f)
                })
                .collect();
            ranges.sort();
            let mut splices = Vec::new();
            let mut pos = 0;
            for (a, b, f) in ranges {
                if a < pos || (a == pos && pos > 0 && splices.last().is_some_and(|s: &Splice| s.range.is_empty())) {
                    continue;
                }
                splices.push(splice(a..b, FRAGMENTS[f]));
                pos = b;
            }
            let out = apply(text, &splices);
            let windowed = check_result(&file, &splices, &out, Path::new("t.rs")).is_ok();
            let full = check_file(Path::new("t.rs"), &out).is_ok();
            proptest::prop_assert_eq!(windowed, full, "{:?} -> {:?}", splices, out);
        }
    }
}
