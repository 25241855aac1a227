"""The architecture as a test (DESIGN §1): imports only point down, and no module imports itself
back through others. Every import counts, including those inside functions and under
``TYPE_CHECKING``: a type-only arrow upward is still an arrow upward. Pure AST: nothing is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Lowest first. A module may import modules of its own layer or of layers below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "memory_engine.errors",
            "memory_engine.breaker_events",
            "memory_engine.schema",
            "memory_engine.retention",
            "memory_engine.encodings",
            "memory_engine.settings",
            "memory_engine.crypto",
            "memory_engine.context_windows",
            "memory_engine.task_contract",
            "memory_engine.http",
            "memory_engine.messages",
            "memory_engine.keys",
            "memory_engine.resources",
            "memory_engine.patterns",
            "memory_engine.privacy",
            "memory_engine.tokens",
            "memory_engine.registry",
            "memory_engine.migrate",
        ),
    ),
    ("core", ("memory_engine.core",)),
    ("store", ("memory_engine.store",)),
    (
        "plug-ins",
        (
            "memory_engine.breakers",
            "memory_engine.strategies",
            "memory_engine.summarizers",
            "memory_engine.token_providers",
        ),
    ),
    ("observability", ("memory_engine.metrics", "memory_engine.producer")),
    ("engine", ("memory_engine.engine",)),
    ("client", ("memory_engine.client", "memory_engine.aio")),
    ("public api", ("memory_engine",)),  # the package __init__ only (see layer_of)
    # Framework adapters: on the clients; nothing in the library imports them.
    ("integrations", ("memory_engine.integrations",)),
    # The HTTP API and MCP server: service code over the async client; the worker's tracing
    # hook uses its tracing set-up, the CLI starts it.
    ("server", ("memory_engine.server",)),
    # The two top layers never import each other: the service runs tasks, the tooling starts
    # and inspects the service's processes from outside.
    ("service", ("tasks", "worker", "config", "beat_schedule")),
    ("tooling", ("memory_engine.tooling",)),
]
INDEPENDENT = {("service", "tooling"), ("tooling", "service")}
# The one client of Redis: nothing outside these imports redis-py.
REDIS_DOORS = ("memory_engine.store",)
# Imports of redis-py that do no I/O: settings validation parses URLs with redis-py's own parser.
PURE_REDIS_IMPORTS = {("memory_engine.settings", "redis.connection")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> Iterator[Path]:
    for top in ("memory_engine", "tasks", "worker", "config"):
        yield from sorted((ROOT / top).rglob("*.py"))
    yield ROOT / "beat_schedule.py"


def imports_of(path: Path, name: str, modules: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """Modules ``path`` imports. ``from a import b`` counts as importing ``a.b`` when that is a
    module of ours (``from memory_engine import metrics``), else as importing ``a``."""
    tree = ast.parse(path.read_text("utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in source_files()}
    edges: dict[str, set[str]] = {}
    for name, path in files.items():
        edges[name] = {m for m in imports_of(path, name, set(files)) if m in files} - {name}
    return edges


def layer_of(module: str) -> int:
    best, index = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            # "memory_engine" names the package's __init__ alone: a new module must be placed.
            inside = module == prefix or (
                prefix != "memory_engine" and module.startswith(prefix + ".")
            )
            if inside and len(prefix) > best:
                best, index = len(prefix), i
    assert index >= 0, f"{module} belongs to no layer: add it to LAYERS"
    return index


def test_every_module_belongs_to_a_layer() -> None:
    for module in graph():
        layer_of(module)


def test_imports_only_point_down() -> None:
    upward = []
    for source, targets in graph().items():
        for target in targets:
            lo, hi = layer_of(source), layer_of(target)
            pair = (LAYERS[lo][0], LAYERS[hi][0])
            if hi > lo or pair in INDEPENDENT:
                upward.append(f"{source} ({pair[0]}) -> {target} ({pair[1]})")
    assert not upward, "imports pointing up:\n" + "\n".join(sorted(upward))


def test_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    # A package's __init__ re-exporting its submodules is not a cycle of ideas.
    real = [c for c in cycles if not all(c[0].startswith(m) or m.startswith(c[0]) for m in c)]
    assert not real, "import cycles:\n" + "\n".join(" -> ".join(c) for c in real)


def test_only_the_store_talks_to_redis() -> None:
    offenders = []
    for path in source_files():
        name = module_name(path)
        if name.startswith(REDIS_DOORS) or not name.startswith("memory_engine"):
            continue
        found = {i for i in imports_of(path, name) if i == "redis" or i.startswith("redis.")}
        if {i for i in found if (name, i) not in PURE_REDIS_IMPORTS}:
            offenders.append(name)
    assert not offenders, f"modules of the library that import redis-py: {offenders}"
