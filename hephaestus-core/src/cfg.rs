//! Build configurations: which `#[cfg(..)]` copy of a module or item the default build
//! compiles.
//!
//! The active set is the target's cfgs (`rustc --print cfg`, run in the project so its
//! toolchain file applies, and cached in `.heph/cache/cfg.json`) plus the package's
//! default features (resolved through cargo metadata's feature map) plus what the user
//! adds (`--cfg 'feature = "x"'`). rustc's rule applies: a name that is not set is
//! false (`test`, `docsrs`, `loom`, features off by default). Predicates are read from
//! syn's parse of the attribute, so anything rustc accepts is understood.
//!
//! The set is only asked for when a choice has to be made (a module or item with
//! several `#[cfg]` copies), so ordinary edits never run rustc.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use syn::punctuated::Punctuated;

/// One cfg option: a name (`unix`) or a name with a value (`feature = "fs"`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CfgOption {
    /// `unix`, `feature`, `target_os`.
    pub name: String,
    /// The value of `name = "value"`.
    pub value: Option<String>,
}

impl CfgOption {
    /// Parse `name` or `name = "value"` (the form of `rustc --print cfg` lines and of
    /// `--cfg`).
    pub fn parse(text: &str) -> Result<CfgOption, CfgError> {
        let bad = || CfgError::Spec {
            text: text.to_owned(),
        };
        crate::nesting::check(&crate::source::Origin::Submitted, text).map_err(|_| bad())?;
        let meta: syn::Meta = syn::parse_str(text.trim()).map_err(|_| bad())?;
        match &meta {
            syn::Meta::Path(p) => Ok(CfgOption {
                name: p.get_ident().ok_or_else(bad)?.to_string(),
                value: None,
            }),
            syn::Meta::NameValue(nv) => match &nv.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => Ok(CfgOption {
                    name: nv.path.get_ident().ok_or_else(bad)?.to_string(),
                    value: Some(s.value()),
                }),
                _ => Err(bad()),
            },
            syn::Meta::List(_) => Err(bad()),
        }
    }
}

impl fmt::Display for CfgOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{} = {v:?}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Errors of reading a build configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CfgError {
    /// A `--cfg` value that is not `name` or `name = "value"`.
    #[error(
        "cannot understand the cfg `{text}`: write `name` or `name = \"value\"`, e.g. --cfg 'feature = \"fs\"'"
    )]
    Spec {
        /// The text as given.
        text: String,
    },
    /// `rustc --print cfg` could not run or failed.
    #[error("cannot read the target's cfg set with `rustc --print cfg` in {dir}: {message}")]
    Rustc {
        /// Where it ran.
        dir: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl crate::Categorized for CfgError {
    fn category(&self) -> crate::ErrorCategory {
        match self {
            CfgError::Spec { .. } => crate::ErrorCategory::BadInput,
            CfgError::Rustc { .. } => crate::ErrorCategory::Environment,
        }
    }
}

/// The set of cfg options a build has, plus the ones the user asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CfgSet {
    options: BTreeSet<CfgOption>,
    given: Vec<CfgOption>,
}

impl CfgSet {
    /// The set printed by `rustc --print cfg` (one option a line).
    pub fn from_rustc(text: &str) -> CfgSet {
        CfgSet {
            options: text
                .lines()
                .filter_map(|l| CfgOption::parse(l).ok())
                .collect(),
            given: Vec::new(),
        }
    }

    /// Add `feature = "f"` for each feature.
    pub fn with_features<I, S>(mut self, features: I) -> CfgSet
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.options.extend(features.into_iter().map(|f| CfgOption {
            name: "feature".to_owned(),
            value: Some(f.into()),
        }));
        self
    }

    /// Add options the user asked for: they are set, and a tie between copies is
    /// broken in favour of the copy whose cfg mentions one of them.
    pub fn with_given(mut self, given: &[CfgOption]) -> CfgSet {
        self.given.extend(given.iter().cloned());
        self
    }

    /// The set without the options the user gave: the build `cargo check` runs.
    pub fn base(&self) -> CfgSet {
        CfgSet {
            options: self.options.clone(),
            given: Vec::new(),
        }
    }

    /// Is this option set?
    pub fn has(&self, option: &CfgOption) -> bool {
        self.options.contains(option) || self.given.contains(option)
    }

    /// The options the user asked for.
    pub fn given(&self) -> &[CfgOption] {
        &self.given
    }

    /// The value of a cfg predicate (the inside of `cfg(..)`), or `None` when it is
    /// malformed.
    pub(crate) fn eval(&self, pred: &syn::Meta) -> Option<bool> {
        match pred {
            syn::Meta::Path(p) => Some(self.has(&CfgOption {
                name: p.get_ident()?.to_string(),
                value: None,
            })),
            syn::Meta::NameValue(nv) => match &nv.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => Some(self.has(&CfgOption {
                    name: nv.path.get_ident()?.to_string(),
                    value: Some(s.value()),
                })),
                _ => None,
            },
            syn::Meta::List(list) => {
                let args = list
                    .parse_args_with(Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated)
                    .ok()?;
                let values: Option<Vec<bool>> = args.iter().map(|m| self.eval(m)).collect();
                let values = values?;
                match list.path.get_ident()?.to_string().as_str() {
                    "all" => Some(values.iter().all(|v| *v)),
                    "any" => Some(values.iter().any(|v| *v)),
                    "not" if values.len() == 1 => Some(!values[0]),
                    _ => None,
                }
            }
        }
    }

    /// Are all the `#[cfg(..)]` attributes among `attrs` true? `None` when one is
    /// malformed.
    pub(crate) fn eval_attrs(&self, attrs: &[syn::Attribute]) -> Option<bool> {
        let mut all = true;
        for pred in cfg_predicates(attrs) {
            all &= self.eval(&pred?)?;
        }
        Some(all)
    }

    /// Does one of the `#[cfg]`s of `attrs` name an option the user asked for?
    fn mentions_given(&self, attrs: &[syn::Attribute]) -> bool {
        cfg_predicates(attrs)
            .flatten()
            .any(|p| self.given.iter().any(|g| mentions(&p, g)))
    }
}

/// The predicates of the `#[cfg(..)]` attributes (`None` for a malformed one).
fn cfg_predicates(attrs: &[syn::Attribute]) -> impl Iterator<Item = Option<syn::Meta>> + '_ {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg"))
        .map(|a| a.parse_args::<syn::Meta>().ok())
}

fn mentions(pred: &syn::Meta, option: &CfgOption) -> bool {
    let named = |p: &syn::Path| p.is_ident(option.name.as_str());
    match pred {
        syn::Meta::Path(p) => option.value.is_none() && named(p),
        syn::Meta::NameValue(nv) => {
            named(&nv.path)
                && matches!(&nv.value, syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. })
                    if Some(s.value()) == option.value)
        }
        syn::Meta::List(list) => list
            .parse_args_with(Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated)
            .is_ok_and(|args| args.iter().any(|m| mentions(m, option))),
    }
}

/// Which of several `#[cfg]` copies a build compiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// This one (an index into the candidates).
    One(usize),
    /// None of them is active.
    NoneActive,
    /// Several are active (or a cfg could not be read): the candidates still in play.
    Several(Vec<usize>),
}

/// Pick the copy `set` compiles among candidates given by their attributes. When
/// several are active, the one whose cfg mentions an option the user gave wins.
pub(crate) fn pick(set: &CfgSet, candidates: &[&[syn::Attribute]]) -> Pick {
    let values: Vec<Option<bool>> = candidates.iter().map(|a| set.eval_attrs(a)).collect();
    let mut live: Vec<usize> = (0..candidates.len())
        .filter(|&i| values[i] != Some(false))
        .collect();
    if live.len() > 1 && !set.given().is_empty() {
        let chosen: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&i| values[i] == Some(true) && set.mentions_given(candidates[i]))
            .collect();
        if !chosen.is_empty() {
            live = chosen;
        }
    }
    match live.as_slice() {
        [] => Pick::NoneActive,
        [one] if values[*one] == Some(true) => Pick::One(*one),
        _ => Pick::Several(live),
    }
}

/// The features `default` enables, transitively, in a feature map as cargo metadata
/// gives it (`feature → [feature | dep:name | dep/feature | dep?/feature]`). An
/// optional dependency enabled by `dep/feature` counts as its implicit feature when
/// the map has one.
pub fn default_features(map: &BTreeMap<String, Vec<String>>) -> BTreeSet<String> {
    let mut on = BTreeSet::new();
    let mut todo: Vec<&str> = if map.contains_key("default") {
        vec!["default"]
    } else {
        Vec::new()
    };
    while let Some(f) = todo.pop() {
        if !on.insert(f.to_owned()) {
            continue;
        }
        for entry in map.get(f).into_iter().flatten() {
            let name = match entry.split_once('/') {
                Some((dep, _)) if !dep.ends_with('?') => dep,
                Some(_) => continue,
                None => entry.as_str(),
            };
            if map.contains_key(name) && !on.contains(name) {
                todo.push(name);
            }
        }
    }
    on
}

/// The target's cfg set as `rustc --print cfg` prints it, run in `dir` (so the
/// project's toolchain file applies). `cache` keeps the answer while `key` (what can
/// change it: toolchain files, cargo config, environment) is the same.
pub fn target_cfg(dir: &Path, cache: Option<&Path>, key: &str) -> Result<String, CfgError> {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Cached {
        key: String,
        cfg: String,
    }
    if let Some(cache) = cache
        && let Ok(bytes) = std::fs::read(cache)
        && let Ok(c) = serde_json::from_slice::<Cached>(&bytes)
        && c.key == key
    {
        return Ok(c.cfg);
    }
    let fail = |message: String| CfgError::Rustc {
        dir: dir.to_owned(),
        message,
    };
    let out = Command::new("rustc")
        .args(["--print", "cfg"])
        .current_dir(dir)
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    let cfg = String::from_utf8_lossy(&out.stdout).into_owned();
    if let Some(cache) = cache
        && let Some(parent) = cache.parent()
        && parent.parent().is_some_and(Path::is_dir)
    {
        let cached = Cached {
            key: key.to_owned(),
            cfg: cfg.clone(),
        };
        // Best effort: a cache that cannot be written is simply not used.
        if let Ok(json) = serde_json::to_vec(&cached) {
            let _ = std::fs::create_dir_all(parent);
            let _ = crate::fsio::replace_file(cache, &json, None, None);
        }
    }
    Ok(cfg)
}

/// What can change `rustc --print cfg` for a project at `root`: the toolchain files
/// and cargo configs of it and its ancestors (length and modification time), plus
/// the caller's description of the environment.
pub fn target_cfg_key(root: &Path, env: &str) -> String {
    let mut key = format!("heph {} env {env}", env!("CARGO_PKG_VERSION"));
    for dir in root.ancestors() {
        for name in [
            "rust-toolchain",
            "rust-toolchain.toml",
            ".cargo/config.toml",
            ".cargo/config",
        ] {
            if let Ok(m) = std::fs::metadata(dir.join(name)) {
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                key.push_str(&format!(
                    ";{}:{}:{mtime}",
                    dir.join(name).display(),
                    m.len()
                ));
            }
        }
    }
    key
}

/// The cfg set of the default build of `package` (its default features on the
/// target's cfgs), plus the options the user gave.
pub fn active_set(
    project: &crate::project::Project,
    package: &crate::project::Package,
    given: &[CfgOption],
) -> Result<CfgSet, CfgError> {
    let root = project.root();
    let cache = root
        .join(crate::state::STATE_DIR)
        .join("cache")
        .join("cfg.json");
    let target = target_cfg(root, Some(&cache), &target_cfg_key(root, project.env()))?;
    Ok(CfgSet::from_rustc(&target)
        .with_features(default_features(&package.features))
        .with_given(given))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(src: &str) -> Vec<syn::Attribute> {
        let item: syn::ItemFn = syn::parse_str(&format!("{src} fn f() {{}}")).expect("parses");
        item.attrs
    }

    fn linux() -> CfgSet {
        CfgSet::from_rustc("unix\ntarget_os=\"linux\"\ndebug_assertions\npanic=\"unwind\"\n")
    }

    #[test]
    fn predicates_evaluate_like_rustc() {
        let set = linux().with_features(["std"]);
        let t = |s: &str| set.eval_attrs(&attrs(s));
        assert_eq!(t("#[cfg(unix)]"), Some(true));
        assert_eq!(t("#[cfg(windows)]"), Some(false));
        assert_eq!(t("#[cfg(not(unix))]"), Some(false));
        assert_eq!(t("#[cfg(target_os = \"linux\")]"), Some(true));
        assert_eq!(t("#[cfg(target_os = \"macos\")]"), Some(false));
        assert_eq!(t("#[cfg(feature = \"std\")]"), Some(true));
        assert_eq!(t("#[cfg(any(feature = \"x\", unix))]"), Some(true));
        assert_eq!(t("#[cfg(all(feature = \"x\", unix))]"), Some(false));
        assert_eq!(t("#[cfg(all())]"), Some(true));
        assert_eq!(t("#[cfg(any())]"), Some(false));
        assert_eq!(t("#[cfg(test)]"), Some(false));
        assert_eq!(t("#[cfg(unix)] #[cfg(test)]"), Some(false));
        assert_eq!(t("#[cfg(unix)] #[inline]"), Some(true));
        assert_eq!(t(""), Some(true));
        assert_eq!(t("#[cfg(not(a, b))]"), None);
        assert_eq!(t("#[cfg(whatever(a))]"), None);
    }

    #[test]
    fn picks_the_active_copy_or_says_why_not() {
        let set = linux();
        let a = attrs("#[cfg(unix)]");
        let b = attrs("#[cfg(not(unix))]");
        let c = attrs("#[cfg(feature = \"x\")]");
        assert_eq!(pick(&set, &[&a, &b]), Pick::One(0));
        assert_eq!(pick(&set, &[&b, &a]), Pick::One(1));
        assert_eq!(pick(&set, &[&b, &c]), Pick::NoneActive);
        assert_eq!(pick(&set, &[&a, &[]]), Pick::Several(vec![0, 1]));
        // A given option breaks the tie in favour of the copy that names it.
        let x = CfgOption::parse("feature = \"x\"").expect("parse");
        let given = linux().with_given(std::slice::from_ref(&x));
        assert_eq!(pick(&given, &[&a, &c]), Pick::One(1));
        assert_eq!(pick(&given, &[&b, &c]), Pick::One(1));
        // A copy whose cfg cannot be read is never picked silently.
        let bad = attrs("#[cfg(whatever(a))]");
        assert_eq!(pick(&set, &[&a, &bad]), Pick::Several(vec![0, 1]));
    }

    #[test]
    fn options_parse_both_forms() {
        let o = CfgOption::parse("feature = \"string\"").expect("parse");
        assert_eq!(
            (o.name.as_str(), o.value.as_deref()),
            ("feature", Some("string"))
        );
        assert_eq!(o.to_string(), "feature = \"string\"");
        assert_eq!(CfgOption::parse("unix").expect("parse").to_string(), "unix");
        assert!(CfgOption::parse("all(unix)").is_err());
        assert!(CfgOption::parse("a = 1").is_err());
        assert!(CfgOption::parse("").is_err());
        assert!(CfgOption::parse(&format!("a = {}\"x\"", "(".repeat(100_000))).is_err());
    }

    #[test]
    fn default_features_follow_the_map() {
        let map: BTreeMap<String, Vec<String>> = [
            ("default", vec!["std", "dep:x", "serde/derive"]),
            ("std", vec!["alloc", "memchr?/std"]),
            ("alloc", vec![]),
            ("serde", vec!["dep:serde"]),
            ("memchr", vec!["dep:memchr"]),
            ("extra", vec!["std"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_iter().map(String::from).collect()))
        .collect();
        let on: Vec<String> = default_features(&map).into_iter().collect();
        assert_eq!(on, ["alloc", "default", "serde", "std"]);
        assert!(default_features(&BTreeMap::new()).is_empty());
    }
}
