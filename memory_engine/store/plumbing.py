"""Script plumbing every store class shares: redis-py errors translated into the engine's tree,
``EVALSHA`` with a reload on NOSCRIPT, and pipelines whose trailing index commands are hints
(their errors are logged, never raised: the write before them happened).

Cluster-safe by construction: a script is sent as a lone command (redis-py's cluster pipeline
refuses ``EVALSHA``), pipelines with ``transaction=True`` hold keys of one memory only (one
slot), and index commands (other slots) go in non-transactional pipelines, which redis-py's
cluster client splits by node. The asyncio store (``store/aio.py``) follows the same three rules
with the helpers below: :func:`is_cluster` decides, :func:`write_reply` reads a pipeline whose
first command is the write, and the ``*_hints`` builders are the index commands of both stores."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis import exceptions as redis_errors

from memory_engine.core.commands import index_writes
from memory_engine.errors import StoreError, StoreUnavailable
from memory_engine.keys import KeySpace
from memory_engine.store.connections import is_cluster
from memory_engine.store.scripts import script_sha, script_source

__all__ = [
    "ScriptRunner",
    "forget_hints",
    "index_hints",
    "is_cluster",
    "log_hint_errors",
    "pending_hint",
    "translate_errors",
    "write_reply",
]

log = logging.getLogger("memory_engine.store.memory")

_NOT_RUN_TRANSIENT = ("NOREPLICAS", "MASTERDOWN")
"""Error replies that say a write was refused and will be accepted later: a master with too few
replicas (``min-replicas-to-write``), a replica whose master link is down."""


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn redis-py exceptions into the engine's store errors."""
    try:
        yield
    except redis_errors.AuthenticationError as exc:
        # A subclass of ConnectionError, but permanent: wrong or missing credentials are not
        # worth the retries that StoreUnavailable (a TransientError) earns.
        raise StoreError(
            f"Redis refused the credentials during {what} (check MEMORY_REDIS_URL): {exc}"
        ) from exc
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise StoreUnavailable(f"Redis unavailable during {what}: {exc}") from exc
    except (
        redis_errors.ClusterDownError,
        redis_errors.TryAgainError,
        redis_errors.ClusterError,
        redis_errors.SlotNotCoveredError,
    ) as exc:
        # Redis Cluster mid-failover or mid-resharding: the command did not run (CLUSTERDOWN,
        # TRYAGAIN while a slot's keys move, redirections past redis-py's limit). Transient.
        raise StoreUnavailable(f"Redis Cluster unavailable during {what}: {exc}") from exc
    except redis_errors.ReadOnlyError as exc:
        # A master demoted by a failover (Sentinel, or a cluster node now a replica): the
        # write did not run; the next connection finds the new master.
        raise StoreUnavailable(
            f"Redis refused a write during {what} (a replica now): {exc}"
        ) from exc
    except redis_errors.ResponseError as exc:
        if str(exc).startswith(_NOT_RUN_TRANSIENT):
            raise StoreUnavailable(f"Redis unavailable during {what}: {exc}") from exc
        raise StoreError(f"Redis error during {what}: {exc}") from exc
    except (redis_errors.RedisError, redis_errors.RedisClusterException) as exc:
        # RedisClusterException (not a RedisError): the cluster client refused the command
        # itself (cross-slot keys, no node for a command); a defect, never worth a retry.
        raise StoreError(f"Redis error during {what}: {exc}") from exc


def log_hint_errors(what: str, memory_id: str, replies: Sequence[Any]) -> None:
    """Log the errors among index-command replies (hints: the write before them happened)."""
    errors = [r for r in replies if isinstance(r, Exception)]
    if errors:
        log.warning(
            "%s of memory %s: %d index update(s) failed, the rest applied (indexes are "
            "hints, repaired by cleanup and reconcile): %s",
            what,
            memory_id,
            len(errors),
            errors[0],
        )


def write_reply(what: str, memory_id: str, replies: Sequence[Any], write_at: int = 0) -> Any:
    """The reply of the per-memory write at ``write_at`` in a pipeline of
    ``[*hints_before, write, *hints]``: its error is raised (a ``NoScriptError`` too: the caller
    loads the scripts and sends the pipeline again, since the script did not run and the hints
    are idempotent); the errors of the hints are logged."""
    first = replies[write_at]
    if isinstance(first, Exception):
        raise first
    log_hint_errors(what, memory_id, [*replies[:write_at], *replies[write_at + 1 :]])
    return first


def index_hints(
    keyspace: KeySpace, memory_id: str, now: float, ttl_s: int
) -> Callable[[Any], None]:
    """The memory's expiry and access index entries (``ZADD`` s), for any pipeline."""

    def build(pipe: Any) -> None:
        for index, mapping in index_writes(keyspace, memory_id, now, ttl_s):
            pipe.zadd(index, mapping)

    return build


def forget_hints(keyspace: KeySpace, memory_id: str) -> Callable[[Any], None]:
    """The memory's entries out of every index (``ZREM`` s), after its keys were deleted."""

    def build(pipe: Any) -> None:
        for index in (keyspace.expiry_index, keyspace.access_index, keyspace.pending_index):
            pipe.zrem(index, memory_id)

    return build


def pending_hint(keyspace: KeySpace, memory_id: str, now: float) -> Callable[[Any], None]:
    """The memory into the pending-flush index, unless already there (the marker sweep's hint)."""

    def build(pipe: Any) -> None:
        pipe.zadd(keyspace.pending_index, {memory_id: now}, nx=True)

    return build


class ScriptRunner:
    """Runs the named Lua scripts of ``store/lua`` over one redis-py client."""

    def __init__(self, client: Any, script_names: Iterable[str]) -> None:
        self.redis = client
        # Redis Cluster: no EVALSHA in pipelines, no MULTI across slots (``_run_with_hints``).
        self.cluster = is_cluster(client)
        names = tuple(script_names)
        self._sources = {name: script_source(name) for name in names}
        # SHA1 computed locally: no round trip at start-up; scripts are loaded on first NOSCRIPT.
        self._shas = {name: script_sha(name) for name in names}

    def _run_pipeline(
        self, what: str, build: Callable[[Any], None], transaction: bool = False
    ) -> list[Any]:
        """Run a pipeline of plain commands (no script: see the module docstring). With
        ``transaction`` every key must belong to one memory (one cluster slot)."""
        with translate_errors(what):
            pipe = self.redis.pipeline(transaction=transaction)
            build(pipe)
            return list(pipe.execute())

    def _run_with_hints(
        self,
        what: str,
        memory_id: str,
        write: Callable[[Any], Any],
        hints: Callable[[Any], None],
        before: Callable[[Any], None] | None = None,
    ) -> Any:
        """A per-memory write (one command, ``write(target)``), then index commands (hints,
        ``hints(pipe)``). Returns the write's reply and raises its error (then nothing changed);
        errors of the index commands are logged, not raised (module docstring).

        Standalone: one pipeline, one round trip. Redis Cluster: the index keys live in other
        slots and redis-py refuses ``EVALSHA`` inside a cluster pipeline, so the write is sent
        alone and the hints follow as their own pipeline (two round trips; the indexes may lag
        the write, which they are allowed to). NOSCRIPT: load the scripts and send again (the
        script did not run, and the index commands are idempotent).

        ``before(pipe)``: index commands that must reach Redis before the write (a data
        subject's index entry, so that an erasure reading the index finds every memory whose
        write could have happened); in a cluster they are sent first, as their own pipeline.
        """
        if self.cluster:
            if before is not None:
                self._write_hints(what, memory_id, before)
            with translate_errors(what):
                try:
                    reply = write(self.redis)
                except redis_errors.NoScriptError:
                    self._load_scripts()
                    reply = write(self.redis)
            self._write_hints(what, memory_id, hints)
            return reply

        before_count = 0

        def send() -> list[Any]:
            nonlocal before_count
            pipe = self.redis.pipeline(transaction=False)
            if before is not None:
                before(pipe)
                before_count = len(pipe.command_stack)
            write(pipe)
            hints(pipe)
            return list(pipe.execute(raise_on_error=False))

        with translate_errors(what):
            try:
                replies = send()
                return write_reply(what, memory_id, replies, before_count)
            except redis_errors.NoScriptError:
                self._load_scripts()
                return write_reply(what, memory_id, send(), before_count)

    @staticmethod
    def _log_hint_errors(what: str, memory_id: str, replies: Sequence[Any]) -> None:
        log_hint_errors(what, memory_id, replies)

    def _write_hints(self, what: str, memory_id: str, build: Callable[[Any], None]) -> None:
        """Index commands alone, after the memory's write succeeded: failures are logged."""
        try:
            with translate_errors(what):
                pipe = self.redis.pipeline(transaction=False)
                build(pipe)
                replies = list(pipe.execute(raise_on_error=False))
        except StoreError as exc:
            replies = [exc]
        self._log_hint_errors(what, memory_id, replies)

    def _load_scripts(self) -> None:
        for name, src in self._sources.items():
            self._shas[name] = str(self.redis.script_load(src))

    def _call_script(self, what: str, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One ``EVALSHA`` as a plain command (a pipeline of one costs more in redis-py);
        reload the scripts and retry once on NOSCRIPT (the script did not run)."""
        with translate_errors(what):
            try:
                return self.redis.evalsha(self._shas[name], len(keys), *keys, *args)
            except redis_errors.NoScriptError:
                self._load_scripts()
                return self.redis.evalsha(self._shas[name], len(keys), *keys, *args)

    def evalsha_command(
        self, name: str, keys: Sequence[str], args: Sequence[Any]
    ) -> Callable[[Any], Any]:
        """``write`` for :meth:`_run_with_hints`: the named script on a client or a pipeline."""
        sha = self._shas

        def write(target: Any) -> Any:
            return target.evalsha(sha[name], len(keys), *keys, *args)

        return write
