//! Rust source files: decoding, parsing with syn, byte offsets of spans, and syntax
//! errors that point at `file:line:col` with a snippet.
//!
//! `syn::parse_file` strips a BOM and a shebang line before lexing, which shifts every
//! span. This module strips them itself and remembers their length, so
//! `SourceFile::range` (crate-private) returns offsets into the original text.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use proc_macro2::Span;

/// The line ending a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnding {
    /// `\n`
    Lf,
    /// `\r\n`
    CrLf,
}

impl LineEnding {
    /// The majority line ending of `text` (LF when there is no line break).
    pub fn detect(text: &str) -> LineEnding {
        let crlf = text.matches("\r\n").count();
        let lf = text.matches('\n').count();
        if crlf > 0 && crlf * 2 >= lf {
            LineEnding::CrLf
        } else {
            LineEnding::Lf
        }
    }

    /// The characters of this line ending.
    pub fn as_str(self) -> &'static str {
        match self {
            LineEnding::Lf => "\n",
            LineEnding::CrLf => "\r\n",
        }
    }

    /// Convert `\n` line breaks of `text` (which must not contain `\r\n`) to this ending.
    pub fn apply(self, text: &str) -> String {
        match self {
            LineEnding::Lf => text.to_owned(),
            LineEnding::CrLf => text.replace('\n', "\r\n"),
        }
    }
}

/// Where a piece of source text came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file of the project.
    File(PathBuf),
    /// Code submitted by the user (`--code`, `--code-file`, stdin, API).
    Submitted,
    /// Text produced by an edit, before it was written.
    Result(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Submitted => f.write_str("<submitted code>"),
            Origin::Result(p) => write!(f, "{} (after the edit)", p.display()),
        }
    }
}

/// A syntax error with its position and the offending line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Where the text came from.
    pub origin: Origin,
    /// What the parser expected or found.
    pub message: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// The text of the offending line (without its line break); of a long line, only
    /// the part around the column (at most [`EXCERPT_CHARS`] characters, and a lone
    /// `\r` ends it as a line break would), starting at character `line_text_start`.
    pub line_text: String,
    /// The 0-based character offset in the line where `line_text` starts (0 unless the
    /// line was cut).
    pub line_text_start: usize,
}

/// The most characters of the offending line a [`SyntaxError`] keeps.
pub const EXCERPT_CHARS: usize = 120;

/// The part of `line` shown for an error at 1-based character `column`: the lone-CR
/// separated segment holding the column, cut to [`EXCERPT_CHARS`] characters around
/// it. Returns the excerpt and the character offset where it starts.
fn excerpt(line: &str, column: usize) -> (String, usize) {
    let at = column.saturating_sub(1);
    let short = line.len() <= EXCERPT_CHARS && !line.contains('\r');
    if short {
        return (line.to_owned(), 0);
    }
    // The segment between lone CRs that holds the column.
    let (mut seg_start, mut seg_end) = (0usize, 0usize);
    for (i, c) in line.chars().enumerate() {
        seg_end = i + 1;
        if c == '\r' {
            if i >= at {
                seg_end = i;
                break;
            }
            seg_start = i + 1;
        }
    }
    let seg_len = seg_end.saturating_sub(seg_start);
    let (start, len) = if seg_len <= EXCERPT_CHARS {
        (seg_start, seg_len)
    } else {
        let before = EXCERPT_CHARS / 2;
        let start = at
            .saturating_sub(before)
            .max(seg_start)
            .min(seg_end - EXCERPT_CHARS);
        (start, EXCERPT_CHARS)
    };
    (line.chars().skip(start).take(len).collect(), start)
}

impl SyntaxError {
    /// An error at byte `offset` of `text`.
    pub fn at(origin: Origin, message: impl Into<String>, text: &str, offset: usize) -> Self {
        let (line, column) = line_col(text, offset);
        let (line_text, line_text_start) = excerpt(line_text(text, line), column);
        SyntaxError {
            origin,
            message: message.into(),
            line,
            column,
            line_text,
            line_text_start,
        }
    }

    pub(crate) fn from_syn(origin: Origin, err: &syn::Error, text: &str, base_line: usize) -> Self {
        let start = err.span().start();
        let mut message = err.to_string();
        if message == "cannot parse string into token stream" {
            // proc-macro2's lexer failed: say what that usually means.
            message = "unclosed or mismatched delimiter (`(`, `[`, `{`), or an unterminated \
                       string, char or block comment"
                .to_owned();
        }
        if start.line == 0 {
            // The parser ran out of input: point at the end of the text.
            return SyntaxError::at(origin, message, text, text.len());
        }
        let line = start.line + base_line;
        let column = start.column + 1;
        let (line_text, line_text_start) = excerpt(line_text(text, line), column);
        SyntaxError {
            origin,
            message,
            line,
            column,
            line_text,
            line_text_start,
        }
    }
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let num = self.line.to_string();
        let pad = " ".repeat(num.len());
        writeln!(f, "{}", self.message)?;
        writeln!(f, "{pad}--> {}:{}:{}", self.origin, self.line, self.column)?;
        writeln!(f, "{pad} |")?;
        let cut_before = self.line_text_start > 0;
        let lead = if cut_before { "…" } else { "" };
        let shown: String = self.line_text.replace('\t', "    ");
        writeln!(f, "{num} | {lead}{shown}")?;
        let before: String = self
            .line_text
            .chars()
            .take(self.column.saturating_sub(1 + self.line_text_start))
            .map(|c| if c == '\t' { "    " } else { " " })
            .collect();
        let lead = if cut_before { " " } else { "" };
        write!(f, "{pad} | {lead}{before}^")
    }
}

impl std::error::Error for SyntaxError {}

/// 1-based line and 1-based character column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..]
        .trim_start_matches('\u{feff}')
        .chars()
        .count()
        + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The text of 1-based line `line` (empty past the end), without `\r\n`/`\n`.
pub fn line_text(text: &str, line: usize) -> &str {
    text.split('\n')
        .nth(line.saturating_sub(1))
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or("")
}

/// Length in bytes of a leading BOM and shebang line (not including the shebang's line
/// break), exactly as rustc and `syn::parse_file` skip them.
pub fn prefix_len(text: &str) -> usize {
    let mut len = 0;
    if text.starts_with('\u{feff}') {
        len = '\u{feff}'.len_utf8();
    }
    let rest = &text[len..];
    if let Some(after) = rest.strip_prefix("#!") {
        // `#![attr]` is an inner attribute, not a shebang.
        if !skip_trivia(after).starts_with('[') {
            len += rest.find('\n').unwrap_or(rest.len());
        }
    }
    len
}

/// Skip whitespace and plain comments, as rustc does to tell `#!/usr/bin/env` from
/// `#! [attr]`: block comments nest, and doc comments are not skipped.
fn skip_trivia(mut s: &str) -> &str {
    loop {
        let t = s.trim_start();
        if t.starts_with("//") {
            if !is_plain_line_comment(t) {
                return t;
            }
            s = t.find('\n').map_or("", |i| &t[i..]);
        } else if t.starts_with("/*") {
            let doc = (t.starts_with("/**") && !t.starts_with("/***") && !t.starts_with("/**/"))
                || t.starts_with("/*!");
            if doc {
                return t;
            }
            s = block_comment_end(t).map_or("", |end| &t[end..]);
        } else {
            return t;
        }
    }
}

/// Does `s` start with a `//` comment that is not a doc comment (`////` is plain)?
pub(crate) fn is_plain_line_comment(s: &str) -> bool {
    s.starts_with("//") && (!s.starts_with("///") || s.starts_with("////")) && !s.starts_with("//!")
}

/// The length of the (nested) block comment `t` starts with, if it is closed.
pub(crate) fn block_comment_end(t: &str) -> Option<usize> {
    let b = t.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// A parsed Rust file that remembers its text, so spans map back to byte ranges.
pub struct SourceFile {
    origin: Origin,
    text: String,
    prefix: usize,
    line_ending: LineEnding,
    syntax: syn::File,
}

impl fmt::Debug for SourceFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceFile")
            .field("origin", &self.origin)
            .field("len", &self.text.len())
            .field("items", &self.syntax.items.len())
            .finish()
    }
}

impl SourceFile {
    /// Parse `text` as a whole Rust file.
    pub fn parse(origin: Origin, text: String) -> Result<SourceFile, Box<SyntaxError>> {
        let prefix = prefix_len(&text);
        crate::nesting::check_from(&origin, &text, prefix)?;
        let body = &text[prefix..];
        let syntax: syn::File = syn::parse_str(body)
            .map_err(|e| Box::new(SyntaxError::from_syn(origin.clone(), &e, &text, 0)))?;
        let line_ending = LineEnding::detect(&text);
        Ok(SourceFile {
            origin,
            text,
            prefix,
            line_ending,
            syntax,
        })
    }

    /// Decode bytes as UTF-8 and parse them; non-UTF-8 input is a syntax error at the
    /// first invalid byte.
    pub fn parse_bytes(origin: Origin, bytes: Vec<u8>) -> Result<SourceFile, Box<SyntaxError>> {
        let text = decode(origin.clone(), bytes)?;
        SourceFile::parse(origin, text)
    }

    /// Where the text came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The full original text, BOM and shebang included.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Length of the BOM and shebang prefix.
    pub fn prefix_len(&self) -> usize {
        self.prefix
    }

    /// The file's line ending.
    pub fn line_ending(&self) -> LineEnding {
        self.line_ending
    }

    /// The syntax tree.
    pub(crate) fn syntax(&self) -> &syn::File {
        &self.syntax
    }

    /// Byte range in [`Self::text`] of a span produced by parsing this file.
    pub(crate) fn range(&self, span: Span) -> Range<usize> {
        let r = span.byte_range();
        r.start + self.prefix..r.end + self.prefix
    }

    /// Byte range of anything with tokens (an item, from its first attribute to its
    /// last token).
    pub(crate) fn range_of(&self, node: &impl syn::spanned::Spanned) -> Range<usize> {
        self.range(node.span())
    }

    /// Consume the file, returning its text.
    pub fn into_text(self) -> String {
        self.text
    }
}

/// Decode UTF-8, reporting the position of the first invalid byte.
pub fn decode(origin: Origin, bytes: Vec<u8>) -> Result<String, Box<SyntaxError>> {
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let bytes = e.into_bytes();
        let text = String::from_utf8_lossy(&bytes[..valid]).into_owned();
        Box::new(SyntaxError::at(
            origin,
            format!("invalid UTF-8 at byte {valid}: Rust source must be UTF-8"),
            &text,
            valid,
        ))
    })
}

/// Submitted items and their byte ranges in the submitted code.
pub(crate) type ParsedItems = (Vec<syn::Item>, Vec<Range<usize>>);

/// Parse submitted code as a sequence of items (inner attributes and a shebang are
/// not allowed in submitted code).
pub(crate) fn parse_items(code: &str) -> Result<ParsedItems, Box<SyntaxError>> {
    crate::nesting::check(&Origin::Submitted, code)?;
    let file: syn::File = syn::parse_str(code)
        .map_err(|e| Box::new(SyntaxError::from_syn(Origin::Submitted, &e, code, 0)))?;
    if let Some(attr) = file.attrs.first() {
        let r = syn::spanned::Spanned::span(attr).byte_range();
        return Err(Box::new(SyntaxError::at(
            Origin::Submitted,
            "inner attributes (`#![...]`) cannot be merged into a module; submit items only, \
             or use `--mode replace` for the whole module",
            code,
            r.start,
        )));
    }
    let ranges = file
        .items
        .iter()
        .map(|i| syn::spanned::Spanned::span(i).byte_range())
        .collect();
    Ok((file.items, ranges))
}

/// Check that `text` parses as a Rust file; used on the result of every edit.
pub fn check_file(path: &Path, text: &str) -> Result<(), Box<SyntaxError>> {
    let prefix = prefix_len(text);
    crate::nesting::check_from(&Origin::Result(path.to_owned()), text, prefix)?;
    syn::parse_str::<syn::File>(&text[prefix..])
        .map(|_| ())
        .map_err(|e| {
            Box::new(SyntaxError::from_syn(
                Origin::Result(path.to_owned()),
                &e,
                text,
                0,
            ))
        })
}

/// Forget the spans of everything parsed so far on this thread. Long-running
/// processes (watch, the HTTP API) call this between operations, otherwise
/// proc-macro2's span table grows without bound and positions eventually wrap. Every
/// [`SourceFile`] parsed before the call must be dropped first.
pub fn reset_span_table() {
    proc_macro2::extra::invalidate_current_thread_spans();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_map_to_bytes_after_bom_and_shebang() {
        let text = "\u{feff}#!/usr/bin/env run-cargo-script\n// héllo\nfn main() {}\n".to_owned();
        let file = SourceFile::parse(Origin::Submitted, text).expect("parses");
        let item = &file.syntax().items[0];
        let r = file.range_of(item);
        assert_eq!(&file.text()[r], "fn main() {}");
    }

    #[test]
    fn inner_attribute_is_not_a_shebang() {
        assert_eq!(prefix_len("#![allow(dead_code)]\nfn f() {}"), 0);
        assert_eq!(prefix_len("#! /* c */ [allow(dead_code)]\nfn f() {}"), 0);
        assert_eq!(prefix_len("#!/bin/sh\nfn f() {}"), 9);
        // Block comments nest, as in rustc: still an inner attribute.
        let nested = "#!/* /* */ x */ [allow(\ndead_code)]\nfn f() {}";
        assert_eq!(prefix_len(nested), 0);
        assert!(syn::parse_file(nested).is_ok());
        // A doc comment is not trivia: `#!` then `//!` is a shebang line.
        assert_eq!(prefix_len("#! //! doc\n[allow(dead_code)]\nfn f() {}"), 10);
        // An unclosed comment: a shebang line.
        assert_eq!(prefix_len("#! /* [x]\nfn f() {}"), 9);
    }

    #[test]
    fn syntax_error_points_at_line_and_column() {
        let err = parse_items("fn ok() {}\nfn bad( {}\n").expect_err("must fail");
        assert_eq!(err.line, 2);
        assert_eq!(err.column, 7, "points at the unclosed `(`: {err:?}");
        assert!(err.message.contains("delimiter"), "{err:?}");
        let shown = err.to_string();
        assert!(shown.contains("<submitted code>:2:"), "{shown}");
        assert!(shown.contains("2 | fn bad( {}"), "{shown}");
    }

    #[test]
    fn end_of_input_error_points_at_the_end() {
        let err = parse_items("fn f() {").expect_err("must fail");
        assert_eq!(err.line, 1);
    }

    #[test]
    fn non_utf8_is_rejected_with_position() {
        let err = decode(Origin::Submitted, b"fn f() {}\n\xff".to_vec()).expect_err("invalid");
        assert_eq!(err.line, 2);
        assert!(err.message.contains("UTF-8"));
    }

    #[test]
    fn long_and_cr_only_lines_show_a_short_excerpt() {
        // A file with lone CRs for line breaks is one line to the parser: the error
        // shows the CR-separated segment with the column, not the whole file.
        let text = format!(
            "{}fn bad( {{}}\r{}",
            "fn ok() {}\r".repeat(10_000),
            "fn more() {}\r".repeat(10_000)
        );
        let err = SourceFile::parse(Origin::File("cr.rs".into()), text).expect_err("fails");
        assert_eq!(err.line_text, "fn bad( {}", "{err:?}");
        let shown = err.to_string();
        assert!(shown.len() < 400, "{shown}");
        assert!(shown.contains("| …fn bad( {}"), "{shown}");
        // The caret is under the `(` (counting characters: `…` is one).
        let col = |l: &str, pat: &str| l.find(pat).map(|b| l[..b].chars().count());
        let caret = shown.lines().last().expect("caret line");
        assert_eq!(
            col(caret, "^"),
            shown.lines().nth(3).and_then(|l| col(l, "( {}"))
        );
        // A long line is cut around the column.
        let long = format!(
            "const A: [u8; 3] = [{}];\nfn bad( {{}}",
            "1, ".repeat(100_000)
        );
        let err = parse_items(&long).expect_err("fails");
        assert_eq!(err.line, 2);
        let long = format!("fn f() {{ let x = [{}, ]]; }}", "1".repeat(100_000));
        let err = parse_items(&long).expect_err("fails");
        assert!(err.line_text.chars().count() <= EXCERPT_CHARS, "{err:?}");
        assert!(err.to_string().len() < 600, "{err}");
    }

    #[test]
    fn a_nul_byte_is_named_not_an_unclosed_delimiter() {
        let err = parse_items("fn f() {}\nfn g() { \0 }").expect_err("fails");
        assert_eq!((err.line, err.column), (2, 10));
        assert!(err.message.contains("NUL byte"), "{err}");
        assert!(!err.message.contains("delimiter"), "{err}");
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_col("é = 1", 3), (1, 3));
    }

    #[test]
    fn crlf_is_detected() {
        assert_eq!(LineEnding::detect("a\r\nb\r\n"), LineEnding::CrLf);
        assert_eq!(LineEnding::detect("a\nb\n"), LineEnding::Lf);
    }
}
