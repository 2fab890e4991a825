//! The interface of a hot crate, read from its sources with syn: the functions it
//! exports (`hephaestus_hot::export! { ... }`), the definition of every type they use
//! that the crate defines (fields or variants with their order and types, generics,
//! `repr`), followed through those definitions, and every `static` and `thread_local!`.
//! Two interfaces are compared to decide whether a new build may be loaded into the
//! running program ([`Interface::incompatibility`]), and each exported function gets a
//! digest of its part of the interface ([`Interface::digests`]), which the runtime
//! compares again at load time.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use quote::ToTokens;
use syn::visit::Visit;

use crate::source::{Origin, SyntaxError};

/// A type the crate defines.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TypeDef {
    /// `struct`, `enum`, `union` or `type`.
    kind: &'static str,
    generics: String,
    /// `#[repr(...)]` attributes, as written.
    repr: Vec<String>,
    /// Fields (`name: type`, tuple fields by index) or variants (`name` and the text
    /// of its fields and discriminant), in order; a type alias has one, its target.
    members: Vec<(String, String)>,
    /// Idents of the types the members mention.
    uses: BTreeSet<String>,
}

/// An exported function.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FnDef {
    /// The signature without argument names: `fn (& Stats) -> String`.
    signature: String,
    uses: BTreeSet<String>,
}

/// What crosses the boundary of a hot crate; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    functions: BTreeMap<String, FnDef>,
    /// Every type the crate defines, by name (several with one name: all kept).
    types: BTreeMap<String, Vec<TypeDef>>,
    /// `static NAME` and `thread_local NAME` → mutability and type.
    statics: BTreeMap<String, String>,
}

/// Errors reading a hot crate's interface.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InterfaceError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file does not parse.
    #[error("{path} does not parse: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

impl crate::Categorized for InterfaceError {
    fn category(&self) -> crate::ErrorCategory {
        match self {
            InterfaceError::Read { .. } => crate::ErrorCategory::Environment,
            InterfaceError::Parse { .. } => crate::ErrorCategory::BadInput,
        }
    }
}

/// The tokens as text, with the spaces of token printing removed where Rust code has
/// none (`& std :: cell :: RefCell < u32 >` → `&std::cell::RefCell<u32>`).
fn text(t: &impl ToTokens) -> String {
    let mut s = t.to_token_stream().to_string();
    for (from, to) in [
        (" :: ", "::"),
        (":: ", "::"),
        ("& ", "&"),
        (" <", "<"),
        ("< ", "<"),
        (" >", ">"),
        (" ,", ","),
        ("# [", "#["),
        ("repr (", "repr("),
        ("( ", "("),
        (" )", ")"),
    ] {
        s = s.replace(from, to);
    }
    s
}

/// Collects the last ident of every path in a type (`a::b::Stats<T>` → `Stats`, `T`).
#[derive(Default)]
struct Uses(BTreeSet<String>);

impl<'ast> Visit<'ast> for Uses {
    fn visit_path(&mut self, p: &'ast syn::Path) {
        if let Some(last) = p.segments.last() {
            self.0.insert(last.ident.to_string());
        }
        syn::visit::visit_path(self, p);
    }
}

fn uses_of(f: impl FnOnce(&mut Uses)) -> BTreeSet<String> {
    let mut u = Uses::default();
    f(&mut u);
    u.0
}

fn is_macro(m: &syn::Macro, name: &str) -> bool {
    m.path.segments.last().is_some_and(|s| s.ident == name)
}

fn repr_of(attrs: &[syn::Attribute]) -> Vec<String> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("repr"))
        .map(text)
        .collect()
}

fn fields_of(fields: &syn::Fields, uses: &mut Uses) -> Vec<(String, String)> {
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            uses.visit_type(&f.ty);
            let name = f
                .ident
                .as_ref()
                .map_or_else(|| i.to_string(), ToString::to_string);
            (name, text(&f.ty))
        })
        .collect()
}

impl Interface {
    /// The interface of the crate whose sources are the Rust files under `src_dir`
    /// (every file is read: a file outside the module tree only makes the check more
    /// careful).
    pub fn of_dir(src_dir: &Path) -> Result<Interface, InterfaceError> {
        let mut files = Vec::new();
        collect_rs(src_dir, &mut files)?;
        files.sort();
        let mut iface = Interface::default();
        for path in files {
            let source = std::fs::read_to_string(&path).map_err(|source| InterfaceError::Read {
                path: path.clone(),
                source,
            })?;
            iface
                .add_source(&source)
                .map_err(|message| InterfaceError::Parse {
                    path: path.clone(),
                    message,
                })?;
        }
        // Forget the spans of everything parsed here.
        crate::source::reset_span_table();
        Ok(iface)
    }

    /// Add the items of one file's source.
    pub fn add_source(&mut self, source: &str) -> Result<(), String> {
        crate::nesting::check(&crate::source::Origin::Submitted, source).map_err(|e| e.message)?;
        let file = syn::parse_file(source).map_err(|e| e.to_string())?;
        self.add_items(&file.items)
    }

    fn add_items(&mut self, items: &[syn::Item]) -> Result<(), String> {
        for item in items {
            match item {
                syn::Item::Macro(m) if is_macro(&m.mac, "export") => {
                    let inner: syn::File = m.mac.parse_body().map_err(|e| e.to_string())?;
                    for it in &inner.items {
                        if let syn::Item::Fn(f) = it {
                            self.add_fn(f);
                        }
                    }
                }
                syn::Item::Macro(m) if is_macro(&m.mac, "thread_local") => {
                    let inner: syn::File = m.mac.parse_body().map_err(|e| e.to_string())?;
                    for it in &inner.items {
                        if let syn::Item::Static(s) = it {
                            self.statics
                                .insert(format!("thread-local {}", s.ident), text(&s.ty));
                        }
                    }
                }
                syn::Item::Static(s) => {
                    let m = if matches!(s.mutability, syn::StaticMutability::Mut(_)) {
                        "mut "
                    } else {
                        ""
                    };
                    self.statics
                        .insert(format!("static {}", s.ident), format!("{m}{}", text(&s.ty)));
                }
                syn::Item::Struct(s) => {
                    let mut u = Uses::default();
                    let members = fields_of(&s.fields, &mut u);
                    self.add_type(&s.ident, "struct", &s.generics, &s.attrs, members, u);
                }
                syn::Item::Union(s) => {
                    let mut u = Uses::default();
                    let members = fields_of(&syn::Fields::Named(s.fields.clone()), &mut u);
                    self.add_type(&s.ident, "union", &s.generics, &s.attrs, members, u);
                }
                syn::Item::Enum(e) => {
                    let mut u = Uses::default();
                    let members = e
                        .variants
                        .iter()
                        .map(|v| {
                            let fields = fields_of(&v.fields, &mut u);
                            let disc = v
                                .discriminant
                                .as_ref()
                                .map(|(_, d)| format!(" = {}", text(d)))
                                .unwrap_or_default();
                            let shape: Vec<String> =
                                fields.iter().map(|(n, t)| format!("{n}: {t}")).collect();
                            (
                                v.ident.to_string(),
                                format!("{{{}}}{disc}", shape.join(", ")),
                            )
                        })
                        .collect();
                    self.add_type(&e.ident, "enum", &e.generics, &e.attrs, members, u);
                }
                syn::Item::Type(t) => {
                    let mut u = Uses::default();
                    u.visit_type(&t.ty);
                    let members = vec![("=".to_owned(), text(&t.ty))];
                    self.add_type(&t.ident, "type", &t.generics, &t.attrs, members, u);
                }
                syn::Item::Mod(m) => {
                    if let Some((_, items)) = &m.content {
                        self.add_items(items)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn add_fn(&mut self, f: &syn::ItemFn) {
        let sig = &f.sig;
        let args: Vec<String> = sig
            .inputs
            .iter()
            .map(|a| match a {
                syn::FnArg::Typed(p) => text(&p.ty),
                syn::FnArg::Receiver(r) => text(r),
            })
            .collect();
        let uses = uses_of(|u| {
            for a in &sig.inputs {
                if let syn::FnArg::Typed(p) = a {
                    u.visit_type(&p.ty);
                }
            }
            u.visit_return_type(&sig.output);
            u.visit_generics(&sig.generics);
        });
        let signature = format!(
            "{}{}fn{}({}) {}",
            sig.constness.as_ref().map_or("", |_| "const "),
            if matches!(sig.safety, syn::Safety::Unsafe(_)) {
                "unsafe "
            } else {
                ""
            },
            text(&sig.generics),
            args.join(", "),
            text(&sig.output)
        )
        .trim_end()
        .to_owned();
        self.functions
            .insert(sig.ident.to_string(), FnDef { signature, uses });
    }

    fn add_type(
        &mut self,
        ident: &syn::Ident,
        kind: &'static str,
        generics: &syn::Generics,
        attrs: &[syn::Attribute],
        members: Vec<(String, String)>,
        mut uses: Uses,
    ) {
        uses.visit_generics(generics);
        self.types
            .entry(ident.to_string())
            .or_default()
            .push(TypeDef {
                kind,
                generics: text(generics),
                repr: repr_of(attrs),
                members,
                uses: uses.0,
            });
    }

    /// The exported functions' names.
    pub fn functions(&self) -> impl Iterator<Item = &str> {
        self.functions.keys().map(String::as_str)
    }

    /// The crate's types reachable from `roots` through type definitions.
    fn reachable(&self, roots: &BTreeSet<String>) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&String> = roots.iter().collect();
        while let Some(name) = stack.pop() {
            let Some(defs) = self.types.get(name) else {
                continue;
            };
            if !seen.insert(name.clone()) {
                continue;
            }
            for d in defs {
                stack.extend(d.uses.iter());
            }
        }
        seen
    }

    /// The types that cross the boundary: those the exported functions use, closed
    /// over their definitions.
    fn boundary_types(&self) -> BTreeSet<String> {
        let roots = self
            .functions
            .values()
            .flat_map(|f| f.uses.iter().cloned())
            .collect();
        self.reachable(&roots)
    }

    /// Per exported function, a digest of its signature and of the definitions of the
    /// types it reaches (what the runtime compares at load time), as
    /// `name=digest,name=digest` (the `HEPH_HOT_INTERFACE` a build gets); the digest of
    /// a function that reaches no type of the crate starts with `s:`.
    pub fn digests(&self) -> String {
        let mut out = Vec::new();
        for (name, f) in &self.functions {
            let mut h = std::hash::DefaultHasher::new();
            f.signature.hash(&mut h);
            let types = self.reachable(&f.uses);
            for t in &types {
                t.hash(&mut h);
                self.types.get(t).hash(&mut h);
            }
            // `s:` (the runtime's mark): only types defined outside the hot crate, so
            // a program built before the function existed may call it.
            let mark = if types.is_empty() { "s:" } else { "" };
            out.push(format!("{name}={mark}{:016x}", h.finish()));
        }
        out.join(",")
    }

    /// Why a build with interface `new` may not be loaded into a program running this
    /// one, in one line (`struct Stats gained a field `misses``); None when every
    /// function, boundary type, static and thread-local of this interface is the same
    /// in `new`. Additions (a new exported function, its new types, a new static) are
    /// allowed: the running program cannot depend on them.
    pub fn incompatibility(&self, new: &Interface) -> Option<String> {
        for (name, f) in &self.functions {
            match new.functions.get(name) {
                None => return Some(format!("fn {name} is no longer exported")),
                Some(g) if g.signature != f.signature => {
                    return Some(format!(
                        "fn {name} changed its signature from `{}` to `{}`",
                        f.signature, g.signature
                    ));
                }
                Some(_) => {}
            }
        }
        for name in self.boundary_types() {
            let old = &self.types[&name];
            match new.types.get(&name) {
                None => {
                    let kind = old.first().map_or("type", |d| d.kind);
                    return Some(format!("{kind} {name} was removed"));
                }
                Some(n) if n != old => return Some(describe(&name, old, n)),
                Some(_) => {}
            }
        }
        for (name, ty) in &self.statics {
            match new.statics.get(name) {
                None => return Some(format!("{name} was removed")),
                Some(t) if t != ty => {
                    return Some(format!("{name} changed type from `{ty}` to `{t}`"));
                }
                Some(_) => {}
            }
        }
        None
    }
}

/// Parse the bodies of the `export!` and `thread_local!` invocations of a source file
/// (the syntax gate parses a file but not the token trees inside macros): the first
/// error, pointing into `text`.
pub fn check_macro_bodies(origin: Origin, text: &str) -> Result<(), SyntaxError> {
    fn walk(items: &[syn::Item], origin: &Origin, text: &str) -> Result<(), SyntaxError> {
        for item in items {
            match item {
                syn::Item::Macro(m)
                    if is_macro(&m.mac, "export") || is_macro(&m.mac, "thread_local") =>
                {
                    if let Err(e) = m.mac.parse_body::<syn::File>() {
                        return Err(SyntaxError::from_syn(origin.clone(), &e, text, 0));
                    }
                }
                syn::Item::Mod(m) => {
                    if let Some((_, items)) = &m.content {
                        walk(items, origin, text)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
    let parsed = crate::nesting::check(&crate::source::Origin::Submitted, text)
        .ok()
        .and_then(|()| syn::parse_file(text).ok());
    let Some(file) = parsed else {
        // The file's own syntax error (or nesting) is the gate's to report.
        return Ok(());
    };
    walk(&file.items, &origin, text)
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), InterfaceError> {
    let entries = std::fs::read_dir(dir).map_err(|source| InterfaceError::Read {
        path: dir.to_owned(),
        source,
    })?;
    for e in entries.flatten() {
        let path = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            collect_rs(&path, out)?;
        } else if ft.is_file() && path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

fn plural(what: &str, names: &[&String]) -> String {
    let list: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    if list.len() == 1 {
        format!("a {what} {}", list[0])
    } else {
        format!("{what}s {}", list.join(", "))
    }
}

/// One line saying how the definitions of `name` differ.
fn describe(name: &str, old: &[TypeDef], new: &[TypeDef]) -> String {
    let (Some(o), Some(n), 1, 1) = (old.first(), new.first(), old.len(), new.len()) else {
        return format!("type {name} changed");
    };
    let kind = o.kind;
    if o.kind != n.kind {
        return format!("{kind} {name} became a {}", n.kind);
    }
    if o.generics != n.generics {
        return format!(
            "{kind} {name} changed its generics from `{}` to `{}`",
            o.generics, n.generics
        );
    }
    if o.repr != n.repr {
        return format!(
            "{kind} {name} changed its repr from `{}` to `{}`",
            o.repr.join(" "),
            n.repr.join(" ")
        );
    }
    let what = match kind {
        "enum" => "variant",
        _ => "field",
    };
    if kind == "type" {
        let (a, b) = (&o.members[0].1, &n.members[0].1);
        return format!("type {name} changed from `{a}` to `{b}`");
    }
    let old_names: Vec<&String> = o.members.iter().map(|(m, _)| m).collect();
    let new_names: Vec<&String> = n.members.iter().map(|(m, _)| m).collect();
    let lost: Vec<&String> = old_names
        .iter()
        .filter(|m| !new_names.contains(m))
        .copied()
        .collect();
    let gained: Vec<&String> = new_names
        .iter()
        .filter(|m| !old_names.contains(m))
        .copied()
        .collect();
    if !lost.is_empty() {
        return format!("{kind} {name} lost {}", plural(what, &lost));
    }
    if !gained.is_empty() {
        return format!("{kind} {name} gained {}", plural(what, &gained));
    }
    if old_names != new_names {
        return format!("{kind} {name} reordered its {what}s");
    }
    for ((m, a), (_, b)) in o.members.iter().zip(&n.members) {
        if a != b {
            return if kind == "enum" {
                format!("enum {name}: variant `{m}` changed from `{a}` to `{b}`")
            } else {
                format!("{kind} {name}: field `{m}` changed type from `{a}` to `{b}`")
            };
        }
    }
    format!("{kind} {name} changed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(src: &str) -> Interface {
        let mut i = Interface::default();
        i.add_source(src).expect("parses");
        i
    }

    const BASE: &str = r#"
        use std::collections::HashMap;
        #[derive(Debug, Default)]
        pub struct Stats { pub count: u64, pub names: HashMap<String, Inner> }
        #[repr(C)]
        pub struct Inner(pub u32, pub Kind);
        pub enum Kind { A, B(u8) = 3 }
        pub struct Unrelated { pub x: u8 }
        static GREETING: &str = "hi";
        thread_local! { static CACHE: std::cell::RefCell<u32> = const { std::cell::RefCell::new(0) }; }
        hephaestus_hot::export! {
            /// The line.
            pub fn render(stats: &Stats) -> String { format!("hello {}", stats.count) }
        }
        mod inner { pub fn helper() {} }
    "#;

    fn change(from: &str, to: &str) -> Option<String> {
        assert!(BASE.contains(from), "{from}");
        iface(BASE).incompatibility(&iface(&BASE.replace(from, to)))
    }

    #[test]
    fn body_and_comment_changes_keep_the_interface() {
        assert_eq!(change("\"hello {}\"", "\"bye {}\""), None);
        assert_eq!(change("/// The line.", "/// Another line."), None);
        assert_eq!(
            change(
                "pub struct Unrelated { pub x: u8 }",
                "pub struct Unrelated { pub y: u16 }"
            ),
            None
        );
        assert_eq!(
            change(
                "#[derive(Debug, Default)]",
                "#[derive(Debug, Default, Clone)]"
            ),
            None
        );
        assert_eq!(change("\"hi\"", "\"hello\""), None);
        assert_eq!(
            iface(BASE).digests(),
            iface(&BASE.replace("hello", "bye")).digests()
        );
    }

    #[test]
    fn each_boundary_change_is_named_in_one_line() {
        let cases = [
            (
                "pub count: u64,",
                "pub count: u64, pub misses: u64,",
                "struct Stats gained a field `misses`",
            ),
            ("pub count: u64,", "", "struct Stats lost a field `count`"),
            (
                "pub count: u64, pub names: HashMap<String, Inner>",
                "pub names: HashMap<String, Inner>, pub count: u64",
                "struct Stats reordered its fields",
            ),
            (
                "pub count: u64",
                "pub count: u32",
                "struct Stats: field `count` changed type from `u64` to `u32`",
            ),
            (
                "#[repr(C)]",
                "",
                "struct Inner changed its repr from `#[repr(C)]` to ``",
            ),
            (
                "pub struct Inner(pub u32, pub Kind);",
                "pub struct Inner(pub u32, pub Kind, pub u8);",
                "struct Inner gained a field `2`",
            ),
            (
                "B(u8) = 3",
                "B(u16) = 3",
                "enum Kind: variant `B` changed from `{0: u8} = 3` to `{0: u16} = 3`",
            ),
            ("A, B", "A, C, B", "enum Kind gained a variant `C`"),
            (
                "pub enum Kind { A, B(u8) = 3 }",
                "pub struct Kind;",
                "enum Kind became a struct",
            ),
            (
                "pub struct Stats {",
                "pub struct Stats<T = ()> {",
                "struct Stats changed its generics from `` to `<T = ()>`",
            ),
            (
                "stats: &Stats) -> String",
                "stats: &Stats, n: u8) -> String",
                "fn render changed its signature from `fn(&Stats) -> String` to `fn(&Stats, u8) -> String`",
            ),
            (
                "pub fn render(",
                "pub fn draw(",
                "fn render is no longer exported",
            ),
            (
                "static GREETING: &str",
                "static GREETING: &String",
                "static GREETING changed type from `&str` to `&String`",
            ),
            (
                "static CACHE: std::cell::RefCell<u32>",
                "static CACHE: std::cell::RefCell<u64>",
                "thread-local CACHE changed type from `std::cell::RefCell<u32>` to `std::cell::RefCell<u64>`",
            ),
        ];
        for (from, to, why) in cases {
            assert_eq!(change(from, to).as_deref(), Some(why), "{from} → {to}");
        }
    }

    #[test]
    fn additions_are_allowed_and_keep_existing_digests() {
        let added = BASE.replace(
            "hephaestus_hot::export! {",
            "pub struct New { pub a: u8 }\nhephaestus_hot::export! {\n pub fn hello() -> New { New { a: 1 } }",
        );
        assert_eq!(iface(BASE).incompatibility(&iface(&added)), None);
        let old = iface(BASE).digests();
        let new = iface(&added).digests();
        assert!(new.contains(&old), "{old} within {new}");
        assert!(new.starts_with("hello="), "{new}");
        // `render` reaches the crate's types, `f` below does not.
        assert!(!old.contains("=s:"), "{old}");
        let plain =
            iface("hephaestus_hot::export! { pub fn f(x: u8) -> String { String::new() } }");
        assert!(plain.digests().starts_with("f=s:"), "{}", plain.digests());
        // A boundary change changes the digest of the function that reaches it.
        let changed = iface(&BASE.replace("B(u8)", "B(u16)")).digests();
        assert_ne!(changed, old);
    }

    #[test]
    fn a_syntax_error_inside_export_is_found_with_its_position() {
        let src = "//! x\nhephaestus_hot::export! {\n    pub fn f() -> u8 {\n        let x = ;\n        1\n    }\n}\n";
        let e = check_macro_bodies(Origin::File("lib.rs".into()), src).expect_err("error");
        assert_eq!((e.line, e.column), (4, 17), "{e}");
        assert!(e.to_string().contains("let x = ;"), "{e}");
        assert!(check_macro_bodies(Origin::File("lib.rs".into()), BASE).is_ok());
        let nested = "mod m { thread_local! { static A: u8 = ; } }";
        assert!(check_macro_bodies(Origin::File("m.rs".into()), nested).is_err());
    }

    #[test]
    fn reading_a_crate_reads_every_file_and_reports_parse_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a")).expect("mkdir");
        std::fs::write(
            dir.path().join("lib.rs"),
            "mod a;\nhephaestus_hot::export! { pub fn f(x: a::T) -> u8 { 0 } }\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("a/mod.rs"), "pub struct T { pub v: u8 }\n").expect("write");
        let i = Interface::of_dir(dir.path()).expect("reads");
        assert_eq!(i.functions().collect::<Vec<_>>(), ["f"]);
        std::fs::write(
            dir.path().join("a/mod.rs"),
            "pub struct T { pub v: u8, pub w: u8 }\n",
        )
        .expect("write");
        let j = Interface::of_dir(dir.path()).expect("reads");
        assert_eq!(
            i.incompatibility(&j).as_deref(),
            Some("struct T gained a field `w`")
        );
        std::fs::write(dir.path().join("a/mod.rs"), "pub struct T {").expect("write");
        assert!(matches!(
            Interface::of_dir(dir.path()),
            Err(InterfaceError::Parse { .. })
        ));
    }
}
