"""The package type-checks: its public API is typed (py.typed ships), so mypy must pass on it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mypy_passes_on_the_package() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "clipfuse"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Success" in proc.stdout


@pytest.mark.slow
def test_mypy_strict_passes_on_the_public_api() -> None:
    """``clipfuse.plugin`` and ``clipfuse.schemas`` (what users import) pass ``mypy --strict``.

    ``--follow-imports=silent``: the modules they import (the embedder registry, settings) are read for
    their types but held to the package-wide check above, not to --strict."""
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "clipfuse/plugin", "clipfuse/schemas"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Success" in proc.stdout
