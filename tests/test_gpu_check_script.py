"""scripts/gpu_check.sh in its CPU dry run: the same steps as on a GPU machine, tiny sizes, no
install, so the script cannot rot between the rare runs on a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu(tmp_path: Path) -> None:
    env = os.environ | {
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [line.split("\t") for line in (tmp_path / "steps.tsv").read_text().splitlines()[1:]]
    assert [name for name, _, _ in steps] == ["pytest-gpu", "bench-vit-b-32", "bench-vit-l-14"]
    assert all(code == "0" for _, code, _ in steps), steps
    summary = (tmp_path / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| clipfuse-demo (cpu)")]
    assert len(rows) == 2 and "not measured" not in summary
    assert "1 skipped" in (tmp_path / "pytest-gpu.txt").read_text()  # collected, skipped without CUDA
