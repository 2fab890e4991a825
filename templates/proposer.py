#!/usr/bin/env python3
"""An example proposer for `heph evolve --proposer 'python3 templates/proposer.py'`.

Protocol (see README, "heph evolve"): heph writes a JSON context on stdin (the
project, the target modules with their source, the history of the run so far, the
current fitness) and reads a JSON list of candidates on stdout:

    [{"module": "crate::dedup", "code": "pub fn unique(..) { .. }",
      "mode": "merge", "description": "what it does"}]

`merge` replaces the items with the same name (or adds them); `replace` replaces the
whole module. Anything on stderr is shown when the proposer fails.

Two strategies, standard library only:
- With HEPH_LLM_URL (an OpenAI-compatible chat-completions endpoint), HEPH_LLM_MODEL
  and optionally HEPH_LLM_KEY set, ask the model for candidates.
- Otherwise, a small pattern-based rewrite: quadratic de-duplication loops
  (`if !out.contains(&x) { out.push(x) }`) get a HashSet of the values seen.
"""

import json
import os
import re
import sys
import urllib.request

DEDUP = re.compile(
    r"for\s+(?P<pat>&?\s*(?P<var>\w+))\s+in\s+(?P<input>[^{]+?)\s*\{\s*"
    r"if\s+!\s*(?P<out>\w+)\.contains\(\s*&(?P=var)\s*\)\s*\{\s*"
    r"(?P=out)\.push\(\s*(?P<pushed>[^;]*?)\s*\);?\s*\}\s*\}",
    re.S,
)


def functions(source):
    """(name, text) of each top-level `fn` item, found by brace matching."""
    for m in re.finditer(r"(?m)^(?:pub(?:\([^)]*\))?\s+)?fn\s+(\w+)", source):
        start = m.start()
        # Include the doc comments right above.
        lines = source[:start].split("\n")
        while len(lines) > 1 and lines[-2].strip().startswith("///"):
            lines.pop(-2)
        start = len("\n".join(lines[:-1])) + (1 if len(lines) > 1 else 0)
        depth, i = 0, source.index("{", m.end())
        while i < len(source):
            if source[i] == "{":
                depth += 1
            elif source[i] == "}":
                depth -= 1
                if depth == 0:
                    yield m.group(1), source[start : i + 1]
                    break
            i += 1


def heuristic(context):
    out = []
    for target in context.get("targets", []):
        for name, text in functions(target["source"]):
            m = DEDUP.search(text)
            if not m:
                continue
            loop = (
                "let mut seen = std::collections::HashSet::new();\n"
                f"    for {m['pat']} in {m['input']} {{\n"
                f"        if seen.insert({m['var']}) {{\n"
                f"            {m['out']}.push({m['pushed']});\n"
                "        }\n"
                "    }"
            )
            out.append(
                {
                    "module": target["module"],
                    "code": text[: m.start()] + loop + text[m.end() :],
                    "mode": "merge",
                    "description": f"{name}: a HashSet of the values seen instead of Vec::contains (O(n) instead of O(n²))",
                }
            )
    return out


def ask_model(context):
    prompt = (
        "You improve the performance of Rust code without changing its behaviour. "
        "Reply with a JSON list only: "
        '[{"module": "...", "code": "...", "mode": "merge", "description": "..."}], '
        "where code holds complete Rust items replacing the items of the same name.\n\n"
        + json.dumps(
            {k: context[k] for k in ("fitness", "targets", "history") if k in context}
        )
    )
    body = json.dumps(
        {
            "model": os.environ.get("HEPH_LLM_MODEL", ""),
            "messages": [{"role": "user", "content": prompt}],
        }
    ).encode()
    req = urllib.request.Request(
        os.environ["HEPH_LLM_URL"],
        data=body,
        headers={
            "Content-Type": "application/json",
            "Authorization": "Bearer " + os.environ.get("HEPH_LLM_KEY", ""),
        },
    )
    with urllib.request.urlopen(req, timeout=300) as resp:
        reply = json.load(resp)["choices"][0]["message"]["content"]
    start, end = reply.find("["), reply.rfind("]")
    return json.loads(reply[start : end + 1])


def main():
    context = json.load(sys.stdin)
    if context.get("protocol") != 1:
        print(f"unknown protocol {context.get('protocol')}", file=sys.stderr)
        return 1
    candidates = ask_model(context) if os.environ.get("HEPH_LLM_URL") else heuristic(context)
    json.dump(candidates, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
