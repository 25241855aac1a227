"""Script plumbing every store class shares: redis-py errors translated into the engine's tree,
``EVALSHA`` with a reload on NOSCRIPT, and pipelines whose trailing index commands are hints
(their errors are logged, never raised: the write before them happened)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis import exceptions as redis_errors

from memory_engine.errors import StoreError, StoreUnavailable
from memory_engine.store.scripts import script_sha, script_source

__all__ = ["ScriptRunner", "log_hint_errors", "translate_errors"]

log = logging.getLogger("memory_engine.store.memory")


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
    except redis_errors.RedisError as exc:
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


class ScriptRunner:
    """Runs the named Lua scripts of ``store/lua`` over one redis-py client."""

    def __init__(self, client: Any, script_names: Iterable[str]) -> None:
        self.redis = client
        names = tuple(script_names)
        self._sources = {name: script_source(name) for name in names}
        # SHA1 computed locally: no round trip at start-up; scripts are loaded on first NOSCRIPT.
        self._shas = {name: script_sha(name) for name in names}

    def _run_pipeline(
        self, what: str, build: Callable[[Any], None], transaction: bool = False
    ) -> list[Any]:
        """Run a pipeline whose first command may be an EVALSHA; reload scripts on NOSCRIPT.

        Retrying is safe: a NOSCRIPT reply means the script did not run, and the index commands
        pipelined after it are idempotent (ZADD of the same member).
        """
        with translate_errors(what):
            for attempt in (0, 1):
                pipe = self.redis.pipeline(transaction=transaction)
                build(pipe)
                try:
                    return list(pipe.execute())
                except redis_errors.NoScriptError:
                    if attempt:
                        raise
                    self._load_scripts()
        raise AssertionError("unreachable")  # pragma: no cover

    def _run_with_hints(
        self, what: str, memory_id: str, build: Callable[[Any], None], write_at: int = 0
    ) -> Any:
        """One pipeline: a per-memory write first (or at ``write_at``, after index commands that
        must precede it), the other commands are index commands (hints). Returns the write's
        reply and raises its error; errors of the index commands are logged, not raised (module
        docstring). NOSCRIPT: load the scripts and send again (the script did not run, and the
        index commands are idempotent)."""
        with translate_errors(what):
            for attempt in (0, 1):
                pipe = self.redis.pipeline(transaction=False)
                build(pipe)
                replies = list(pipe.execute(raise_on_error=False))
                first = replies.pop(write_at)
                if isinstance(first, redis_errors.NoScriptError) and not attempt:
                    self._load_scripts()
                    continue
                if isinstance(first, Exception):
                    raise first
                self._log_hint_errors(what, memory_id, replies)
                return first
        raise AssertionError("unreachable")  # pragma: no cover

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

    def _evalsha(self, what: str, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        def build(pipe: Any) -> None:
            pipe.evalsha(self._shas[name], len(keys), *keys, *args)

        return self._run_pipeline(what, build)[0]
