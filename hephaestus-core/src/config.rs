//! `heph.toml`, the optional project configuration at the project root.
//!
//! ```toml
//! [verify]
//! command = "cargo test"   # default: cargo check --all-targets on the owning package
//! timeout = "10m"
//!
//! [watch]
//! debounce = "10ms"        # quiet time that ends a batch of file events (default)
//!
//! [[watch.rule]]           # first matching rule wins; Rust sources default to rebuild
//! paths = ["config/**"]
//! action = "signal"        # rebuild | restart | signal | ignore
//! signal = "HUP"
//!
//! [evolve]                 # `heph evolve`; command-line flags override these
//! fitness = "cargo run --release -q --bin fitness"
//! metric = 'median_ns=(\d+)'
//! runs = 10
//! budget = "10m"
//! [api]                    # the HTTP control API (`heph serve`, `heph watch --api`)
//! addr = "127.0.0.1:8000"
//! body_limit = "1MiB"      # larger requests get 413
//! lock_timeout = "30s"     # a write waiting longer for another one gets 409
//! header_timeout = "10s"   # a request header (or an idle kept-alive connection) later is closed
//! body_timeout = "60s"     # a body arriving later gets 408
//! max_connections = 256    # one more gets 503 and is closed
//! max_parses = 4           # request bodies parsed at once (default: the cores, at most 4)
//! evolve_command = "..."   # what trigger-evolution runs instead of `heph evolve`
//! [history]
//! max_file_size = "100MiB" # larger files are left out of snapshots (default)
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
    pub watch: WatchConfig,
    /// `[evolve]` (read by `heph evolve` and the control API's trigger-evolution).
    #[serde(default)]
    pub evolve: EvolveConfig,
    /// `[api]` (read by the control API).
    #[serde(default)]
    pub api: ApiConfig,
    /// `[history]` (read by every command that snapshots).
    #[serde(default)]
    pub history: crate::history::HistoryConfig,
    /// `[hot]` (read by `heph watch --hot`).
    #[serde(default)]
    pub hot: crate::hot::HotConfig,
}

/// `[api]`: the HTTP control API of `heph serve` and `heph watch --api`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// The address to listen on (`127.0.0.1:8000`, `8000`), when `--api` gives none.
    pub addr: Option<String>,
    /// The largest request body accepted: a number of bytes or a size such as `512KiB`,
    /// `1MiB`, `2MB` (default 1 MiB).
    pub body_limit: Option<ByteSize>,
    /// How long a write request waits for another write before answering 409, such as
    /// `30s` (default 30s).
    pub lock_timeout: Option<String>,
    /// How long a client gets to send a request header, and how long a kept-alive
    /// connection may stay idle, such as `10s` (default 10s).
    pub header_timeout: Option<String>,
    /// How long a client gets to send a request body, such as `60s` (default 60s).
    pub body_timeout: Option<String>,
    /// Open connections at most (default 256).
    pub max_connections: Option<usize>,
    /// Request bodies parsed at once (default: the available cores, at most 4).
    pub max_parses: Option<usize>,
    /// A shell command `POST /hot-reload/trigger-evolution` runs (at the project root, in
    /// its own process group) instead of `heph evolve`: a hook for scripts and tests.
    pub evolve_command: Option<String>,
}

/// A size in bytes, written as a number or as text with a unit (`1MiB`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ByteSize {
    /// A number of bytes.
    Bytes(u64),
    /// Text such as `512KiB`, `1MiB`, `2MB`, `1048576`.
    Text(String),
}

impl ByteSize {
    /// The size in bytes.
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            ByteSize::Bytes(n) => Ok(*n),
            ByteSize::Text(t) => parse_size(t),
        }
    }
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

/// `[watch]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// The quiet time that ends a batch of file events, such as `50ms`.
    pub debounce: Option<String>,
    /// `[[watch.rule]]` entries, in order; the first rule matching a path decides.
    #[serde(default, rename = "rule")]
    pub rules: Vec<WatchRule>,
}

/// One `[[watch.rule]]`: what to do when a file matching `paths` changes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchRule {
    /// Glob patterns relative to the project root (`config/**`, `*.sql`).
    pub paths: Vec<String>,
    /// What to do.
    pub action: RuleAction,
    /// The signal for `action = "signal"`: `HUP`, `SIGUSR1`, ...
    pub signal: Option<String>,
}

/// What a change of a file does in `heph watch`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Check the syntax, rebuild, and swap the program (the default for Rust sources,
    /// Cargo.toml, Cargo.lock and build.rs).
    Rebuild,
    /// Restart the program without rebuilding.
    Restart,
    /// Send the rule's signal to the program (e.g. HUP to reload its configuration).
    Signal,
    /// Do nothing.
    Ignore,
}

impl RuleAction {
    /// The name used in `heph.toml` and in output.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Rebuild => "rebuild",
            RuleAction::Restart => "restart",
            RuleAction::Signal => "signal",
            RuleAction::Ignore => "ignore",
        }
    }
}

/// `[evolve]`: the settings of a `heph evolve` run (see docs/evolve.md). Every key is
/// optional; command-line flags override them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvolveConfig {
    /// The fitness command (a shell command run in the candidate's copy).
    pub fitness: Option<String>,
    /// A regex whose first capture group (or whole match) in the fitness command's
    /// output is the fitness value; without it, the command's wall time in seconds.
    pub metric: Option<String>,
    /// Higher fitness is better (default: lower is better).
    pub maximize: Option<bool>,
    /// Fitness samples per side of the A/A noise measurement, and the fewest of a
    /// comparison's first look.
    pub runs: Option<usize>,
    /// Fitness samples per side a comparison may grow to, in looks, while a candidate
    /// looks better but is not yet significant (default: what the candidate's share of
    /// the budget allows; see `EvolveOptions::max_runs`).
    pub max_runs: Option<usize>,
    /// Wall-time budget of a run, such as `10m`.
    pub budget: Option<String>,
    /// A budget in fitness runs (see `EvolveOptions::budget_runs`).
    pub budget_runs: Option<usize>,
    /// Candidates evaluated in parallel, each in its own copy of the project.
    pub jobs: Option<usize>,
    /// Rule sources: `builtin` (the rules shipped with heph) and/or directories of
    /// `*.toml` rules, relative to the project root.
    pub rules: Option<Vec<String>>,
    /// A command proposing candidates (JSON context on stdin, JSON candidates on stdout).
    pub proposer: Option<String>,
    /// Kill the proposer after this long, such as `2m`.
    pub proposer_timeout: Option<String>,
    /// How many times the proposer is asked, at most.
    pub proposer_rounds: Option<usize>,
    /// Modules rules and the proposer work on (default: every module of the library
    /// targets, or of the binaries when a package has no library).
    pub targets: Option<Vec<String>>,
    /// Minimum improvement, in percent, for a candidate to be accepted (default 2).
    pub min_gain: Option<f64>,
    /// Significance level of the Mann-Whitney U test (default 0.01).
    pub alpha: Option<f64>,
    /// Stop after evaluating this many candidates.
    pub max_candidates: Option<usize>,
    /// Time limit of the test build (`cargo test --no-run`, the compile gate).
    pub build_timeout: Option<String>,
    /// Time limit of the test stage.
    pub test_timeout: Option<String>,
    /// Time limit of one fitness run.
    pub fitness_timeout: Option<String>,
    /// The test command (default `cargo test`, run in the candidate's copy).
    pub test_command: Option<String>,
    /// Where the isolated copies of the project live (default: `heph-evolve/` in the
    /// project's cargo target directory).
    pub sandbox_dir: Option<PathBuf>,
}

impl EvolveConfig {
    /// No key is set: heph.toml has no (or an empty) `[evolve]` section.
    pub fn is_empty(&self) -> bool {
        *self == EvolveConfig::default()
    }
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
        config
            .history
            .max_file_size()
            .map_err(|message| ConfigError::Invalid {
                path: path.clone(),
                message,
            })?;
        config
            .validate_evolve()
            .map_err(|message| ConfigError::Invalid {
                path: path.clone(),
                message,
            })?;
        config
            .validate_api()
            .map_err(|message| ConfigError::Invalid {
                path: path.clone(),
                message,
            })?;
        config
            .validate_watch()
            .map_err(|message| ConfigError::Invalid {
                path: path.clone(),
                message,
            })?;
        Ok(config)
    }

    fn validate_evolve(&self) -> Result<(), String> {
        let e = &self.evolve;
        for (key, value) in [
            ("budget", &e.budget),
            ("proposer_timeout", &e.proposer_timeout),
            ("build_timeout", &e.build_timeout),
            ("test_timeout", &e.test_timeout),
            ("fitness_timeout", &e.fitness_timeout),
        ] {
            if let Some(v) = value {
                parse_duration(v).map_err(|m| format!("evolve.{key}: {m}"))?;
            }
        }
        if let Some(m) = &e.metric {
            regex::Regex::new(m).map_err(|err| format!("evolve.metric: {err}"))?;
        }
        if e.runs.is_some_and(|r| r < 2) {
            return Err("evolve.runs: at least 2 runs per side are needed".into());
        }
        // Checked against `runs` only when both are set here: a flag may set either.
        if let (Some(max), Some(runs)) = (e.max_runs, e.runs)
            && max < runs
        {
            return Err(format!(
                "evolve.max_runs: {max} is below evolve.runs ({runs})"
            ));
        }
        if e.jobs == Some(0) {
            return Err("evolve.jobs: at least 1".into());
        }
        if e.budget_runs == Some(0) {
            return Err("evolve.budget_runs: at least 1".into());
        }
        if e.alpha.is_some_and(|a| !(a > 0.0 && a < 1.0)) {
            return Err("evolve.alpha: must be between 0 and 1".into());
        }
        if e.min_gain.is_some_and(|g| !(0.0..100.0).contains(&g)) {
            return Err("evolve.min_gain: a percentage from 0 to 100".into());
        }
        Ok(())
    }

    fn validate_api(&self) -> Result<(), String> {
        if let Some(size) = &self.api.body_limit {
            let n = size.bytes().map_err(|m| format!("api.body_limit: {m}"))?;
            if n == 0 {
                return Err("api.body_limit: must be at least 1 byte".into());
            }
        }
        for (key, value) in [
            ("lock_timeout", &self.api.lock_timeout),
            ("header_timeout", &self.api.header_timeout),
            ("body_timeout", &self.api.body_timeout),
        ] {
            if let Some(t) = value {
                let d = parse_duration(t).map_err(|m| format!("api.{key}: {m}"))?;
                if key != "lock_timeout" && d.is_zero() {
                    return Err(format!("api.{key}: must be more than 0"));
                }
            }
        }
        for (key, value) in [
            ("max_connections", self.api.max_connections),
            ("max_parses", self.api.max_parses),
        ] {
            if value == Some(0) {
                return Err(format!("api.{key}: must be at least 1"));
            }
        }
        if self
            .api
            .evolve_command
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return Err("api.evolve_command: is empty".into());
        }
        Ok(())
    }

    /// `api.body_limit` in bytes.
    pub fn api_body_limit(&self) -> Option<u64> {
        self.api.body_limit.as_ref().and_then(|s| s.bytes().ok())
    }

    /// `api.header_timeout` as a duration.
    pub fn api_header_timeout(&self) -> Option<Duration> {
        self.api
            .header_timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
    }

    /// `api.body_timeout` as a duration.
    pub fn api_body_timeout(&self) -> Option<Duration> {
        self.api
            .body_timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
    }

    /// `api.lock_timeout` as a duration.
    pub fn api_lock_timeout(&self) -> Option<Duration> {
        self.api
            .lock_timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
    }

    fn validate_watch(&self) -> Result<(), String> {
        if let Some(d) = &self.watch.debounce {
            parse_duration(d).map_err(|m| format!("watch.debounce: {m}"))?;
        }
        for (i, rule) in self.watch.rules.iter().enumerate() {
            let n = i + 1;
            if rule.paths.is_empty() {
                return Err(format!("watch.rule #{n}: `paths` is empty"));
            }
            for p in &rule.paths {
                globset::Glob::new(p)
                    .map_err(|e| format!("watch.rule #{n}: invalid pattern `{p}`: {e}"))?;
            }
            match (rule.action, &rule.signal) {
                (RuleAction::Signal, None) => {
                    return Err(format!(
                        "watch.rule #{n}: action = \"signal\" needs a signal, e.g. signal = \"HUP\""
                    ));
                }
                (RuleAction::Signal, Some(s)) => {
                    crate::supervise::parse_signal(s)
                        .map_err(|e| format!("watch.rule #{n}: {e}"))?;
                }
                (_, Some(_)) => {
                    return Err(format!(
                        "watch.rule #{n}: `signal` is only used with action = \"signal\""
                    ));
                }
                (_, None) => {}
            }
        }
        Ok(())
    }

    /// `watch.debounce` as a duration.
    pub fn watch_debounce(&self) -> Option<Duration> {
        self.watch
            .debounce
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
    }

    /// `verify.timeout` as a duration.
    pub fn verify_timeout(&self) -> Option<Duration> {
        self.verify
            .timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
    }
}

/// Parse `500ms`, `90s`, `10m`, `1h`, a sum of them (`1m30s`, `1h 15m`), or a plain
/// number of seconds; each number may have a fraction (`1.5s`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let examples = "examples: 500ms, 90s, 1m30s, 10m, 1h";
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("an empty duration is not a duration ({examples})"));
    }
    let mut rest = t;
    let mut secs = 0.0_f64;
    let mut last_unit: Option<f64> = None;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(split);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("`{text}` is not a duration ({examples})"))?;
        let after = after.trim_start();
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "ms" => 0.001,
            "" | "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!(
                    "unknown unit `{other}` in `{text}` (use ms, s, m or h)"
                ));
            }
        };
        // Largest unit first, each once (`1m30s`, not `30s1m` or `1m1m`); a bare number
        // only alone.
        if last_unit.is_some_and(|l| scale >= l) || (unit.is_empty() && last_unit.is_some()) {
            return Err(format!(
                "`{text}` is not a duration: give each unit once, largest first ({examples})"
            ));
        }
        last_unit = Some(scale);
        secs += value * scale;
        rest = after.trim_start();
        if unit.is_empty() && !rest.is_empty() {
            return Err(format!("`{text}` is not a duration ({examples})"));
        }
    }
    if !secs.is_finite() || !(0.0..=1e12).contains(&secs) {
        return Err(format!("`{text}` is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parse a size: `1048576`, `512KiB`, `1MiB`, `2MB`, `64kB` (`K`/`M`/`G` alone are
/// binary units; `kB`/`MB`/`GB` decimal).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size (examples: 65536, 512KiB, 1MiB)"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use B, KiB, MiB, GiB, kB, MB or GB)"
            ));
        }
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
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
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h 15m"), Ok(Duration::from_secs(4500)));
        assert_eq!(
            parse_duration("2m 500ms"),
            Ok(Duration::from_millis(120_500))
        );
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 45 s "), Ok(Duration::from_secs(45)));
        assert!(parse_duration("30s1m").is_err(), "largest unit first");
        assert!(parse_duration("1m1m").is_err(), "each unit once");
        assert!(parse_duration("1m 30").is_err(), "a bare number only alone");
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1e400").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("1TiB").is_err());
    }

    #[test]
    fn api_section_is_typed_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(CONFIG_FILE);
        fs::write(
            &file,
            "[api]\naddr = \"127.0.0.1:9000\"\nbody_limit = \"64KiB\"\nlock_timeout = \"5s\"\nevolve_command = \"sleep 5\"\n",
        )
        .expect("write");
        let config = Config::load(dir.path()).expect("load");
        assert_eq!(config.api_body_limit(), Some(64 << 10));
        assert_eq!(config.api_lock_timeout(), Some(Duration::from_secs(5)));
        assert_eq!(config.api.evolve_command.as_deref(), Some("sleep 5"));
        fs::write(&file, "[api]\nbody_limit = 4096\n").expect("write");
        assert_eq!(
            Config::load(dir.path()).expect("load").api_body_limit(),
            Some(4096)
        );
        fs::write(
            &file,
            "[api]\nheader_timeout = \"2s\"\nbody_timeout = \"1m\"\nmax_connections = 10\nmax_parses = 1\n",
        )
        .expect("write");
        let config = Config::load(dir.path()).expect("load");
        assert_eq!(config.api_header_timeout(), Some(Duration::from_secs(2)));
        assert_eq!(config.api_body_timeout(), Some(Duration::from_secs(60)));
        assert_eq!(
            (config.api.max_connections, config.api.max_parses),
            (Some(10), Some(1))
        );
        for (text, needle) in [
            ("[api]\nbody_limit = \"huge\"\n", "api.body_limit"),
            ("[api]\nbody_limit = 0\n", "api.body_limit"),
            ("[api]\nlock_timeout = \"soon\"\n", "api.lock_timeout"),
            ("[api]\nheader_timeout = \"0s\"\n", "api.header_timeout"),
            ("[api]\nbody_timeout = \"later\"\n", "api.body_timeout"),
            ("[api]\nmax_connections = 0\n", "api.max_connections"),
            ("[api]\nmax_parses = 0\n", "api.max_parses"),
            ("[api]\nport = 80\n", "port"),
        ] {
            fs::write(&file, text).expect("write");
            let err = Config::load(dir.path()).expect_err(text);
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn missing_file_is_the_default_and_bad_keys_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Config::load(dir.path()).expect("load"), Config::default());
        fs::write(dir.path().join(CONFIG_FILE), "[verify]\ncomand = \"x\"\n").expect("write");
        let err = Config::load(dir.path()).expect_err("unknown key");
        assert!(err.to_string().contains("comand"), "{err}");
    }

    #[test]
    fn evolve_section_is_typed_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(CONFIG_FILE);
        fs::write(
            &file,
            "[evolve]\nfitness = \"./bench\"\nmetric = 'ns=(\\d+)'\nruns = 7\nmax_runs = 21\nbudget = \"5m\"\nrules = [\"builtin\", \"rules\"]\nmin_gain = 3.5\n",
        )
        .expect("write");
        let config = Config::load(dir.path()).expect("load");
        assert_eq!(config.evolve.runs, Some(7));
        assert_eq!(config.evolve.max_runs, Some(21));
        // Below the default `runs` but with `runs` unset: a flag may still set it.
        fs::write(&file, "[evolve]\nmax_runs = 8\n").expect("write");
        assert_eq!(
            Config::load(dir.path()).expect("load").evolve.max_runs,
            Some(8)
        );
        assert_eq!(config.evolve.min_gain, Some(3.5));
        assert_eq!(
            config.evolve.rules.as_deref(),
            Some(&["builtin".to_owned(), "rules".to_owned()][..])
        );
        for (text, needle) in [
            ("[evolve]\nfitnes = \"x\"\n", "fitnes"),
            ("[evolve]\nbudget = \"soon\"\n", "evolve.budget"),
            ("[evolve]\nbudget_runs = 0\n", "evolve.budget_runs"),
            ("[evolve]\nmetric = \"(\"\n", "evolve.metric"),
            ("[evolve]\nruns = 1\n", "evolve.runs"),
            ("[evolve]\nruns = 8\nmax_runs = 7\n", "evolve.max_runs"),
            ("[evolve]\nalpha = 2.0\n", "evolve.alpha"),
        ] {
            fs::write(&file, text).expect("write");
            let err = Config::load(dir.path()).expect_err(text);
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn watch_rules_are_typed_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(CONFIG_FILE);
        fs::write(
            &file,
            "[watch]\ndebounce = \"80ms\"\n[[watch.rule]]\npaths = [\"config/**\"]\naction = \"signal\"\nsignal = \"HUP\"\n[[watch.rule]]\npaths = [\"docs/**\"]\naction = \"ignore\"\n",
        )
        .expect("write");
        let config = Config::load(dir.path()).expect("load");
        assert_eq!(config.watch_debounce(), Some(Duration::from_millis(80)));
        assert_eq!(config.watch.rules.len(), 2);
        assert_eq!(config.watch.rules[0].action, RuleAction::Signal);
        assert_eq!(config.watch.rules[1].action, RuleAction::Ignore);

        for (text, needle) in [
            (
                "[[watch.rule]]\npaths = [\"a\"]\naction = \"explode\"\n",
                "explode",
            ),
            (
                "[[watch.rule]]\npaths = [\"a\"]\naction = \"signal\"\n",
                "needs a signal",
            ),
            (
                "[[watch.rule]]\npaths = [\"a\"]\naction = \"signal\"\nsignal = \"NOPE\"\n",
                "NOPE",
            ),
            (
                "[[watch.rule]]\npaths = [\"a\"]\naction = \"rebuild\"\nsignal = \"HUP\"\n",
                "only used",
            ),
            (
                "[[watch.rule]]\npaths = [\"a[\"]\naction = \"ignore\"\n",
                "invalid pattern",
            ),
            (
                "[[watch.rule]]\npath = [\"a\"]\naction = \"ignore\"\n",
                "path",
            ),
            ("[watch]\ndebounce = \"soon\"\n", "watch.debounce"),
        ] {
            fs::write(&file, text).expect("write");
            let err = Config::load(dir.path()).expect_err(text);
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }
}
