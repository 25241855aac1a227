"""Export and erasure of a data subject's memories (``docs/data-protection.md``).

The order that makes an erasure safe against appends racing it:

1. an append that creates a memory (or refreshes its indexes) sends the ``SADD`` of its id to the
   subject's SET *before* its script, in the same pipeline (``MemoryStore.append``);
2. the erasure reads the SET and runs ``lua/erase.lua`` on every memory it lists: all its keys
   are deleted and a tombstone (``erased=1``, no content) is left for
   ``MEMORY_ERASURE_TOMBSTONE_TTL_S``, whether or not the memory existed yet; the append script
   refuses a tombstoned memory (:class:`~memory_engine.errors.MemoryErased`);
3. the erasure reads the SET again, until a read lists nothing it has not erased (memories
   created meanwhile), at most :data:`~memory_engine.core.subjects.ERASURE_MAX_PASSES` times;
4. only the ids it erased are removed from the SET, then the audit record is written.

So an append whose index write reached Redis before the erasure's last read is erased or
refused; one after it is a new memory, listed under the subject, which the next erasure finds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from memory_engine.core.subjects import (
    ERASURE_LOG_MAX_ENTRIES,
    ERASURE_MAX_PASSES,
    ErasureReport,
    erasure_record,
    export_record,
    is_live_memory,
)
from memory_engine.errors import ConfigError, ResourceNotFound
from memory_engine.keys import subject_hash

if TYPE_CHECKING:
    from memory_engine.keys import KeySpace
    from memory_engine.registry import ResourceRegistry
    from memory_engine.settings import Settings
    from memory_engine.store.subjects import SubjectStore

__all__ = ["erase_subject", "export_subject", "subject_digest"]

log = logging.getLogger(__name__)


def subject_digest(settings: Settings, subject: str) -> str:
    """The subject's hash with the deployment's salt; :class:`ConfigError` without a salt."""
    if settings.subject_salt is None:
        raise ConfigError(
            "MEMORY_SUBJECT_SALT is not set: data subjects are indexed by a salted hash, and "
            "without the deployment's salt none can be computed"
        )
    return subject_hash(subject, settings.subject_salt.get_secret_value())


def _project(settings: Settings, project_id: str | None) -> str:
    # None: the client's default project, the one a key template lands in when the workflow
    # context names no project (keys.render_key).
    return settings.default_project_id if project_id is None else project_id


def export_subject(
    settings: Settings,
    keyspace: KeySpace,
    registry: ResourceRegistry,
    store: SubjectStore,
    subject: str,
    project_id: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Every live memory of ``subject`` in the project, as JSON-ready dicts (one read each)."""
    project = _project(settings, project_id)
    index = keyspace.subject_index(project, subject_digest(settings, subject))
    for memory_id in store.members(index, project):
        dump = store.dump(memory_id)
        if not is_live_memory(dump.meta):
            continue  # expired, deleted, or erased: the index entry is a stale hint
        resource = None
        try:
            resource = registry.get(dump.meta.get("resource_id", ""))
        except ResourceNotFound:
            pass
        yield export_record(dump, resource)


def erase_subject(
    settings: Settings,
    keyspace: KeySpace,
    store: SubjectStore,
    subject: str,
    project_id: str | None = None,
) -> ErasureReport:
    """Erase every memory of ``subject`` in the project, in the order the module documents."""
    project = _project(settings, project_id)
    digest = subject_digest(settings, subject)
    index = keyspace.subject_index(project, digest)
    erased: list[str] = []
    seen: set[str] = set()
    memories = keys_deleted = passes = 0
    for passes in range(1, ERASURE_MAX_PASSES + 1):  # noqa: B007 (reported)
        new = [mid for mid in store.members(index, project) if mid not in seen]
        if not new:
            break
        counts = store.erase(new, time.time(), settings.erasure_tombstone_ttl_s)
        memories += sum(1 for c in counts if c > 0)
        keys_deleted += sum(counts)
        erased.extend(new)
        seen.update(new)
    else:
        log.warning(
            "erasure of subject %s in project %s: memories were still being created after %d "
            "passes; they are listed under the subject for the next erasure",
            digest[:12],
            project,
            ERASURE_MAX_PASSES,
        )
    if store.forget(index, erased) and erased:
        keys_deleted += 1
    report = ErasureReport(
        memories=memories,
        keys_deleted=keys_deleted,
        finished_at=time.time(),
        project_id=project,
        subject_hash=digest,
        passes=passes,
    )
    store.record_erasure(erasure_record(report), ERASURE_LOG_MAX_ENTRIES)
    log.info(
        "erased subject %s in project %s: %d memories, %d keys",
        digest[:12],
        project,
        memories,
        keys_deleted,
    )
    return report
