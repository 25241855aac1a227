"""The ``dev`` script's installs: ``demo`` and ``up`` install the project without extras, ``test``
and ``lint`` add the dev extra and the framework adapters' extras (their tests and types), and
the stamps make a command install only what is missing.

The script runs for real (bash), copied next to a throwaway ``pyproject.toml``, with a venv whose
``bin/`` holds recorders instead of Python, pip and the tools: each appends its argv to a log.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEST_INSTALL = ".[dev,openai-agents,langchain,server]"
RECORDER = '#!/usr/bin/env bash\necho "$(basename "$0") $*" >> "$DEV_TEST_LOG"\n'
TOOLS = ("python", "memory-engine", "pytest", "ruff", "mypy")


class Dev:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "checkout"
        self.dir.mkdir()
        shutil.copy(ROOT / "dev", self.dir / "dev")
        self.pyproject = self.dir / "pyproject.toml"
        self.pyproject.write_text('[project]\nname = "x"\n')
        self.venv = tmp_path / "venv"
        self.log = tmp_path / "calls.log"
        # A fake interpreter for `python3 -m venv DIR`: creates DIR/bin with recorders.
        self.python = tmp_path / "python3"
        self.python.write_text(
            "#!/usr/bin/env bash\n"
            'echo "python3 $*" >> "$DEV_TEST_LOG"\n'
            'mkdir -p "$3/bin"\n'
            f"for t in {' '.join(TOOLS)}; do\n"
            f'  printf \'%s\' {_quote(RECORDER)} > "$3/bin/$t"; chmod +x "$3/bin/$t"\n'
            "done\n"
        )
        self.python.chmod(self.python.stat().st_mode | stat.S_IXUSR)

    def run(self, *args: str) -> list[str]:
        """Run ``./dev args``; returns the calls it made (one line each), then clears the log."""
        env = dict(os.environ, VENV=str(self.venv), PYTHON=str(self.python))
        env["DEV_TEST_LOG"] = str(self.log)
        subprocess.run(["bash", str(self.dir / "dev"), *args], env=env, check=True, timeout=30)
        calls = self.log.read_text().splitlines() if self.log.exists() else []
        self.log.unlink(missing_ok=True)
        return calls

    def installs(self, *args: str) -> list[str]:
        """The ``pip install -e`` targets of ``./dev args``."""
        return [
            c.split()[-1] for c in self.run(*args) if c.startswith("python -m pip install -q -e")
        ]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.fixture
def dev(tmp_path: Path) -> Dev:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    return Dev(tmp_path)


def test_demo_installs_the_project_without_the_dev_extra(dev: Dev) -> None:
    calls = dev.run("demo", "--conversations", "3")
    assert calls[0] == f"python3 -m venv {dev.venv}"
    assert [c for c in calls if "pip install -q -e" in c] == ["python -m pip install -q -e ."]
    assert calls[-1] == "memory-engine demo --conversations 3"
    assert dev.installs("up") == [], "up needs no more than demo"


def test_switching_between_demo_and_test_installs_only_what_is_missing(dev: Dev) -> None:
    assert dev.installs("demo") == ["."]
    assert dev.installs("test", "-q") == [TEST_INSTALL], "test adds the dev and adapter extras"
    assert dev.installs("demo") == [], "the dev install contains the demo's"
    assert dev.installs("test") == []
    assert dev.installs("lint") == []
    assert dev.installs("bench", "--quick") == [".[dev,openai-agents,langchain,server,bench]"]
    assert dev.installs("test") == []


def test_a_dev_install_first_serves_the_demo_too(dev: Dev) -> None:
    assert dev.installs("lint") == [TEST_INSTALL]
    assert dev.installs("demo") == []


def test_a_changed_pyproject_installs_again(dev: Dev) -> None:
    assert dev.installs("test") == [TEST_INSTALL]
    dev.pyproject.write_text('[project]\nname = "x"\nversion = "2"\n')
    assert dev.installs("demo") == ["."]
    assert dev.installs("test") == [TEST_INSTALL], "the old dev stamp no longer counts"
    stamps = sorted(
        p.name.removeprefix(".installed-").rsplit("-", 1)[0] for p in dev.venv.glob(".installed-*")
    )
    assert stamps == ["core", "dev", "langchain", "openai-agents", "server"]
