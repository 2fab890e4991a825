//! Where new items go: after the last item of their kind (`use` and `mod x;` lines
//! grouped), else at the end of their container, with the blank lines their
//! neighbours have.

use super::{ChangeAction, Container, Engine, Entry, Node, Spacing, line_comments, line_indent};
use crate::item::{ItemKey, ItemKind};
use crate::source::is_plain_line_comment;

impl Engine<'_> {
    pub(super) fn add_item(&mut self, key: &ItemKey, item: &syn::Item, text: String) {
        let is_decl = |i: &syn::Item| matches!(i, syn::Item::Mod(m) if m.content.is_none());
        let same = |e: &&Entry<'_>| e.key.kind == key.kind;
        let (pos, ins, sep) = match key.kind {
            // `use` and `extern crate` group together, first in the module when new.
            ItemKind::Use | ItemKind::ExternCrate => {
                match self.module.items.iter().rev().find(same) {
                    Some(anchor) => {
                        self.insertion(&self.module, Some(anchor), text, Spacing::Tight)
                    }
                    None => self.before_first_item(text),
                }
            }
            // `mod x;` goes after the last `mod` declaration (one without `#[cfg]` when
            // there is one), else after the `use`s.
            ItemKind::Mod if is_decl(item) => {
                let decls = || {
                    self.module
                        .items
                        .iter()
                        .rev()
                        .filter(|e| matches!(e.node, Node::Item(i) if is_decl(i)))
                };
                let decl = decls()
                    .find(|e| e.key.cfg.is_empty())
                    .or_else(|| decls().next());
                let header = self
                    .module
                    .items
                    .iter()
                    .rev()
                    .find(|e| matches!(e.key.kind, ItemKind::Use | ItemKind::ExternCrate));
                match decl.or(header) {
                    Some(anchor) => {
                        self.insertion(&self.module, Some(anchor), text, Spacing::Tight)
                    }
                    None => self.before_first_item(text),
                }
            }
            _ => {
                let anchor = self.module.items.iter().rev().find(same);
                self.insertion(&self.module, anchor, text, Spacing::Blank)
            }
        };
        self.splice_with(pos..pos, ins, sep);
        self.change(ChangeAction::Added, key);
    }

    /// Where and what to insert for a new item in container `c`: after `anchor` (the
    /// last item of the same kind), else at the end of the container. The bool says
    /// whether the insertion needs a blank line before it when it follows another
    /// insertion at the same point.
    pub(super) fn insertion(
        &self,
        c: &Container<'_>,
        anchor: Option<&Entry<'_>>,
        text: String,
        spacing: Spacing,
    ) -> (usize, String, bool) {
        let eol = self.eol.as_str();
        let text = self.eol.apply(&text);
        match anchor {
            Some(anchor) => {
                let (pos, ins) = self.after(c, anchor.range().end, &c.indent, &text, spacing);
                (pos, ins, spacing == Spacing::Blank)
            }
            None => {
                let (pos, ins) = self.at_end(c, &text, eol);
                (pos, ins, true)
            }
        }
    }

    /// Insert `text` (already indented but for its first line) after byte `end`.
    pub(super) fn after(
        &self,
        c: &Container<'_>,
        end: usize,
        indent: &str,
        text: &str,
        spacing: Spacing,
    ) -> (usize, String) {
        let eol = self.eol.as_str();
        let t = self.text;
        let line_end = t[end..].find('\n').map(|i| end + i);
        let rest = &t[end..line_end.unwrap_or(t.len())];
        // A `///` there is the doc comment of the next item: not trivia.
        let rest_is_trivia = rest.trim().is_empty() || is_plain_line_comment(rest.trim_start());
        match (line_end, spacing) {
            (Some(nl), Spacing::Tight) if rest_is_trivia => {
                (nl + 1, format!("{indent}{text}{eol}"))
            }
            (Some(nl), Spacing::Blank) if rest_is_trivia => {
                // Keep a blank line before whatever follows, unless it is the end.
                let next_start = nl + 1;
                let next_end = t[next_start..]
                    .find('\n')
                    .map_or(t.len(), |i| next_start + i);
                let next = t[next_start..next_end].trim();
                let at_close = c
                    .close
                    .is_some_and(|cl| t[next_start..cl].trim().is_empty());
                let after = if next.is_empty() || at_close { "" } else { eol };
                (next_start, format!("{eol}{indent}{text}{eol}{after}"))
            }
            (None, _) if rest_is_trivia => {
                let blank = if spacing == Spacing::Blank { eol } else { "" };
                (t.len(), format!("{eol}{blank}{indent}{text}{eol}"))
            }
            _ => (end, format!("{eol}{eol}{indent}{text}")),
        }
    }

    pub(super) fn at_end(&self, c: &Container<'_>, text: &str, eol: &str) -> (usize, String) {
        let indent = &c.indent;
        match c.close {
            None => {
                let len = self.text.len();
                let content = &self.text[c.body.clone()];
                let mut ins = String::new();
                if len > 0 && !self.text.ends_with('\n') {
                    ins.push_str(eol);
                }
                if !content.trim().is_empty() {
                    ins.push_str(eol);
                }
                ins.push_str(indent);
                ins.push_str(text);
                ins.push_str(eol);
                (len, ins)
            }
            Some(close) => {
                let line_start = self.text[..close].rfind('\n').map_or(0, |i| i + 1);
                let before_brace = &self.text[line_start.max(c.body.start)..close];
                if line_start > c.body.start && before_brace.trim().is_empty() {
                    let has_content = !self.text[c.body.start..line_start].trim().is_empty();
                    let blank = if has_content { eol } else { "" };
                    (line_start, format!("{blank}{indent}{text}{eol}"))
                } else {
                    let has_content = !self.text[c.body.clone()].trim().is_empty();
                    let blank = if has_content { eol } else { "" };
                    let close_indent = line_indent(self.text, close);
                    (
                        close,
                        format!("{eol}{blank}{indent}{text}{eol}{close_indent}"),
                    )
                }
            }
        }
    }

    /// Insert before the first item (and the `//` comment lines attached above it).
    pub(super) fn before_first_item(&self, text: String) -> (usize, String, bool) {
        let (pos, ins) = self.before_first(text);
        (pos, ins, false)
    }

    pub(super) fn before_first(&self, text: String) -> (usize, String) {
        let eol = self.eol.as_str();
        let text = self.eol.apply(&text);
        let Some(first) = self.module.items.first() else {
            return self.at_end(&self.module, &text, eol);
        };
        let indent = &self.module.indent;
        let start = first.range().start;
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        if !self.text[line_start..start].trim().is_empty() || line_start < self.module.body.start {
            return (start, format!("{text}{eol}{eol}{indent}"));
        }
        let mut pos = line_start;
        // Climb over `//` comment lines directly above (not `//!`, not blank, not a line
        // of a block comment that happens to start with `//`).
        let trivia = self.after_attrs.min(start);
        let comments = line_comments(&self.text[trivia..start]);
        while pos > trivia {
            let prev_start = self.text[..pos - 1].rfind('\n').map_or(0, |i| i + 1);
            if prev_start < trivia {
                break;
            }
            let line = &self.text[prev_start..pos];
            let content = prev_start + (line.len() - line.trim_start().len());
            let line = line.trim();
            if line.starts_with("//")
                && !line.starts_with("//!")
                && !line.starts_with("///")
                && comments.contains(&(content - trivia))
            {
                pos = prev_start;
            } else {
                break;
            }
        }
        (pos, format!("{indent}{text}{eol}{eol}"))
    }

    /// The indentation of the line an existing item starts on, when only whitespace
    /// precedes it there; else the module's item indentation.
    pub(super) fn item_indent(&self, start: usize) -> String {
        self.item_indent_in(start, &self.module.indent, self.module.body.start)
    }

    /// Like [`Self::item_indent`] for an item of a container whose body starts at
    /// `body` and whose items are indented by `container`: when something precedes
    /// the item on its line (`    /* c */ fn f`), the line's own indentation, unless
    /// the line also opens the container (`impl S { fn f() {} }`).
    pub(super) fn item_indent_in(&self, start: usize, container: &str, body: usize) -> String {
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let lead = &self.text[line_start..start];
        if lead.trim().is_empty() {
            lead.to_owned()
        } else if line_start >= body {
            lead.chars()
                .take_while(|c| *c == ' ' || *c == '\t')
                .collect()
        } else {
            container.to_owned()
        }
    }
}
