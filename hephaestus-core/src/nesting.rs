//! A cheap guard run on every piece of Rust text heph did not write, before syn (or
//! proc-macro2's lexer) sees it: submitted code, project files, watched files, rule
//! templates, proposer answers.
//!
//! syn parses recursively, and so do everything that walks its trees afterwards
//! (`Drop`, `Clone`, `PartialEq`, visitors, prettyplease). A few kilobytes of nested
//! parentheses, or a long chain of operators (`!!!!…x`, `a.f().f()…`, `1 + 1 + …`,
//! `if a {} else if …`, `Vec<Vec<…>>`), overflow the stack and abort the process. rustc
//! itself copes by growing its stack on demand; heph instead refuses such text before
//! parsing it, with a [`SyntaxError`] at the `line:col` where the limit is passed, and
//! runs its parses on a thread with a known stack ([`with_parse_stack`]) large enough
//! for everything under the limits.
//!
//! Two limits, measured in one linear pass that understands comments (nested block
//! comments included), strings, raw strings, byte and C strings, char literals and
//! lifetimes:
//! - [`MAX_NESTING`]: `(`, `[` and `{` nested deeper than 256 levels. Real code stays far
//!   below: rustformat's own output and the largest crates nest a few dozen levels, and
//!   rustc's default `recursion_limit` for macro expansion is 128.
//! - [`MAX_CHAIN`]: along the path from the top of the file to any token, the number of
//!   open delimiters plus the operators, groups and expression keywords chained in the
//!   current expression of each open level (a `,`, `;` or `=>` ends an expression; a
//!   `}` followed by the start of a new statement or item ends one too). This is an
//!   upper bound of how deep syn's tree gets there. Real code stays in the low hundreds
//!   even for long builder chains or `a | b | …` flag lists of a few hundred terms.

use std::thread;

use crate::source::{Origin, SyntaxError};

/// The deepest nesting of `(`, `[` and `{` accepted.
pub const MAX_NESTING: usize = 256;

/// The largest chain depth (see the module documentation) accepted.
pub const MAX_CHAIN: usize = 2048;

/// The stack of a thread that parses with [`with_parse_stack`]: room for syn and the
/// walks over its trees at [`MAX_CHAIN`] in an unoptimized build (about 60 KiB per level
/// for nested generic types, the costliest construct measured), with a margin. Only the
/// pages used are ever touched.
pub const PARSE_STACK_SIZE: usize = 256 << 20;

/// Check `text` against [`MAX_NESTING`] and [`MAX_CHAIN`], and for control characters
/// (NUL and others) outside strings and comments, which proc-macro2's lexer would
/// report only as a failure to tokenize. Other syntax errors are left to the parser.
pub fn check(origin: &Origin, text: &str) -> Result<(), Box<SyntaxError>> {
    check_from(origin, text, 0)
}

/// [`check`] the part of `text` from byte `start` on (after a BOM and shebang line),
/// reporting positions in the whole `text`.
pub fn check_from(origin: &Origin, text: &str, start: usize) -> Result<(), Box<SyntaxError>> {
    let start = start.min(text.len());
    match text.get(start..).map_or(Ok(()), scan) {
        Ok(()) => Ok(()),
        Err((offset, problem)) => {
            let offset = offset + start;
            let (line, column) = crate::source::line_col(text, offset);
            let message = match problem {
                Problem::Nesting => format!(
                    "nesting deeper than {MAX_NESTING} levels at {line}:{column} (`(`, `[` and `{{` together); heph refuses code nested this deep before parsing it, no real code comes near"
                ),
                Problem::Chain => format!(
                    "expression nested too deeply at {line}:{column}: more than {MAX_CHAIN} operators, groups and keywords chained in one expression (counting the levels around it); split it into smaller expressions or items"
                ),
                Problem::Control(c) => format!(
                    "{} at {line}:{column}: Rust source may contain it only inside strings and comments",
                    describe_control(c)
                ),
            };
            Err(Box::new(SyntaxError::at(
                origin.clone(),
                message,
                text,
                offset,
            )))
        }
    }
}

/// Run `f` on a thread with a [`PARSE_STACK_SIZE`] stack and return its result; a
/// panic in `f` is resumed on the caller. If the thread cannot be created, `f` runs on
/// the caller's thread.
///
/// Front ends run their whole command in it (syn's trees are tied to the thread that
/// parsed them, so the work after the parse has to stay on the same thread).
pub fn with_parse_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let slot = std::sync::Mutex::new(Some(f));
    let take = || {
        slot.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    };
    thread::scope(|scope| {
        let spawned = thread::Builder::new()
            .name("heph-main".into())
            .stack_size(PARSE_STACK_SIZE)
            .spawn_scoped(scope, || take().map(|f| f()));
        let ran = match spawned {
            Ok(handle) => match handle.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            },
            Err(_) => take().map(|f| f()),
        };
        // The closure is taken exactly once: by the thread, or here when it did not start.
        ran.unwrap_or_else(|| unreachable!("with_parse_stack: the closure was taken twice"))
    })
}

fn describe_control(c: u8) -> String {
    match c {
        0 => "a NUL byte (U+0000)".to_owned(),
        0x7f => "a DEL character (U+007F)".to_owned(),
        c => format!("a control character (U+{c:04X})"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    Nesting,
    Chain,
    Control(u8),
}

/// One open delimiter: how much its current expression adds to the chain.
struct Level {
    ops: usize,
}

struct Scanner {
    levels: Vec<Level>,
    /// Open delimiters plus the `ops` of every level: the chain depth here.
    chain: usize,
    /// A `}` just closed: the next token decides whether it ended a statement.
    after_brace: bool,
}

impl Scanner {
    fn top_ops(&mut self) -> &mut usize {
        &mut self
            .levels
            .last_mut()
            .expect("the root level is never popped")
            .ops
    }

    /// End the current expression of the innermost level.
    fn separator(&mut self) {
        let ops = std::mem::take(self.top_ops());
        self.chain -= ops;
    }

    fn op(&mut self) -> Result<(), Problem> {
        *self.top_ops() += 1;
        self.chain += 1;
        if self.chain > MAX_CHAIN {
            return Err(Problem::Chain);
        }
        Ok(())
    }

    fn open(&mut self) -> Result<(), Problem> {
        // The group itself is part of the expression it appears in.
        self.op()?;
        self.levels.push(Level { ops: 0 });
        self.chain += 1;
        if self.levels.len() - 1 > MAX_NESTING {
            return Err(Problem::Nesting);
        }
        if self.chain > MAX_CHAIN {
            return Err(Problem::Chain);
        }
        Ok(())
    }

    fn close(&mut self) {
        if self.levels.len() > 1 {
            let level = self.levels.pop().expect("more than one level");
            self.chain -= level.ops + 1;
        }
    }

    /// Called before every token but whitespace and comments: after a `}`, a token
    /// that starts a statement or item ends the expression the block was part of.
    fn before_token(&mut self, starts_statement: bool) {
        if std::mem::take(&mut self.after_brace) && starts_statement {
            self.separator();
        }
    }
}

/// Keywords that nest an expression, type or pattern without a delimiter.
const CHAIN_KEYWORDS: &[&[u8]] = &[
    b"as", b"become", b"box", b"break", b"dyn", b"else", b"for", b"if", b"impl", b"in", b"let",
    b"match", b"move", b"return", b"while", b"yield",
];

fn is_ident_start(b: u8) -> bool {
    b == b'_' || b.is_ascii_alphabetic() || b >= 0x80
}

fn is_ident_continue(b: u8) -> bool {
    b == b'_' || b.is_ascii_alphanumeric() || b >= 0x80
}

/// The byte after a (possibly unterminated) quoted literal whose body starts at `i`.
fn skip_quoted(b: &[u8], mut i: usize, quote: u8) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// At `i`, a raw string `r#*"`? Returns the byte after it (or the end when unterminated).
fn skip_raw_string(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    while j < b.len() && b[j] == b'#' {
        j += 1;
    }
    if j >= b.len() || b[j] != b'"' {
        return None;
    }
    let hashes = j - i;
    j += 1;
    while j < b.len() {
        if b[j] == b'"'
            && b[j + 1..]
                .iter()
                .take(hashes)
                .filter(|&&h| h == b'#')
                .count()
                == hashes
        {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(b.len())
}

/// At `i` (just after a `'`): a char literal's end, or None for a lifetime or label.
fn char_literal_end(text: &str, i: usize) -> Option<usize> {
    let b = text.as_bytes();
    match b.get(i) {
        Some(b'\\') => Some(skip_quoted(b, i, b'\'')),
        Some(_) => {
            let c = text[i..].chars().next()?;
            let after = i + c.len_utf8();
            (b.get(after) == Some(&b'\'')).then_some(after + 1)
        }
        None => None,
    }
}

fn scan(text: &str) -> Result<(), (usize, Problem)> {
    let b = text.as_bytes();
    let mut s = Scanner {
        levels: vec![Level { ops: 0 }],
        chain: 0,
        after_brace: false,
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        let fail = |p: Problem| (start, p);
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => i += 1,
            b'/' if b.get(i + 1) == Some(&b'/') => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |n| i + n);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = crate::source::block_comment_end(&text[i..]).map_or(b.len(), |n| i + n);
            }
            b'"' => {
                s.before_token(true);
                i = skip_quoted(b, i + 1, b'"');
            }
            b'\'' => {
                s.before_token(true);
                i = match char_literal_end(text, i + 1) {
                    Some(end) => end,
                    None => {
                        // A lifetime or label.
                        let mut j = i + 1;
                        while j < b.len() && is_ident_continue(b[j]) {
                            j += 1;
                        }
                        j
                    }
                };
            }
            c if is_ident_start(c) || c.is_ascii_digit() => {
                // Literal prefixes: r"..", r#".."#, b"..", b'.', br"..", c"..", cr"..".
                let mut j = i;
                while j < b.len() && is_ident_continue(b[j]) {
                    j += 1;
                }
                let word = &b[i..j];
                let raw_prefix = matches!(word, b"r" | b"br" | b"cr");
                if raw_prefix && let Some(end) = skip_raw_string(b, j) {
                    s.before_token(true);
                    i = end;
                    continue;
                }
                if matches!(word, b"b" | b"c") && b.get(j) == Some(&b'"') {
                    s.before_token(true);
                    i = skip_quoted(b, j + 1, b'"');
                    continue;
                }
                if word == b"b"
                    && b.get(j) == Some(&b'\'')
                    && let Some(end) = char_literal_end(text, j + 1)
                {
                    s.before_token(true);
                    i = end;
                    continue;
                }
                if word == b"r" && b.get(j) == Some(&b'#') {
                    // A raw identifier `r#name`.
                    j += 1;
                    while j < b.len() && is_ident_continue(b[j]) {
                        j += 1;
                    }
                    s.before_token(true);
                    i = j;
                    continue;
                }
                let chains = CHAIN_KEYWORDS.contains(&word);
                s.before_token(!(word == b"else" || word == b"as"));
                if chains {
                    s.op().map_err(fail)?;
                }
                i = j;
            }
            b'(' | b'[' | b'{' => {
                s.before_token(c == b'{');
                s.open().map_err(fail)?;
                i += 1;
            }
            b')' | b']' | b'}' => {
                s.before_token(true);
                s.close();
                s.after_brace = c == b'}';
                i += 1;
            }
            b',' | b';' => {
                s.before_token(true);
                s.separator();
                i += 1;
            }
            b'=' if b.get(i + 1) == Some(&b'>') => {
                s.before_token(true);
                s.separator();
                i += 2;
            }
            b':' | b'#' | b'$' => {
                s.before_token(c == b'#');
                i += 1;
            }
            c if c.is_ascii_punctuation() => {
                s.before_token(false);
                s.op().map_err(fail)?;
                i += 1;
            }
            c => {
                // Control characters (whitespace was handled above).
                return Err(fail(Problem::Control(c)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceFile;

    fn err(text: &str) -> Box<SyntaxError> {
        check(&Origin::Submitted, text).expect_err("refused")
    }

    fn ok(text: &str) {
        if let Err(e) = check(&Origin::Submitted, text) {
            panic!("{} bytes refused: {e}", text.len());
        }
    }

    #[test]
    fn deep_delimiters_are_refused_at_their_position() {
        let text = format!(
            "fn f() {{\n    let x = {}1{};\n}}",
            "(".repeat(300),
            ")".repeat(300)
        );
        let e = err(&text);
        assert_eq!((e.line, e.column), (2, 13 + MAX_NESTING - 1), "{e}");
        assert!(
            e.message.contains("nesting deeper than 256 levels at 2:"),
            "{e}"
        );
        // Exactly at the limit: accepted.
        let depth = MAX_NESTING - 1; // `fn f() {` is one level
        ok(&format!(
            "fn f() {{ let x = {}1{}; }}",
            "[".repeat(depth),
            "]".repeat(depth)
        ));
    }

    #[test]
    fn delimiters_in_strings_comments_and_chars_do_not_count() {
        let deep = "(".repeat(10_000);
        ok(&format!("const S: &str = \"{deep}\";"));
        ok(&format!("const S: &str = r#\"{deep}\"\"#;"));
        ok(&format!("const S: &[u8] = br##\"\"#{deep}\"##;"));
        ok(&format!("const S: &[u8] = b\"\\\"{deep}\";"));
        ok(&format!("// {deep}\nfn f() {{}}"));
        ok(&format!("/* /* {deep} */ {deep} */ fn f() {{}}"));
        let chars = "'(', ".repeat(10_000);
        ok(&format!("const C: [char; 10000] = [{chars}];"));
        ok(&format!(
            "const C: [u8; 10000] = [{}];",
            "b'(', ".repeat(10_000)
        ));
        ok("const C: char = '\\'';\nfn f<'a>(x: &'a str) -> &'a str { 'l: loop { break 'l x; } }");
        ok(&format!("fn r#match() {{}} const S: &str = c\"{deep}\";"));
        // A lifetime is not a char literal: the parenthesis after it counts.
        assert!(check(&Origin::Submitted, &format!("fn f<'a>() {{ {deep} }}")).is_err());
    }

    #[test]
    fn long_chains_are_refused() {
        for text in [
            format!("fn f() {{ let x = {}true; }}", "!".repeat(5000)),
            format!("fn f() {{ let x = 1{}; }}", " + 1".repeat(5000)),
            format!("fn f() {{ let x = a{}; }}", ".f()".repeat(5000)),
            format!("fn f() {{ let x = a{}; }}", "[0]".repeat(5000)),
            format!("fn f() {{ if a {{}}{} }}", " else if a {}".repeat(5000)),
            format!("type T = {}u8{};", "Vec<".repeat(5000), ">".repeat(5000)),
            format!("type T = {}u8;", "&".repeat(5000)),
            format!("fn f() {{ let x = {}1; }}", "return ".repeat(5000)),
            format!("fn f() {{ let x = {}1; }}", "|| ".repeat(5000)),
            format!("fn f() {{ x{}; }}", " = a".repeat(5000)),
            format!("fn f() {{ let x = 1{}; }}", " + {1}".repeat(5000)),
        ] {
            let e = err(&text);
            assert!(e.message.contains("nested too deeply"), "{e}");
        }
    }

    #[test]
    fn statements_items_and_lists_do_not_add_up() {
        ok(&"fn f() { if a { b() } else { c() } }\n".repeat(20_000));
        ok(&format!(
            "fn f() {{ {} }}",
            "if a { b() } g(x.y().z());\n".repeat(20_000)
        ));
        ok(&format!(
            "const A: [u8; 3] = [{}];",
            "1 + 2, ".repeat(50_000)
        ));
        ok(&format!(
            "fn f() {{ match x {{ {} }} }}",
            "A => { b.c() } B => d.e(),\n".repeat(20_000)
        ));
        ok(&format!(
            "#[derive(Debug)]\npub struct S<'a, T: Clone + Send> where T: Iterator<Item = Vec<u8>> {{ a: &'a T }}\n{}",
            "impl<T> X for Y<T> { fn f(&self) -> Option<Box<dyn Fn(u8) -> u8>> { self.a.b().c()?.d } }\n".repeat(5000)
        ));
        // A builder chain of a few hundred calls.
        ok(&format!(
            "fn f() {{ let c = Command::new(\"x\"){}; }}",
            ".arg(\"a\")".repeat(500)
        ));
    }

    #[test]
    fn control_characters_outside_strings_are_named() {
        let e = err("fn f() {}\nfn g(\0) {}");
        assert_eq!((e.line, e.column), (2, 6));
        assert!(e.message.contains("NUL byte"), "{e}");
        ok("const S: &str = \"\0\"; // \0\n/* \u{1} */");
    }

    /// Everything the guard lets through parses and is walked without overflowing a
    /// [`PARSE_STACK_SIZE`] stack, even in a debug build: each construct at the limit.
    #[test]
    fn text_at_the_limits_parses_on_the_parse_stack() {
        let n = MAX_CHAIN - 16;
        let cases = [
            format!("type T = {}u8{};", "Vec<".repeat(n / 2), ">".repeat(n / 2)),
            format!("type T = {}u8;", "&".repeat(n)),
            format!("fn f() {{ let x = {}true; }}", "!".repeat(n)),
            format!("fn f() {{ let x = 1{}; }}", " + 1".repeat(n)),
            format!("fn f() {{ let x = {}1; }}", "|| ".repeat(n / 2)),
            format!("fn f() {{ let x = {}1; }}", "return ".repeat(n)),
            format!("fn f() {{ if a {{}}{} }}", " else if a {}".repeat(n / 3)),
            format!(
                "{}{}",
                "mod m {".repeat(MAX_NESTING),
                "}".repeat(MAX_NESTING)
            ),
            format!(
                "fn f() {{ let x = {}1{}; }}",
                "((".repeat(MAX_NESTING / 2 - 1),
                "))".repeat(MAX_NESTING / 2 - 1)
            ),
        ];
        for text in cases {
            ok(&text);
            with_parse_stack(|| {
                let file = SourceFile::parse(Origin::Submitted, text.clone()).expect("parses");
                let copy = file.syntax().clone();
                assert!(&copy == file.syntax());
                let _ = prettyplease::unparse(&copy);
                let _ = format!("{copy:?}");
            });
        }
    }
}
