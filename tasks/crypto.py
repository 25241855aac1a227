"""``memory.reencrypt``: key rotation in the background (docs/encryption.md), on demand only
(``memory-engine keys rotate``), never scheduled."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from memory_engine.engine.rotation import RotationReport, reencrypt_memories
from memory_engine.task_contract import TASK_REENCRYPT
from tasks.runtime import EngineTask, engine_client

# A run works for at most this share of the soft time limit, then continues in a new task from
# its cursor: a large deployment never hits the limit half-way through a memory.
BUDGET_SHARE_OF_SOFT_LIMIT = 0.5


@shared_task(name=TASK_REENCRYPT, base=EngineTask, bind=True)
def reencrypt(self: Any, cursor: int = 0, totals: dict[str, Any] | None = None) -> dict[str, Any]:
    """Re-encrypt memories from ``cursor`` of the access index under the current keys; when
    the time budget runs out, enqueue the rest (with the running ``totals``). Returns the totals
    so far, ``done`` when the whole index was walked, and the continuation's task id if any."""
    client = engine_client()
    budget_s = client.settings.task_soft_time_limit_s * BUDGET_SHARE_OF_SOFT_LIMIT
    report = reencrypt_memories(client, cursor=int(cursor), budget_s=budget_s)
    if totals:
        report = RotationReport(**{**totals, "cursor": 0}).add(report)
    out = report.as_dict()
    out["done"] = report.cursor == 0
    out["continued_as"] = None
    if report.cursor:
        sent = self.apply_async(kwargs={"cursor": report.cursor, "totals": report.as_dict()})
        out["continued_as"] = sent.id
    return out
