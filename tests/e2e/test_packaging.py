"""The wheel workflow code installs: the library alone, with its data files, and no generic
top-level modules (a Django project has its own ``config``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_only_memory_engine_and_its_data(tmp_path: Path) -> None:
    # Built from a copy of what the wheel is made of: setuptools leaves build/ in the source tree.
    source = tmp_path / "src"
    shutil.copytree(ROOT / "memory_engine", source / "memory_engine",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("memory_engine-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"memory_engine"}, tops
    assert "memory_engine/py.typed" in names
    assert "memory_engine/store/lua/append.lua" in names
    shipped = {Path(n).name for n in names if n.startswith("memory_engine/resources_default/")}
    assert shipped == {p.name for p in (ROOT / "config" / "resources").glob("*.yaml")}
    assert not any(
        n.startswith(("tests/", "bench/", "worker/", "tasks/", "config/")) for n in names
    )
