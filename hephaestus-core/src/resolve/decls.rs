//! The `mod` declarations of a module: its `mod` items, and those inside item-position
//! macro calls (`cfg_fs! { pub mod fs; }`), read through the crate's own
//! `macro_rules!` definitions in textual scope (the module, its ancestors, and the
//! `#[macro_use]` modules they declare), so a declaration keeps the attributes the
//! expansion adds. A call heph cannot expand but whose tokens hold `mod` is kept as
//! *opaque*, so that a module it may declare is reported as such.

use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

use proc_macro2::TokenStream;

use super::{Module, Resolver};
use crate::expand::{self, Rules};
use crate::source::{SourceFile, line_col};

/// How deep macro calls may nest inside the output of other calls.
const MAX_NESTING: usize = 8;
/// How deep `#[macro_use]` modules are followed for definitions.
const MAX_MACRO_USE: usize = 8;

/// One `mod` declaration.
#[derive(Debug, Clone)]
pub(super) struct Decl {
    /// Where the `syn::ItemMod` is.
    pub item: DeclItem,
    /// The macro call that declared it (`cfg_fs!` at `src/lib.rs:10:1`), if any.
    pub via: Option<String>,
    /// The macro could not be expanded: the item was read as written in its input.
    pub guessed: bool,
}

/// Where a declaration's item lives.
#[derive(Debug, Clone)]
pub(super) enum DeclItem {
    /// The item at this index of the module's items.
    Direct(usize),
    /// An item of a macro expansion (its spans still point into the file).
    Expanded(Rc<syn::ItemMod>),
}

/// A macro call heph cannot read that holds a `mod` token.
#[derive(Debug, Clone)]
pub(super) struct Opaque {
    /// `name!` at `file:line:col`.
    pub call: String,
    /// The call's tokens.
    pub(super) tokens: TokenStream,
}

/// The declarations of one module.
#[derive(Debug, Default)]
pub(super) struct Decls {
    pub list: Vec<Decl>,
    pub opaque: Vec<Opaque>,
}

impl Decl {
    /// The declaration's item.
    pub(crate) fn module<'a>(&'a self, items: &'a [syn::Item]) -> Option<&'a syn::ItemMod> {
        match &self.item {
            DeclItem::Direct(i) => match items.get(*i) {
                Some(syn::Item::Mod(m)) => Some(m),
                _ => None,
            },
            DeclItem::Expanded(m) => Some(m),
        }
    }
}

/// The macros a module defines, by name (its own items and its `#[macro_use]`
/// modules', in source order).
type Defs = HashMap<String, Vec<Rc<Rules>>>;

/// Caches of one resolver: declarations and macro definitions per module.
#[derive(Default)]
pub(super) struct Caches {
    decls: HashMap<(PathBuf, Vec<String>), Rc<Decls>>,
    defs: HashMap<(PathBuf, Vec<String>), Rc<Defs>>,
}

fn key(m: &Module) -> (PathBuf, Vec<String>) {
    (m.file.clone(), m.inline.clone())
}

impl Resolver<'_> {
    /// The `mod` declarations of `module` (cached).
    pub(super) fn decls(&self, module: &Module, file: &SourceFile) -> Rc<Decls> {
        if let Some(d) = self.caches.borrow().decls.get(&key(module)) {
            return Rc::clone(d);
        }
        let mut decls = Decls::default();
        if let Some(items) = module.items(file) {
            for (i, item) in items.iter().enumerate() {
                match item {
                    syn::Item::Mod(_) => decls.list.push(Decl {
                        item: DeclItem::Direct(i),
                        via: None,
                        guessed: false,
                    }),
                    syn::Item::Macro(call) if call.ident.is_none() => {
                        self.read_call(module, file, call, 0, &mut decls);
                    }
                    _ => {}
                }
            }
        }
        let decls = Rc::new(decls);
        self.caches
            .borrow_mut()
            .decls
            .insert(key(module), Rc::clone(&decls));
        decls
    }

    /// Read the `mod` items a macro call declares into `out`.
    fn read_call(
        &self,
        module: &Module,
        file: &SourceFile,
        call: &syn::ItemMacro,
        depth: usize,
        out: &mut Decls,
    ) {
        let Some(name) = call.mac.path.segments.last().map(|s| s.ident.to_string()) else {
            return;
        };
        let has_mod = expand::has_mod_token(&call.mac.tokens);
        let defs = self.macro_defs(module, &name);
        if !has_mod && !defs.iter().any(|d| d.writes_mod()) {
            return;
        }
        let at = || {
            let (l, c) = line_col(file.text(), file.range_of(&call.mac.path).start);
            format!(
                "`{name}!` at {}:{l}:{c}",
                self.project.relative(&module.file)
            )
        };
        let expanded = defs
            .iter()
            .find_map(|d| d.expand(&call.mac.tokens))
            .and_then(expand::parse_items);
        let (items, guessed) = match expanded {
            Some(items) => (items, false),
            // A macro heph cannot expand: its input, when it is items, is taken as
            // written (with its own attributes).
            None => match expand::parse_items(call.mac.tokens.clone()) {
                Some(items) if depth < MAX_NESTING => (items, true),
                _ => {
                    out.opaque.push(Opaque {
                        call: at(),
                        tokens: call.mac.tokens.clone(),
                    });
                    return;
                }
            },
        };
        for item in items {
            match item {
                syn::Item::Mod(m) => out.list.push(Decl {
                    item: DeclItem::Expanded(Rc::new(m)),
                    via: Some(at()),
                    guessed,
                }),
                syn::Item::Macro(inner) if inner.ident.is_none() && depth < MAX_NESTING => {
                    self.read_call(module, file, &inner, depth + 1, out);
                }
                _ => {}
            }
        }
    }

    /// The definitions of macro `name` visible in `module`: its own, then its
    /// ancestors' (innermost first), each with those of the `#[macro_use]` modules it
    /// declares.
    fn macro_defs(&self, module: &Module, name: &str) -> Vec<Rc<Rules>> {
        let mut out = Vec::new();
        for m in std::iter::once(module).chain(module.scope.0.iter().rev()) {
            let defs = self.defs_of(m, 0);
            if let Some(found) = defs.get(name) {
                out.extend(found.iter().rev().cloned());
            }
        }
        out
    }

    fn defs_of(&self, module: &Module, depth: usize) -> Rc<Defs> {
        if let Some(d) = self.caches.borrow().defs.get(&key(module)) {
            return Rc::clone(d);
        }
        let mut defs = Defs::new();
        if let Ok(file) = self.file(&module.file)
            && let Some(items) = module.items(&file)
        {
            for (i, item) in items.iter().enumerate() {
                match item {
                    syn::Item::Macro(def) if def.ident.is_some() => {
                        if let (Some(ident), Some(rules)) = (&def.ident, Rules::of(def)) {
                            defs.entry(ident.to_string())
                                .or_default()
                                .push(Rc::new(rules));
                        }
                    }
                    syn::Item::Mod(m)
                        if depth < MAX_MACRO_USE
                            && m.attrs.iter().any(|a| a.path().is_ident("macro_use")) =>
                    {
                        let segments = {
                            let mut s = module.segments.clone();
                            s.push(m.ident.to_string());
                            s
                        };
                        let decl = Decl {
                            item: DeclItem::Direct(i),
                            via: None,
                            guessed: false,
                        };
                        if let Ok(child) = self.child(module, &file, &decl, m, &segments, "", "") {
                            for (name, rules) in self.defs_of(&child, depth + 1).iter() {
                                defs.entry(name.clone())
                                    .or_default()
                                    .extend(rules.iter().cloned());
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        let defs = Rc::new(defs);
        self.caches
            .borrow_mut()
            .defs
            .insert(key(module), Rc::clone(&defs));
        defs
    }
}
