//! `heph import`: create a new module from code at the canonical place for its
//! parent, creating missing intermediate modules, and declare it in the parent with
//! `pub mod name;` after the parent's last `mod` declaration, touching nothing else.

use crate::apply::Plan;
use crate::edit::{self, ChangeAction, Edit, ItemChange};
use crate::evolution::EvolutionKind;
use crate::fsio::FileWrite;
use crate::item::ItemKind;
use crate::modpath::{ModulePath, file_stem};
use crate::project::TargetKind;
use crate::resolve::{ResolveError, Resolver};
use crate::source::{Origin, SourceFile, SyntaxError};

/// What to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSpec {
    /// The new module's path (`dynamic_module`, `agent::new_tool`, `pkg::a::b`).
    pub module: String,
    /// Its code (a whole file: items, optional `//!` docs and inner attributes).
    pub code: String,
    /// Declare it `pub mod` (true) or `mod`.
    pub public: bool,
    /// A public zero-argument function of the new module to run after verification.
    pub run: Option<String>,
}

impl ImportSpec {
    /// A public module with this code.
    pub fn new(module: impl Into<String>, code: impl Into<String>) -> Self {
        ImportSpec {
            module: module.into(),
            code: code.into(),
            public: true,
            run: None,
        }
    }
}

/// Why an import is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The module exists already.
    #[error(
        "module `{module}` already exists ({file}); use `heph self-modify {module}` to change it"
    )]
    Exists {
        /// Its path.
        module: String,
        /// Its file.
        file: String,
    },
    /// A file is in the way of the new module (an undeclared module file).
    #[error(
        "{file} already exists but is not declared as a module; declare it with `mod {name};` (then use self-modify) or move it away"
    )]
    FileInTheWay {
        /// The file.
        file: String,
        /// The module name.
        name: String,
    },
    /// `heph import crate`.
    #[error(
        "`{0}` names a crate root; give the new module's path, e.g. `dynamic_module` or `agent::new_tool`"
    )]
    NoName(String),
    /// The submitted code does not parse.
    #[error("the submitted code is not valid Rust: {0}")]
    Syntax(Box<SyntaxError>),
    /// The submitted code is empty.
    #[error("no code was given: submit at least one item")]
    EmptyCode,
    /// Several packages could hold the module.
    #[error("`{module}` could go into several packages; qualify it: {}", .candidates.join(" or "))]
    WhichPackage {
        /// The path as given.
        module: String,
        /// Qualified alternatives.
        candidates: Vec<String>,
    },
    /// `--run` on a crate that is not a library.
    #[error(
        "--run calls the function through the package's library, but `{module}` belongs to the binary `{target}`; import it into a library crate or drop --run"
    )]
    NotALibrary {
        /// The module.
        module: String,
        /// The binary.
        target: String,
    },
    /// `--run` names a function that is not there or cannot be called without arguments.
    #[error("--run {function}: {reason}")]
    NotRunnable {
        /// The function name.
        function: String,
        /// What is wrong.
        reason: String,
    },
}

impl crate::Categorized for ImportError {
    fn category(&self) -> crate::ErrorCategory {
        crate::ErrorCategory::BadInput
    }
}

/// Plan an import.
pub(crate) fn plan(
    resolver: &Resolver<'_>,
    spec: &ImportSpec,
) -> Result<Plan, crate::apply::ApplyError> {
    let project = resolver.project();
    let path = ModulePath::parse(&spec.module).map_err(ResolveError::from)?;
    match resolver.resolve_path(&path) {
        Ok(m) => {
            return Err(ImportError::Exists {
                module: m.path,
                file: project.relative(&m.file),
            }
            .into());
        }
        Err(ResolveError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let (packages, segments) = resolver.scope(&path);
    if segments.is_empty() {
        return Err(ImportError::NoName(spec.module.clone()).into());
    }
    let pkg = match packages.as_slice() {
        [p] => *p,
        many => {
            return Err(ImportError::WhichPackage {
                module: spec.module.clone(),
                candidates: many
                    .iter()
                    .map(|p| format!("`{}::{}`", p.crate_name(), segments.join("::")))
                    .collect(),
            }
            .into());
        }
    };
    let target = pkg.lib().unwrap_or(&pkg.targets[0]);

    // The new module's own code must parse as a file.
    let code =
        SourceFile::parse(Origin::Submitted, spec.code.clone()).map_err(ImportError::Syntax)?;
    if code.syntax().items.is_empty() && code.syntax().attrs.is_empty() {
        return Err(ImportError::EmptyCode.into());
    }
    if let Some(function) = &spec.run {
        if target.kind != TargetKind::Lib {
            return Err(ImportError::NotALibrary {
                module: spec.module.clone(),
                target: target.name.clone(),
            }
            .into());
        }
        check_runnable(&code, function)?;
    }

    let (parent, matched) = resolver.deepest(pkg, target, segments)?;
    let missing = &segments[matched..];
    let vis = if spec.public { "pub " } else { "" };

    // Files of the missing modules, each declaring the next one.
    let mut files = Vec::new();
    let mut changes = Vec::new();
    let mut dir = parent.child_dir.clone();
    for (i, seg) in missing.iter().enumerate() {
        let stem = file_stem(seg);
        let file = dir.join(format!("{stem}.rs"));
        for candidate in [file.clone(), dir.join(stem).join("mod.rs")] {
            if candidate.exists() {
                return Err(ImportError::FileInTheWay {
                    file: project.relative(&candidate),
                    name: seg.clone(),
                }
                .into());
            }
        }
        resolver.check_inside_or_new(&file, &spec.module)?;
        let contents = match missing.get(i + 1) {
            Some(next) => format!("{vis}mod {next};\n"),
            None => {
                let mut c = spec.code.clone();
                if !c.ends_with('\n') {
                    c.push('\n');
                }
                c
            }
        };
        files.push(FileWrite {
            path: file,
            before: None,
            after: contents.into_bytes(),
        });
        changes.push(ItemChange {
            action: ChangeAction::Added,
            key: format!("mod {seg}"),
            kind: ItemKind::Mod,
        });
        dir = dir.join(stem);
    }

    // Declare the first missing module in the deepest existing one.
    let parent_file = resolver.file(&parent.file)?;
    let decl = Edit::merge(format!("{vis}mod {};", missing[0]));
    let wired = edit::apply_to_module(&parent_file, &parent, &decl, None)?;
    files.insert(
        0,
        FileWrite {
            path: parent.file.clone(),
            before: Some(parent_file.text().as_bytes().to_vec()),
            after: wired.text.into_bytes(),
        },
    );
    let mut module = parent.path.clone();
    for seg in missing {
        module.push_str("::");
        module.push_str(seg);
    }
    Ok(Plan {
        kind: EvolutionKind::Import,
        module,
        package: pkg.name.clone(),
        segments: segments.to_vec(),
        files,
        changes,
        run: spec.run.clone(),
        fitness: None,
        message: None,
        notes: parent.notes.clone(),
    })
}

/// `function` must be a `pub fn` of the new code taking no arguments and no generics.
fn check_runnable(code: &SourceFile, function: &str) -> Result<(), ImportError> {
    let err = |reason: String| ImportError::NotRunnable {
        function: function.to_owned(),
        reason,
    };
    let fns: Vec<&syn::ItemFn> = code
        .syntax()
        .items
        .iter()
        .filter_map(|i| match i {
            syn::Item::Fn(f) => Some(f),
            _ => None,
        })
        .collect();
    let Some(f) = fns.iter().find(|f| f.sig.ident == function) else {
        let names: Vec<String> = fns.iter().map(|f| f.sig.ident.to_string()).collect();
        return Err(err(if names.is_empty() {
            "the submitted code defines no function".to_owned()
        } else {
            format!(
                "the submitted code defines no function `{function}` (it has: {})",
                names.join(", ")
            )
        }));
    };
    if !matches!(f.vis, syn::Visibility::Public(_)) {
        return Err(err(format!(
            "`{function}` must be `pub` to be called from outside the crate"
        )));
    }
    if !f.sig.inputs.is_empty() {
        return Err(err(format!(
            "`{function}` takes arguments; --run calls a function with none"
        )));
    }
    if !f.sig.generics.params.is_empty() {
        return Err(err(format!(
            "`{function}` is generic; --run calls a concrete function"
        )));
    }
    if f.sig.asyncness.is_some() {
        return Err(err(format!(
            "`{function}` is async; --run calls a plain function"
        )));
    }
    Ok(())
}
