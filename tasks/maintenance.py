"""``memory.cleanup``, ``memory.reconcile`` and ``memory.sweep_markers`` (scheduled by Beat)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from memory_engine.engine import maintenance
from memory_engine.task_contract import TASK_CLEANUP, TASK_EVICT, TASK_RECONCILE, TASK_SWEEP_MARKERS
from tasks.runtime import EngineTask, engine_client


@shared_task(name=TASK_CLEANUP, base=EngineTask, bind=True)
def cleanup(self: Any, dry_run: bool = False) -> dict[str, Any]:
    """Remove leftovers of expired memories through the expiry index."""
    return maintenance.cleanup(engine_client(), dry_run=dry_run).as_dict()


@shared_task(name=TASK_RECONCILE, base=EngineTask, bind=True)
def reconcile(self: Any, since_s: float | None = None) -> dict[str, Any]:
    """Fix counters that drifted from their lists, for memories written recently."""
    client = engine_client()
    window = since_s if since_s is not None else client.settings.reconcile_interval_s * 2
    return maintenance.reconcile(client, since_s=window).as_dict()


@shared_task(name=TASK_SWEEP_MARKERS, base=EngineTask, bind=True)
def sweep_markers(self: Any, stale_after_s: float | None = None) -> dict[str, Any]:
    """Heal lost flushes and hand memories whose flush cannot keep up to ``memory.evict``."""
    client = engine_client()
    stale = stale_after_s if stale_after_s is not None else client.settings.flush_marker_ttl_s / 2
    report = maintenance.sweep_markers(client, stale_after_s=stale)
    for memory_id, resource_id in report.evictions:
        client.producer.send(TASK_EVICT, {"memory_id": memory_id, "resource_id": resource_id})
    return report.as_dict()
