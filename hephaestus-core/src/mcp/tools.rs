//! The tools: arguments (with their JSON Schemas), and one handler each that calls the
//! library on a blocking thread and turns the answer into a tool result.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ProgressNotificationParam};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::McpOptions;
use super::evolve::{self, Refused, StartRequest};
use crate::apply::{ApplyOutcome, Event, Operation};
use crate::cfg::CfgOption;
use crate::edit::{ChangeAction, Edit};
use crate::evolution::{EvolutionKind, VerifyOutcome};
use crate::history::{History, ListFilter, RollbackTarget};
use crate::import::ImportSpec;
use crate::project::Project;
use crate::source::reset_span_table;
use crate::verify::{Verify, VerifyProgress};
use crate::watch::control::{self, Request};
use crate::{Categorized, ErrorCategory};

/// The MCP server: one per session (stdio) or per HTTP session.
#[derive(Clone)]
pub struct Heph {
    project: Arc<Project>,
    opts: Arc<McpOptions>,
    /// Held (FIFO) by the write in progress of this server.
    writes: Arc<tokio::sync::Mutex<()>>,
    /// The `heph evolve` run this server started.
    evolve: Arc<evolve::Runs>,
    /// Cancelled when the server stops: a verification in progress is cancelled (its
    /// files restored) and the HTTP sessions end.
    stop: CancellationToken,
    tool_router: ToolRouter<Heph>,
}

impl std::fmt::Debug for Heph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heph")
            .field("root", &self.project.root())
            .finish_non_exhaustive()
    }
}

/// `self_modify`'s `mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Replace the items with the same key, add the others.
    #[default]
    Merge,
    /// Replace the module's whole content.
    Replace,
    /// Remove the items named by `items`.
    Remove,
}

/// Arguments of `read_module`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadModuleArgs {
    /// The module: `crate::agent::tools`, `agent::tools`, `agent.tools`, or
    /// `package::agent::tools` in a workspace.
    pub module: String,
    /// Choose among `#[cfg]` copies as a build with these cfgs would
    /// (`feature = "x"`, `unix`).
    #[serde(default)]
    pub cfg: Vec<String>,
}

/// Arguments of `list_modules`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListModulesArgs {
    /// Only the modules of this package.
    #[serde(default)]
    pub package: Option<String>,
}

/// Arguments of `find_item`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FindItemArgs {
    /// The item's name (`helper`, `Point`, `Point::norm`, `norm`).
    pub name: String,
    /// Match items whose name contains `name`.
    #[serde(default)]
    pub substring: bool,
    /// Include each item's source text.
    #[serde(default)]
    pub include_body: bool,
    /// At most this many matches (default 50).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Arguments of `self_modify`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelfModifyArgs {
    /// The module to change (see `read_module`).
    pub module: String,
    /// The items to merge, or the module's new content (`replace`). Not with `remove`.
    #[serde(default)]
    pub code: Option<String>,
    /// `merge` (default): replace items with the same key, add the others; `replace`:
    /// the module's whole content; `remove`: remove the items named by `items`.
    #[serde(default)]
    pub mode: Mode,
    /// Item keys to remove (`mode: remove`), as `read_module` lists them:
    /// `fn helper`, `struct Point`, `fn Point::norm`, `impl Display for Point`.
    #[serde(default)]
    pub items: Vec<String>,
    /// Verify with this shell command instead of the project's default
    /// (`[verify] command` of heph.toml, else `cargo check`), e.g. `cargo test`.
    #[serde(default)]
    pub verify: Option<String>,
    /// Skip verification.
    #[serde(default)]
    pub skip_verify: bool,
    /// Compute the diff and write nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Keep the new items exactly as written instead of formatting them.
    #[serde(default)]
    pub verbatim: bool,
    /// Choose among `#[cfg]` copies as a build with these cfgs would.
    #[serde(default)]
    pub cfg: Vec<String>,
}

/// Arguments of `import`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportArgs {
    /// The new module's path (`tools::parser`); missing parents are created.
    pub name: String,
    /// Its code.
    pub code: String,
    /// Then build and call this public zero-argument function of the new module and
    /// return its `Debug` output.
    #[serde(default)]
    pub run: Option<String>,
    /// Declare it with `mod` instead of `pub mod`.
    #[serde(default)]
    pub private: bool,
    /// Verify with this shell command instead of the project's default.
    #[serde(default)]
    pub verify: Option<String>,
    /// Skip verification.
    #[serde(default)]
    pub skip_verify: bool,
    /// Compute the diff and write nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// `history`'s `kind`.
#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum KindArg {
    /// `self_modify` and `heph self-modify`.
    SelfModify,
    /// `import` and `heph import`.
    Import,
    /// Snapshots of `heph watch`.
    Watch,
    /// Accepted `heph evolve` candidates.
    Evolve,
    /// Rollbacks.
    Rollback,
    /// Edits by hand recorded before a change.
    Manual,
}

impl From<KindArg> for EvolutionKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::SelfModify => EvolutionKind::SelfModify,
            KindArg::Import => EvolutionKind::Import,
            KindArg::Watch => EvolutionKind::Watch,
            KindArg::Evolve => EvolutionKind::Evolve,
            KindArg::Rollback => EvolutionKind::Rollback,
            KindArg::Manual => EvolutionKind::Manual,
        }
    }
}

/// Arguments of `history`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryArgs {
    /// At most this many evolutions, newest first (default 20, 0: all).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Only evolutions of this kind.
    #[serde(default)]
    pub kind: Option<KindArg>,
    /// Only evolutions of this module or its submodules.
    #[serde(default)]
    pub module: Option<String>,
}

/// Arguments of `show`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShowArgs {
    /// The evolution id (full or an unambiguous prefix).
    pub id: String,
    /// Include the unified diff (default true).
    #[serde(default)]
    pub diff: Option<bool>,
}

/// Arguments of `rollback`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackArgs {
    /// The evolution to return to (full id or an unambiguous prefix).
    #[serde(default)]
    pub id: Option<String>,
    /// Return to the last evolution whose verification passed.
    #[serde(default)]
    pub last: bool,
}

/// Arguments of `evolve_start`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvolveStartArgs {
    /// The fitness command (shell), run in each candidate's copy of the project
    /// (default: `[evolve] fitness` of heph.toml).
    #[serde(default)]
    pub fitness: Option<String>,
    /// Take the fitness from the command's output: the first capture group of this
    /// regex (default: the command's wall time).
    #[serde(default)]
    pub metric: Option<String>,
    /// Higher fitness is better (default: lower is better).
    #[serde(default)]
    pub maximize: bool,
    /// Stop starting candidates after this long (`10m`, `90s`; default 10m).
    #[serde(default)]
    pub budget: Option<String>,
    /// Modules to work on (default: every library module).
    #[serde(default)]
    pub targets: Vec<String>,
    /// Stop after this many candidates.
    #[serde(default)]
    pub max_candidates: Option<usize>,
    /// Wait for the run to end, reporting each candidate as a progress notification,
    /// and return its status (default: return at once with the run id).
    #[serde(default)]
    pub wait: bool,
}

/// Arguments of `evolve_status`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvolveStatusArgs {
    /// The run id `evolve_start` answered (or any run in `.heph/evolve/`).
    pub id: String,
}

/// Arguments of the watch tools (none).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// A tool's failure: heph's category and the message a person would see.
struct Failure {
    category: ErrorCategory,
    message: String,
}

impl Failure {
    fn of(e: &(impl Categorized + std::fmt::Display)) -> Self {
        Failure {
            category: e.category(),
            message: e.to_string(),
        }
    }

    fn bad_input(message: impl Into<String>) -> Self {
        Failure {
            category: ErrorCategory::BadInput,
            message: message.into(),
        }
    }

    fn result(self) -> CallToolResult {
        let category = serde_json::to_value(self.category).unwrap_or_default();
        let category_text = category.as_str().unwrap_or("error").to_owned();
        let mut r = CallToolResult::error(vec![ContentBlock::text(format!(
            "error ({category_text}): {}",
            self.message
        ))]);
        r.structured_content = Some(serde_json::json!({
            "error": { "category": category, "message": self.message }
        }));
        r
    }
}

/// A result readable as text and structured as JSON.
fn done(text: String, value: &impl Serialize, is_error: bool) -> CallToolResult {
    let mut r = if is_error {
        CallToolResult::error(vec![ContentBlock::text(text)])
    } else {
        CallToolResult::success(vec![ContentBlock::text(text)])
    };
    r.structured_content = Some(serde_json::to_value(value).unwrap_or_default());
    r
}

type ToolResult = Result<CallToolResult, ErrorData>;

/// Run blocking library work off the async threads; its spans are forgotten after.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<Result<T, Failure>, ErrorData> {
    tokio::task::spawn_blocking(move || {
        let r = f();
        reset_span_table();
        r
    })
    .await
    .map_err(|e| ErrorData::internal_error(format!("the tool was interrupted: {e}"), None))
}

fn parse_cfg(cfg: &[String]) -> Result<Vec<CfgOption>, Failure> {
    cfg.iter()
        .map(|c| CfgOption::parse(c).map_err(|e| Failure::bad_input(e.to_string())))
        .collect()
}

#[tool_router]
impl Heph {
    /// A server for `project`.
    pub fn new(project: Arc<Project>, opts: McpOptions) -> Self {
        Heph {
            project,
            writes: Arc::new(tokio::sync::Mutex::new(())),
            evolve: Arc::new(evolve::Runs::new(opts.evolve.clone())),
            stop: CancellationToken::new(),
            opts: Arc::new(opts),
            tool_router: Self::tool_router(),
        }
    }

    /// The project root.
    pub fn root(&self) -> &Path {
        self.project.root()
    }

    /// The token that stops this server (and its clones): cancelling it cancels a
    /// verification in progress, whose files are then restored, and ends the HTTP
    /// sessions. Safe to cancel from any thread (a signal handler's).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stop, and wait until the write in progress, if any, has finished (its
    /// verification cancelled and its files restored): then nothing is half-done.
    pub async fn finish(&self) {
        self.stop.cancel();
        let _ = self.writes.lock().await;
    }

    #[tool(
        description = "Read a module: its file, the file's source, and the key of every item (and impl member) with its line range. Keys are what self_modify's `items` takes.",
        annotations(read_only_hint = true)
    )]
    async fn read_module(&self, Parameters(args): Parameters<ReadModuleArgs>) -> ToolResult {
        let project = Arc::clone(&self.project);
        let r = blocking(move || {
            let cfg = parse_cfg(&args.cfg)?;
            project
                .outline(&args.module, &cfg)
                .map_err(|e| Failure::of(&e))
        })
        .await?;
        Ok(match r {
            Ok(o) => {
                let mut text = format!("module {} in {}\n", o.module, o.file);
                for n in &o.notes {
                    text.push_str(&format!("note: {n}\n"));
                }
                for i in &o.items {
                    let indent = if i.owner.is_some() { "    " } else { "" };
                    text.push_str(&format!(
                        "{indent}{} (lines {}-{})\n",
                        i.key, i.start_line, i.end_line
                    ));
                }
                text.push_str(&format!("\n{}", o.source));
                done(text, &o, false)
            }
            Err(f) => f.result(),
        })
    }

    #[tool(
        description = "List the project's modules: path, package, crate root and file.",
        annotations(read_only_hint = true)
    )]
    async fn list_modules(&self, Parameters(args): Parameters<ListModulesArgs>) -> ToolResult {
        let project = Arc::clone(&self.project);
        let r = blocking(move || {
            let mut list = project.modules();
            if let Some(p) = &args.package {
                let Some(pkg) = project.package(p) else {
                    let names: Vec<&str> =
                        project.packages().iter().map(|p| p.name.as_str()).collect();
                    return Err(Failure::bad_input(format!(
                        "no package `{p}` in this project; its packages are {}",
                        names.join(", ")
                    )));
                };
                let name = pkg.name.clone();
                list.retain(|m| m.package == name);
            }
            Ok(list)
        })
        .await?;
        Ok(match r {
            Ok(list) => {
                let text = list
                    .iter()
                    .map(|m| format!("{}  ({})", m.module, m.file))
                    .collect::<Vec<_>>()
                    .join("\n");
                done(text, &serde_json::json!({ "modules": list }), false)
            }
            Err(f) => f.result(),
        })
    }

    #[tool(
        description = "Find an item by name across every module of the project (functions, types, impl members as `Type::name`): its module, key and lines, optionally its source.",
        annotations(read_only_hint = true)
    )]
    async fn find_item(&self, Parameters(args): Parameters<FindItemArgs>) -> ToolResult {
        let project = Arc::clone(&self.project);
        let r = blocking(move || {
            if args.name.trim().is_empty() {
                return Err(Failure::bad_input("`name` is empty"));
            }
            Ok(project.find_items(
                args.name.trim(),
                args.substring,
                args.include_body,
                args.limit.unwrap_or(50).max(1),
            ))
        })
        .await?;
        Ok(match r {
            Ok(found) => {
                let mut text = if found.is_empty() {
                    "no item found".to_owned()
                } else {
                    String::new()
                };
                for m in &found {
                    text.push_str(&format!(
                        "{} :: {} ({}:{}-{})\n",
                        m.module, m.item.key, m.file, m.item.start_line, m.item.end_line
                    ));
                    if let Some(b) = &m.body {
                        text.push_str(b);
                        text.push('\n');
                    }
                }
                done(text, &serde_json::json!({ "items": found }), false)
            }
            Err(f) => f.result(),
        })
    }

    #[tool(
        description = "Change items of an existing module: merge (replace items with the same key, add the others), replace (the whole content) or remove (items by key). The change is validated, written atomically, verified (cargo check, or `verify`), rolled back byte for byte when verification fails, and recorded as an evolution. Returns the changed items, the diff, the verification output and the evolution id."
    )]
    async fn self_modify(
        &self,
        Parameters(args): Parameters<SelfModifyArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        self.check_size(args.code.as_deref())?;
        let edit = match (args.mode, args.code) {
            (Mode::Remove, Some(_)) => {
                return Ok(
                    Failure::bad_input("mode `remove` takes `items` (keys), not `code`").result(),
                );
            }
            (Mode::Remove, None) if args.items.is_empty() => {
                return Ok(Failure::bad_input(
                    "mode `remove` needs at least one item key in `items` (e.g. \"fn helper\")",
                )
                .result());
            }
            (Mode::Remove, None) => Edit::remove(args.items),
            (_, None) => {
                return Ok(Failure::bad_input(
                    "no `code` given: modes `merge` and `replace` take the items to write",
                )
                .result());
            }
            (_, Some(_)) if !args.items.is_empty() => {
                return Ok(Failure::bad_input("`items` is only used with mode `remove`").result());
            }
            (mode, Some(code)) => {
                let e = if mode == Mode::Replace {
                    Edit::replace(code)
                } else {
                    Edit::merge(code)
                };
                if args.verbatim { e.verbatim() } else { e }
            }
        };
        let cfg = match parse_cfg(&args.cfg) {
            Ok(c) => c,
            Err(f) => return Ok(f.result()),
        };
        let op = Operation::SelfModify {
            module: args.module,
            edit: edit.with_cfg(cfg),
        };
        let write = Write {
            verify: args.verify,
            skip_verify: args.skip_verify,
            dry_run: args.dry_run,
        };
        self.write(op, write, ctx).await
    }

    #[tool(
        description = "Create a new module from code at the canonical place and declare it in its parent (`pub mod`), verified and recorded like self_modify; optionally build and call one of its zero-argument functions (`run`) and return its value."
    )]
    async fn import(
        &self,
        Parameters(args): Parameters<ImportArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        self.check_size(Some(&args.code))?;
        let op = Operation::Import(ImportSpec {
            module: args.name,
            code: args.code,
            public: !args.private,
            run: args.run,
        });
        let write = Write {
            verify: args.verify,
            skip_verify: args.skip_verify,
            dry_run: args.dry_run,
        };
        self.write(op, write, ctx).await
    }

    #[tool(
        description = "List the evolutions (recorded changes), newest first: id, kind, module, item changes, verification.",
        annotations(read_only_hint = true)
    )]
    async fn history(&self, Parameters(args): Parameters<HistoryArgs>) -> ToolResult {
        let root = self.project.root().to_path_buf();
        let options = self.opts.apply.history_options.clone();
        let r = blocking(move || {
            let limit = args.limit.unwrap_or(20);
            let filter = ListFilter {
                limit: (limit > 0).then_some(limit),
                kind: args.kind.map(Into::into),
                module: args.module,
            };
            History::open_with(&root, options)
                .and_then(|h| h.list(&filter))
                .map_err(|e| Failure::of(&e))
        })
        .await?;
        Ok(match r {
            Ok(list) => {
                let text = if list.is_empty() {
                    "no evolutions recorded yet".to_owned()
                } else {
                    list.iter()
                        .map(|e| {
                            let verify = e.meta.verify.as_ref().map_or(String::new(), |v| {
                                format!(" [{}]", verify_word(v.outcome))
                            });
                            format!(
                                "{} {} {}{}: {}",
                                e.short_id,
                                e.meta.kind.as_str(),
                                e.meta.module.as_deref().unwrap_or("-"),
                                verify,
                                e.meta.message.lines().next().unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                done(text, &serde_json::json!({ "evolutions": list }), false)
            }
            Err(f) => f.result(),
        })
    }

    #[tool(
        description = "Show an evolution: its metadata and the unified diff against the evolution before it.",
        annotations(read_only_hint = true)
    )]
    async fn show(&self, Parameters(args): Parameters<ShowArgs>) -> ToolResult {
        let root = self.project.root().to_path_buf();
        let options = self.opts.apply.history_options.clone();
        let r = blocking(move || {
            History::open_with(&root, options)
                .and_then(|h| h.show(&args.id, args.diff.unwrap_or(true)))
                .map_err(|e| Failure::of(&e))
        })
        .await?;
        Ok(match r {
            Ok(shown) => {
                let e = &shown.evolution;
                let mut text = format!(
                    "evolution {} ({})\n{}\n",
                    e.id,
                    e.meta.kind.as_str(),
                    e.meta.message
                );
                if let Some(p) = &shown.patch {
                    text.push('\n');
                    text.push_str(p);
                }
                done(text, &shown, false)
            }
            Err(f) => f.result(),
        })
    }

    #[tool(
        description = "Restore the project's files to an evolution (`id`) or to the last one that passed verification (`last: true`). The current files are recorded first and the rollback is itself an evolution, so it can be undone."
    )]
    async fn rollback(&self, Parameters(args): Parameters<RollbackArgs>) -> ToolResult {
        let target = match (args.id, args.last) {
            (Some(id), false) => RollbackTarget::Id(id),
            (None, true) => RollbackTarget::LastPassed,
            _ => {
                return Ok(
                    Failure::bad_input("give either `id` or `last: true`, not both").result(),
                );
            }
        };
        let guard = Arc::clone(&self.writes).lock_owned().await;
        let root = self.project.root().to_path_buf();
        let mut options = self.opts.apply.history_options.clone();
        options.lock_timeout = self.opts.lock_timeout;
        let r = blocking(move || {
            // Held until the rollback is done, even if the call is abandoned.
            let _guard = guard;
            History::open_with(&root, options)
                .and_then(|mut h| h.rollback(&target))
                .map_err(|e| Failure::of(&e))
        })
        .await?;
        Ok(match r {
            Ok(report) if report.unchanged => done(report.summary(), &report, false),
            Ok(report) => {
                let mut text = report.summary();
                for p in &report.restored {
                    text.push_str(&format!("\nrestored {}", p.display()));
                }
                for p in &report.deleted {
                    text.push_str(&format!("\ndeleted  {}", p.display()));
                }
                done(text, &report, false)
            }
            Err(f) => f.result(),
        })
    }

    #[tool(
        description = "Start `heph evolve`: rewrite rules (and a proposer's candidates) tried in isolated copies of the project, each kept only when the tests pass and the fitness is measurably better, recorded as an evolution. Returns the run id at once (follow it with evolve_status), or with `wait` the final status, reporting each candidate as a progress notification."
    )]
    async fn evolve_start(
        &self,
        Parameters(args): Parameters<EvolveStartArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let runs = Arc::clone(&self.evolve);
        let root = self.project.root().to_path_buf();
        let req = StartRequest {
            fitness: args.fitness,
            metric: args.metric,
            maximize: args.maximize,
            budget: args.budget,
            targets: args.targets,
            max_candidates: args.max_candidates,
        };
        let r = blocking(move || runs.start(&root, &req).map_err(Failure::from)).await?;
        let started = match r {
            Ok(s) => s,
            Err(f) => return Ok(f.result()),
        };
        if !args.wait {
            let text = format!(
                "evolution run {} started: {} (output in {})",
                started.run_id, started.command, started.log
            );
            return Ok(done(text, &started, false));
        }
        let token = ctx.meta.get_progress_token();
        let mut baseline_reported = false;
        let mut candidates_reported: usize = 0;
        let mut sent = 0.0;
        loop {
            let runs = Arc::clone(&self.evolve);
            let root = self.project.root().to_path_buf();
            let id = started.run_id.clone();
            let status =
                match blocking(move || runs.status(&root, &id).map_err(Failure::from)).await? {
                    Ok(s) => s,
                    Err(f) => return Ok(f.result()),
                };
            if let Some(token) = &token {
                let mut lines: Vec<String> = Vec::new();
                if !baseline_reported && let Some(m) = status.baseline_median {
                    lines.push(format!("baseline fitness {m}"));
                    baseline_reported = true;
                }
                for c in status.candidates.iter().skip(candidates_reported) {
                    lines.push(format!(
                        "candidate {}: {} ({})",
                        c.id, c.verdict, c.description
                    ));
                    candidates_reported += 1;
                }
                for line in lines {
                    sent += 1.0;
                    let p = ProgressNotificationParam::new(token.clone(), sent).with_message(line);
                    let _ = ctx.peer.notify_progress(p).await;
                }
            }
            if !status.running {
                return Ok(evolve_result(status));
            }
            tokio::select! {
                _ = ctx.ct.cancelled() => return Ok(evolve_result(status)),
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
        }
    }

    #[tool(
        description = "The status of an evolution run: running or not, the baseline fitness, each candidate's verdict, the accepted ones' evolution ids, and the end of its output.",
        annotations(read_only_hint = true)
    )]
    async fn evolve_status(&self, Parameters(args): Parameters<EvolveStatusArgs>) -> ToolResult {
        let runs = Arc::clone(&self.evolve);
        let root = self.project.root().to_path_buf();
        let r = blocking(move || runs.status(&root, &args.id).map_err(Failure::from)).await?;
        Ok(match r {
            Ok(s) => evolve_result(s),
            Err(f) => f.result(),
        })
    }

    #[tool(
        description = "The state of the `heph watch` running for this project: generation, pid, reloads, failed builds, paused or not.",
        annotations(read_only_hint = true)
    )]
    async fn watch_status(&self, Parameters(_): Parameters<NoArgs>) -> ToolResult {
        self.watch(Request::Status).await
    }

    #[tool(
        description = "Pause the running `heph watch`: changes are remembered, not rebuilt, until watch_resume."
    )]
    async fn watch_pause(&self, Parameters(_): Parameters<NoArgs>) -> ToolResult {
        self.watch(Request::Pause).await
    }

    #[tool(
        description = "Resume the running `heph watch`, starting with the changes made while paused."
    )]
    async fn watch_resume(&self, Parameters(_): Parameters<NoArgs>) -> ToolResult {
        self.watch(Request::Resume).await
    }
}

impl From<Refused> for Failure {
    fn from(Refused(category, message): Refused) -> Self {
        Failure { category, message }
    }
}

fn evolve_result(s: evolve::Status) -> CallToolResult {
    let state = if s.running {
        "running".to_owned()
    } else {
        match (&s.stop, s.exit_code) {
            (Some(stop), _) => format!("ended ({stop})"),
            (None, Some(code)) => format!("exited with code {code}"),
            (None, None) => "ended".to_owned(),
        }
    };
    let mut text = format!(
        "evolution run {}: {state}; {} candidates, {} accepted",
        s.run_id,
        s.candidates.len(),
        s.accepted
    );
    if let Some(m) = s.baseline_median {
        text.push_str(&format!("; baseline fitness {m}"));
    }
    for c in &s.candidates {
        text.push_str(&format!("\n  {} {}: {}", c.id, c.verdict, c.description));
        if let Some(e) = &c.evolution {
            text.push_str(&format!(" (evolution {e})"));
        }
        if let Some(r) = &c.reason {
            text.push_str(&format!(" ({r})"));
        }
    }
    let failed = !s.running && s.stop.is_none() && s.exit_code.is_some_and(|c| c != 0);
    if failed && !s.output.trim().is_empty() {
        text.push_str(&format!("\n{}", s.output.trim_end()));
    }
    done(text, &s, failed)
}

/// The per-call write settings.
struct Write {
    verify: Option<String>,
    skip_verify: bool,
    dry_run: bool,
}

fn verify_word(o: VerifyOutcome) -> &'static str {
    match o {
        VerifyOutcome::Passed => "verified",
        VerifyOutcome::Failed => "failed",
        VerifyOutcome::Skipped => "unverified",
    }
}

impl Heph {
    /// Code over the limit is a protocol error: the request itself is unacceptable.
    fn check_size(&self, code: Option<&str>) -> Result<(), ErrorData> {
        match code {
            Some(c) if c.len() as u64 > self.opts.max_code_bytes => Err(ErrorData::invalid_params(
                format!(
                    "`code` is {} bytes, over the limit of {} bytes; split the change",
                    c.len(),
                    self.opts.max_code_bytes
                ),
                Some(serde_json::json!({ "category": ErrorCategory::BadInput })),
            )),
            _ => Ok(()),
        }
    }

    async fn watch(&self, req: Request) -> ToolResult {
        let root = self.project.root().to_path_buf();
        let r = blocking(move || control::request(&root, req).map_err(|e| Failure::of(&e))).await?;
        Ok(match r {
            Ok(resp) => {
                let s = resp.status.unwrap_or_default();
                let text = format!(
                    "heph watch: {}, {} (pid {}, generation {}, {} reloads, {} failed builds)",
                    if s.paused { "paused" } else { "active" },
                    s.state,
                    s.pid,
                    s.generation,
                    s.reloads,
                    s.failed_builds
                );
                done(text, &s, !resp.ok)
            }
            Err(f) => f.result(),
        })
    }

    /// Apply a write through [`Project::apply`], reporting progress to the client
    /// when it gave a progress token, and cancelling the verification (files restored)
    /// when it cancels the call.
    async fn write(&self, op: Operation, w: Write, ctx: RequestContext<RoleServer>) -> ToolResult {
        let guard = if w.dry_run {
            None
        } else {
            Some(Arc::clone(&self.writes).lock_owned().await)
        };
        let mut opts = self.opts.apply.clone();
        opts.dry_run = w.dry_run;
        opts.lock_timeout = self.opts.lock_timeout;
        if w.skip_verify {
            opts.verify = Verify::Skip;
        } else if let Some(cmd) = w.verify {
            opts.verify = Verify::Command(cmd);
        }
        let cancel = Arc::new(AtomicBool::new(false));
        opts.verify_options.cancel = Some(Arc::clone(&cancel));
        let ct = ctx.ct.clone();
        let stop = self.stop.clone();
        let watcher = tokio::spawn(async move {
            tokio::select! {
                _ = ct.cancelled() => {}
                _ = stop.cancelled() => {}
            }
            cancel.store(true, Ordering::SeqCst);
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let progress = ctx.meta.get_progress_token().map(|token| {
            let peer = ctx.peer.clone();
            tokio::spawn(async move {
                let mut n = 0.0;
                while let Some(message) = rx.recv().await {
                    n += 1.0;
                    let p = ProgressNotificationParam::new(token.clone(), n).with_message(message);
                    if peer.notify_progress(p).await.is_err() {
                        break;
                    }
                }
            })
        });
        let project = Arc::clone(&self.project);
        let r = blocking(move || {
            let _guard = guard;
            let mut on_event = |e: &Event| {
                let msg = match e {
                    Event::WaitingForLock { holder } => {
                        Some(format!("waiting for another heph to finish ({holder})"))
                    }
                    Event::PreStateRecorded { id, first: false } => {
                        Some(format!("recorded hand edits as evolution {id}"))
                    }
                    Event::PreStateRecorded { id, first: true } => Some(format!(
                        "recorded the project's files as evolution {id}, the first of its history"
                    )),
                    Event::Written { files } => Some(format!("written: {}", files.join(", "))),
                    Event::VerifyStarted { command } => Some(format!("verifying: {command}")),
                    Event::VerifyProgress(VerifyProgress::Unit { done, name }) => {
                        Some(format!("verifying: {done} units ({name})"))
                    }
                    Event::RolledBack => Some("verification failed; files restored".into()),
                    Event::Running { function } => Some(format!("running {function}")),
                };
                if let Some(m) = msg {
                    let _ = tx.send(m);
                }
            };
            let outcome = project
                .apply(&op, &opts, &mut on_event)
                .map_err(|e| Failure::of(&e))?;
            // The diff of what was written (a dry run has it already).
            let diff = match (&outcome.diff, &outcome.evolution) {
                (Some(d), _) => Some(d.clone()),
                (None, Some(e)) => History::open_with(project.root(), opts.history_options)
                    .and_then(|h| h.show(&e.id, true))
                    .ok()
                    .and_then(|s| s.patch),
                (None, None) => None,
            };
            Ok((outcome, diff))
        })
        .await;
        watcher.abort();
        if let Some(p) = progress {
            // The sender is gone with the blocking closure: the forwarder drains and ends.
            let _ = p.await;
        }
        Ok(match r? {
            Ok((outcome, diff)) => outcome_result(outcome, diff),
            Err(f) => f.result(),
        })
    }
}

/// The structured document of a write.
#[derive(Serialize)]
struct WriteResult {
    #[serde(flatten)]
    outcome: ApplyOutcome,
    /// The evolution's short id, at the top for agents.
    evolution_id: Option<String>,
}

fn outcome_result(mut outcome: ApplyOutcome, diff: Option<String>) -> CallToolResult {
    outcome.diff = diff;
    let run_failed = outcome.run.as_ref().is_some_and(|r| !r.ok());
    let rejected = !outcome.accepted || run_failed;
    let mut text = String::new();
    if rejected {
        // The headline a person would see first.
        let category = serde_json::to_value(ErrorCategory::Rejected).unwrap_or_default();
        let why = match &outcome.run {
            Some(run) if outcome.accepted => {
                format!("{} failed; the imported module was kept", run.function)
            }
            _ => format!(
                "verification failed ({}{}); the change was rolled back and every file is byte-identical to before",
                outcome.verify.command,
                if outcome.verify.timed_out {
                    ", timed out"
                } else {
                    ""
                }
            ),
        };
        text.push_str(&format!(
            "error ({}): {why}\n",
            category.as_str().unwrap_or("rejected")
        ));
    }
    for n in &outcome.notes {
        text.push_str(&format!("note: {n}\n"));
    }
    for c in &outcome.changes {
        if c.action != ChangeAction::Unchanged {
            text.push_str(&format!("{} {}\n", c.action.as_str(), c.key));
        }
    }
    if outcome.dry_run {
        text.push_str("dry run: nothing written\n");
    } else if outcome.noop {
        text.push_str(&format!("{}: nothing to change\n", outcome.module));
    } else {
        text.push_str(&format!("in {}\n", outcome.files.join(", ")));
        let v = &outcome.verify;
        match v.outcome {
            VerifyOutcome::Passed => text.push_str(&format!(
                "verified: {} passed in {:.2}s\n",
                v.command,
                v.duration.as_secs_f64()
            )),
            VerifyOutcome::Skipped => text.push_str("verification skipped\n"),
            VerifyOutcome::Failed => {
                text.push_str(&format!("verification failed: {}\n", v.command));
                for e in &v.errors {
                    text.push_str(e.trim_end());
                    text.push('\n');
                }
                if v.errors.is_empty() && !v.output.trim().is_empty() {
                    text.push_str(v.output.trim_end());
                    text.push('\n');
                }
            }
        }
    }
    if let Some(run) = &outcome.run {
        match (&run.value, &run.run) {
            (Some(value), _) => text.push_str(&format!("{} returned {value}\n", run.function)),
            (None, Some(r)) => text.push_str(&format!(
                "{} failed; the imported module was kept\n{}\n",
                run.function,
                r.output.trim_end()
            )),
            (None, None) => text.push_str(&format!(
                "the harness calling {} did not build; the imported module was kept\n{}\n",
                run.function,
                run.build.errors.join("\n")
            )),
        }
    }
    if let Some(e) = &outcome.evolution {
        let state = if outcome.rolled_back {
            " (failed attempt)"
        } else {
            ""
        };
        text.push_str(&format!("evolution {}{state}\n", e.short_id));
    }
    if let Some(d) = &outcome.diff {
        text.push('\n');
        text.push_str(d);
    }
    let doc = WriteResult {
        evolution_id: outcome.evolution.as_ref().map(|e| e.short_id.clone()),
        outcome,
    };
    done(text, &doc, rejected)
}

#[tool_handler(
    router = self.tool_router,
    name = "heph",
    instructions = "heph changes this Rust project item by item: read_module shows a module's items with their keys and lines, self_modify replaces, adds or removes items (verified with cargo check, rolled back when it fails, recorded), history/show/rollback inspect and undo recorded changes."
)]
impl ServerHandler for Heph {}
