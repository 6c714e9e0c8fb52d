"""Fixtures of the chart tests (helpers in chart/helmchart.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from chart.helmchart import Manifest, Render, find_helm, render_chart


@pytest.fixture(scope="session")
def helm() -> str:
    return find_helm()


@pytest.fixture
def render(helm: str, tmp_path: Path) -> Render:
    def _render(**kwargs: Any) -> list[Manifest]:
        return render_chart(helm, tmp=tmp_path, **kwargs)

    return _render


@pytest.fixture(scope="session")
def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail(
            "promtool not found: `make system-deps` installs Debian's prometheus", pytrace=False
        )
    return found
