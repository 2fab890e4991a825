"""Tool-call round trips of `heph mcp` over stdio, with the official Python MCP SDK.

    mcp_bench.py HEPH PROJECT N

One session; after 5 warm-up calls, N calls of `read_module` and N of `self_modify`
with `skip_verify` (each adding a new function, so each one writes the module and
records an evolution), each timed from the request to its answer. Prints one JSON line.
"""

import asyncio
import json
import statistics
import sys
import time

from mcp import ClientSession, StdioServerParameters, stdio_client

MODULE = "agent::test_hot_reload"


def summary(samples):
    s = sorted(samples)
    return {
        "n": len(s),
        "mean_ms": round(statistics.fmean(s) * 1000, 2),
        "p50_ms": round(s[len(s) // 2] * 1000, 2),
        "p90_ms": round(s[int(len(s) * 0.9)] * 1000, 2),
        "max_ms": round(s[-1] * 1000, 2),
    }


async def main(heph, project, n):
    params = StdioServerParameters(command=heph, args=["mcp", "--project", project])
    start = time.perf_counter()
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            started = time.perf_counter() - start
            for _ in range(5):
                await s.call_tool("read_module", {"module": MODULE})
            reads = []
            for _ in range(n):
                t = time.perf_counter()
                r = await s.call_tool("read_module", {"module": MODULE})
                reads.append(time.perf_counter() - t)
                assert not r.is_error
            writes = []
            for i in range(n):
                code = f"pub fn mcp_item_{i}() -> u32 {{ {i} }}"
                t = time.perf_counter()
                r = await s.call_tool(
                    "self_modify", {"module": MODULE, "code": code, "skip_verify": True}
                )
                writes.append(time.perf_counter() - t)
                assert not r.is_error, r
    print(json.dumps({
        "session_start_ms": round(started * 1000, 1),
        "read_module": summary(reads),
        "self_modify": summary(writes),
    }))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
