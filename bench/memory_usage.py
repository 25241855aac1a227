"""Redis memory per message: ``MEMORY USAGE`` of one memory's keys over what its messages say.

A memory of 1,000 messages with 150-character contents (roles alternate user/assistant) is written
through ``Memory.append_many``. Its keys (``msgs`` list, ``meta`` hash, ``summary`` hash if any) are
measured with ``MEMORY USAGE <key> SAMPLES 0`` (every element, not an estimate) and divided by the
bytes of role plus content. Target: at most 1.5x.

To show where the bytes go, the same 1,000 messages are also stored in scratch lists under other
encodings (the engine's wire format is not changed here): bare ``role + content`` (the list's own
overhead), shorter field names, integer timestamps, a positional array, and LangChain's format.

Run: ``.venv/bin/python bench/memory_usage.py``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import redis
from common import (
    Report,
    Target,
    TextSource,
    bench_client,
    console,
    delete_prefix,
    redis_server,
)

from memory_engine.messages import Message

LENGTH = 1_000
BATCH = 100
TARGET_RATIO = 1.5
ROLE_CODES = {"system": "s", "user": "u", "assistant": "a", "tool": "t"}


def usage(r: redis.Redis, key: str) -> int:
    value = r.memory_usage(key, samples=0)
    return int(value) if value is not None else 0


def field_costs(element: str) -> dict[str, int]:
    """Bytes each field of one stored message takes in its JSON (name, quotes, colon, comma)."""
    data = json.loads(element)
    out: dict[str, int] = {}
    for name, value in data.items():
        encoded = json.dumps({name: value}, ensure_ascii=False, separators=(",", ":"))
        out[name] = len(encoded.encode()) - 2 + 1  # minus the braces, plus a comma
    out["{}"] = 2 - 1  # the braces, minus the comma the last field does not have
    return out


def _lc(role: str, content: str) -> str:
    from langchain_core.messages import AIMessage, HumanMessage, message_to_dict

    msg = HumanMessage(content=content) if role == "user" else AIMessage(content=content)
    return json.dumps(message_to_dict(msg))


ENCODINGS: dict[str, Callable[[dict[str, Any]], str]] = {
    "bare role+content": lambda m: m["role"] + m["content"],
    "short names": lambda m: json.dumps(
        {
            "s": m["seq"],
            "t": m["token_count"],
            "r": m["role"],
            "c": m["content"],
            "ts": m["created_at"],
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ),
    "short names, role code, ts in ms": lambda m: json.dumps(
        {
            "s": m["seq"],
            "t": m["token_count"],
            "r": ROLE_CODES[m["role"]],
            "c": m["content"],
            "ts": int(m["created_at"] * 1000),
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ),
    "array [seq,tokens,role,ms,content]": lambda m: json.dumps(
        [
            m["seq"],
            m["token_count"],
            ROLE_CODES[m["role"]],
            int(m["created_at"] * 1000),
            m["content"],
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    ),
    "current, no created_at": lambda m: json.dumps(
        {k: v for k, v in m.items() if k != "created_at"},
        ensure_ascii=False,
        separators=(",", ":"),
    ),
    "langchain message_to_dict": lambda m: _lc(m["role"], m["content"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="accepted for run_all; same run")
    parser.parse_args()

    report = Report("memory_usage", f"Redis memory per message, {LENGTH:,} messages of 150 chars")
    texts = TextSource(email_every=0)
    with redis_server() as url:
        client = bench_client(url)
        r = redis.Redis.from_url(url, decode_responses=True)
        prefix = client.settings.key_prefix
        try:
            memory = client.memory("bench-plain", {"workflow": {"input": {"conv": "usage"}}})
            for start in range(0, LENGTH, BATCH):
                memory.append_many(
                    [
                        {
                            "role": "user" if (start + i) % 2 == 0 else "assistant",
                            "content": texts.next(),
                        }
                        for i in range(BATCH)
                    ]
                )
            keys = memory.keys
            stored = [str(x) for x in r.lrange(keys.msgs, 0, -1)]
            # Long field names for the alternative encodings below; the engine's own decoder reads
            # whatever the wire format is.
            messages = [
                {
                    "seq": m.seq,
                    "token_count": m.token_count,
                    "role": m.role.value,
                    "content": m.content,
                    "created_at": m.created_at,
                }
                for m in (Message.from_wire(x) for x in stored)
            ]
            payload = sum(len((m["role"] + m["content"]).encode()) for m in messages)
            per_key = {name: usage(r, getattr(keys, name)) for name in ("msgs", "meta", "summary")}
            total = sum(per_key.values())
            element_bytes = sum(len(x.encode()) for x in stored)
            config = r.config_get("list-max-listpack-size")
            report.config = {
                "messages": LENGTH,
                "content_chars": 150,
                "roles": "user/assistant alternating",
                "list_max_listpack_size": config.get("list-max-listpack-size"),
                "encoding_msgs": r.object("encoding", keys.msgs),
            }
            report.rows.append(
                {
                    "case": "engine memory (msgs + meta + summary)",
                    "bytes_per_msg": round(total / LENGTH, 1),
                    "payload_per_msg": round(payload / LENGTH, 1),
                    "ratio": round(total / payload, 3),
                    "element_bytes_per_msg": round(element_bytes / LENGTH, 1),
                    "list_overhead": round(per_key["msgs"] / element_bytes, 3),
                }
            )
            for name, encode in ENCODINGS.items():
                scratch = f"{prefix}:scratch:{len(report.rows)}"
                elements = [encode(m) for m in messages]
                for start in range(0, LENGTH, 500):
                    r.rpush(scratch, *elements[start : start + 500])
                used = usage(r, scratch)
                size = sum(len(e.encode()) for e in elements)
                report.rows.append(
                    {
                        "case": f"scratch list: {name}",
                        "bytes_per_msg": round(used / LENGTH, 1),
                        "payload_per_msg": round(payload / LENGTH, 1),
                        "ratio": round(used / payload, 3),
                        "element_bytes_per_msg": round(size / LENGTH, 1),
                        "list_overhead": round(used / size, 3),
                    }
                )
            costs = field_costs(stored[len(stored) // 2])
            report.extra["keys_bytes"] = per_key
            report.extra["json_field_bytes_of_one_message"] = costs
            report.extra["sample_element"] = stored[len(stored) // 2]
            report.targets.append(
                Target(
                    "engine: bytes per message / (role + content)",
                    report.rows[0]["ratio"],
                    TARGET_RATIO,
                    unit="x",
                )
            )
            report.notes.append(f"keys (bytes): {per_key}")
            report.notes.append(
                "bytes each JSON field costs in one stored message (name, quotes, separators): "
                + ", ".join(f"{k}={v}" for k, v in costs.items())
            )
            report.notes.append(f"sample element: {stored[len(stored) // 2][:90]}...")
        finally:
            delete_prefix(r, prefix)
            r.close()
            client.close()
        report.finish(url)
    console.print(
        "[dim]ratios below 1.5x in the scratch rows show what each change would give[/dim]"
    )


if __name__ == "__main__":
    main()
