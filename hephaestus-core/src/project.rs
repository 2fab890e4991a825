//! The target project: where it is, its packages and their crate roots (through
//! `cargo metadata`), and where cargo puts build output.

use std::path::{Path, PathBuf};

use cargo_metadata::{MetadataCommand, TargetKind as CargoTargetKind};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// The package's library (lib, rlib, proc-macro, ...).
    Lib,
    /// A binary.
    Bin,
}

/// A crate root of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The target's name (for a lib, the crate name with `_`).
    pub name: String,
    /// Library or binary.
    pub kind: TargetKind,
    /// The crate root file (absolute).
    pub root: PathBuf,
}

/// A package of the project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// The package name as in Cargo.toml (may contain `-`).
    pub name: String,
    /// Its Cargo.toml (absolute).
    pub manifest_path: PathBuf,
    /// The directory holding its Cargo.toml.
    pub dir: PathBuf,
    /// Library first, then binaries.
    pub targets: Vec<Target>,
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
}

impl Project {
    /// Open the project whose root is `dir` (it must hold a Cargo.toml).
    pub fn open(dir: &Path) -> Result<Project, ProjectError> {
        let root = project_root::at(dir)?;
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
        })
    }

    /// Find the project for a directory: the nearest ancestor of `start` (itself
    /// included) holding a Cargo.toml, then [`Project::open`] it.
    pub fn discover(start: &Path) -> Result<Project, ProjectError> {
        Project::open(&project_root::discover(start)?)
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
