"""Shared fixtures: every test gets its own run store, so no test writes ./kd-runs."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_kd_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """KDCORE_HOME points at a fresh empty folder for every test (autouse fixtures run first)."""
    monkeypatch.setenv("KDCORE_HOME", str(tmp_path_factory.mktemp("kd-home")))


@pytest.fixture
def kd_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run-store folder inside this test's tmp_path, set as KDCORE_HOME; returns its path."""
    home = tmp_path / "kd-home"
    home.mkdir()
    monkeypatch.setenv("KDCORE_HOME", str(home))
    return home
