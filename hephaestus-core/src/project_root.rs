//! Finding the target project: the directory given by `--project`, or the nearest
//! ancestor of a start directory that holds a `Cargo.toml`.

use std::io;
use std::path::{Path, PathBuf};

/// Errors of locating the project root.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectRootError {
    /// Neither the start directory nor any ancestor holds a `Cargo.toml`.
    #[error(
        "not a cargo project: no Cargo.toml in {start} or any parent directory; \
         run heph inside a Cargo project or pass --project DIR"
    )]
    NotFound {
        /// Where the search started.
        start: PathBuf,
    },
    /// The directory named explicitly holds no `Cargo.toml`.
    #[error("not a cargo project: {dir} holds no Cargo.toml")]
    NoManifest {
        /// The directory that was named.
        dir: PathBuf,
    },
    /// The directory does not exist or cannot be resolved.
    #[error("cannot open the project directory {path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The project's state directory `.heph/` is unsafe to use (a symbolic link in it).
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

impl crate::Categorized for ProjectRootError {
    fn category(&self) -> crate::ErrorCategory {
        crate::ErrorCategory::Environment
    }
}

fn canonical(path: &Path) -> Result<PathBuf, ProjectRootError> {
    path.canonicalize().map_err(|source| ProjectRootError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The nearest ancestor of `start` (or `start` itself) holding a `Cargo.toml`, canonical.
/// Its state directory is checked (`StateDir::check`): a project whose
/// `.heph` is or holds a symbolic link is refused.
pub fn discover(start: &Path) -> Result<PathBuf, ProjectRootError> {
    let start = canonical(start)?;
    let root = start
        .ancestors()
        .find(|dir| dir.join("Cargo.toml").is_file())
        .map(Path::to_path_buf)
        .ok_or(ProjectRootError::NotFound { start })?;
    crate::state::StateDir::new(&root).check()?;
    Ok(root)
}

/// The project named explicitly (`--project DIR`): `dir` itself must hold a `Cargo.toml`.
/// Its state directory is checked as in [`discover`].
pub fn at(dir: &Path) -> Result<PathBuf, ProjectRootError> {
    let dir = canonical(dir)?;
    if dir.join("Cargo.toml").is_file() {
        crate::state::StateDir::new(&dir).check()?;
        Ok(dir)
    } else {
        Err(ProjectRootError::NoManifest { dir })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_nearest_manifest_upwards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("proj");
        std::fs::create_dir_all(root.join("src/deep")).expect("mkdir");
        std::fs::write(root.join("Cargo.toml"), "[package]\n").expect("write");
        let found = discover(&root.join("src/deep")).expect("discover");
        assert_eq!(found, root.canonicalize().expect("canon"));
        assert_eq!(at(&root).expect("at"), found);
    }

    #[test]
    fn reports_a_directory_without_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            at(dir.path()),
            Err(ProjectRootError::NoManifest { .. })
        ));
        let err = discover(dir.path()).expect_err("no manifest anywhere");
        assert!(err.to_string().contains("not a cargo project"), "{err}");
    }
}
