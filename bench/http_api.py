"""HTTP append: ``POST /v1/memories/{resource}/{key}/messages`` through ``memory-engine``'s app
on uvicorn, against a floor on the same server stack.

One uvicorn process (httptools, uvloop when installed: uvicorn's "auto") serves both contenders:

- ``http append``: the real app (the gate: body limit, bearer auth, metrics; FastAPI routing and
  validation; :class:`~memory_engine.aio.AsyncMemoryClient`'s append: validation, token count,
  the append script, one round trip), resource ``bench-plain``;
- ``floor``: a bare ASGI endpoint at ``/floor/<n>`` in the same process that reads the body,
  decodes the JSON and does ``MULTI RPUSH HINCRBY EXPIRE EXEC`` in one pipeline over
  ``redis.asyncio`` with the engine's connection options: the least a server can do to store a
  message with a counter and a TTL in one round trip.

The load generator is a minimal HTTP/1.1 keep-alive client on raw asyncio sockets (one
connection per simulated client, one request in flight each), so its own cost stays small on a
shared machine. Blocks alternate between contenders, the order rotating each round; figures are
medians over rounds (``bench/common.py``). Reports p50 and throughput with 1 and 32 concurrent
clients, and requests per CPU-second of the server process (= requests/s per core).

Targets (issue 14): p50 <= 1.3x the floor's, throughput >= 0.8x the floor's.

Run: ``.venv/bin/python bench/http_api.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    Report,
    Sample,
    Target,
    TextSource,
    bench_settings,
    median,
    paired_ratio,
    redis_server,
    summarize_samples,
)

TOKEN = "bench-token-0123456789"
TTL_S = 3600
APP = "http append"
FLOOR = "floor (bare ASGI + redis.asyncio)"
CLIENTS = (1, 32)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- the server (``--serve``: runs in its own process) -------------------------------------------


def serve(port: int) -> None:
    import uvicorn

    from memory_engine.server.app import create_app
    from memory_engine.settings import load_settings
    from memory_engine.store.connections import async_redis_from_settings

    settings = load_settings()
    app = create_app(settings, mcp=False)
    state: dict[str, Any] = {}
    prefix = settings.key_prefix

    async def floor(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        content = json.loads(body)["messages"][0]["content"]
        n = scope["path"].rsplit("/", 1)[1]
        r = state.get("redis")
        if r is None:
            r = state["redis"] = async_redis_from_settings(settings)
        pipe = r.pipeline(transaction=True)
        pipe.rpush(f"{prefix}:floor:{n}:msgs", content)
        pipe.hincrby(f"{prefix}:floor:{n}:meta", "message_count", 1)
        pipe.expire(f"{prefix}:floor:{n}:msgs", TTL_S)
        replies = await pipe.execute()
        payload = json.dumps({"stored": True, "message_count": replies[1]}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(payload)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def both(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/floor/"):
            await floor(scope, receive, send)
        else:
            await app(scope, receive, send)

    uvicorn.run(both, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---- the load generator ------------------------------------------------------------------------


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def post(self, path: str, body: bytes, headers: bytes) -> int:
        self.writer.write(
            b"POST %s HTTP/1.1\r\nhost: b\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n%s\r\n%s" % (path.encode(), len(body), headers, body)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status


async def block(
    conns: list[Connection], contender: str, ops_per_client: int, texts: TextSource, rnd: int
) -> Sample:
    clock = time.perf_counter_ns
    latencies: list[int] = []
    auth = b"authorization: Bearer %s\r\n" % TOKEN.encode()

    async def client(i: int, conn: Connection) -> None:
        path = f"/v1/memories/bench-plain/conv:{i}/messages" if contender == APP else f"/floor/{i}"
        for _ in range(ops_per_client):
            body = json.dumps({"messages": [{"role": "user", "content": texts.next()}]}).encode()
            t0 = clock()
            status = await conn.post(path, body, auth)
            latencies.append(clock() - t0)
            if status != 200:
                raise RuntimeError(f"{contender}: HTTP {status}")

    start = clock()
    await asyncio.gather(*(client(i, c) for i, c in enumerate(conns)))
    return Sample(latencies, (clock() - start) / 1e9)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the bench server exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the bench server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    rounds = 3 if args.quick else 8
    ops_total = 300 if args.quick else 1600  # per block, split over the clients

    from memory_engine.tooling.embedded_redis import free_port

    report = Report("http_api", "HTTP append vs a bare ASGI floor: latency (us), throughput")
    report.config = {"rounds": rounds, "requests_per_block": ops_total, "clients": CLIENTS}
    texts = TextSource(email_every=0)
    with redis_server() as url:
        settings = bench_settings(url, redis_max_connections=64)
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MEMORY_")},
            "MEMORY_REDIS_URL": url,
            "MEMORY_BROKER_URL": settings.broker_dsn(),
            "MEMORY_KEY_PREFIX": settings.key_prefix,
            "MEMORY_RESOURCES_DIR": str(settings.resources_dir),
            "MEMORY_REDIS_MAX_CONNECTIONS": "64",
            "MEMORY_API_KEYS": f"bench:{TOKEN}",
        }
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port)], env=env, cwd=Path(__file__).parent
        )
        try:
            wait_for_port(port, proc)
            loop = asyncio.new_event_loop()
            targets: list[Target] = []
            per_core: dict[str, float] = {}
            for n in CLIENTS:
                conns = [
                    Connection(*loop.run_until_complete(asyncio.open_connection("127.0.0.1", port)))
                    for _ in range(n)
                ]
                per_client = max(1, ops_total // n)
                samples: dict[str, list[Sample]] = {APP: [], FLOOR: []}
                cpu: dict[str, list[float]] = {APP: [], FLOOR: []}
                for name in samples:  # warm: connections, scripts, lazy imports
                    loop.run_until_complete(block(conns, name, per_client, texts, -1))
                for r in range(rounds):
                    order = [APP, FLOOR] if r % 2 == 0 else [FLOOR, APP]
                    for name in order:
                        c0 = cpu_s(proc.pid)
                        s = loop.run_until_complete(block(conns, name, per_client, texts, r))
                        samples[name].append(s)
                        cpu[name].append(s.ops / max(cpu_s(proc.pid) - c0, 1e-9))
                for name, s in samples.items():
                    per_core[f"{name}, {n} clients"] = round(median(cpu[name]), 1)
                    report.rows.append(
                        {
                            "contender": f"{name}, {n} clients",
                            **summarize_samples(s),
                            "req per server cpu-s": round(median(cpu[name]), 1),
                            "p50 vs floor": paired_ratio(s, samples[FLOOR], lambda x: x.p(50)),
                            "ops/s vs floor": paired_ratio(
                                s, samples[FLOOR], lambda x: x.ops_per_s
                            ),
                        }
                    )
                targets.append(
                    Target(
                        f"p50 http append / floor, {n} clients",
                        paired_ratio(samples[APP], samples[FLOOR], lambda x: x.p(50)),
                        1.3,
                        op="<=",
                        unit="x",
                    )
                )
                targets.append(
                    Target(
                        f"throughput http append / floor, {n} clients",
                        paired_ratio(samples[APP], samples[FLOOR], lambda x: x.ops_per_s),
                        0.8,
                        op=">=",
                        unit="x",
                    )
                )
                for c in conns:
                    c.writer.close()
            loop.close()
            report.targets.extend(targets)
            report.extra["requests_per_server_cpu_s"] = per_core
            report.notes.append(
                "one uvicorn process (one core at most); 'req per server cpu-s' is requests per "
                "CPU-second of that process (utime+stime from /proc), i.e. requests/s per core"
            )
        finally:
            proc.terminate()
            proc.wait(timeout=15)
        report.finish(url)


if __name__ == "__main__":
    main()
