"""pyproject.toml: the project builds with no warning of its own (as ``make install`` does)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_builds_without_a_warning_from_the_build_backend(tmp_path: Path) -> None:
    """Building the wheel, as pip does for make install, raises no setuptools warning (e.g.
    the license as a TOML table, deprecated) and the wheel says its license."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "position_distributor",
        source / "position_distributor",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "dist"), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"),
    )

    assert result.returncode == 0, result.stderr
    # pip's own notes about this machine's index settings are not the project's.
    ours = [
        line
        for line in result.stderr.splitlines()
        if "Warning" in line or "deprecated" in line.lower()
    ]
    assert ours == [], "\n".join(ours)
    [wheel] = (tmp_path / "dist").glob("position_distributor-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(name).decode()
    assert "License-Expression: MIT" in text
