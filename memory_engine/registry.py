"""The resource registry: every memory resource the engine knows, loaded from YAML files.

A directory of ``*.yaml``/``*.yml`` files (sorted, not recursive) is read once at start-up; a file
may hold several documents separated by ``---``. Every error is a :class:`ConfigError` naming the
file, the document when the file has several, and the field path, so a bad file stops the process
with a message pointing at what to fix instead of failing later, on first use.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

import yaml

from memory_engine.errors import ConfigError, ResourceNotFound
from memory_engine.resources import MemoryResource, parse_resource

__all__ = ["RESOURCE_FILE_SUFFIXES", "ResourceRegistry", "load_resource_file"]

RESOURCE_FILE_SUFFIXES: Final[tuple[str, ...]] = (".yaml", ".yml")
"""File name endings :meth:`ResourceRegistry.from_directory` loads."""


class _NoAliasLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses anchors and aliases (``&a``, ``*a``, ``<<: *a``).

    An alias is a reference, not a copy, so a few hundred bytes of nested aliases ("billion
    laughs") stand for a document of billions of nodes: harmless until something walks it, and
    validation, error messages and tracebacks all do. A resource file has no need for them."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None,
                None,
                "anchors and aliases (&name, *name, <<: *name) are not allowed in resource files; "
                "write the values out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def _read_documents(path: Path) -> list[object]:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read resource file: {exc}", source=source) from exc
    try:
        # safe_load_all is lazy; list() makes a syntax error in document 3 surface here.
        return list(yaml.load_all(text, Loader=_NoAliasLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(f"invalid YAML{where}: {problem}", source=source) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source=source) from exc
    except RecursionError as exc:  # PyYAML's parser recurses once per nesting level
        raise ConfigError("invalid YAML: nested too deeply", source=source) from exc


def _load_with_sources(path: Path) -> list[tuple[MemoryResource, str]]:
    documents = _read_documents(path)
    several = len(documents) > 1
    loaded: list[tuple[MemoryResource, str]] = []
    # Numbered by position in the file, empty documents included, so "document 3" is the third
    # block a reader counts between the --- separators.
    for number, document in enumerate(documents, start=1):
        if document is None:
            continue
        source = f"{path} (document {number})" if several else str(path)
        if not isinstance(document, dict):
            raise ConfigError(
                f"a resource document must be a mapping, got {type(document).__name__}",
                source=source,
            )
        loaded.append((parse_resource(document, source=source), source))
    return loaded


def load_resource_file(path: str | Path) -> list[MemoryResource]:
    """Load every resource in one YAML file (all its documents; empty ones are skipped).

    Raises :class:`ConfigError` naming the file (and ``document N`` in a multi-document file) on
    unreadable files, invalid YAML (with line and column), a document that is not a mapping, or a
    resource that fails validation (with the field path). Duplicate ids within the file are not
    checked here; :class:`ResourceRegistry` checks them across everything it loads.
    """
    return [resource for resource, _ in _load_with_sources(Path(path))]


class ResourceRegistry:
    """An immutable set of memory resources, looked up by id.

    Iteration yields resources in load order; ids are unique (a duplicate is a
    :class:`ConfigError` naming where both came from).
    """

    __slots__ = ("_resources", "_sources")

    def __init__(self, resources: Iterable[MemoryResource] = ()) -> None:
        """Register ``resources``; each is labelled ``<resources[i]>`` in error messages."""
        self._resources: dict[str, MemoryResource] = {}
        self._sources: dict[str, str] = {}
        for index, resource in enumerate(resources):
            self._add(resource, f"<resources[{index}]>")

    @classmethod
    def from_sources(cls, entries: Iterable[tuple[MemoryResource, str]]) -> ResourceRegistry:
        """Build from ``(resource, source)`` pairs; the source names it in error messages."""
        registry = cls()
        for resource, source in entries:
            registry._add(resource, source)
        return registry

    @classmethod
    def from_directory(cls, path: str | Path) -> ResourceRegistry:
        """Load every ``*.yaml`` and ``*.yml`` file directly inside ``path``, in name order.

        Raises :class:`ConfigError` when the directory is missing or not a directory, or for the
        first bad file (see :func:`load_resource_file`) or duplicate id. An empty directory gives
        an empty registry.
        """
        directory = Path(path)
        if not directory.is_dir():
            what = "is not a directory" if directory.exists() else "does not exist"
            raise ConfigError(f"resource directory {what}", source=str(directory))
        files = sorted(
            entry
            for entry in directory.iterdir()
            if entry.suffix.lower() in RESOURCE_FILE_SUFFIXES and entry.is_file()
        )
        return cls.from_sources(pair for file in files for pair in _load_with_sources(file))

    def _add(self, resource: MemoryResource, source: str) -> None:
        previous = self._sources.get(resource.id)
        if previous is not None:
            raise ConfigError(
                f"duplicate memory resource id {resource.id!r}: defined in {previous} and in "
                f"{source}",
                source=source,
                field="id",
            )
        self._resources[resource.id] = resource
        self._sources[resource.id] = source

    def get(self, resource_id: str) -> MemoryResource:
        """Return the resource with ``resource_id``; :class:`ResourceNotFound` lists known ids."""
        try:
            return self._resources[resource_id]
        except KeyError:
            raise ResourceNotFound(resource_id, list(self._resources)) from None

    def ids(self) -> list[str]:
        """Known ids, sorted."""
        return sorted(self._resources)

    def source_of(self, resource_id: str) -> str:
        """Where a resource came from: a path, ``path (document N)`` or ``<resources[i]>``."""
        try:
            return self._sources[resource_id]
        except KeyError:
            raise ResourceNotFound(resource_id, list(self._resources)) from None

    def __len__(self) -> int:
        return len(self._resources)

    def __iter__(self) -> Iterator[MemoryResource]:
        return iter(self._resources.values())

    def __contains__(self, resource_id: object) -> bool:
        return resource_id in self._resources

    def __repr__(self) -> str:
        return f"ResourceRegistry(ids={self.ids()!r})"
