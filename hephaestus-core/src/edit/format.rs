//! Turning a submitted item into text that fits where it goes: formatted with
//! prettyplease (or kept verbatim), re-indented line by line, except lines that start
//! inside a multi-line string literal, whose bytes are part of the program.

use std::ops::Range;
use std::str::FromStr;

use proc_macro2::{Spacing, TokenStream, TokenTree};
use syn::visit::{self, Visit};

/// Can prettyplease print `item`? It panics on syntax syn keeps as raw tokens (the
/// `Verbatim` nodes, e.g. `fn f();` at module level) and on `macro_rules!` bodies that
/// are not `(..) => {..};` rules.
pub(crate) fn printable(item: &syn::Item) -> bool {
    let mut check = Printable(true);
    check.visit_item(item);
    check.0
}

struct Printable(bool);

impl<'ast> Visit<'ast> for Printable {
    fn visit_item(&mut self, i: &'ast syn::Item) {
        match i {
            syn::Item::Verbatim(_) => self.0 = false,
            syn::Item::Macro(m)
                if m.ident.is_some()
                    && m.mac.path.is_ident("macro_rules")
                    && !macro_rules_shape(&m.mac.tokens) =>
            {
                self.0 = false;
            }
            _ => visit::visit_item(self, i),
        }
    }
    fn visit_impl_item(&mut self, i: &'ast syn::ImplItem) {
        match i {
            syn::ImplItem::Verbatim(_) => self.0 = false,
            _ => visit::visit_impl_item(self, i),
        }
    }
    fn visit_trait_item(&mut self, i: &'ast syn::TraitItem) {
        match i {
            syn::TraitItem::Verbatim(_) => self.0 = false,
            _ => visit::visit_trait_item(self, i),
        }
    }
    fn visit_foreign_item(&mut self, i: &'ast syn::ForeignItem) {
        match i {
            syn::ForeignItem::Verbatim(_) => self.0 = false,
            _ => visit::visit_foreign_item(self, i),
        }
    }
    fn visit_expr(&mut self, i: &'ast syn::Expr) {
        match i {
            syn::Expr::Verbatim(_) => self.0 = false,
            _ => visit::visit_expr(self, i),
        }
    }
    fn visit_pat(&mut self, i: &'ast syn::Pat) {
        match i {
            syn::Pat::Verbatim(_) => self.0 = false,
            _ => visit::visit_pat(self, i),
        }
    }
    fn visit_type(&mut self, i: &'ast syn::Type) {
        match i {
            syn::Type::Verbatim(_) => self.0 = false,
            _ => visit::visit_type(self, i),
        }
    }
    fn visit_type_param_bound(&mut self, i: &'ast syn::TypeParamBound) {
        match i {
            syn::TypeParamBound::Verbatim(_) => self.0 = false,
            _ => visit::visit_type_param_bound(self, i),
        }
    }
}

/// Are these `macro_rules!` rules `(matcher) => {expansion}` separated by `;`, the only
/// shape prettyplease prints?
fn macro_rules_shape(rules: &TokenStream) -> bool {
    let trees: Vec<TokenTree> = rules.clone().into_iter().collect();
    let punct = |t: &TokenTree, c: char, spacing: Spacing| matches!(t, TokenTree::Punct(p) if p.as_char() == c && p.spacing() == spacing);
    trees.chunks(5).all(|rule| match rule {
        [TokenTree::Group(_), eq, gt, TokenTree::Group(_), rest @ ..] => {
            punct(eq, '=', Spacing::Joint)
                && punct(gt, '>', Spacing::Alone)
                && rest.iter().all(|t| punct(t, ';', Spacing::Alone))
        }
        _ => false,
    })
}

/// Format one item with prettyplease, without a trailing newline.
pub(crate) fn pretty_item(item: &syn::Item) -> String {
    let file = syn::File {
        shebang: None,
        frontmatter: None,
        attrs: Vec::new(),
        items: vec![item.clone()],
    };
    let mut s = prettyplease::unparse(&file);
    trim_end_newlines(&mut s);
    s
}

/// Format one impl member with prettyplease, dedented to column 0, without a trailing
/// newline.
pub(crate) fn pretty_member(owner: &syn::ItemImpl, member: &syn::ImplItem) -> String {
    let mut shell = owner.clone();
    shell.attrs.clear();
    shell.items = vec![member.clone()];
    let text = pretty_item(&syn::Item::Impl(shell));
    // `impl X {` ... `}`: keep the lines in between, dedented by one level.
    let lines: Vec<&str> = text.lines().collect();
    let open = lines.iter().position(|l| l.ends_with('{')).unwrap_or(0);
    let inner = &lines[open + 1..lines.len().saturating_sub(1)];
    let body = inner.join("\n");
    dedent(&body, "    ")
}

/// The text of a submitted item as written: from its first attribute to its last
/// token, with the indentation its first line had in the submission removed from
/// every line, line endings as `\n`.
///
/// A raw byte span copied from a file (its first line unindented because the span
/// starts at the item, its other lines keeping the file's deeper indentation) is
/// recognised: the other lines lose the indentation they share, up to `dest`, the
/// indentation the item goes to, so the item is re-indented once, not twice. (Up to
/// `dest`: an unindented item whose later lines hang deeper, `static X =\n    [..];`
/// at the top level, keeps its layout.)
pub fn verbatim(code: &str, range: Range<usize>, dest: &str) -> String {
    let line_start = code[..range.start].rfind('\n').map_or(0, |i| i + 1);
    let lead = &code[line_start..range.start];
    let text = code[range].replace("\r\n", "\n");
    // The first line starts at the item; the others carry the submission's indent,
    // except lines inside a multi-line literal, whose bytes are part of the program.
    let protected = protected_lines(&text);
    let indent: String = if !lead.trim().is_empty() {
        // Something precedes the item on its line (`/* c */ fn f`): the line's own
        // indentation is the submission's.
        lead.chars()
            .take_while(|c| *c == ' ' || *c == '\t')
            .collect()
    } else if lead.is_empty() {
        match raw_span_indent(&text, &protected) {
            Some(shared) if shared.starts_with(dest) => dest.to_owned(),
            Some(shared) if dest.starts_with(shared.as_str()) => shared,
            _ => String::new(),
        }
    } else {
        lead.to_owned()
    };
    let mut out = String::new();
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
            if protected.contains(&i) {
                out.push_str(line);
            } else {
                out.push_str(line.strip_prefix(indent.as_str()).unwrap_or(line));
            }
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The indentation a raw span's lines after the first share, when the text looks like
/// one: several lines, every later non-blank line (outside multi-line literals)
/// starting with the non-empty indentation of the last line.
fn raw_span_indent(text: &str, protected: &[usize]) -> Option<String> {
    let lines: Vec<&str> = text.split('\n').collect();
    let last = *lines.last()?;
    if lines.len() < 2 || protected.contains(&(lines.len() - 1)) {
        return None;
    }
    let lead: String = last
        .chars()
        .take_while(|c| *c == ' ' || *c == '\t')
        .collect();
    if lead.is_empty() {
        return None;
    }
    let shared = lines
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(i, l)| !protected.contains(i) && !l.trim().is_empty())
        .all(|(_, l)| l.starts_with(lead.as_str()));
    shared.then_some(lead)
}

/// Are `a` and `b` the same text but for the indentation of their lines (lines inside
/// multi-line literals compared whole)? A re-indented copy of an item is the same item
/// for verbatim mode, which indents items to their place anyway; a comment, a blank
/// line or a space inside a line is not.
pub fn same_but_indentation(a: &str, b: &str) -> bool {
    let (pa, pb) = (protected_lines(a), protected_lines(b));
    let lines = |t: &str, p: &[usize]| -> Vec<String> {
        t.split('\n')
            .enumerate()
            .map(|(i, l)| {
                let l = l.strip_suffix('\r').unwrap_or(l);
                if p.contains(&i) {
                    l.to_owned()
                } else {
                    l.trim_start_matches([' ', '\t']).to_owned()
                }
            })
            .collect()
    };
    lines(a, &pa) == lines(b, &pb)
}

/// Convert prettyplease's four-space indentation to tabs (lines inside multi-line
/// literals untouched).
pub fn tabify(text: &str) -> String {
    let protected = protected_lines(text);
    text.split('\n')
        .enumerate()
        .map(|(i, l)| {
            if protected.contains(&i) {
                return l.to_owned();
            }
            let spaces = l.len() - l.trim_start_matches(' ').len();
            format!("{}{}", "\t".repeat(spaces / 4), &l[spaces - spaces % 4..])
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn dedent(text: &str, unit: &str) -> String {
    let protected = protected_lines(text);
    text.split('\n')
        .enumerate()
        .map(|(i, l)| {
            if protected.contains(&i) {
                l
            } else {
                l.strip_prefix(unit).unwrap_or(l)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Indent every line but the first with `indent` (when `first` is false) or every line
/// (when true). Empty lines stay empty; lines that begin inside a multi-line literal
/// are left alone.
pub fn indent(text: &str, indent: &str, first: bool) -> String {
    if indent.is_empty() {
        return text.to_owned();
    }
    let protected = protected_lines(text);
    let mut out = String::with_capacity(text.len() + indent.len() * 8);
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let skip = (i == 0 && !first) || line.is_empty() || protected.contains(&i);
        if !skip {
            out.push_str(indent);
        }
        out.push_str(line);
    }
    out
}

/// Indices of lines (0-based) that start inside a multi-line literal of `text`.
fn protected_lines(text: &str) -> Vec<usize> {
    // Only string literals span lines (char literals cannot): no quote, no lexing.
    if !text.contains('"') || !text.contains('\n') {
        return Vec::new();
    }
    let Ok(tokens) = TokenStream::from_str(text) else {
        return Vec::new();
    };
    let mut ranges = Vec::new();
    collect_multiline_literals(tokens, &mut ranges);
    if ranges.is_empty() {
        return Vec::new();
    }
    let mut lines = Vec::new();
    let mut offset = 0;
    for (i, line) in text.split('\n').enumerate() {
        if ranges.iter().any(|r| r.start < offset && offset < r.end) {
            lines.push(i);
        }
        offset += line.len() + 1;
    }
    lines
}

fn collect_multiline_literals(tokens: TokenStream, out: &mut Vec<Range<usize>>) {
    for tt in tokens {
        match tt {
            TokenTree::Group(g) => collect_multiline_literals(g.stream(), out),
            TokenTree::Literal(l) => {
                let r = l.span().byte_range();
                if r.len() > 1 && l.to_string().contains('\n') {
                    out.push(r);
                }
            }
            _ => {}
        }
    }
}

fn trim_end_newlines(s: &mut String) {
    while s.ends_with('\n') || s.ends_with('\r') {
        s.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indentation_skips_lines_inside_string_literals() {
        let text = "fn f() -> &'static str {\n    \"a\nb\"\n}";
        let out = indent(text, "  ", false);
        assert_eq!(out, "fn f() -> &'static str {\n      \"a\nb\"\n  }");
    }

    #[test]
    fn verbatim_keeps_relative_indentation() {
        let code = "    fn f() {\r\n        1\r\n    }\n";
        let out = verbatim(code, 4..code.trim_end().len(), "");
        assert_eq!(out, "fn f() {\n    1\n}");
    }

    #[test]
    fn a_comment_before_the_item_does_not_hide_the_lines_indentation() {
        let code = "    /* c */ fn f() {\n        1\n    }";
        let start = code.find("fn").expect("fn");
        assert_eq!(verbatim(code, start..code.len(), ""), "fn f() {\n    1\n}");
    }

    #[test]
    fn indentation_alone_is_no_difference() {
        assert!(same_but_indentation(
            "fn f() {\n    1\n}",
            "fn f() {\n        1\n    }"
        ));
        assert!(!same_but_indentation(
            "fn f() {\n    1\n}",
            "fn f() {\n    // c\n    1\n}"
        ));
        assert!(!same_but_indentation(
            "fn f() {\n    1 +2\n}",
            "fn f() {\n    1 + 2\n}"
        ));
        assert!(!same_but_indentation(
            "fn f() {\n    1\n}",
            "fn f() {\n\n    1\n}"
        ));
        // Inside a multi-line string, leading spaces are part of the program.
        let a = "fn f() -> &'static str {\n    \"a\n  b\"\n}";
        let b = "fn f() -> &'static str {\n    \"a\n    b\"\n}";
        assert!(!same_but_indentation(a, b));
    }

    #[test]
    fn raw_spans_are_dedented_once() {
        // A method copied by its byte span out of an impl indented by four.
        let code = "fn f() {\n        let x = 1;\n\n        x\n    }";
        assert_eq!(
            verbatim(code, 0..code.len(), "    "),
            "fn f() {\n    let x = 1;\n\n    x\n}"
        );
        // Attributes on their own line, no closing bracket.
        let code = "#[derive(Debug)]\n    struct S;";
        assert_eq!(
            verbatim(code, 0..code.len(), "    "),
            "#[derive(Debug)]\nstruct S;"
        );
        // Not a raw span: the last line is not indented.
        let code = "fn f() {\n    1\n}";
        assert_eq!(verbatim(code, 0..code.len(), "    "), code);
        // A line of a multi-line literal does not count, and keeps its bytes.
        let code = "fn f() -> &'static str {\n        \"a\nb\"\n    }";
        assert_eq!(
            verbatim(code, 0..code.len(), "    "),
            "fn f() -> &'static str {\n    \"a\nb\"\n}"
        );
        // Lines hanging deeper than where the item goes keep the difference.
        let code = "static X: [u8; 2] =\n    [1, 2];";
        assert_eq!(verbatim(code, 0..code.len(), ""), code);
        let code = "static X: [u8; 2] =\n        [1, 2];";
        assert_eq!(
            verbatim(code, 0..code.len(), "    "),
            "static X: [u8; 2] =\n    [1, 2];"
        );
        // A line less indented than the last one: left as it is.
        let code = "fn f() {\n  x\n    }";
        assert_eq!(verbatim(code, 0..code.len(), "    "), code);
        let code = "fn f() {\n\t\tx\n    }";
        assert_eq!(verbatim(code, 0..code.len(), "    "), code);
    }

    #[test]
    fn members_are_formatted_without_the_impl() {
        let imp: syn::ItemImpl =
            syn::parse_str("impl S { /// doc\n fn f(&self) -> u8 { 1 } }").expect("parses");
        let out = pretty_member(&imp, &imp.items[0]);
        assert_eq!(out, "/// doc\nfn f(&self) -> u8 {\n    1\n}");
    }
}
