//! The hot path of a watch session (`heph watch --hot`): per rebuild, whether the hot
//! crate's new interface lets the build be loaded into the running program
//! ([`Session::reload_path`]), the cargo command for it, loading the new generation
//! over the control channel or swapping the process with the new generation as its
//! first library, and the program's reports (panics, rollbacks, crashes).

use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::Instant;

use super::policy::{Pending, ReloadPath};
use super::{BuildSpec, Input, Session, WatchError, WatchEvent};
use crate::evolution::{EvolutionKind, EvolutionMeta};
use crate::history::RollbackTarget;
use crate::hot::interface;
use crate::hot::{
    Generations, Heal, HotCrate, HotOptions, HotServer, Interface, Notice, Report, channel,
    find_hot_package,
};
use crate::project::Project;
use crate::source::{Origin, SyntaxError};
use crate::state::StateDir;
use crate::verify::VerifyReport;

/// The hot-path state of a session.
pub(crate) struct HotSession {
    krate: HotCrate,
    opts: HotOptions,
    server: HotServer,
    generations: Generations,
    lib_file: PathBuf,
    /// The interface the running host was built with.
    baseline: Option<Interface>,
    /// The interface of the sources being built now (read before the build).
    building: Option<Interface>,
    /// The first generation of the running host build (older ones belong to another
    /// host and cannot be loaded into it).
    host_first: u64,
}

impl HotSession {
    /// Find the hot crate (not `host`, the binary's package) and open the channel.
    pub(crate) fn new(
        project: &Project,
        opts: &HotOptions,
        host: &str,
        tx: Sender<Input>,
    ) -> Result<HotSession, WatchError> {
        let krate = find_hot_package(project, opts.package.as_deref(), Some(host))?;
        let path = StateDir::new(project.root())
            .path()
            .join(channel::SOCKET_NAME);
        if let Some(dir) = path.parent() {
            // `.heph/` with its `.gitignore` exists once the control socket or the lock
            // made it; create it for a session without either.
            let _ = std::fs::create_dir_all(dir);
        }
        let tx = std::sync::Mutex::new(tx);
        let server = HotServer::bind(&path, opts.policy, move |n| {
            if let Ok(tx) = tx.lock() {
                let _ = tx.send(Input::Hot(n));
            }
        })?;
        let dir = project.target_dir().join("heph").join("hot");
        let lib_file = project.target_dir().join("debug").join(format!(
            "{}{}{}",
            std::env::consts::DLL_PREFIX,
            krate.crate_name,
            std::env::consts::DLL_SUFFIX
        ));
        Ok(HotSession {
            generations: Generations::new(&dir, &krate.crate_name),
            krate,
            opts: opts.clone(),
            server,
            lib_file,
            baseline: None,
            building: None,
            host_first: 1,
        })
    }

    /// The hot crate's package.
    pub(crate) fn package(&self) -> String {
        self.krate.package.clone()
    }

    /// `HEPH_HOT_SOCKET=…` for the program's environment.
    pub(crate) fn socket_env(&self) -> (std::ffi::OsString, std::ffi::OsString) {
        (
            channel::SOCKET_ENV.into(),
            self.server.path().as_os_str().to_owned(),
        )
    }

    /// End of the session: the channel closes, the generation files go.
    pub(crate) fn finish(mut self) {
        self.generations.remove_all();
    }
}

impl Session {
    /// How the pending rebuild reaches the program; reads the hot crate's interface and
    /// says why when it cannot be loaded in place.
    pub(super) fn reload_path(
        &mut self,
        pending: &Pending,
        on_event: &mut dyn FnMut(&WatchEvent),
    ) -> ReloadPath {
        let pid = self.supervisor.as_ref().and_then(|s| s.child_pid());
        let Some(hot) = self.hot.as_mut() else {
            return ReloadPath::Restart(None);
        };
        let (iface, err) = match Interface::of_dir(&hot.krate.src_dir) {
            Ok(i) => (Some(i), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let running = pid.is_some_and(|p| hot.server.connected(p));
        let path = pending.reload_path(Some(&hot.krate.package), running, || {
            match (&hot.baseline, &iface, err) {
                (_, _, Some(e)) => Some(e),
                (Some(old), Some(new), None) => old.incompatibility(new),
                _ => Some("the running program's interface is unknown".into()),
            }
        });
        hot.building = iface;
        if let ReloadPath::Restart(Some(reason)) = &path
            && self.launched
        {
            let reason = reason.clone();
            self.shared
                .update(|s| s.last_restart_reason = Some(reason.clone()));
            on_event(&WatchEvent::HotRestart { reason });
        }
        path
    }

    /// Hot mode: the syntax of the `export!` bodies of a hot crate's file (macro bodies
    /// are token trees to the gate's parse).
    pub(super) fn hot_syntax(&self, path: &Path, rel: &str) -> Option<SyntaxError> {
        let hot = self.hot.as_ref()?;
        if !path.starts_with(&hot.krate.src_dir) {
            return None;
        }
        let text = std::fs::read_to_string(path).ok()?;
        interface::check_macro_bodies(Origin::File(PathBuf::from(rel)), &text).err()
    }

    /// Hot mode: build only the hot crate for a hot reload, also the hot crate's
    /// library for a restart, each with the interface digests of its sources.
    pub(super) fn hot_build_spec(&self, spec: &mut BuildSpec, path: &ReloadPath) {
        let Some(hot) = &self.hot else {
            return;
        };
        let lib = ["--lib".to_owned()];
        match path {
            ReloadPath::Hot => {
                spec.packages = vec![hot.krate.package.clone()];
                spec.extra = lib.to_vec();
            }
            ReloadPath::Restart(_) => {
                if !spec.packages.contains(&hot.krate.package) {
                    spec.packages.push(hot.krate.package.clone());
                }
                spec.extra.extend(lib);
            }
        }
        let digests = hot
            .building
            .as_ref()
            .map(Interface::digests)
            .unwrap_or_default();
        spec.env.push(("HEPH_HOT_INTERFACE".into(), digests));
    }

    /// After a successful build in hot mode: load the new generation into the running
    /// program, or swap the process with it as the first library.
    pub(super) fn hot_deliver(
        &mut self,
        path: &ReloadPath,
        evolution: Option<String>,
        started: Instant,
        report: &VerifyReport,
        on_event: &mut dyn FnMut(&WatchEvent),
    ) {
        let evolution = evolution.or_else(|| self.last_evolution_id());
        let Some(hot) = self.hot.as_mut() else {
            return;
        };
        let staged = match hot.generations.stage(&hot.lib_file) {
            Ok((f, _)) => (f.id, f.path.clone()),
            Err(e) => {
                let message = format!("cannot stage {}: {e}", hot.lib_file.display());
                self.shared.update(|s| s.last_error = Some(message.clone()));
                on_event(&WatchEvent::Warning { message });
                return;
            }
        };
        let (id, file) = staged;
        if let Some(ev) = evolution {
            hot.generations.set_evolution(id, ev);
        }
        let pid = self.supervisor.as_ref().and_then(|s| s.child_pid());
        match (path, pid) {
            (ReloadPath::Hot, Some(pid)) => {
                let answer = hot.server.load(pid, id, &file, hot.opts.load_timeout);
                match answer {
                    Ok(Report::Loaded {
                        load_us, callbacks, ..
                    }) => {
                        hot.generations.serving(id);
                        hot.generations.clean();
                        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                        self.shared.update(|s| {
                            s.hot_generation = Some(id);
                            s.hot_reloads += 1;
                            s.last_hot_reload_ms = Some(ms);
                        });
                        on_event(&WatchEvent::HotReloaded {
                            generation: id,
                            pid,
                            reload_ms: ms,
                            load_us,
                            callbacks,
                        });
                    }
                    Ok(Report::Refused { reason, .. }) => {
                        hot.generations.mark_bad(id);
                        self.shared.update(|s| {
                            s.last_error = Some(format!("generation {id} refused: {reason}"))
                        });
                        on_event(&WatchEvent::HotRefused {
                            generation: id,
                            reason,
                        });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        hot.generations.mark_bad(id);
                        self.shared.update(|s| s.last_error = Some(e.to_string()));
                        on_event(&WatchEvent::HotRefused {
                            generation: id,
                            reason: e.to_string(),
                        });
                    }
                }
            }
            _ => {
                hot.server.set_first(id, &file);
                let building = hot.building.take();
                if self.swap(Some(report), started, on_event)
                    && let Some(hot) = self.hot.as_mut()
                {
                    hot.baseline = building;
                    hot.host_first = id;
                    hot.generations.serving(id);
                    hot.generations.clean();
                    self.shared.update(|s| s.hot_generation = Some(id));
                }
            }
        }
    }

    fn last_evolution_id(&mut self) -> Option<String> {
        let filter = crate::history::ListFilter {
            limit: Some(1),
            ..Default::default()
        };
        self.with_history(|h| h.list(&filter))
            .ok()
            .and_then(|l| l.into_iter().next())
            .map(|e| e.id)
    }

    /// A report of the program's runtime.
    pub(super) fn hot_notice(&mut self, notice: Notice, on_event: &mut dyn FnMut(&WatchEvent)) {
        let current = self.supervisor.as_ref().and_then(|s| s.child_pid());
        let Notice::Report { pid, report } = notice else {
            return;
        };
        match report {
            // The first library of a new process (a later one is answered to `load`).
            Report::Loaded { generation, .. } if Some(pid) == current => {
                if let Some(h) = self.hot.as_mut() {
                    h.generations.serving(generation);
                }
                self.shared.update(|s| s.hot_generation = Some(generation));
            }
            Report::Refused { generation, reason } => {
                on_event(&WatchEvent::HotRefused { generation, reason });
            }
            Report::Panic {
                generation,
                function,
                message,
                count,
            } => on_event(&WatchEvent::HotPanic {
                generation,
                function,
                message,
                count,
            }),
            Report::Rollback {
                from,
                to,
                panics,
                function,
                message,
            } if Some(pid) == current => {
                self.hot_rolled_back(
                    from,
                    to,
                    panics,
                    &format!("{function}: {message}"),
                    on_event,
                );
            }
            Report::Warning { message } => on_event(&WatchEvent::Warning {
                message: format!("program: {message}"),
            }),
            _ => {}
        }
    }

    /// The runtime went back from generation `from` to `to`: record it, and with
    /// `--heal restore-source` restore `to`'s sources through the history.
    fn hot_rolled_back(
        &mut self,
        from: u64,
        to: u64,
        panics: u64,
        message: &str,
        on_event: &mut dyn FnMut(&WatchEvent),
    ) {
        let Some(hot) = self.hot.as_mut() else {
            return;
        };
        hot.generations.mark_bad(from);
        hot.generations.serving(to);
        let heal = hot.opts.heal;
        let target = hot.generations.get(to).and_then(|g| g.evolution.clone());
        self.shared.update(|s| {
            s.hot_generation = Some(to);
            s.hot_rollbacks += 1;
        });
        let summary = format!(
            "hot: generation {from} panicked {panics} times ({message}); the runtime went back to generation {to}"
        );
        let (evolution, restored) = match (heal, target) {
            (Heal::RestoreSource, Some(target)) => {
                // `rollback` takes the writer lock itself.
                let result = super::open_history(
                    &mut self.history,
                    self.project.root(),
                    &self.opts.history_options,
                    |h| h.rollback(&RollbackTarget::Id(target)),
                );
                match result {
                    Ok(r) => (
                        Some(r.evolution.short_id),
                        r.restored
                            .iter()
                            .chain(&r.deleted)
                            .map(|p| p.display().to_string())
                            .collect(),
                    ),
                    Err(e) => {
                        on_event(&WatchEvent::Warning {
                            message: format!("history: cannot restore the sources: {e}"),
                        });
                        (None, Vec::new())
                    }
                }
            }
            (heal, _) => {
                if heal == Heal::RestoreSource {
                    on_event(&WatchEvent::Warning {
                        message: format!(
                            "no recorded sources for generation {to}: nothing restored"
                        ),
                    });
                }
                let meta = EvolutionMeta::new(
                    EvolutionKind::Rollback,
                    format!("{summary}; the sources still hold generation {from}"),
                );
                match self.with_history(|h| h.record(&meta)) {
                    Ok(e) => (Some(e.short_id), Vec::new()),
                    Err(e) => {
                        on_event(&WatchEvent::Warning {
                            message: format!("history: {e}"),
                        });
                        (None, Vec::new())
                    }
                }
            }
        };
        on_event(&WatchEvent::HotRollback {
            from,
            to,
            panics,
            message: message.to_owned(),
            evolution,
            restored,
        });
    }

    /// The program exited on its own while a hot generation served: the supervisor
    /// restarts it, with the last good generation of this host build as its library.
    pub(super) fn hot_exited(&mut self, on_event: &mut dyn FnMut(&WatchEvent)) {
        let Some(hot) = self.hot.as_mut() else {
            return;
        };
        let Some(current) = hot.generations.current().map(|g| g.id) else {
            return;
        };
        let next = if current > hot.host_first {
            hot.generations.mark_bad(current);
            hot.generations
                .good_before(current)
                .filter(|g| g.id >= hot.host_first)
                .map(|g| (g.id, g.path.clone()))
        } else {
            None
        };
        if let Some((id, path)) = &next {
            hot.server.set_first(*id, path);
            hot.generations.serving(*id);
        }
        on_event(&WatchEvent::HotCrashed {
            generation: current,
            next: next.map(|(id, _)| id),
        });
    }
}
