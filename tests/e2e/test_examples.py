"""Every runnable example in docs/examples runs as documented against a private Redis, offline,
and prints what it declares: each ``# expect: TEXT`` line of its source (docstring or comment)
names a text its output must contain. An example with no such line fails: it would prove
nothing but that it exits."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "docs" / "examples").glob("*.py"))
EXPECT = re.compile(r"^\s*# expect: (.+?)\s*$", re.MULTILINE)


def expectations(example: Path) -> list[str]:
    return EXPECT.findall(example.read_text("utf-8"))


def test_the_quickstart_declares_its_checks() -> None:
    quickstart = next(p for p in EXAMPLES if p.name == "quickstart.py")
    found = expectations(quickstart)
    assert "[REDACTED]" in found, "redaction ran before the message was stored"
    assert "messages=2" in found


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(example: Path, redis_url: str, tmp_path: Path) -> None:
    expected = expectations(example)
    assert expected, f"{example.name} declares no '# expect: ...' line"
    # No MEMORY_* from the caller, and no OPENAI_*: the examples start their own loopback LLM.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEMORY_", "OPENAI_"))}
    env["MEMORY_REDIS_URL"] = redis_url
    # From an empty directory: an example must not depend on the repository's layout.
    done = subprocess.run(
        [sys.executable, str(example)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    missing = [text for text in expected if text not in done.stdout]
    assert not missing, f"not in the output of {example.name}: {missing}\n{done.stdout}"
