"""The one loader of the store's Lua scripts (``lua/*.lua``, each with a KEYS/ARGV header).

A script is read once per process and identified by the SHA1 of its source, computed locally, so
no round trip is spent at start-up: callers send ``EVALSHA`` and load on the first NOSCRIPT.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

__all__ = ["script_sha", "script_source"]


@functools.cache
def script_source(name: str) -> str:
    """The source of ``lua/<name>.lua`` (package data of :mod:`memory_engine.store`)."""
    return resources.files("memory_engine.store").joinpath(f"lua/{name}.lua").read_text("utf-8")


@functools.cache
def script_sha(name: str) -> str:
    """The SHA1 Redis gives the script (what ``EVALSHA`` names it by)."""
    return hashlib.sha1(script_source(name).encode("utf-8")).hexdigest()
