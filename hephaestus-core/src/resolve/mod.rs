//! Module resolution the way rustc does it: from each crate root, follow `mod`
//! declarations (`foo.rs` or `foo/mod.rs`, `#[path = ".."]`, inline `mod foo { .. }`)
//! down to the module a path names. A module path never resolves outside the project
//! root: absolute `#[path]`s and symlinks that leave it are refused.
//!
//! `mod` declarations inside item-position macro calls count too (see `resolve::decls`).
//! When a module has several `#[cfg]` copies, the one the package's default build
//! compiles is chosen ([`crate::cfg`]), and the choice is reported in
//! [`Module::notes`].

mod decls;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use crate::cfg::{self, CfgError, CfgOption, CfgSet, Pick};
use crate::modpath::{ModulePath, ModulePathError, file_stem};
use crate::project::{Package, Project, Target, TargetKind};
use crate::source::{Origin, SourceFile, SyntaxError, line_col};

/// How a module's text is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A crate root file (`lib.rs`, `main.rs`, `[[bin]] path`).
    CrateRoot,
    /// `foo/mod.rs`.
    ModRs,
    /// `foo.rs` (children in `foo/`).
    File,
    /// A file named by `#[path = ".."]` (children next to it).
    PathAttr,
    /// An inline `mod foo { .. }` inside another module's file.
    Inline,
}

/// One item of a module, as [`Module::item_spans`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemSpan {
    /// The item's key (`fn parse`, `impl Display for Token`).
    pub key: crate::item::ItemKey,
    /// Its byte range in the file's text.
    pub range: std::ops::Range<usize>,
}

/// A resolved module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The canonical way to write its path in this project: `crate::a::b`, or
    /// `package::a::b` in a workspace with several packages.
    pub path: String,
    /// The package it belongs to.
    pub package: String,
    /// The crate root it was reached from (lib or bin name).
    pub target: String,
    /// The target's kind.
    pub target_kind: TargetKind,
    /// Segments from the crate root (empty for the root itself).
    pub segments: Vec<String>,
    /// The file holding the module's text (absolute).
    pub file: PathBuf,
    /// For an inline module: the chain of inline module names inside `file`, outermost
    /// first. Empty when the module is the whole file.
    pub inline: Vec<String>,
    /// Indices of that chain in the item lists (for unambiguous lookup).
    inline_index: Vec<usize>,
    /// Where rustc looks for this module's child module files.
    pub child_dir: PathBuf,
    /// The layout.
    pub layout: Layout,
    /// The `#[cfg(..)]`s on the way from the crate root (declarations and the macro
    /// expansions that declared them), as text, outermost first.
    pub cfg: Vec<String>,
    /// What heph decided or assumed on the way, for the user: which `#[cfg]` copy it
    /// chose, which macro call declared the module.
    pub notes: Vec<String>,
    /// For an inline module declared inside a macro call: its item, from the
    /// expansion (spans point into `file`).
    expanded: Option<Expanded>,
    /// The modules on the way from the crate root (for macro definitions in scope).
    scope: Scope,
}

/// An inline module read from a macro expansion.
#[derive(Clone)]
struct Expanded(Rc<syn::ItemMod>);

impl std::fmt::Debug for Expanded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expanded(mod {})", self.0.ident)
    }
}

impl PartialEq for Expanded {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Expanded {}

/// The ancestors of a module, outermost first. Not part of a module's identity.
#[derive(Clone, Default)]
struct Scope(Rc<Vec<Module>>);

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|m| &m.path))
            .finish()
    }
}

impl PartialEq for Scope {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Scope {}

impl Module {
    /// The items of this module inside the parsed `file` (the file's items, or an
    /// inline module's content).
    pub(crate) fn items<'f>(&'f self, file: &'f SourceFile) -> Option<&'f [syn::Item]> {
        match &self.expanded {
            Some(m) => m.0.content.as_ref().map(|(_, items)| items.as_slice()),
            None => items_at(&file.syntax().items, &self.inline_index),
        }
    }

    /// For an inline module declared inside a macro call: its item as the expansion
    /// gives it (spans point into `file`); the edit engine works on it instead of
    /// the file's item chain.
    pub(crate) fn expanded_item(&self) -> Option<&syn::ItemMod> {
        self.expanded.as_ref().map(|e| &*e.0)
    }

    /// Where each of this module's items is in the parsed `file`: its key and its byte
    /// range in [`SourceFile::text`] (from its first attribute to its last token), in
    /// source order. `None` when the module's item list is no longer in `file` (the file
    /// changed since the module was resolved).
    pub fn item_spans(&self, file: &SourceFile) -> Option<Vec<ItemSpan>> {
        let items = self.items(file)?;
        Some(
            items
                .iter()
                .map(|item| ItemSpan {
                    key: crate::item::ItemKey::of_item(item),
                    range: file.range_of(item),
                })
                .collect(),
        )
    }

    /// Is this an inline module that a macro call declares (`cfg_fs! { mod fs { .. } }`)?
    /// Its items are read from the call's expansion; edits still land in the file.
    pub fn declared_in_macro(&self) -> bool {
        self.expanded.is_some()
    }

    /// For an inline module: the byte range in [`SourceFile::text`] of its name in its
    /// `mod name { .. }` (for a module a macro call declares, inside that call). `None`
    /// for a module that is a whole file, or when `file` no longer holds it.
    pub fn name_range(&self, file: &SourceFile) -> Option<std::ops::Range<usize>> {
        if let Some(item) = self.expanded_item() {
            return Some(file.range(item.ident.span()));
        }
        let mut items: &[syn::Item] = &file.syntax().items;
        let mut last = None;
        for &i in &self.inline_index {
            let syn::Item::Mod(m) = items.get(i)? else {
                return None;
            };
            last = Some(m);
            items = m.content.as_ref().map_or(&[], |(_, v)| v.as_slice());
        }
        last.map(|m| file.range(m.ident.span()))
    }

    /// Which module of its file the edit engine works on for this module.
    pub(crate) fn within(&self) -> crate::edit::Within<'_> {
        match self.expanded_item() {
            Some(item) => crate::edit::Within::Module(item),
            None => crate::edit::Within::Chain(self.inline_index()),
        }
    }

    /// Indices of the inline module chain in the file's item lists.
    pub fn inline_index(&self) -> &[usize] {
        &self.inline_index
    }

    /// Is this the crate root?
    pub fn is_crate_root(&self) -> bool {
        self.segments.is_empty()
    }
}

fn items_at<'f>(mut items: &'f [syn::Item], chain: &[usize]) -> Option<&'f [syn::Item]> {
    for &i in chain {
        match items.get(i)? {
            syn::Item::Mod(m) => items = &m.content.as_ref()?.1,
            _ => return None,
        }
    }
    Some(items)
}

/// Errors of module resolution.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The path itself is malformed.
    #[error(transparent)]
    Path(#[from] ModulePathError),
    /// No module with that path.
    #[error("module `{path}` not found: {reason}{}", suggest(.suggestions))]
    NotFound {
        /// The path as given.
        path: String,
        /// Which segment failed and where it was looked for.
        reason: String,
        /// The nearest existing module paths.
        suggestions: Vec<String>,
    },
    /// Several modules match (several packages, or cfg twins).
    #[error("module `{path}` is ambiguous: it could be {}; write one of these", .candidates.join(" or "))]
    Ambiguous {
        /// The path as given.
        path: String,
        /// The qualified candidates.
        candidates: Vec<String>,
    },
    /// The module's file would be outside the project root.
    #[error(
        "module `{path}` resolves to {file}, which is outside the project root {root}; heph never edits files outside the project"
    )]
    Escapes {
        /// The path as given.
        path: String,
        /// The file it would reach.
        file: PathBuf,
        /// The project root.
        root: PathBuf,
    },
    /// A `mod` declaration whose file does not exist.
    #[error("module `{path}` is declared at {declared} but neither {} nor {} exists", .candidates[0].display(), .candidates.get(1).unwrap_or(&.candidates[0]).display())]
    MissingFile {
        /// The module path.
        path: String,
        /// `file:line:col` of the declaration.
        declared: String,
        /// The files rustc would look for.
        candidates: Vec<PathBuf>,
    },
    /// Both `foo.rs` and `foo/mod.rs` exist (rustc rejects this too, E0761).
    #[error("module `{path}` has both {} and {}; rustc rejects this (E0761): delete one", .a.display(), .b.display())]
    BothLayouts {
        /// The module path.
        path: String,
        /// `foo.rs`
        a: PathBuf,
        /// `foo/mod.rs`
        b: PathBuf,
    },
    /// A `#[cfg_attr(.., path = "..")]`: the file depends on the build configuration.
    #[error(
        "module `{path}` is declared at {declared} with `#[cfg_attr(.., path = ..)]`; its file depends on the build configuration, which heph does not evaluate: edit the file by its unconditional path instead"
    )]
    CfgAttrPath {
        /// The module path.
        path: String,
        /// `file:line:col` of the declaration.
        declared: String,
    },
    /// Several `#[cfg]` copies of a module, and the build configuration does not say
    /// which one is compiled.
    #[error("module `{path}` has several #[cfg] copies and {reason}: {}; pick one with --cfg (e.g. --cfg 'feature = \"name\"')", .candidates.join(", "))]
    CfgAlternatives {
        /// The module path.
        path: String,
        /// Why no copy could be chosen.
        reason: String,
        /// Each copy: its cfgs and where it is declared.
        candidates: Vec<String>,
    },
    /// The module may be declared by macro calls heph cannot expand.
    #[error("module `{path}` not found: {reason}; it may be declared by {}, which heph cannot expand (a procedural macro, a macro of another crate, or rules it cannot read): heph can only edit modules whose `mod` declaration it can read", .calls.join(", "))]
    InOpaqueMacro {
        /// The path as given.
        path: String,
        /// Which segment failed.
        reason: String,
        /// The macro calls (`name!` at `file:line:col`).
        calls: Vec<String>,
    },
    /// The build configuration could not be read.
    #[error(transparent)]
    Cfg(#[from] CfgError),
    /// A module file does not parse.
    #[error("{0}")]
    Syntax(Box<SyntaxError>),
    /// A module file cannot be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn suggest(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(
            "; did you mean {}?",
            s.iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

impl crate::Categorized for ResolveError {
    fn category(&self) -> crate::ErrorCategory {
        match self {
            ResolveError::Read { .. } => crate::ErrorCategory::Environment,
            ResolveError::Cfg(e) => e.category(),
            _ => crate::ErrorCategory::BadInput,
        }
    }
}

/// Resolves module paths of one project, caching parsed files.
pub struct Resolver<'p> {
    project: &'p Project,
    files: RefCell<HashMap<PathBuf, Rc<SourceFile>>>,
    caches: RefCell<decls::Caches>,
    given: Vec<CfgOption>,
    cfg_sets: RefCell<HashMap<String, Rc<CfgSet>>>,
}

impl std::fmt::Debug for Resolver<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("root", &self.project.root())
            .finish_non_exhaustive()
    }
}

/// The outcome of looking for one child of a module.
enum Step {
    Found(Box<Module>),
    /// Not declared; the macro calls heph cannot expand that may declare it.
    Missing(Vec<String>),
}

impl<'p> Resolver<'p> {
    /// A resolver for `project`.
    pub fn new(project: &'p Project) -> Self {
        Resolver {
            project,
            files: RefCell::new(HashMap::new()),
            caches: RefCell::new(decls::Caches::default()),
            given: Vec::new(),
            cfg_sets: RefCell::new(HashMap::new()),
        }
    }

    /// Choose `#[cfg]` copies as a build with these options set too would
    /// (`--cfg 'feature = "x"'`); among several active copies, one that names an
    /// option given here wins.
    pub fn with_cfg(mut self, given: &[CfgOption]) -> Self {
        self.given = given.to_vec();
        self
    }

    /// The cfg set of the default build of `package`, plus the options given to
    /// [`Self::with_cfg`] (computed once; runs `rustc --print cfg` unless cached).
    pub fn cfg_set(&self, package: &str) -> Result<Rc<CfgSet>, CfgError> {
        if let Some(set) = self.cfg_sets.borrow().get(package) {
            return Ok(Rc::clone(set));
        }
        let pkg = self
            .project
            .package(package)
            .expect("module of a known package");
        let set = Rc::new(cfg::active_set(self.project, pkg, &self.given)?);
        self.cfg_sets
            .borrow_mut()
            .insert(package.to_owned(), Rc::clone(&set));
        Ok(set)
    }

    /// The parsed file at `path` (cached).
    pub fn file(&self, path: &Path) -> Result<Rc<SourceFile>, ResolveError> {
        if let Some(f) = self.files.borrow().get(path) {
            return Ok(Rc::clone(f));
        }
        let bytes = fs::read(path).map_err(|source| ResolveError::Read {
            file: path.to_owned(),
            source,
        })?;
        let file = SourceFile::parse_bytes(Origin::File(self.display_file(path)), bytes)
            .map_err(ResolveError::Syntax)?;
        let file = Rc::new(file);
        self.files
            .borrow_mut()
            .insert(path.to_owned(), Rc::clone(&file));
        Ok(file)
    }

    fn display_file(&self, path: &Path) -> PathBuf {
        PathBuf::from(self.project.relative(path))
    }

    /// The crate root module of a target.
    pub fn root_module(&self, package: &Package, target: &Target) -> Module {
        let child_dir = target
            .root
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| package.dir.clone());
        Module {
            path: self.qualified(package, &[]),
            package: package.name.clone(),
            target: target.name.clone(),
            target_kind: target.kind,
            segments: Vec::new(),
            file: target.root.clone(),
            inline: Vec::new(),
            inline_index: Vec::new(),
            child_dir,
            layout: Layout::CrateRoot,
            cfg: Vec::new(),
            notes: Vec::new(),
            expanded: None,
            scope: Scope::default(),
        }
    }

    fn qualified(&self, package: &Package, segments: &[String]) -> String {
        let head = if self.project.packages().len() > 1 {
            package.crate_name()
        } else {
            "crate".to_owned()
        };
        std::iter::once(head)
            .chain(segments.iter().cloned())
            .collect::<Vec<_>>()
            .join("::")
    }

    /// Resolve a module path given as text.
    pub fn resolve(&self, text: &str) -> Result<Module, ResolveError> {
        let path = ModulePath::parse(text)?;
        self.resolve_path(&path)
    }

    /// The packages a path may refer to, and the segments left after a package name.
    pub fn scope<'a>(&'a self, path: &'a ModulePath) -> (Vec<&'p Package>, &'a [String]) {
        let project = self.project;
        if !path.crate_relative
            && let Some(first) = path.segments.first()
            && let Some(pkg) = project.package(first)
        {
            let shadowed = project.packages().len() == 1
                && path.segments.len() > 1
                && self.declares_top_module(pkg, first);
            if !shadowed {
                return (vec![pkg], &path.segments[1..]);
            }
        }
        let pkgs = match project.default_package() {
            Some(p) => vec![p],
            None => project.packages().iter().collect(),
        };
        (pkgs, &path.segments)
    }

    fn declares_top_module(&self, pkg: &Package, name: &str) -> bool {
        pkg.targets.iter().any(|t| {
            let root = self.root_module(pkg, t);
            matches!(self.step(&root, name, ""), Ok(Step::Found(_)))
        })
    }

    /// Resolve a parsed module path.
    pub fn resolve_path(&self, path: &ModulePath) -> Result<Module, ResolveError> {
        let (packages, segments) = self.scope(path);
        let mut found: Vec<Module> = Vec::new();
        let mut first_error: Option<ResolveError> = None;
        let mut deepest: Option<(usize, String)> = None;
        for pkg in &packages {
            for target in &pkg.targets {
                match self.walk(pkg, target, segments, &path.text) {
                    Ok(Ok(m)) => {
                        // A module reached from both the lib and a bin is the same module.
                        if !found
                            .iter()
                            .any(|f| f.file == m.file && f.inline == m.inline)
                        {
                            found.push(m);
                        }
                        break; // lib first: a package's first match wins
                    }
                    Ok(Err((depth, reason))) => {
                        if deepest.as_ref().is_none_or(|(d, _)| depth > *d) {
                            deepest = Some((depth, reason));
                        }
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        match found.len() {
            1 => {
                let mut module = found.remove(0);
                if let Some(note) = self.inactive_note(&module) {
                    module.notes.push(note);
                }
                return Ok(module);
            }
            0 => {}
            _ => {
                return Err(ResolveError::Ambiguous {
                    path: path.text.clone(),
                    candidates: found.into_iter().map(|m| m.path).collect(),
                });
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let reason = deepest.map_or_else(|| "the project has no crate roots".to_owned(), |d| d.1);
        Err(ResolveError::NotFound {
            path: path.text.clone(),
            reason,
            suggestions: self.suggestions(&path.text, 3),
        })
    }

    /// A note when the build `cargo check --all-targets` runs (the default features,
    /// with and without `test`; not the `--cfg`s, which cargo does not see) does not
    /// compile `module`: such an edit is not checked by the default verification.
    fn inactive_note(&self, module: &Module) -> Option<String> {
        let preds: Vec<syn::Meta> = module
            .cfg
            .iter()
            .filter_map(|c| syn::parse_str::<syn::Meta>(c).ok())
            .filter_map(|m| m.require_list().ok()?.parse_args::<syn::Meta>().ok())
            .collect();
        // `#[cfg(test)]` modules are compiled by the test build: no need to ask rustc.
        let only_test = |m: &syn::Meta| m.path().is_ident("test");
        if preds.is_empty() || preds.iter().all(only_test) {
            return None;
        }
        let set = self.cfg_set(&module.package).ok()?.base();
        let test = CfgOption {
            name: "test".to_owned(),
            value: None,
        };
        let with_test = set.clone().with_given(std::slice::from_ref(&test));
        let compiled = |s: &CfgSet| preds.iter().all(|p| s.eval(p) == Some(true));
        if compiled(&set) || compiled(&with_test) {
            return None;
        }
        let cfgs: Vec<String> = module.cfg.iter().map(|c| format!("#[{c}]")).collect();
        Some(format!(
            "`{}` is compiled only under {}, which the build `cargo check` runs does not enable: verification will not check this edit (verify with the features it needs, e.g. --verify 'cargo check --all-features')",
            module.path,
            cfgs.join(" ")
        ))
    }

    /// Walk `segments` from a target's root. `Ok(Err((depth, reason)))` when a segment
    /// is missing (depth = segments matched).
    #[allow(clippy::type_complexity)]
    fn walk(
        &self,
        pkg: &Package,
        target: &Target,
        segments: &[String],
        text: &str,
    ) -> Result<Result<Module, (usize, String)>, ResolveError> {
        let mut module = self.root_module(pkg, target);
        for (depth, seg) in segments.iter().enumerate() {
            match self.step(&module, seg, text)? {
                Step::Found(m) => module = *m,
                Step::Missing(calls) => {
                    let here = if module.is_crate_root() {
                        format!("the crate root {}", self.project.relative(&module.file))
                    } else {
                        format!(
                            "`{}` ({})",
                            module.path,
                            self.project.relative(&module.file)
                        )
                    };
                    let reason = format!("{here} declares no module `{seg}`");
                    if !calls.is_empty() {
                        return Err(ResolveError::InOpaqueMacro {
                            path: text.to_owned(),
                            reason: format!("{here} declares no module `{seg}` that heph can read"),
                            calls,
                        });
                    }
                    return Ok(Err((depth, reason)));
                }
            }
        }
        Ok(Ok(module))
    }

    /// Walk `segments` from a target's root as far as they exist: the deepest module
    /// reached and how many segments matched.
    pub fn deepest(
        &self,
        pkg: &Package,
        target: &Target,
        segments: &[String],
    ) -> Result<(Module, usize), ResolveError> {
        let mut module = self.root_module(pkg, target);
        for (depth, seg) in segments.iter().enumerate() {
            match self.step(&module, seg, &module.path.clone())? {
                Step::Found(m) => module = *m,
                Step::Missing(_) => return Ok((module, depth)),
            }
        }
        Ok((module, segments.len()))
    }

    /// The project being resolved.
    pub fn project(&self) -> &'p Project {
        self.project
    }

    /// Find the child `name` of `parent`.
    fn step(&self, parent: &Module, name: &str, text: &str) -> Result<Step, ResolveError> {
        let file = self.file(&parent.file)?;
        let Some(items) = parent.items(&file) else {
            return Ok(Step::Missing(Vec::new()));
        };
        let mut segments = parent.segments.clone();
        segments.push(name.to_owned());
        let pkg = self
            .project
            .package(&parent.package)
            .expect("module of a known package");
        let child_path = self.qualified(pkg, &segments);
        let want = file_stem(name);
        let decls = self.decls(parent, &file);
        let candidates: Vec<(&decls::Decl, &syn::ItemMod)> = decls
            .list
            .iter()
            .filter_map(|d| d.module(items).map(|m| (d, m)))
            .filter(|(_, m)| file_stem(&m.ident.to_string()) == want)
            .collect();
        if candidates.is_empty() {
            let named: Vec<String> = decls
                .opaque
                .iter()
                .filter(|o| crate::expand::declares_mod_named(&o.tokens, want))
                .map(|o| o.call.clone())
                .collect();
            let calls = if named.is_empty() {
                decls.opaque.iter().map(|o| o.call.clone()).collect()
            } else {
                named
            };
            return Ok(Step::Missing(calls));
        }
        let mut resolved = Vec::new();
        let mut errors = Vec::new();
        for (decl, m) in &candidates {
            match self.child(parent, &file, decl, m, &segments, &child_path, text) {
                Ok(module) => {
                    let (l, c) = line_col(file.text(), file.range_of(*m).start);
                    let at = format!("{}:{l}:{c}", self.project.relative(&parent.file));
                    resolved.push((module, m.attrs.as_slice(), *decl, at));
                }
                Err(e) => errors.push(e),
            }
        }
        if resolved.is_empty() {
            return Err(errors.remove(0));
        }
        let distinct: HashSet<_> = resolved
            .iter()
            .map(|(m, _, _, _)| {
                (
                    &m.file,
                    &m.inline_index,
                    m.expanded.as_ref().map(|e| Rc::as_ptr(&e.0)),
                )
            })
            .collect();
        if resolved.len() == 1 || distinct.len() == 1 {
            return Ok(Step::Found(Box::new(resolved.swap_remove(0).0)));
        }
        // Several `#[cfg]` copies: the one the default build compiles.
        let declared = |(m, _, d, at): &(Module, &[syn::Attribute], &decls::Decl, String)| {
            let cfg = if m.cfg.len() > parent.cfg.len() {
                m.cfg[parent.cfg.len()..]
                    .iter()
                    .map(|c| format!("#[{c}]"))
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                "no #[cfg]".to_owned()
            };
            let file = self.project.relative(&m.file);
            let inline = if m.layout == Layout::Inline {
                "inline".to_owned()
            } else {
                file
            };
            match &d.via {
                Some(via) => format!("{cfg} ({inline}, declared by {via})"),
                None => format!("{cfg} ({inline}, declared at {at})"),
            }
        };
        let set = self.cfg_set(&parent.package)?;
        // A declaration's attributes include those its macro expansion added.
        let refs: Vec<&[syn::Attribute]> = resolved.iter().map(|r| r.1).collect();
        let reason = match cfg::pick(&set, &refs) {
            Pick::One(i) => {
                let others: Vec<String> = resolved
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, r)| declared(r))
                    .collect();
                let chosen = declared(&resolved[i]);
                let mut module = resolved.swap_remove(i).0;
                let by = if set.given().is_empty() {
                    "the default build compiles it".to_owned()
                } else {
                    format!(
                        "the build with --cfg {} compiles it",
                        set.given()
                            .iter()
                            .map(|g| format!("'{g}'"))
                            .collect::<Vec<_>>()
                            .join(" --cfg ")
                    )
                };
                module.notes.push(format!(
                    "`{child_path}`: chose the copy {chosen}, since {by}; other copies: {} (pick one with --cfg)",
                    others.join(", ")
                ));
                return Ok(Step::Found(Box::new(module)));
            }
            Pick::NoneActive => "the build compiles none of them".to_owned(),
            Pick::Several(live) => {
                resolved = resolved
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| live.contains(i))
                    .map(|(_, r)| r)
                    .collect();
                "the build compiles more than one of them".to_owned()
            }
        };
        Err(ResolveError::CfgAlternatives {
            path: child_path.clone(),
            reason,
            candidates: resolved.iter().map(declared).collect(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn child(
        &self,
        parent: &Module,
        file: &SourceFile,
        decl: &decls::Decl,
        m: &syn::ItemMod,
        segments: &[String],
        child_path: &str,
        text: &str,
    ) -> Result<Module, ResolveError> {
        let declared = || {
            let off = file.range_of(m).start;
            let (l, c) = line_col(file.text(), off);
            format!("{}:{l}:{c}", self.project.relative(&parent.file))
        };
        let path_attr = path_attribute(m);
        if m.attrs.iter().any(is_cfg_attr_path) {
            return Err(ResolveError::CfgAttrPath {
                path: child_path.to_owned(),
                declared: declared(),
            });
        }
        let stem = file_stem(&m.ident.to_string()).to_owned();
        let base = |m: &Module| m.child_dir.clone();
        let mut scope: Vec<Module> = parent.scope.0.as_ref().clone();
        let mut bare = parent.clone();
        bare.scope = Scope::default();
        scope.push(bare);
        let mut notes = parent.notes.clone();
        if let Some(via) = decl.via.as_ref().filter(|_| decl.guessed) {
            notes.push(format!(
                "`{child_path}` is declared inside {via}, a macro heph cannot expand: it assumed the macro keeps the declaration as written"
            ));
        }
        let mut module = Module {
            path: child_path.to_owned(),
            package: parent.package.clone(),
            target: parent.target.clone(),
            target_kind: parent.target_kind,
            segments: segments.to_vec(),
            file: parent.file.clone(),
            inline: parent.inline.clone(),
            inline_index: parent.inline_index.clone(),
            child_dir: parent.child_dir.join(&stem),
            layout: Layout::Inline,
            cfg: parent
                .cfg
                .iter()
                .cloned()
                .chain(crate::item::cfgs(&m.attrs))
                .collect(),
            notes,
            expanded: parent.expanded.clone(),
            scope: Scope(Rc::new(scope)),
        };
        if m.content.is_some() {
            module.inline.push(m.ident.to_string());
            match &decl.item {
                decls::DeclItem::Direct(index) if parent.expanded.is_none() => {
                    module.inline_index.push(*index);
                }
                decls::DeclItem::Direct(index) => {
                    let items = parent.items(file).unwrap_or_default();
                    if let Some(syn::Item::Mod(inner)) = items.get(*index) {
                        module.expanded = Some(Expanded(Rc::new(inner.clone())));
                    }
                }
                decls::DeclItem::Expanded(inner) => {
                    module.expanded = Some(Expanded(Rc::clone(inner)));
                }
            }
            if let Some(p) = &path_attr {
                module.child_dir = parent.child_dir.join(p);
            }
            return Ok(module);
        }
        let (path, layout) = if let Some(p) = path_attr {
            // Outside inline modules, `#[path]` is relative to the declaring file's
            // directory; inside them, to the inline module's directory.
            let dir = if parent.inline.is_empty() {
                parent
                    .file
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default()
            } else {
                base(parent)
            };
            if Path::new(&p).is_absolute() {
                return Err(ResolveError::Escapes {
                    path: text.to_owned(),
                    file: PathBuf::from(p),
                    root: self.project.root().to_owned(),
                });
            }
            (dir.join(p), Layout::PathAttr)
        } else {
            let a = base(parent).join(format!("{stem}.rs"));
            let b = base(parent).join(&stem).join("mod.rs");
            match (a.is_file(), b.is_file()) {
                (true, true) => {
                    return Err(ResolveError::BothLayouts {
                        path: child_path.to_owned(),
                        a,
                        b,
                    });
                }
                (true, false) => (a, Layout::File),
                (false, true) => (b, Layout::ModRs),
                (false, false) => {
                    return Err(ResolveError::MissingFile {
                        path: child_path.to_owned(),
                        declared: declared(),
                        candidates: vec![a, b],
                    });
                }
            }
        };
        let path = normalize(&path);
        self.check_inside(&path, text)?;
        module.child_dir = match layout {
            Layout::PathAttr => path.parent().map(Path::to_path_buf).unwrap_or_default(),
            _ => base(parent).join(&stem),
        };
        module.file = path;
        module.inline.clear();
        module.inline_index.clear();
        module.expanded = None;
        module.layout = layout;
        Ok(module)
    }

    /// Refuse files that are (or whose symlinks lead) outside the project root.
    pub fn check_inside(&self, path: &Path, text: &str) -> Result<(), ResolveError> {
        let root = self.project.root();
        let escapes = |file: PathBuf| ResolveError::Escapes {
            path: text.to_owned(),
            file,
            root: root.to_owned(),
        };
        if !path.starts_with(root) {
            return Err(escapes(path.to_owned()));
        }
        match path.canonicalize() {
            Ok(real) if real.starts_with(root) => Ok(()),
            Ok(real) => Err(escapes(real)),
            Err(source) => Err(ResolveError::Read {
                file: path.to_owned(),
                source,
            }),
        }
    }

    /// Like [`Self::check_inside`] for a file that may not exist yet: its nearest
    /// existing ancestor must be inside the root (no symlinked directory escapes).
    pub fn check_inside_or_new(&self, path: &Path, text: &str) -> Result<(), ResolveError> {
        let mut p = Some(path);
        while let Some(cur) = p {
            if cur.exists() {
                return self.check_inside(cur, text);
            }
            p = cur.parent();
        }
        Ok(())
    }

    /// Every module reachable from the project's crate roots (bounded), for
    /// suggestions and listings. Modules that fail to resolve are skipped.
    pub fn all_modules(&self, limit: usize) -> Vec<Module> {
        let mut out: Vec<Module> = Vec::new();
        let mut seen = HashSet::new();
        for pkg in self.project.packages() {
            for target in &pkg.targets {
                let mut stack = vec![self.root_module(pkg, target)];
                while let Some(m) = stack.pop() {
                    if out.len() >= limit || !seen.insert((m.file.clone(), m.inline.clone())) {
                        continue;
                    }
                    if let Ok(file) = self.file(&m.file)
                        && let Some(items) = m.items(&file)
                    {
                        let decls = self.decls(&m, &file);
                        let mut names: Vec<String> = Vec::new();
                        for d in &decls.list {
                            if let Some(md) = d.module(items) {
                                let name = md.ident.to_string();
                                if !names.contains(&name) {
                                    names.push(name);
                                }
                            }
                        }
                        for name in names.into_iter().rev() {
                            if let Ok(Step::Found(child)) = self.step(&m, &name, "") {
                                stack.push(*child);
                            }
                        }
                    }
                    out.push(m);
                }
            }
        }
        out
    }

    /// The existing module paths nearest to `text`.
    pub fn suggestions(&self, text: &str, n: usize) -> Vec<String> {
        let want = ModulePath::parse(text)
            .map(|p| p.segments.join("::"))
            .unwrap_or_else(|_| text.to_owned());
        let mut scored: Vec<(f64, String)> = self
            .all_modules(5000)
            .into_iter()
            .filter(|m| !m.segments.is_empty())
            .map(|m| {
                let tail = m.segments.join("::");
                let score = strsim::normalized_damerau_levenshtein(&want, &tail)
                    .max(strsim::normalized_damerau_levenshtein(&want, &m.path));
                (score, m.path)
            })
            .filter(|(s, _)| *s > 0.4)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        scored.dedup_by(|a, b| a.1 == b.1);
        scored.into_iter().take(n).map(|(_, p)| p).collect()
    }
}

/// The value of a `#[path = ".."]` attribute.
fn path_attribute(m: &syn::ItemMod) -> Option<String> {
    m.attrs.iter().find_map(|a| match &a.meta {
        syn::Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })
}

fn is_cfg_attr_path(a: &syn::Attribute) -> bool {
    a.path().is_ident("cfg_attr")
        && a.meta.require_list().is_ok_and(|l| {
            l.tokens
                .clone()
                .into_iter()
                .any(|tt| matches!(tt, proc_macro2::TokenTree::Ident(ref i) if i == "path"))
        })
}

/// Remove `.` and resolve `..` lexically (rustc does not canonicalize either).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
