"""Import layering of the node (DESIGN §8): import-linter contracts in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_import_contracts_are_kept() -> None:
    beside = Path(sys.executable).parent / "lint-imports"
    lint_imports = str(beside) if beside.exists() else shutil.which("lint-imports")
    assert lint_imports, "lint-imports not found: install the dev extra (make venv)"
    proc = subprocess.run(
        [lint_imports, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "The node never imports the operator KEPT" in proc.stdout
    assert "Only the operator's kube module imports kubernetes_asyncio KEPT" in proc.stdout
    assert (
        "The node's layers: the CLI over local mode over the runtime over the pure core KEPT"
        in (proc.stdout)
    )
