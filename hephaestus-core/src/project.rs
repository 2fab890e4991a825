//! The target project: where it is, its packages and their crate roots (through
//! `cargo metadata`), and where cargo puts build output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cargo_metadata::{MetadataCommand, TargetKind as CargoTargetKind};
use serde::{Deserialize, Serialize};

use crate::project_root::{self, ProjectRootError};

/// Errors of opening a project.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectError {
    /// The directory is not a cargo project (or does not exist).
    #[error(transparent)]
    Root(#[from] ProjectRootError),
    /// `cargo metadata` failed (invalid manifest, cargo missing).
    #[error("cargo could not read the project at {manifest}:\n{message}")]
    Metadata {
        /// The manifest given to cargo.
        manifest: PathBuf,
        /// Cargo's explanation.
        message: String,
    },
    /// The manifest declares no package with a library or binary target under the root.
    #[error("{manifest} has no package with a library or binary target")]
    NoPackages {
        /// The manifest.
        manifest: PathBuf,
    },
}

impl crate::Categorized for ProjectError {
    fn category(&self) -> crate::ErrorCategory {
        crate::ErrorCategory::Environment
    }
}

/// The kind of a crate root heph resolves modules from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetKind {
    /// The package's library (lib, rlib, proc-macro, ...).
    Lib,
    /// A binary.
    Bin,
}

/// A crate root of a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The target's name (for a lib, the crate name with `_`).
    pub name: String,
    /// Library or binary.
    pub kind: TargetKind,
    /// The crate root file (absolute).
    pub root: PathBuf,
}

/// A package of the project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// The package name as in Cargo.toml (may contain `-`).
    pub name: String,
    /// Its Cargo.toml (absolute).
    pub manifest_path: PathBuf,
    /// The directory holding its Cargo.toml.
    pub dir: PathBuf,
    /// Library first, then binaries.
    pub targets: Vec<Target>,
    /// Its `[features]` as cargo metadata gives them (feature → what it enables), for
    /// the default build's cfg set.
    #[serde(default)]
    pub features: BTreeMap<String, Vec<String>>,
}

impl Package {
    /// The name as it appears in Rust paths (`agent-lib` → `agent_lib`).
    pub fn crate_name(&self) -> String {
        self.name.replace('-', "_")
    }

    /// The library target, if any.
    pub fn lib(&self) -> Option<&Target> {
        self.targets.iter().find(|t| t.kind == TargetKind::Lib)
    }
}

/// An opened target project.
#[derive(Debug, Clone)]
pub struct Project {
    root: PathBuf,
    workspace_root: PathBuf,
    target_dir: PathBuf,
    packages: Vec<Package>,
    default_package: Option<usize>,
    /// The caller's description of the environment (see [`Project::open_cached`]).
    env: String,
}

impl Project {
    /// Open the project whose root is `dir` (it must hold a Cargo.toml), asking
    /// `cargo metadata --no-deps` for its packages.
    pub fn open(dir: &Path) -> Result<Project, ProjectError> {
        let root = project_root::at(dir)?;
        Project::from_metadata(root)
    }

    /// Like [`Project::open`], but reuse what `cargo metadata` said last time while
    /// nothing it depends on changed (a cache in `.heph/cache/`, written only when
    /// `.heph/` exists). `env` must describe the environment variables cargo reads
    /// for the layout (`CARGO_TARGET_DIR`, `CARGO_BUILD_TARGET_DIR`, `CARGO_HOME`): a
    /// different value invalidates the cache.
    pub fn open_cached(dir: &Path, env: &str) -> Result<Project, ProjectError> {
        let root = project_root::at(dir)?;
        let cache = root
            .join(crate::state::STATE_DIR)
            .join("cache")
            .join("metadata.json");
        if let Some(mut project) = cache::load(&cache, &root, env) {
            project.env = env.to_owned();
            return Ok(project);
        }
        let mut project = Project::from_metadata(root.clone())?;
        project.env = env.to_owned();
        if root.join(crate::state::STATE_DIR).is_dir() {
            cache::store(&cache, &project, env);
        }
        Ok(project)
    }

    fn from_metadata(root: PathBuf) -> Result<Project, ProjectError> {
        let manifest = root.join("Cargo.toml");
        let meta = MetadataCommand::new()
            .manifest_path(&manifest)
            .no_deps()
            .exec()
            .map_err(|e| ProjectError::Metadata {
                manifest: manifest.clone(),
                message: metadata_message(e),
            })?;
        let mut packages = Vec::new();
        for pkg in meta.workspace_packages() {
            let manifest_path = PathBuf::from(pkg.manifest_path.as_std_path());
            let pkg_dir = manifest_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| root.clone());
            if !pkg_dir.starts_with(&root) {
                continue;
            }
            let mut targets: Vec<Target> = pkg
                .targets
                .iter()
                .filter_map(|t| {
                    let kind = if t.kind.iter().any(|k| {
                        matches!(
                            k,
                            CargoTargetKind::Lib
                                | CargoTargetKind::RLib
                                | CargoTargetKind::DyLib
                                | CargoTargetKind::CDyLib
                                | CargoTargetKind::StaticLib
                                | CargoTargetKind::ProcMacro
                        )
                    }) {
                        TargetKind::Lib
                    } else if t.kind.contains(&CargoTargetKind::Bin) {
                        TargetKind::Bin
                    } else {
                        return None;
                    };
                    Some(Target {
                        name: t.name.clone(),
                        kind,
                        root: PathBuf::from(t.src_path.as_std_path()),
                    })
                })
                .collect();
            targets.sort_by_key(|t| (t.kind != TargetKind::Lib, t.name.clone()));
            if targets.is_empty() {
                continue;
            }
            packages.push(Package {
                name: pkg.name.to_string(),
                manifest_path,
                dir: pkg_dir,
                targets,
                features: pkg
                    .features
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            });
        }
        if packages.is_empty() {
            return Err(ProjectError::NoPackages { manifest });
        }
        packages.sort_by(|a, b| a.name.cmp(&b.name));
        let default_package = if packages.len() == 1 {
            Some(0)
        } else {
            packages.iter().position(|p| p.dir == root)
        };
        Ok(Project {
            root,
            workspace_root: PathBuf::from(meta.workspace_root.as_std_path()),
            target_dir: PathBuf::from(meta.target_directory.as_std_path()),
            packages,
            default_package,
            env: String::new(),
        })
    }

    /// Find the project for a directory: the nearest ancestor of `start` (itself
    /// included) holding a Cargo.toml, then [`Project::open`] it.
    pub fn discover(start: &Path) -> Result<Project, ProjectError> {
        Project::open(&project_root::discover(start)?)
    }

    /// Where the project rooted at `dir` is, without opening it: `dir` itself, canonical,
    /// which must hold a `Cargo.toml` (what `--project DIR` names). A `.heph/` that is or
    /// holds a symbolic link is refused.
    pub fn root_at(dir: &Path) -> Result<PathBuf, ProjectRootError> {
        project_root::at(dir)
    }

    /// Where the project for a directory is, without opening it: the nearest ancestor of
    /// `start` (itself included) holding a `Cargo.toml`, canonical. A `.heph/` that is
    /// or holds a symbolic link is refused.
    pub fn find_root(start: &Path) -> Result<PathBuf, ProjectRootError> {
        project_root::discover(start)
    }

    /// The project root (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The root of the cargo workspace the project belongs to (may be above `root`).
    pub fn workspace_root(&self) -> &Path {
        &self.workspace_root
    }

    /// Cargo's target directory for this project.
    pub fn target_dir(&self) -> &Path {
        &self.target_dir
    }

    /// The packages under the root, sorted by name.
    pub fn packages(&self) -> &[Package] {
        &self.packages
    }

    /// The package `crate::` paths refer to: the only package, or the one at the root.
    pub fn default_package(&self) -> Option<&Package> {
        self.default_package.map(|i| &self.packages[i])
    }

    /// The package with this name (`-` and `_` are interchangeable).
    pub fn package(&self, name: &str) -> Option<&Package> {
        let want = name.replace('-', "_");
        self.packages.iter().find(|p| p.crate_name() == want)
    }

    /// The environment description given to [`Project::open_cached`] (empty for
    /// [`Project::open`]); it keys caches of what the environment can change.
    pub fn env(&self) -> &str {
        &self.env
    }

    /// Path of `file` relative to the root, with `/` separators (for messages and
    /// history), or the path itself when it is outside.
    pub fn relative(&self, file: &Path) -> String {
        let rel = file.strip_prefix(&self.root).unwrap_or(file);
        rel.components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }
}

fn metadata_message(e: cargo_metadata::Error) -> String {
    match e {
        cargo_metadata::Error::CargoMetadata { stderr } => stderr.trim().to_owned(),
        other => other.to_string(),
    }
}

/// The cache of `cargo metadata`'s answer: valid while the manifests, the crate roots,
/// the directories cargo discovers targets and members in, the `.cargo/config*` files
/// above the project, heph's version and the caller's environment description are as
/// they were.
mod cache {
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::time::UNIX_EPOCH;

    use serde::{Deserialize, Serialize};

    use super::{Package, Project};

    #[derive(Serialize, Deserialize)]
    struct Cached {
        key: Vec<Stamp>,
        workspace_root: PathBuf,
        target_dir: PathBuf,
        packages: Vec<Package>,
        default_package: Option<usize>,
    }

    /// What a path was: a file absent or (length, mtime in ns); or a directory's
    /// sorted entry names (where cargo discovers targets and members).
    #[derive(Serialize, Deserialize, PartialEq, Eq, Debug)]
    enum Stamp {
        File(PathBuf, Option<(u64, u128)>),
        Listing(PathBuf, Vec<String>),
        Text(String),
    }

    fn file(path: PathBuf) -> Stamp {
        let meta = fs::metadata(&path).ok().map(|m| {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            (m.len(), mtime)
        });
        Stamp::File(path, meta)
    }

    /// Directory entries (directories only when `dirs_only`), sorted. Not the
    /// directory's mtime: heph's own atomic writes (renames) change that.
    fn listing(path: PathBuf, dirs_only: bool) -> Stamp {
        let mut names: Vec<String> = fs::read_dir(&path)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| !dirs_only || e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        Stamp::Listing(path, names)
    }

    fn key(root: &Path, workspace_root: &Path, packages: &[Package], env: &str) -> Vec<Stamp> {
        let mut key = vec![
            file(root.join("Cargo.toml")),
            file(workspace_root.join("Cargo.toml")),
        ];
        let single = packages.len() == 1 && packages[0].dir == workspace_root;
        if !single {
            // New workspace members appear as new directories.
            key.push(listing(workspace_root.to_path_buf(), true));
        }
        for p in packages {
            key.push(file(p.manifest_path.clone()));
            key.push(file(p.dir.join("src/lib.rs")));
            key.push(file(p.dir.join("src/main.rs")));
            key.push(listing(p.dir.join("src/bin"), false));
            if p.dir != workspace_root
                && let Some(parent) = p.dir.parent()
            {
                key.push(listing(parent.to_path_buf(), true));
            }
            key.extend(p.targets.iter().map(|t| file(t.root.clone())));
        }
        for dir in root.ancestors() {
            key.push(file(dir.join(".cargo/config.toml")));
            key.push(file(dir.join(".cargo/config")));
        }
        key.push(Stamp::Text(format!(
            "heph {} metadata 2 env {env}",
            env!("CARGO_PKG_VERSION")
        )));
        key
    }

    pub(super) fn load(cache: &Path, root: &Path, env: &str) -> Option<Project> {
        let text = fs::read(cache).ok()?;
        let cached: Cached = serde_json::from_slice(&text).ok()?;
        let now = key(root, &cached.workspace_root, &cached.packages, env);
        (now == cached.key).then(|| Project {
            root: root.to_path_buf(),
            workspace_root: cached.workspace_root,
            target_dir: cached.target_dir,
            packages: cached.packages,
            default_package: cached.default_package,
            env: String::new(),
        })
    }

    /// Best effort: a cache that cannot be written is simply not used.
    pub(super) fn store(cache: &Path, project: &Project, env: &str) {
        let cached = Cached {
            key: key(
                &project.root,
                &project.workspace_root,
                &project.packages,
                env,
            ),
            workspace_root: project.workspace_root.clone(),
            target_dir: project.target_dir.clone(),
            packages: project.packages.clone(),
            default_package: project.default_package,
        };
        if let (Some(dir), Ok(json)) = (cache.parent(), serde_json::to_vec(&cached)) {
            let _ = fs::create_dir_all(dir);
            let _ = crate::fsio::replace_file(cache, &json, None, None);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::super::Project;

        #[test]
        fn cache_is_used_until_a_manifest_changes() {
            let dir = tempfile::tempdir().expect("tempdir");
            let root = dir.path();
            std::fs::create_dir_all(root.join("src")).expect("mkdir");
            std::fs::create_dir_all(root.join(".heph")).expect("mkdir");
            std::fs::write(
                root.join("Cargo.toml"),
                "[package]\nname = \"one\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
            )
            .expect("write");
            std::fs::write(root.join("src/lib.rs"), "").expect("write");
            let first = Project::open_cached(root, "env").expect("open");
            assert!(root.join(".heph/cache/metadata.json").is_file());
            let again = Project::open_cached(root, "env").expect("open");
            assert_eq!(again.packages(), first.packages());
            // A new binary target appears: the cache must not hide it.
            std::fs::write(root.join("src/main.rs"), "fn main() {}").expect("write");
            let with_bin = Project::open_cached(root, "env").expect("open");
            assert_eq!(with_bin.packages()[0].targets.len(), 2);
            // A renamed package: the manifest changed.
            std::fs::write(
                root.join("Cargo.toml"),
                "[package]\nname = \"two\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
            )
            .expect("write");
            assert_eq!(
                Project::open_cached(root, "env").expect("open").packages()[0].name,
                "two"
            );
            // Another environment: another answer may be due.
            let other = Project::open_cached(root, "CARGO_TARGET_DIR=/x").expect("open");
            assert_eq!(other.packages()[0].name, "two");
        }
    }
}
