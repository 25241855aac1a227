"""Screening of redaction patterns before they are compiled: a pattern that could backtrack
catastrophically, match the empty string, or use ``regex`` features whose meaning differs from
``re`` (fuzzy matching, version flags) is refused with a reason. Screened with the structure of
both engines' parsers; matched at run time by ``regex`` (:mod:`memory_engine.privacy`).
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Final

import regex

__all__ = ["MAX_BOUNDED_REPEAT", "MAX_REPEAT_SPLITS", "check_redact_pattern"]

MAX_REPEAT_SPLITS: Final[int] = 100_000
"""Most ways bounded repeats nested in a bounded repeat may split one match (``(a{1,3}){1,20}``
has 3**20): past this a failing match backtracks through them all."""
MAX_BOUNDED_REPEAT: Final[int] = 1000
"""Largest ``{n,m}`` bound a redaction pattern may use."""
# --- redaction pattern screening -------------------------------------------------------------
# re._parser has no public name and typeshed only types its deprecated alias sre_parse (whose import
# warns), so it is loaded untyped. It gives the structure we screen; matching is done by `regex`.
_sre: Any = importlib.import_module("re._parser")
_REPEATS: Final = (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT)
_BACKTRACKING_REPEATS: Final = (_sre.MAX_REPEAT, _sre.MIN_REPEAT)
# Possessive repeats and atomic groups never give characters back, so nothing inside them is
# retried: they are how a refused shape is written safely (a++ or (?>a+) instead of a+).
_NO_BACKTRACK: Final = (_sre.POSSESSIVE_REPEAT, _sre.ATOMIC_GROUP)
_NESTED = (
    "nested quantifiers (like (a+)+) can backtrack catastrophically; make the inner repeat "
    "possessive (a++) or atomic (?>...), or remove the nesting"
)
_OVERLAP = (
    "an alternation with an empty branch inside a repeat (sre reads (a|aa)+ as a(?:|a)+) can "
    "match the same text many ways and backtrack catastrophically"
)
_Nodes = Sequence[tuple[Any, Any]]

# The pattern runs on `regex`, whose syntax is a superset of re's: where they differ on a pattern
# both accept, `regex` reads fuzzy matching (x{e<=9} is a literal for re, "x with up to 9 errors",
# which matches the empty string, for regex). Its own parser (untyped, like re's) finds those.
_rx: Any = importlib.import_module("regex._regex_core")
_VERSION_FLAGS: Final[int] = regex.VERSION0 | regex.VERSION1


def _regex_parse(pattern: str) -> tuple[Any, int]:
    """``regex``'s parse tree of ``pattern`` and the flags it sets inline, as ``regex.compile``
    gets them (a global flag after the start makes it parse again with that flag)."""
    flags = 0
    while True:
        source = _rx.Source(pattern)
        info = _rx.Info(flags, source.char_type, {})
        source.ignore_space = bool(info.flags & regex.VERBOSE)
        try:
            return _rx._parse_pattern(source, info), info.flags
        except _rx._UnscopedFlagSet:
            flags = info.global_flags


def _regex_refusal(pattern: str) -> str | None:
    """Why ``regex`` would run ``pattern`` other than the ``re`` screen reads it, or ``None``."""
    tree, flags = _regex_parse(pattern)
    if flags & _VERSION_FLAGS:
        return "inline version flags ((?V0), (?V1)) are not allowed: patterns run as VERSION0"
    stack, seen = [tree], set()
    while stack:  # every node of the tree, whatever attribute holds it
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, _rx.Fuzzy):
            return (
                "fuzzy matching ({e<=n}, {i}, {s<=n}, ...) is not allowed: it can match almost "
                r"anything, the empty string included; escape a literal brace as \{"
            )
        if isinstance(node, _rx.RegexBase):
            stack.extend(vars(node).values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return None


def _children(av: Any) -> list[_Nodes]:
    # Sub-patterns sit in a node's argument itself, in its tuple, or in a list there (BRANCH).
    parts = av if isinstance(av, tuple) else (av,)
    flat = [item for part in parts for item in (part if isinstance(part, list) else (part,))]
    return [item for item in flat if isinstance(item, _sre.SubPattern)]


def _can_be_empty(nodes: _Nodes) -> bool:
    for op, av in nodes:
        if op in _REPEATS:
            empty = av[0] == 0 or _can_be_empty(av[2])
        elif op == _sre.BRANCH:
            empty = any(_can_be_empty(alt) for alt in av[1])
        elif op in (_sre.SUBPATTERN, _sre.ATOMIC_GROUP):
            empty = all(_can_be_empty(child) for child in _children(av))
        else:  # assertions and anchors match no character; everything else matches one or more
            empty = op in (_sre.AT, _sre.ASSERT, _sre.ASSERT_NOT)
        if not empty:
            return False
    return True


def _finds(nodes: _Nodes, wanted: Callable[[Any, Any], bool]) -> bool:
    """Whether a node satisfying ``wanted`` sits in ``nodes`` outside possessive/atomic parts."""
    return any(
        wanted(op, av)
        or (op not in _NO_BACKTRACK and any(_finds(c, wanted) for c in _children(av)))
        for op, av in nodes
    )


def _unbounded(op: Any, av: Any) -> bool:
    return op in _BACKTRACKING_REPEATS and av[1] == _sre.MAXREPEAT


def _empty_branch(op: Any, av: Any) -> bool:
    return op == _sre.BRANCH and any(map(_can_be_empty, av[1]))


def _screen(nodes: _Nodes) -> str | None:
    """The first catastrophic-backtracking shape in ``nodes``, or ``None``."""
    for op, av in nodes:
        if op in _REPEATS:
            low, high, body = av
            if max(low, 0 if high == _sre.MAXREPEAT else high) > MAX_BOUNDED_REPEAT:
                return f"a repeat bound above {MAX_BOUNDED_REPEAT} makes matching too costly"
            # Only a repeat that may run more than once, and may be backtracked into, multiplies.
            if op != _sre.POSSESSIVE_REPEAT and (high == _sre.MAXREPEAT or high > 1):
                if _finds(body, _unbounded):
                    return _NESTED
                if _finds(body, _empty_branch):
                    return _OVERLAP
        found = next(filter(None, map(_screen, _children(av))), None)
        if found:
            return found
    return None


def _splits(nodes: _Nodes) -> int:
    """An upper bound on the ways ``nodes`` can share one match between bounded repeats: a
    bounded repeat run up to ``m`` times multiplies its body's count to the power ``m``.
    Unbounded repeats are left to :func:`_screen`; possessive and atomic parts never split."""
    total = 1
    for op, av in nodes:
        if op in _BACKTRACKING_REPEATS and av[1] != _sre.MAXREPEAT:
            low, high, body = av
            inner = _splits(body)
            ways = max(high - low + 1, inner**high if inner > 1 else 1)
        elif op in _NO_BACKTRACK:
            ways = 1
        elif op == _sre.BRANCH:
            ways = sum(_splits(alt) for alt in av[1])
        else:
            ways = 1
            for child in _children(av):
                ways *= _splits(child)
        total = min(total * ways, MAX_REPEAT_SPLITS + 1)
    return total


def check_redact_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a safe redaction regex, else raise :class:`ValueError`: it
    must compile with ``regex`` (VERSION0, as :class:`~memory_engine.privacy.Redactor` runs it)
    without inline version flags or fuzzy matching, parse with Python's ``re`` parser (or it
    cannot be screened), pass the catastrophic-backtracking screen and not match the empty
    string (checked on the structure and by ``regex`` itself)."""
    try:
        compiled = regex.compile(pattern)
        refusal = _regex_refusal(pattern)
    except (regex.error, OverflowError, RecursionError, ValueError) as exc:
        raise ValueError(f"pattern {pattern!r} does not compile: {exc}") from None
    except (AttributeError, TypeError) as exc:  # regex's internals moved: refuse, never guess
        raise ValueError(
            f"pattern {pattern!r} cannot be screened with this version of regex ({exc})"
        ) from None
    if refusal:
        raise ValueError(f"pattern {pattern!r} is refused: {refusal}")
    try:
        with warnings.catch_warnings():  # "possible nested set" FutureWarnings concern re, not us
            warnings.simplefilter("ignore")
            tree = _sre.parse(pattern)
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        raise ValueError(
            f"pattern {pattern!r} uses syntax Python's re parser cannot read ({exc}), so it "
            "cannot be screened for catastrophic backtracking"
        ) from None
    try:
        reason = _screen(tree)
        if reason is None and _splits(tree) > MAX_REPEAT_SPLITS:
            reason = (
                "variable-length repeats nested in a bounded repeat (like (a{1,100}){1,100}) "
                f"can split a match more than {MAX_REPEAT_SPLITS} ways and backtrack "
                "catastrophically; bound them tighter or make the inner repeat possessive"
            )
        if reason is None and (_can_be_empty(tree) or compiled.search("") is not None):
            reason = "it can match the empty string, so redaction would insert text everywhere"
    except RecursionError:
        reason = "it is nested too deeply to screen"
    if reason:
        raise ValueError(f"pattern {pattern!r} is refused: {reason}")
    return pattern
