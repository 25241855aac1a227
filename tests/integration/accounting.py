"""Accounting checker: proves that every acknowledged message of a memory is accounted for.

A test records what it did in a :class:`Ledger` (thread-safe): every append that returned (its
``seq``, unique content and the monotonic times around the call), every append whose outcome is
unknown (it raised after the command may have reached Redis), and every explicit ``clear`` or
``replace``. :func:`account_memory` then reads the memory in one MULTI and checks it against the
ledger and against itself (DESIGN §4, invariants 3 and 5):

Structure (metadata matches the list):
  - the list's seqs are unique and increasing, every element is a stored message;
  - ``message_count``, ``token_count`` and ``system_count`` equal what the list holds;
  - ``seq == message_count + flushed + summarized + evicted + cleared + replaced`` (every seq ever
    assigned sits in exactly one bucket; field names from ``memory_engine/lua/*.lua``);
  - no non-system message in the list is at or below the summary point, and the metadata's
    ``summary_tokens`` is the summary's token count.

Ledger (nothing acknowledged is lost, nothing appears twice or from nowhere):
  - each acknowledged message is in the list (same seq, same content), or covered by the summary
    point (``seq <= summary_point``), or was removed by an explicit clear/replace that could have
    seen it, or was flushed/evicted, and those are bounded by the ``flushed`` + ``evicted`` +
    ``summarized`` counters;
  - an acknowledged message older than a clear/replace (it returned before the wipe started) is
    not in the list any more;
  - every message in the list is an acknowledged append, an unknown-outcome append, or a
    replacement message, and appears once.

When a clear/replace ran concurrently with appends, the exact seq at which it took effect is not
observable from the client. It lies between the last seq acknowledged before the wipe started
(``lo``) and the first seq of an append that started after the wipe returned (``hi`` is one less):
messages in that window may sit on either side.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis

from memory_engine.client import MemoryClient
from memory_engine.crypto import KeyRing
from memory_engine.errors import StoreError
from memory_engine.keys import MemoryKeys
from memory_engine.messages import Message

__all__ = [
    "Account",
    "AckedAppend",
    "Ledger",
    "Wipe",
    "account_memory",
    "assert_all_accounted",
]

COUNTER_FIELDS = ("flushed", "summarized", "evicted", "cleared", "replaced")
MAX_PROBLEMS_SHOWN = 30


@dataclass(frozen=True, slots=True)
class AckedAppend:
    """An append that returned: the store assigned ``seq`` to ``content``."""

    seq: int
    content: str
    started_ns: int
    ended_ns: int


@dataclass(frozen=True, slots=True)
class Wipe:
    """An explicit ``clear`` or ``replace`` (with the contents of its replacement messages)."""

    kind: str
    started_ns: int
    ended_ns: int
    contents: tuple[str, ...] = ()


class Ledger:
    """What a test did to its memories, recorded from any number of threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._acked: dict[str, list[AckedAppend]] = defaultdict(list)
        self._unknown: dict[str, set[str]] = defaultdict(set)
        self._wipes: dict[str, list[Wipe]] = defaultdict(list)

    @staticmethod
    def now_ns() -> int:
        return time.monotonic_ns()

    def acked(self, memory_id: str, content: str, seq: int, started_ns: int, ended_ns: int) -> None:
        with self._lock:
            self._acked[memory_id].append(AckedAppend(seq, content, started_ns, ended_ns))

    def unknown(self, memory_id: str, content: str) -> None:
        """An append that raised: it may or may not have been applied (at most once)."""
        with self._lock:
            self._unknown[memory_id].add(content)

    def wiped(
        self,
        memory_id: str,
        kind: str,
        started_ns: int,
        ended_ns: int,
        contents: tuple[str, ...] = (),
    ) -> None:
        if kind not in ("clear", "replace"):
            raise ValueError(f"unknown wipe kind {kind!r}")
        with self._lock:
            self._wipes[memory_id].append(Wipe(kind, started_ns, ended_ns, contents))

    def memory_ids(self) -> list[str]:
        with self._lock:
            return sorted(set(self._acked) | set(self._unknown) | set(self._wipes))

    def view(self, memory_id: str) -> tuple[list[AckedAppend], set[str], list[Wipe]]:
        with self._lock:
            return (
                list(self._acked.get(memory_id, ())),
                set(self._unknown.get(memory_id, ())),
                list(self._wipes.get(memory_id, ())),
            )

    @property
    def acked_count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._acked.values())

    @property
    def wipe_count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._wipes.values())


@dataclass
class Account:
    """Where each acknowledged message of one memory ended up, and what is wrong."""

    memory_id: str
    acked: int = 0
    in_list: int = 0
    covered_by_summary: int = 0
    removed_by_wipe: int = 0
    flushed_or_evicted: int = 0
    unknown_present: int = 0
    list_length: int = 0
    summary_point: int = 0
    meta: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(f"{self.memory_id}: {text}")


def _decode(raw: dict[Any, Any]) -> dict[str, str]:
    def text(x: Any) -> str:
        return x.decode() if isinstance(x, bytes) else str(x)

    return {text(k): text(v) for k, v in raw.items()}


def _read(r: redis.Redis, keys: MemoryKeys) -> tuple[list[Any], dict[str, str], dict[str, str]]:
    pipe = r.pipeline(transaction=True)
    pipe.lrange(keys.msgs, 0, -1)
    pipe.hgetall(keys.meta)
    pipe.hgetall(keys.summary)
    raw, meta, summary = pipe.execute()
    return list(raw), _decode(meta), _decode(summary)


def _parse_list(
    raw: list[Any], account: Account, keyring: KeyRing | None = None
) -> list[dict[str, Any]]:
    """Each element through the engine's own decoder (the wire format belongs to Message);
    encrypted elements open with ``keyring`` (the client's)."""
    items: list[dict[str, Any]] = []
    for index, element in enumerate(raw):
        text = element.decode("utf-8", "replace") if isinstance(element, bytes) else str(element)
        try:
            message = Message.from_wire(text, memory_id=account.memory_id, keyring=keyring)
        except (ValueError, KeyError, StoreError) as exc:
            account.problem(f"list element {index} is not a stored message ({exc}): {text[:80]!r}")
            continue
        if message.seq is None or message.token_count is None:
            account.problem(f"list element {index} has no seq or token count: {text[:80]!r}")
            continue
        items.append(
            {
                "seq": message.seq,
                "token_count": message.token_count,
                "role": message.role.value,
                "content": message.content,
            }
        )
    return items


def _check_structure(
    items: list[dict[str, Any]], meta: dict[str, str], summary: dict[str, str], account: Account
) -> None:
    seqs = [int(i["seq"]) for i in items]
    if any(b <= a for a, b in itertools.pairwise(seqs)):
        account.problem(f"seqs are not unique and increasing: {seqs[:20]}...")
    counters = {name: int(meta.get(name, 0)) for name in ("seq", "message_count", "token_count")}
    counters |= {name: int(meta.get(name, 0)) for name in COUNTER_FIELDS}
    account.meta = counters
    if counters["message_count"] != len(items):
        account.problem(f"message_count {counters['message_count']} != list length {len(items)}")
    tokens = sum(int(i.get("token_count", 0)) for i in items)
    if counters["token_count"] != tokens:
        account.problem(f"token_count {counters['token_count']} != list token sum {tokens}")
    systems = sum(1 for i in items if i.get("role") == "system")
    if int(meta.get("system_count", 0)) != systems:
        account.problem(f"system_count {meta.get('system_count')} != {systems} in the list")
    if seqs and counters["seq"] < seqs[-1]:
        account.problem(f"meta seq {counters['seq']} is below the list's last seq {seqs[-1]}")
    buckets = counters["message_count"] + sum(counters[name] for name in COUNTER_FIELDS)
    if counters["seq"] != buckets:
        account.problem(
            f"seq {counters['seq']} != message_count + flushed + summarized + evicted + "
            f"cleared + replaced = {buckets} ({counters})"
        )
    point = int(summary.get("summary_point", 0)) if summary.get("text") else 0
    account.summary_point = point
    if point > counters["seq"]:
        account.problem(f"summary point {point} is beyond the last seq {counters['seq']}")
    behind = [s for s, i in zip(seqs, items, strict=True) if s <= point and i["role"] != "system"]
    if behind:
        account.problem(
            f"messages {behind[:10]} are still listed at or below summary point {point}"
        )
    want_summary_tokens = int(summary.get("token_count", 0)) if summary.get("text") else 0
    if int(meta.get("summary_tokens", 0)) != want_summary_tokens:
        account.problem(
            f"meta summary_tokens {meta.get('summary_tokens')} != summary's {want_summary_tokens}"
        )


def _wipe_windows(
    acked: list[AckedAppend], wipes: list[Wipe], last_seq: int
) -> list[tuple[int, int]]:
    """``(lo, hi)`` per wipe: it took effect at a seq P with ``lo <= P <= hi``."""
    windows = []
    for wipe in wipes:
        before = [a.seq for a in acked if a.ended_ns < wipe.started_ns]
        after = [a.seq for a in acked if a.started_ns > wipe.ended_ns]
        windows.append((max(before, default=0), min(after, default=last_seq + 1) - 1))
    return windows


def account_memory(client: MemoryClient, memory_id: str, ledger: Ledger) -> Account:
    """Check one memory against itself and against ``ledger``; collects problems, never raises."""
    account = Account(memory_id)
    acked, unknown, wipes = ledger.view(memory_id)
    account.acked = len(acked)
    raw, meta, summary = _read(client.redis, client.keyspace.memory(memory_id))
    if not meta:
        if acked or raw:
            account.problem(f"metadata is missing ({len(acked)} acknowledged, {len(raw)} listed)")
        return account
    items = _parse_list(raw, account, client.keyring)
    account.list_length = len(items)
    _check_structure(items, meta, summary, account)

    by_seq = {int(i["seq"]): i for i in items}
    acked_by_seq: dict[int, AckedAppend] = {}
    for a in acked:
        if a.seq in acked_by_seq:
            account.problem(f"seq {a.seq} was acknowledged twice")
        acked_by_seq[a.seq] = a
    last_seq = account.meta["seq"]
    if acked and max(acked_by_seq) > last_seq:
        account.problem(f"acknowledged seq {max(acked_by_seq)} is beyond meta seq {last_seq}")

    replacements = {c for w in wipes for c in w.contents}
    seen_contents: set[str] = set()
    for seq, item in by_seq.items():
        content = str(item.get("content"))
        if content in seen_contents:
            account.problem(f"content {content!r} is listed twice")
        seen_contents.add(content)
        ack = acked_by_seq.get(seq)
        if ack is not None:
            if ack.content != content:
                account.problem(f"seq {seq} holds {content!r}, acknowledged as {ack.content!r}")
        elif content in unknown:
            account.unknown_present += 1
        elif content not in replacements:
            account.problem(f"seq {seq} holds {content!r}, which nobody appended")

    windows = _wipe_windows(acked, wipes, last_seq)
    for (lo, _hi), wipe in zip(windows, wipes, strict=True):
        survivors = [a.seq for a in acked if a.seq <= lo and a.seq in by_seq]
        if survivors:
            account.problem(f"{wipe.kind} left older messages {survivors[:10]} in the list")
    # The last wipe took effect at a seq between last_lo and last_hi; the summary (deleted by
    # every wipe) can only cover what came after it.
    last_lo = max((lo for lo, _hi in windows), default=0)
    last_hi = max((hi for _lo, hi in windows), default=0)
    point = account.summary_point
    if point and point <= last_lo:
        account.problem(f"summary point {point} predates the last clear/replace")

    removed_since_wipes = 0
    for a in acked:
        listed = by_seq.get(a.seq)
        if listed is not None and listed.get("content") == a.content:
            account.in_list += 1
        elif a.seq <= last_lo:
            account.removed_by_wipe += 1
        elif a.seq <= point:
            account.covered_by_summary += 1
            removed_since_wipes += a.seq > last_hi
        elif a.seq <= last_hi:
            account.removed_by_wipe += 1
        else:
            account.flushed_or_evicted += 1
            removed_since_wipes += 1
    removal_counters = sum(account.meta[n] for n in ("flushed", "summarized", "evicted"))
    if account.flushed_or_evicted > account.meta["flushed"] + account.meta["evicted"]:
        account.problem(
            f"{account.flushed_or_evicted} acknowledged messages left the list after the last "
            f"clear/replace, uncovered by the summary, but flushed + evicted is only "
            f"{account.meta['flushed'] + account.meta['evicted']}"
        )
    if removed_since_wipes > removal_counters:
        account.problem(
            f"{removed_since_wipes} acknowledged messages left the list by flushes but the "
            f"flushed + summarized + evicted counters total {removal_counters}"
        )
    return account


def assert_all_accounted(
    client: MemoryClient, ledger: Ledger, memory_ids: list[str] | None = None
) -> list[Account]:
    """Run :func:`account_memory` for every memory (default: every one in the ledger) and fail
    with the problems found, if any. Returns the accounts (for reporting figures)."""
    accounts = [account_memory(client, mid, ledger) for mid in memory_ids or ledger.memory_ids()]
    problems = [p for a in accounts for p in a.problems]
    if problems:
        shown = "\n  ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = len(problems) - MAX_PROBLEMS_SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise AssertionError(f"{len(problems)} accounting problems:\n  {shown}{tail}")
    return accounts
