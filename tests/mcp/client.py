"""Drive heph's MCP server with the official Python MCP SDK (`mcp` on PyPI).

Run by tests/e2e/mcp.rs:

    client.py stdio HEPH PROJECT        the agent's round trip over stdio
    client.py protocol HEPH PROJECT     bad requests get protocol errors; the server lives on
    client.py concurrent HEPH PROJECT   two clients change one module at once
    client.py http URL TOKEN PROJECT    streamable HTTP with the token; 401 without it
    client.py evolve HEPH PROJECT       an evolution run started, followed and looked up
    client.py tools HEPH PROJECT        the other tools: import, remove, dry runs, listings, watch
    client.py watch HEPH PROJECT        pause and resume a running `heph watch`
    client.py interrupt HEPH PROJECT HOW  stop the server (HOW: eof, sigterm) during a
                                        verification: the files are restored

Each scenario checks what it expects (a failed check exits 1 with the reason on
stderr) and prints a JSON report on stdout for the Rust test to check again.
"""

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

MODULE = "agent::test_hot_reload"
MODULE_FILE = os.path.join("src", "agent", "test_hot_reload.rs")


def check(cond, what):
    if not cond:
        print(f"check failed: {what}", file=sys.stderr)
        sys.exit(1)


def text_of(result):
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


def params(heph, project):
    # The SDK passes a default environment; keep what cargo and git need from ours.
    env = {k: v for k, v in os.environ.items()}
    return StdioServerParameters(command=heph, args=["mcp", "--project", project], env=env)


def read_bytes(project, rel):
    with open(os.path.join(project, rel), "rb") as f:
        return f.read()


async def protocol_error(coro):
    """The MCPError a call raises (a JSON-RPC error), or fail."""
    try:
        await coro
    except MCPError as e:
        return {"code": e.error.code, "message": e.error.message}
    check(False, "expected a protocol error")


async def stdio(heph, project):
    report = {}
    original = read_bytes(project, MODULE_FILE)
    async with stdio_client(params(heph, project)) as (read, write):
        async with ClientSession(read, write) as s:
            init = await s.initialize()
            report["server"] = init.server_info.name
            check(init.capabilities.tools is not None, "the server offers tools")

            tools = (await s.list_tools()).tools
            report["tools"] = sorted(t.name for t in tools)
            for t in tools:
                check(t.input_schema.get("type") == "object", f"{t.name} has an object schema")
                check(bool(t.description), f"{t.name} is described")
            sm = next(t for t in tools if t.name == "self_modify")
            report["self_modify_properties"] = sorted(sm.input_schema["properties"])
            check("module" in sm.input_schema.get("required", []), "self_modify requires module")

            r = await s.call_tool("read_module", {"module": "agent.test_hot_reload"})
            check(not r.is_error, f"read_module works: {text_of(r)}")
            doc = r.structured_content
            report["read_module"] = {
                "module": doc["module"],
                "file": doc["file"],
                "items": [[i["key"], i["start_line"], i["end_line"]] for i in doc["items"]],
            }
            check(doc["source"].encode() == original, "read_module returns the file's source")

            r = await s.call_tool("read_module", {"module": "agent::test_hot_reloaded"})
            check(r.is_error, "an unknown module is a tool error")
            report["unknown_module"] = r.structured_content["error"]

            # A change that does not compile: a tool error, the file byte-identical.
            progress = []

            async def on_progress(p, total, message):
                progress.append(message)

            r = await s.call_tool(
                "self_modify",
                {"module": MODULE, "code": "pub fn test_function() -> &'static str { 42 }"},
                progress_callback=on_progress,
            )
            check(r.is_error, "a type error is a tool error")
            report["type_error"] = {
                "text": text_of(r),
                "accepted": r.structured_content["accepted"],
                "rolled_back": r.structured_content["rolled_back"],
                "verify_errors": r.structured_content["verify"]["errors"],
                "identical": read_bytes(project, MODULE_FILE) == original,
                "progress": progress,
            }
            check(read_bytes(project, MODULE_FILE) == original, "the file is byte-identical")

            # A good change, verified.
            good = 'pub fn test_function() -> &\'static str {\n    "version 3 - from MCP"\n}'
            r = await s.call_tool("self_modify", {"module": MODULE, "code": good})
            check(not r.is_error, f"a good change is accepted: {text_of(r)}")
            doc = r.structured_content
            report["good"] = {
                "changes": doc["changes"],
                "verify": doc["verify"]["outcome"],
                "evolution_id": doc["evolution_id"],
                "diff_has_change": '+    "version 3 - from MCP"' in (doc["diff"] or ""),
            }
            check("version 3 - from MCP" in read_bytes(project, MODULE_FILE).decode(), "written")
            good_id = doc["evolution_id"]

            r = await s.call_tool("history", {"limit": 10, "kind": "self-modify"})
            check(not r.is_error, "history works")
            evolutions = r.structured_content["evolutions"]
            report["history"] = [[e["short_id"], e["kind"], e.get("module")] for e in evolutions]
            check(evolutions and evolutions[0]["short_id"] == good_id, "history shows it first")

            r = await s.call_tool("show", {"id": good_id})
            check(not r.is_error, "show works")
            report["show_has_diff"] = "version 3 - from MCP" in (r.structured_content.get("patch") or "")

            # Back to the evolution before the change: the original bytes.
            parent = evolutions[0]["parent"]
            r = await s.call_tool("rollback", {"id": parent})
            check(not r.is_error, f"rollback works: {text_of(r)}")
            report["rollback"] = {
                "restored": r.structured_content["restored"],
                "identical": read_bytes(project, MODULE_FILE) == original,
            }
            check(read_bytes(project, MODULE_FILE) == original, "rollback restores the file")

            r = await s.call_tool("find_item", {"name": "ReloadCounter::bump"})
            report["find_item"] = [[i["module"], i["key"]] for i in r.structured_content["items"]]
    print(json.dumps(report))


async def protocol(heph, project):
    report = {}
    original = read_bytes(project, MODULE_FILE)
    async with stdio_client(params(heph, project)) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            report["unknown_tool"] = await protocol_error(s.call_tool("no_such_tool", {}))
            # Arguments that do not fit the schema: a tool error the model can read
            # and correct (the MCP specification's rule since 2025-11-25, which the
            # SDK applies), not a protocol error.
            for name, tool, args in [
                ("wrong_type", "read_module", {"module": 42}),
                ("missing_argument", "self_modify", {}),
                ("unknown_argument", "read_module", {"module": MODULE, "modul": "x"}),
            ]:
                r = await s.call_tool(tool, args)
                check(r.is_error, f"{name} is a tool error")
                report[name] = text_of(r)
            huge = "pub fn f() {}\n" + "// padding\n" * (900 * 1024)
            report["huge_bytes"] = len(huge)
            report["huge"] = await protocol_error(
                s.call_tool("self_modify", {"module": MODULE, "code": huge})
            )
            # Still answering.
            r = await s.call_tool("read_module", {"module": MODULE})
            report["after"] = not r.is_error
    check(read_bytes(project, MODULE_FILE) == original, "nothing was written")

    # Malformed JSON-RPC, written by hand on the server's stdin.
    p = subprocess.Popen(
        [heph, "mcp", "--project", project],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )

    def send(line):
        p.stdin.write(line.encode() + b"\n")
        p.stdin.flush()

    def answer():
        line = p.stdout.readline()
        check(line, "the server answered")
        return json.loads(line)

    send(json.dumps({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "raw", "version": "0"}},
    }))
    report["raw_initialize"] = "result" in answer()
    send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
    send("{this is not json")
    report["malformed"] = answer().get("error")
    send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "no/such/method"}))
    report["unknown_method"] = answer().get("error")
    send("x" * (17 * 1024 * 1024))
    report["oversized"] = answer().get("error")
    send(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}))
    report["raw_after"] = len(answer()["result"]["tools"])
    p.stdin.close()
    report["exit"] = p.wait(timeout=30)
    print(json.dumps(report))


async def one_client(heph, project, name, start):
    async with stdio_client(params(heph, project)) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            await start.wait()
            r = await s.call_tool(
                "self_modify",
                {"module": MODULE, "code": f'pub fn {name}() -> u32 {{ 7 }}', "skip_verify": True},
            )
            doc = r.structured_content
            return {
                "is_error": bool(r.is_error),
                "text": text_of(r),
                "evolution_id": doc.get("evolution_id"),
            }


async def concurrent(heph, project):
    start = asyncio.Event()
    tasks = [
        asyncio.create_task(one_client(heph, project, "added_by_first", start)),
        asyncio.create_task(one_client(heph, project, "added_by_second", start)),
    ]
    await asyncio.sleep(1.0)
    start.set()
    results = await asyncio.gather(*tasks)
    text = read_bytes(project, MODULE_FILE).decode()
    report = {
        "results": results,
        "has_first": "fn added_by_first" in text,
        "has_second": "fn added_by_second" in text,
    }
    print(json.dumps(report))


async def tools(heph, project):
    report = {}
    async with stdio_client(params(heph, project)) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            r = await s.call_tool("list_modules", {})
            check(not r.is_error, "list_modules works")
            report["modules"] = [m["module"] for m in r.structured_content["modules"]]
            r = await s.call_tool("list_modules", {"package": "nope"})
            report["unknown_package"] = r.structured_content["error"]

            # A dry run: the diff, nothing written.
            before = read_bytes(project, MODULE_FILE)
            r = await s.call_tool(
                "self_modify",
                {"module": MODULE, "code": "pub fn planned() -> u8 { 1 }", "dry_run": True},
            )
            check(not r.is_error, f"dry run works: {text_of(r)}")
            report["dry_run"] = {
                "dry_run": r.structured_content["dry_run"],
                "diff_has_it": "+pub fn planned() -> u8 {" in r.structured_content["diff"],
                "unchanged": read_bytes(project, MODULE_FILE) == before,
            }

            # Remove an item by the key read_module lists, with a custom verify command.
            r = await s.call_tool(
                "self_modify",
                {"module": MODULE, "code": "impl ReloadCounter { pub fn reset(&mut self) { self.count = 0; } }",
                 "skip_verify": True},
            )
            check(not r.is_error, f"merging into an impl works: {text_of(r)}")
            r = await s.call_tool(
                "self_modify",
                {"module": MODULE, "mode": "remove", "items": ["fn ReloadCounter::reset"],
                 "verify": "cargo check --lib"},
            )
            check(not r.is_error, f"remove works: {text_of(r)}")
            report["remove"] = {
                "changes": r.structured_content["changes"],
                "verify_command": r.structured_content["verify"]["command"],
                "gone": "fn reset(" not in read_bytes(project, MODULE_FILE).decode(),
            }
            r = await s.call_tool(
                "self_modify", {"module": MODULE, "mode": "remove", "code": "fn x() {}"}
            )
            report["remove_with_code"] = r.structured_content["error"]
            r = await s.call_tool(
                "self_modify", {"module": MODULE, "mode": "remove", "items": ["fn no_such_item"]}
            )
            report["remove_unknown_item"] = r.structured_content["error"]

            # A new module, built and called.
            r = await s.call_tool(
                "import",
                {"name": "dynamic_module",
                 "code": "pub fn hello() -> &'static str { \"Hello from dynamic code!\" }",
                 "run": "hello"},
            )
            check(not r.is_error, f"import works: {text_of(r)}")
            report["import"] = {
                "created": r.structured_content["created"],
                "value": r.structured_content["run"]["value"],
                "text_has_value": "returned \"Hello from dynamic code!\"" in text_of(r),
            }
            r = await s.call_tool("import", {"name": "dynamic_module", "code": "pub fn again() {}"})
            report["import_existing"] = r.structured_content["error"]

            # No `heph watch` running: an environment error.
            r = await s.call_tool("watch_status", {})
            check(r.is_error, "watch_status without a watch is a tool error")
            report["watch_status"] = r.structured_content["error"]["category"]

            r = await s.call_tool("rollback", {"id": "0000000", "last": True})
            report["rollback_both"] = r.structured_content["error"]
            r = await s.call_tool("show", {"id": "ffffffff"})
            report["show_unknown"] = r.structured_content["error"]["category"]
    print(json.dumps(report))


async def watch(heph, project):
    report = {}
    async with stdio_client(params(heph, project)) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            for tool in ["watch_status", "watch_pause", "watch_status", "watch_resume"]:
                r = await s.call_tool(tool, {})
                check(not r.is_error, f"{tool} works: {text_of(r)}")
                report.setdefault("paused", []).append(r.structured_content["paused"])
            report["text"] = text_of(r)
    print(json.dumps(report))


async def interrupt(heph, project, how):
    import signal
    import time

    original = read_bytes(project, MODULE_FILE)
    p = subprocess.Popen(
        [heph, "mcp", "--project", project],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )

    def send(msg):
        p.stdin.write(json.dumps(msg).encode() + b"\n")
        p.stdin.flush()

    send({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "raw", "version": "0"}},
    })
    check("result" in json.loads(p.stdout.readline()), "initialized")
    send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    send({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "self_modify", "arguments": {
            "module": MODULE, "code": "pub fn interrupted() -> u32 { 1 }",
            "verify": "sleep 120"}},
    })
    # Wait (bounded) until the change is written and the verification runs.
    deadline = time.monotonic() + 60
    while read_bytes(project, MODULE_FILE) == original:
        check(time.monotonic() < deadline, "the change was written")
        time.sleep(0.05)
    written = b"fn interrupted" in read_bytes(project, MODULE_FILE)
    if how == "eof":
        p.stdin.close()
    else:
        p.send_signal(signal.SIGTERM)
    code = p.wait(timeout=100)
    print(json.dumps({
        "written_meanwhile": written,
        "exit": code,
        "restored": read_bytes(project, MODULE_FILE) == original,
    }))


async def evolve(heph, project):
    report = {}
    async with stdio_client(params(heph, project)) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            progress = []

            async def on_progress(p, total, message):
                progress.append(message)

            r = await s.call_tool(
                "evolve_start",
                {
                    "fitness": "true",
                    "targets": ["crate::dedup"],
                    "max_candidates": 1,
                    "budget": "5m",
                    "wait": True,
                },
                read_timeout_seconds=900,
                progress_callback=on_progress,
            )
            check(not r.is_error, f"evolve_start works: {text_of(r)}")
            doc = r.structured_content
            report["waited"] = {
                "run_id": doc["run_id"],
                "running": doc["running"],
                "stop": doc["stop"],
                "candidates": len(doc["candidates"]),
                "baseline": doc["baseline_median"] is not None,
                "text": text_of(r),
            }
            report["progress"] = progress
            run_id = doc["run_id"]
            r = await s.call_tool("evolve_status", {"id": run_id})
            check(not r.is_error, "evolve_status works")
            report["status"] = {"run_id": r.structured_content["run_id"],
                                "running": r.structured_content["running"],
                                "stop": r.structured_content["stop"]}
            r = await s.call_tool("evolve_status", {"id": "no-such-run"})
            check(r.is_error, "an unknown run is a tool error")
            report["unknown"] = r.structured_content["error"]
            # Without waiting: the id at once.
            r = await s.call_tool(
                "evolve_start",
                {"fitness": "true", "targets": ["crate::dedup"], "max_candidates": 1},
            )
            check(not r.is_error, f"evolve_start without wait: {text_of(r)}")
            report["started"] = sorted(r.structured_content)
            r = await s.call_tool("evolve_start", {"fitness": "true"})
            report["second_while_running"] = r.structured_content.get("error")
    print(json.dumps(report))


async def http(url, token, project):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    report = {}
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=120) as client:
        async with streamable_http_client(url, http_client=client) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as s:
                await s.initialize()
                tools = (await s.list_tools()).tools
                report["tools"] = sorted(t.name for t in tools)
                r = await s.call_tool("read_module", {"module": MODULE})
                report["read_module"] = r.structured_content["file"]
                r = await s.call_tool(
                    "self_modify",
                    {"module": MODULE, "code": "pub fn over_http() -> u32 { 1 }", "skip_verify": True},
                )
                report["self_modify"] = {"is_error": bool(r.is_error), "text": text_of(r)}
    check("fn over_http" in read_bytes(project, MODULE_FILE).decode(), "written over HTTP")

    body = json.dumps({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "raw", "version": "0"}},
    }).encode()
    for name, auth in [("no_token", None), ("wrong_token", "Bearer wrong")]:
        req = urllib.request.Request(url, data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        req.add_header("Accept", "application/json, text/event-stream")
        if auth:
            req.add_header("Authorization", auth)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                report[name] = resp.status
        except urllib.error.HTTPError as e:
            report[name] = e.code
    print(json.dumps(report))


def main():
    scenario, args = sys.argv[1], sys.argv[2:]
    run = {
        "stdio": stdio,
        "protocol": protocol,
        "concurrent": concurrent,
        "http": http,
        "evolve": evolve,
        "tools": tools,
        "watch": watch,
        "interrupt": interrupt,
    }[scenario]
    asyncio.run(run(*args))


if __name__ == "__main__":
    main()
