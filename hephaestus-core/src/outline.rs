//! Reading a project the way an agent needs it before a change: a module's source and
//! the keys of its items with their lines ([`Project::outline`]), every module
//! ([`Project::modules`]), and an item found by name across the project
//! ([`Project::find_items`]). Read-only: nothing here takes the lock or writes.

use std::collections::HashMap;

use serde::Serialize;

use crate::cfg::CfgOption;
use crate::item::{ItemKey, impl_name};
use crate::project::Project;
use crate::resolve::{Module, ResolveError, Resolver};
use crate::source::{SourceFile, line_col, reset_span_table};

/// The most modules [`Project::modules`] and [`Project::find_items`] walk.
pub const MAX_MODULES: usize = 5000;

/// An item of a module (or a member of one of its impls) and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemOutline {
    /// The key as `self-modify --item` takes it (`fn helper`, `fn Point::norm`,
    /// `impl Display for Point`, `use super::*#2` for the second of two equal ones).
    pub key: String,
    /// `fn`, `struct`, `impl`, `use`, ...
    pub kind: String,
    /// The item's name (for an impl, `Trait for Type`; for a use, its tree).
    pub name: String,
    /// For impl members: the impl's name (`Point`, `Display for Point`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// First line (1-based, attributes and doc comments included).
    pub start_line: usize,
    /// Last line (1-based, inclusive).
    pub end_line: usize,
}

/// A module's text and items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModuleOutline {
    /// The canonical module path.
    pub module: String,
    /// The package it belongs to.
    pub package: String,
    /// The file holding it, relative to the project root.
    pub file: String,
    /// For an inline module, the chain of `mod` names inside the file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inline: Vec<String>,
    /// The whole file's text (line numbers refer to it).
    pub source: String,
    /// Module-level items in source order, each followed by its members when it is an
    /// impl.
    pub items: Vec<ItemOutline>,
    /// What heph decided on the way (which `#[cfg]` copy it chose, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A module of the project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModuleEntry {
    /// The canonical module path.
    pub module: String,
    /// The package.
    pub package: String,
    /// The crate root it is reached from (lib or bin name).
    pub target: String,
    /// The file holding it, relative to the project root.
    pub file: String,
    /// Declared inline (`mod x { .. }`) inside `file`.
    pub inline: bool,
}

/// An item found by [`Project::find_items`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemMatch {
    /// The module holding it.
    pub module: String,
    /// The file, relative to the project root.
    pub file: String,
    /// The item and its lines.
    #[serde(flatten)]
    pub item: ItemOutline,
    /// Its source text, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

impl Project {
    /// The source of `module` and the keys of its items with their lines.
    pub fn outline(&self, module: &str, cfg: &[CfgOption]) -> Result<ModuleOutline, ResolveError> {
        let result = {
            let resolver = Resolver::new(self).with_cfg(cfg);
            let m = resolver.resolve(module)?;
            let file = resolver.file(&m.file)?;
            ModuleOutline {
                items: items_of(&m, &file).into_iter().map(|(o, _)| o).collect(),
                module: m.path.clone(),
                package: m.package.clone(),
                file: self.relative(&m.file),
                inline: m.inline.clone(),
                source: file.text().to_owned(),
                notes: m.notes.clone(),
            }
        };
        reset_span_table();
        Ok(result)
    }

    /// Every module reachable from the crate roots (at most [`MAX_MODULES`]), in the
    /// order of a walk from each root, crate roots first.
    pub fn modules(&self) -> Vec<ModuleEntry> {
        let list = Resolver::new(self)
            .all_modules(MAX_MODULES)
            .into_iter()
            .map(|m| ModuleEntry {
                file: self.relative(&m.file),
                inline: !m.inline.is_empty(),
                module: m.path,
                package: m.package,
                target: m.target,
            })
            .collect();
        reset_span_table();
        list
    }

    /// Items named `name` in every module (a member matches by its own name, or as
    /// `Type::name`); with `substring`, items whose name contains `name`. At most
    /// `limit` matches, each module once even when several crate roots reach it.
    pub fn find_items(
        &self,
        name: &str,
        substring: bool,
        with_body: bool,
        limit: usize,
    ) -> Vec<ItemMatch> {
        let mut out = Vec::new();
        {
            let resolver = Resolver::new(self);
            let mut seen = std::collections::HashSet::new();
            'modules: for m in resolver.all_modules(MAX_MODULES) {
                if !seen.insert((m.file.clone(), m.inline.clone())) {
                    continue;
                }
                let Ok(file) = resolver.file(&m.file) else {
                    continue;
                };
                for (item, range) in items_of(&m, &file) {
                    let qualified = item.owner.as_ref().map(|o| format!("{o}::{}", item.name));
                    let hit = |n: &str| {
                        if substring {
                            n.contains(name)
                        } else {
                            n == name
                        }
                    };
                    if hit(&item.name) || qualified.as_deref().is_some_and(hit) {
                        out.push(ItemMatch {
                            module: m.path.clone(),
                            file: self.relative(&m.file),
                            body: with_body.then(|| file.text()[range].to_owned()),
                            item,
                        });
                        if out.len() >= limit {
                            break 'modules;
                        }
                    }
                }
            }
        }
        reset_span_table();
        out
    }
}

/// The items of `m` in `file` with their byte ranges, members after their impl, keys
/// numbered `#N` from the second of equal ones on.
fn items_of(m: &Module, file: &SourceFile) -> Vec<(ItemOutline, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let Some(items) = m.items(file) else {
        return out;
    };
    let text = file.text();
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut push = |key: ItemKey, range: std::ops::Range<usize>| {
        let shown = key.to_string();
        let n = counts.entry(shown.clone()).or_insert(0);
        *n += 1;
        let key_text = if *n > 1 {
            format!("{shown}#{n}")
        } else {
            shown
        };
        let end = range.end.saturating_sub(1).max(range.start);
        out.push((
            ItemOutline {
                key: key_text,
                kind: key.kind.as_str().to_owned(),
                name: key.name.clone(),
                owner: key.owner.clone(),
                start_line: line_col(text, range.start).0,
                end_line: line_col(text, end).0,
            },
            range,
        ));
    };
    for item in items {
        push(ItemKey::of_item(item), file.range_of(item));
        if let syn::Item::Impl(i) = item {
            let owner = impl_name(i);
            for member in &i.items {
                push(ItemKey::of_member(&owner, member), file.range_of(member));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> (tempfile::TempDir, Project) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("src")).expect("mkdir");
        std::fs::write(
            root.join("Cargo.toml"),
            "[package]\nname = \"demo\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
        )
        .expect("write");
        std::fs::write(
            root.join("src/lib.rs"),
            "pub mod shapes;\nmod inner {\n    pub fn norm() {}\n}\n",
        )
        .expect("write");
        std::fs::write(
            root.join("src/shapes.rs"),
            "use std::fmt;\nuse std::fmt;\n\n/// A point.\npub struct Point {\n    x: f64,\n}\n\nimpl Point {\n    /// Its norm.\n    pub fn norm(&self) -> f64 {\n        self.x.abs()\n    }\n}\n\nimpl fmt::Display for Point {\n    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {\n        write!(f, \"{}\", self.x)\n    }\n}\n",
        )
        .expect("write");
        let p = Project::open(root).expect("open");
        (dir, p)
    }

    #[test]
    fn outline_lists_items_and_members_with_their_lines() {
        let (_dir, p) = project();
        let o = p.outline("shapes", &[]).expect("outline");
        assert_eq!(o.module, "crate::shapes");
        assert_eq!(o.file, "src/shapes.rs");
        let items: Vec<(&str, usize, usize)> = o
            .items
            .iter()
            .map(|i| (i.key.as_str(), i.start_line, i.end_line))
            .collect();
        assert_eq!(
            items,
            [
                ("use std::fmt", 1, 1),
                ("use std::fmt#2", 2, 2),
                ("struct Point", 4, 7),
                ("impl Point", 9, 14),
                ("fn Point::norm", 10, 13),
                ("impl fmt::Display for Point", 16, 20),
                ("fn <Point as fmt::Display>::fmt", 17, 19),
            ]
        );
        assert_eq!(o.items[4].owner.as_deref(), Some("Point"));
        assert!(o.source.starts_with("use std::fmt;\n"));
        // Each listed key is one `self-modify --item` understands, and designates the
        // item it was listed for.
        for i in &o.items {
            let q = crate::item::KeyQuery::parse(&i.key).expect("a valid key");
            assert_eq!(q.key.name, i.name, "{}", i.key);
            assert_eq!(q.key.owner, i.owner, "{}", i.key);
        }
    }

    #[test]
    fn an_unknown_module_is_an_error_with_suggestions() {
        let (_dir, p) = project();
        let err = p.outline("shape", &[]).expect_err("unknown");
        assert!(err.to_string().contains("crate::shapes"), "{err}");
    }

    #[test]
    fn items_are_found_by_name_across_modules() {
        let (_dir, p) = project();
        let found: Vec<(String, String)> = p
            .find_items("norm", false, false, 10)
            .into_iter()
            .map(|m| (m.module, m.item.key))
            .collect();
        assert_eq!(
            found,
            [
                ("crate::shapes".to_owned(), "fn Point::norm".to_owned()),
                ("crate::inner".to_owned(), "fn norm".to_owned()),
            ]
        );
        let qualified = p.find_items("Point::norm", false, true, 10);
        assert_eq!(qualified.len(), 1);
        assert_eq!(
            qualified[0].body.as_deref(),
            Some("/// Its norm.\n    pub fn norm(&self) -> f64 {\n        self.x.abs()\n    }")
        );
        assert_eq!(p.find_items("orm", true, false, 10).len(), 2);
        assert_eq!(p.find_items("orm", false, false, 10).len(), 0);
        assert_eq!(p.find_items("norm", false, false, 1).len(), 1);
    }

    #[test]
    fn modules_lists_every_module_once() {
        let (_dir, p) = project();
        let list: Vec<(String, bool)> = p
            .modules()
            .into_iter()
            .map(|m| (m.module, m.inline))
            .collect();
        assert_eq!(
            list,
            [
                ("crate".to_owned(), false),
                ("crate::shapes".to_owned(), false),
                ("crate::inner".to_owned(), true),
            ]
        );
    }
}
