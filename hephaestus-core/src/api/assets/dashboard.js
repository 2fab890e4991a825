// The heph dashboard: login, live state over server-sent events, timeline, actions.
// Everything is rendered with textContent: nothing from the server is parsed as HTML.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let csrf = null;
  let status = null;
  let source = null;
  let crashes = 0;
  let alertText = null;
  const MAX_BANNERS = 5; // the newest; every alert stays in the event list
  const alertsSeen = new Set(); // shown (or dismissed) alerts: a reconnect replays them
  let statusAt = 0;
  let lastReloadAt = null; // seen by this page (the status has no wall-clock time)
  let runId = null; // the evolution run the panel shows
  let run = null; // its last view (GET /hot-reload/evolve/ID)
  let runLoading = false;
  let runAgain = false;
  let chartKey = null;

  function show(el, on) { el.hidden = !on; }

  async function api(method, path, body) {
    const opts = { method, credentials: "same-origin", headers: {} };
    if (method !== "GET") opts.headers["X-Heph-CSRF"] = csrf || "";
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    if (r.status === 401) { loggedOut(); throw new Error("session ended"); }
    const text = await r.text();
    const data = text ? JSON.parse(text) : null;
    if (!r.ok) throw new Error((data && data.error && data.error.message) || r.statusText);
    return data;
  }

  function loggedOut() {
    csrf = null;
    if (source) { source.close(); source = null; }
    show($("dashboard"), false); show($("logout"), false); show($("login"), true);
    document.title = "heph · log in";
  }

  async function start() {
    const r = await fetch("/session", { credentials: "same-origin" });
    if (r.ok) { csrf = (await r.json()).csrf; loggedIn(); } else loggedOut();
  }

  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const field = $("token");
    const token = field.value;
    field.value = "";
    const r = await fetch("/session", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token }),
    });
    if (r.ok) { csrf = (await r.json()).csrf; show($("login-error"), false); loggedIn(); }
    else {
      $("login-error").textContent = r.status === 401 ? "Wrong token." : "Login failed (" + r.status + ").";
      show($("login-error"), true);
    }
  });

  $("logout").addEventListener("click", async () => {
    try { await api("DELETE", "/session"); } catch (e) { /* already gone */ }
    loggedOut();
  });

  function loggedIn() {
    show($("login"), false); show($("dashboard"), true); show($("logout"), true);
    connect();
    refreshStatus();
    refreshHistory();
  }

  function connect() {
    if (source) source.close();
    source = new EventSource("/hot-reload/events", { withCredentials: true });
    source.onopen = () => { $("conn").textContent = "live"; };
    source.onerror = () => {
      // A refused stream (the session expired) is not retried by the browser.
      if (source && source.readyState === EventSource.CLOSED) start();
      else $("conn").textContent = "reconnecting…";
    };
    source.onmessage = (m) => {
      let e;
      try { e = JSON.parse(m.data); } catch (_) { return; }
      onEvent(e);
    };
  }

  function onEvent(e) {
    const kind = e.event || "event";
    // For tests/bench/dashboard.sh: when events arrive and the state is drawn.
    performance.mark("heph-event:" + kind);
    if (kind === "connected") { crashes = e.crashes || 0; refreshStatus(); return; }
    logEvent(e);
    if (kind === "alert") {
      // Replayed alerts were raised before this stream: `connected` counted their crashes.
      if (e.kind === "crash" && !e.replayed) crashes += 1;
      addAlert(e);
    }
    if (kind === "reloaded" || kind === "hot-reloaded") {
      lastReloadAt = new Date();
      if (status) { status.generation = e.generation; status.child_pid = e.pid || status.child_pid; render(); }
    }
    if (["recorded", "pre-state-recorded", "rolled-back", "hot-rollback", "evolve-progress", "evolve-finished"].includes(kind)) refreshHistory();
    if (kind === "evolve-started" || kind === "evolve-progress" || kind === "evolve-finished") followRun(e.run_id);
    if (kind !== "build-progress") refreshStatus();
  }

  function logEvent(e) {
    const li = document.createElement("li");
    const copy = Object.assign({}, e);
    delete copy.event;
    li.textContent = new Date().toLocaleTimeString() + "  " + e.event + "  " + JSON.stringify(copy).slice(0, 300);
    const list = $("events");
    list.prepend(li);
    while (list.children.length > 100) list.lastChild.remove();
  }

  function addAlert(e) {
    const key = e.kind + "|" + e.at + "|" + e.message;
    if (alertsSeen.has(key)) return;
    alertsSeen.add(key);
    const div = document.createElement("div");
    div.className = "alert";
    div.dataset.kind = e.kind;
    if (e.replayed) div.dataset.replayed = "true";
    const text = document.createElement("span");
    const at = e.at ? new Date(e.at * 1000).toLocaleTimeString() + " " : "";
    text.textContent = at + e.kind + ": " + e.message;
    const close = document.createElement("button");
    close.textContent = "dismiss";
    close.addEventListener("click", () => { div.remove(); if (!$("alerts").children.length) { alertText = null; title(); } });
    div.append(text, close);
    $("alerts").prepend(div);
    while ($("alerts").children.length > MAX_BANNERS) $("alerts").lastChild.remove();
    alertText = e.kind;
    title();
  }

  async function refreshStatus() {
    try { status = await api("GET", "/hot-reload/status"); statusAt = Date.now(); render(); }
    catch (e) { $("action-result").textContent = e.message; }
  }

  function dur(s) {
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + sec + "s";
  }

  function render() {
    if (!status) return;
    $("active").textContent = status.hot_reload_active ? "on" : "paused";
    $("state").textContent = status.state;
    $("mode").textContent = status.mode + (status.program ? " · " + status.program : "");
    $("generation").textContent = String(status.generation);
    $("child-pid").textContent = status.child_pid == null ? "–" : String(status.child_pid);
    $("last-reload").textContent = status.last_reload_ms == null ? "–" : status.last_reload_ms + " ms (" + status.reloads + " reloads)" + (lastReloadAt ? " at " + lastReloadAt.toLocaleTimeString() : "");
    $("failed-builds").textContent = String(status.failed_builds);
    $("crashes").textContent = String(crashes);
    $("last-error").textContent = status.last_error || "none";
    show($("pause"), status.hot_reload_active);
    show($("resume"), !status.hot_reload_active);
    show($("rebuild"), status.mode === "watch");
    if (status.evolution && status.evolution.run_id !== runId) followRun(status.evolution.run_id);
    tick();
    title();
    performance.mark("heph-render:" + status.generation + ":" + status.hot_reload_active);
  }

  function tick() {
    if (status) $("uptime").textContent = dur(status.uptime_s + Math.floor((Date.now() - statusAt) / 1000));
    runTime();
  }
  setInterval(tick, 1000);

  function title() {
    if (!status) return;
    const state = !status.hot_reload_active ? "paused" : status.state;
    document.title = (alertText ? "⚠ " + alertText + " · " : "") + "heph · gen " + status.generation + " · " + state;
  }

  async function action(path) {
    try { status = await api("POST", path); statusAt = Date.now(); render(); $("action-result").textContent = ""; }
    catch (e) { $("action-result").textContent = e.message; }
  }
  $("pause").addEventListener("click", () => action("/hot-reload/disable"));
  $("resume").addEventListener("click", () => action("/hot-reload/enable"));
  $("rebuild").addEventListener("click", () => action("/hot-reload/rebuild"));
  $("trigger").addEventListener("click", async () => {
    try {
      const r = await api("POST", "/hot-reload/trigger-evolution");
      $("action-result").textContent = "evolution run " + r.run_id + " started (log: " + r.log + ")";
      followRun(r.run_id);
    } catch (e) { $("action-result").textContent = "evolution: " + e.message; }
  });

  function cell(tr, text) { const td = document.createElement("td"); td.textContent = text; tr.append(td); return td; }

  // The evolve-runs panel: one run, re-read whenever the stream says it moved.
  function followRun(id) {
    if (!id) return;
    if (id !== runId) { runId = id; run = null; chartKey = null; }
    loadRun();
  }

  async function loadRun() {
    if (runLoading) { runAgain = true; return; }
    runLoading = true;
    try {
      do {
        runAgain = false;
        const id = runId;
        try {
          const r = await api("GET", "/hot-reload/evolve/" + encodeURIComponent(id));
          if (id === runId) { run = r; renderRun(); }
        } catch (e) { /* started, nothing to read yet: the next event retries */ }
      } while (runAgain);
    } finally { runLoading = false; }
  }

  const num = (v) => (v == null ? "–" : Number(v).toPrecision(4));
  const PHASES = { starting: "starting", baseline: "measuring the baseline", candidates: "evaluating candidates", ended: "finishing" };

  function runTime() {
    if (!run) return;
    const bar = $("run-progress");
    const elapsed = run.started_at ? Math.max(0, Math.floor(Date.now() / 1000 - run.started_at)) : 0;
    if (!run.running) { bar.max = 1; bar.value = 1; }
    else if (run.budget_s) { bar.max = run.budget_s; bar.value = Math.min(elapsed, run.budget_s); }
    else bar.removeAttribute("value");
    $("run-time").textContent = run.started_at
      ? (run.running ? dur(elapsed) + (run.budget_s ? " of " + dur(run.budget_s) + " budget" : " elapsed") : "")
      : "";
  }

  function renderRun() {
    show($("run-none"), false); show($("run"), true);
    $("run-id").textContent = "run " + run.run_id;
    $("run-phase").textContent = run.running ? PHASES[run.phase] || run.phase
      : "ended" + (run.stop ? " (" + run.stop + ")" : run.exit_code != null ? " (exit code " + run.exit_code + ")" : "");
    $("run-count").textContent = run.candidates.length + " candidate" + (run.candidates.length === 1 ? "" : "s") + " evaluated";
    $("run-accepted").textContent = run.accepted + " accepted";
    $("run-baseline").textContent = run.baseline_median == null ? "not measured yet" : num(run.baseline_median) + " " + run.unit;
    runTime();
    const body = $("candidates").querySelector("tbody");
    body.replaceChildren();
    for (const c of run.candidates) {
      const tr = document.createElement("tr");
      cell(tr, String(c.id));
      cell(tr, c.description);
      cell(tr, c.module || "");
      cell(tr, c.verdict).className = c.verdict;
      cell(tr, c.gain == null ? "" : (c.gain * 100).toFixed(1) + " % (" + num(c.baseline_median) + " → " + num(c.candidate_median) + ")");
      cell(tr, c.evolution ? "evolution " + c.evolution : (c.reason || "").split("\n")[0]);
      body.append(tr);
    }
    // The chart heph draws (the run's RUN.svg), redrawn when a candidate was measured.
    const key = run.run_id + ":" + run.candidates.length + ":" + run.running;
    if (key !== chartKey) {
      chartKey = key;
      $("run-chart").src = "/hot-reload/evolve/" + encodeURIComponent(run.run_id) + "/chart.svg?v=" + encodeURIComponent(key);
    }
    const failed = !run.running && run.exit_code != null && run.exit_code !== 0 && run.output;
    $("run-output").textContent = failed ? run.output : "";
    show($("run-output"), !!failed);
    performance.mark("heph-run:" + run.candidates.length + ":" + run.running);
  }

  async function refreshHistory() {
    let data;
    try { data = await api("GET", "/hot-reload/evolution-history?limit=50"); } catch (e) { return; }
    const body = $("timeline").querySelector("tbody");
    body.replaceChildren();
    for (const ev of data.evolutions) {
      const m = ev; // the metadata is flattened into the evolution
      const tr = document.createElement("tr");
      tr.dataset.id = ev.id;
      cell(tr, ev.short_id);
      cell(tr, m.kind);
      cell(tr, new Date(ev.timestamp * 1000).toLocaleString());
      cell(tr, m.module || "");
      const c = m.changes || {};
      cell(tr, [].concat((c.added || []).map((i) => "+" + i), (c.replaced || []).map((i) => "~" + i), (c.removed || []).map((i) => "-" + i)).join(" "));
      cell(tr, m.verify ? (typeof m.verify.outcome === "string" ? m.verify.outcome : JSON.stringify(m.verify.outcome)) : "");
      cell(tr, m.fitness ? num(m.fitness.before) + " → " + num(m.fitness.after) : "");
      cell(tr, (m.message || "").split("\n")[0]);
      tr.addEventListener("click", () => openEvolution(ev.id, tr));
      body.append(tr);
    }
  }

  let selected = null;
  async function openEvolution(id, tr) {
    document.querySelectorAll("#timeline tr.sel").forEach((r) => r.classList.remove("sel"));
    tr.classList.add("sel");
    selected = id;
    show($("confirm"), false);
    let d;
    try { d = await api("GET", "/hot-reload/evolution/" + encodeURIComponent(id)); }
    catch (e) { $("detail-summary").textContent = e.message; show($("detail"), true); return; }
    $("detail-id").textContent = d.evolution.short_id;
    $("detail-summary").textContent = d.files.length + " file(s), +" + d.insertions + " −" + d.deletions + " · " + (d.evolution.message || "").split("\n")[0];
    const pre = $("diff");
    pre.replaceChildren();
    for (const line of (d.patch || "(no textual changes)").split("\n")) {
      const span = document.createElement("span");
      if (line.startsWith("+") && !line.startsWith("+++")) span.className = "add";
      else if (line.startsWith("-") && !line.startsWith("---")) span.className = "del";
      else if (line.startsWith("@@")) span.className = "hunk";
      span.textContent = line + "\n";
      pre.append(span);
    }
    show($("detail"), true);
  }

  $("rollback-btn").addEventListener("click", () => {
    if (!selected) return;
    $("confirm-id").textContent = selected.slice(0, 12);
    show($("confirm"), true);
  });
  $("cancel-rollback").addEventListener("click", () => show($("confirm"), false));
  $("confirm-rollback").addEventListener("click", async () => {
    show($("confirm"), false);
    try {
      const r = await api("POST", "/hot-reload/rollback", { to: selected });
      $("action-result").textContent = "rolled back to " + r.target.short_id + " (recorded as " + r.evolution.short_id + ")";
    } catch (e) { $("action-result").textContent = "rollback failed: " + e.message; }
    refreshHistory();
    refreshStatus();
  });

  start();
})();
