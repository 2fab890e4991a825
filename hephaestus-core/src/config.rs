//! `heph.toml`, the optional project configuration at the project root.
//!
//! ```toml
//! [verify]
//! command = "cargo test"   # default: cargo check --all-targets on the owning package
//! timeout = "10m"
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The file name of the configuration.
pub const CONFIG_FILE: &str = "heph.toml";

/// Errors of reading the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("{path} is invalid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (with line and column).
        message: String,
    },
}

impl crate::Categorized for ConfigError {
    fn category(&self) -> crate::ErrorCategory {
        crate::ErrorCategory::BadInput
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[verify]`
    #[serde(default)]
    pub verify: VerifyConfig,
    /// `[watch]` (read by `heph watch`).
    #[serde(default)]
    pub watch: toml::Table,
    /// `[evolve]` (read by `heph evolve`).
    #[serde(default)]
    pub evolve: toml::Table,
    /// `[api]` (read by the control API).
    #[serde(default)]
    pub api: toml::Table,
}

/// `[verify]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// A shell command replacing the default `cargo check`.
    pub command: Option<String>,
    /// A time limit such as `90s`, `10m`, `1h`.
    pub timeout: Option<String>,
}

impl Config {
    /// Read `heph.toml` at `root`; the default configuration when it does not exist.
    pub fn load(root: &Path) -> Result<Config, ConfigError> {
        let path = root.join(CONFIG_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if let Some(t) = &config.verify.timeout {
            parse_duration(t).map_err(|message| ConfigError::Invalid {
                path: path.clone(),
                message: format!("verify.timeout: {message}"),
            })?;
        }
        Ok(config)
    }

    /// `verify.timeout` as a duration.
    pub fn verify_timeout(&self) -> Option<Duration> {
        self.verify
            .timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
    }
}

/// Parse `500ms`, `90s`, `10m`, `1h` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (examples: 500ms, 90s, 10m, 1h)"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{text}` is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn missing_file_is_the_default_and_bad_keys_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Config::load(dir.path()).expect("load"), Config::default());
        fs::write(dir.path().join(CONFIG_FILE), "[verify]\ncomand = \"x\"\n").expect("write");
        let err = Config::load(dir.path()).expect_err("unknown key");
        assert!(err.to_string().contains("comand"), "{err}");
    }
}
