"""Encryption at rest: what it costs an append (docs/encryption.md).

Contenders, alternated block by block (see ``bench/common.py``), one thread, each appending to
its own memory of ``bench-plain`` (150-character messages, every text unique):

- ``append plain``: no key ring (the default);
- ``append encrypted``: ``MEMORY_ENCRYPTION_KEYS`` set (AES-256-GCM, one envelope per message);
- ``append encrypted +tool/meta``: encrypted, every message with metadata (the sealed JSON
  grows; still one envelope).

Also reported: ``read()`` of a 200-message memory with and without encryption (decrypting every
element), and the stored bytes per message.

Run: ``.venv/bin/python bench/encryption.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import base64
import os
from typing import Any

import redis
from common import (
    Contender,
    Report,
    Target,
    TextSource,
    alternate,
    bench_client,
    console,
    paired_ratio,
    redis_server,
    summarize_samples,
)
from pydantic import SecretStr

READ_LENGTH = 200
# The overhead a deployment can afford on the append path: AES-GCM of ~200 bytes costs a few
# microseconds; the round trip to Redis dominates an append.
MAX_P50_RATIO = 1.25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    args = parser.parse_args()
    rounds = 3 if args.quick else 12
    ops = 200 if args.quick else 1000

    report = Report("encryption", "append with and without encryption at rest, one thread")
    report.config = {"rounds": rounds, "ops_per_block": ops, "message_chars": 150}
    texts = TextSource()
    keys = SecretStr(f"bench:{base64.b64encode(os.urandom(32)).decode()}")
    with redis_server() as url:
        plain_client = bench_client(url)
        enc_client = bench_client(url, encryption_keys=keys)
        ctx = {"workflow": {"input": {"conv": "enc"}}}
        plain = plain_client.memory("bench-plain", ctx)
        enc = enc_client.memory("bench-plain", {"workflow": {"input": {"conv": "enc2"}}})
        enc_meta = enc_client.memory("bench-plain", {"workflow": {"input": {"conv": "enc3"}}})
        pools: dict[str, list[dict[str, Any]]] = {}

        def make(name: str, meta: bool = False) -> None:
            out = [texts.message() for _ in range(ops)]
            if meta:
                out = [{**m, "metadata": {"source": "web", "ticket": i}} for i, m in enumerate(out)]
            pools[name] = out

        contenders = [
            Contender(
                "append plain",
                lambda _t, i: plain.append(pools["plain"][i]),
                setup=lambda: make("plain"),
            ),
            Contender(
                "append encrypted",
                lambda _t, i: enc.append(pools["enc"][i]),
                setup=lambda: make("enc"),
            ),
            Contender(
                "append encrypted +metadata",
                lambda _t, i: enc_meta.append(pools["meta"][i]),
                setup=lambda: make("meta", meta=True),
            ),
        ]
        try:
            console.print(f"[bold]append[/bold]: {rounds} rounds of {ops} ...")
            samples = alternate(contenders, rounds=rounds, ops_per_thread=ops)
            base = samples["append plain"]
            for c in contenders:
                summary = summarize_samples(samples[c.name])
                report.rows.append(
                    {
                        "contender": c.name,
                        **summary,
                        "p50_vs_plain": paired_ratio(samples[c.name], base, lambda s: s.p(50)),
                    }
                )
            ratio = paired_ratio(samples["append encrypted"], base, lambda s: s.p(50))
            report.targets.append(
                Target("encrypted append p50 / plain p50", ratio, MAX_P50_RATIO, "<=", "x")
            )

            # Reads: decrypting every element of a READ_LENGTH-message memory.
            read_plain = plain_client.memory("bench-plain", {"workflow": {"input": {"conv": "r1"}}})
            read_enc = enc_client.memory("bench-plain", {"workflow": {"input": {"conv": "r2"}}})
            batch = [texts.message() for _ in range(READ_LENGTH)]
            read_plain.append_many(batch)
            read_enc.append_many(batch)
            read_samples = alternate(
                [
                    Contender(f"read() {READ_LENGTH} plain", lambda _t, _i: read_plain.read()),
                    Contender(f"read() {READ_LENGTH} encrypted", lambda _t, _i: read_enc.read()),
                ],
                rounds=rounds,
                ops_per_thread=20 if args.quick else 100,
                warmup_ops=5,
            )
            for name, s in read_samples.items():
                report.rows.append({"contender": name, **summarize_samples(s)})
            r = redis.Redis.from_url(url)
            sizes = {
                "plain": sum(map(len, r.lrange(read_plain.keys.msgs, 0, -1))) / READ_LENGTH,
                "encrypted": sum(map(len, r.lrange(read_enc.keys.msgs, 0, -1))) / READ_LENGTH,
            }
            report.extra["stored_bytes_per_message"] = sizes
            report.notes.append(
                f"stored bytes per 150-character message: {sizes['plain']:.0f} plain, "
                f"{sizes['encrypted']:.0f} encrypted (base64 of nonce + ciphertext + tag)"
            )
        finally:
            plain_client.close()
            enc_client.close()
        report.finish(url)


if __name__ == "__main__":
    main()
