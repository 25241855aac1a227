"""Key rotation: re-encrypt every memory under the keys the key ring chooses now
(docs/encryption.md). The ``memory.reencrypt`` task runs it; ``memory-engine keys rotate``
enqueues that task.

Memories are found through the access index (every memory an append created is in it), one
``ZSCAN`` step at a time, so a run can stop after a time budget and continue from its cursor in
a new task. Each memory is re-encrypted by :meth:`~memory_engine.store.MemoryStore.reencrypt`
(compare-and-swap per element: concurrent appends, flushes and clears lose nothing). A memory the
ring cannot open (its project's keys were deleted: crypto-shredded) is counted and skipped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from memory_engine.errors import ConfigError, CorruptMessage, DecryptionError

if TYPE_CHECKING:
    from memory_engine.engine.handle import EngineClient

__all__ = ["REENCRYPT_SCAN_BATCH", "RotationReport", "reencrypt_memories"]

REENCRYPT_SCAN_BATCH = 100
"""Memories asked of the access index per ``ZSCAN`` step."""

log = logging.getLogger(__name__)


@dataclass
class RotationReport:
    """What one run did; ``cursor`` 0 means the whole index was walked (else: continue from
    it). ``unreadable``: memories skipped because the ring cannot open them; ``missed``: fields
    that kept moving under concurrent writes and are still under an old key (run again)."""

    cursor: int = 0
    memories: int = 0
    rewrapped: int = 0
    unreadable: int = 0
    missed: int = 0
    elapsed_s: float = 0.0

    def add(self, other: RotationReport) -> RotationReport:
        return RotationReport(
            cursor=other.cursor,
            memories=self.memories + other.memories,
            rewrapped=self.rewrapped + other.rewrapped,
            unreadable=self.unreadable + other.unreadable,
            missed=self.missed + other.missed,
            elapsed_s=self.elapsed_s + other.elapsed_s,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reencrypt_memories(
    client: EngineClient,
    *,
    cursor: int = 0,
    budget_s: float | None = None,
    batch: int = REENCRYPT_SCAN_BATCH,
) -> RotationReport:
    """Re-encrypt the memories of the access index from ``cursor``, until the index is walked
    or ``budget_s`` has passed (then ``report.cursor`` is where to continue). Raises
    :class:`ConfigError` when no key ring is configured."""
    keyring = client.store.keyring
    if keyring is None:
        raise ConfigError("key rotation needs a key ring: MEMORY_ENCRYPTION_KEYS is not set")
    started = time.monotonic()
    report = RotationReport(cursor=cursor)
    while True:
        report.cursor, ids = client.store.indexes.scan_memories(report.cursor, batch)
        for memory_id in ids:
            report.memories += 1
            try:
                counts = client.store.reencrypt(client.keyspace.memory(memory_id), keyring)
            except (DecryptionError, CorruptMessage) as exc:
                report.unreadable += 1
                log.warning("memory %s not re-encrypted: %s", memory_id, exc)
                continue
            report.rewrapped += counts.rewrapped
            report.missed += counts.missed
            if counts.missed:
                log.warning(
                    "memory %s: %d field(s) kept moving and stay under their old key; run the "
                    "rotation again",
                    memory_id,
                    counts.missed,
                )
        if report.cursor == 0:
            break
        if budget_s is not None and time.monotonic() - started >= budget_s:
            break
    report.elapsed_s = round(time.monotonic() - started, 3)
    return report
