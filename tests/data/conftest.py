"""Fixtures for the kdcore.data tests."""

from __future__ import annotations

from urllib.error import URLError

import pytest

from kdcore.data import files


@pytest.fixture
def offline(monkeypatch):
    """No download can succeed, and the system Fashion-MNIST folder is out of sight."""
    attempts = []

    def fail(name, root):
        attempts.append(name)
        raise URLError("no network in tests")

    monkeypatch.setattr(files, "download", fail)
    monkeypatch.setattr(files, "FASHION_SYSTEM_DIRS", ())
    return attempts
