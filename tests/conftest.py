"""Shared fixtures: every test gets its own run store, so no test writes ./kd-runs; and once torch is loaded,
this process computes with one intra-op thread."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres_server import PostgresServer, find_binaries


@pytest.fixture(autouse=True)
def _isolated_kd_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """KDCORE_HOME points at a fresh empty folder for every test (autouse fixtures run first), and no page
    warms a spare worker (a process importing torch, then waiting minutes) unless a test asks for one."""
    monkeypatch.setenv("KDCORE_HOME", str(tmp_path_factory.mktemp("kd-home")))
    monkeypatch.setenv("KDCORE_SPARE_WORKER", "0")
    monkeypatch.delenv("KDCORE_DB", raising=False)  # SQLite under KDCORE_HOME unless a test asks for PostgreSQL


@pytest.fixture
def kd_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run-store folder inside this test's tmp_path, set as KDCORE_HOME; returns its path."""
    home = tmp_path / "kd-home"
    home.mkdir()
    monkeypatch.setenv("KDCORE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session, started on first use from the installed binaries. Without them
    the tests that need it skip, except in CI (CI=true), where .ci/run installs them and a skip would hide a
    failure."""
    bin_dir = find_binaries()
    if bin_dir is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("PostgreSQL binaries (initdb, pg_ctl) not found; CI installs the postgresql package")
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not installed: apt-get install postgresql")
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()


# Tests that share a costly session fixture run on the same pytest-xdist worker (each worker would build it).
SHARED_FIXTURE_GROUPS = {"test_tune.py": "tune", "test_app_tune.py": "tune"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Groups for `pytest -n 2 --dist loadgroup` (pytest.ini): a module's tests stay together, so its
    module-scoped fixtures (the trained runs) are built once; the modules that share a session fixture go
    together; and the browser tests run one after another on one worker, so no two Chromiums and Streamlit
    servers share the two cores. Tryfirst: xdist reads the groups in its own hook of the same name."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        name = item.path.name
        group = "browser" if item.get_closest_marker("browser") else SHARED_FIXTURE_GROUPS.get(name, name)
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """One intra-op thread once torch is loaded: tiny models gain nothing from more, and on a busy small
    machine OpenMP's spinning threads make each step many times slower.

    A hook rather than an autouse fixture, because it runs before every fixture of the test, the
    module-scoped ones that train included (pytest sets up wider-scoped fixtures first). It changes this
    process only: workers in subprocesses share the cores their own way (kdcore.worker), and a torch-free
    test does not pay for importing torch."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tuned_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """One small tuning study run as a user would: `python -m kdcore tune ... --wait --json` (digits, 2 epochs,
    2 trials in one stacked batch, the best confirmed on 2 seeds), then extended by one trial (`tune --study ID
    --trials 1 --wait --json`). Its store folder and both JSON reports. Shared by the engine's and the Tune
    page's tests: the study is the costly part of both."""
    import json
    import os
    import subprocess

    home = tmp_path_factory.mktemp("tuned-study")
    env = {**os.environ, "KDCORE_HOME": str(home), "OMP_NUM_THREADS": "1", "KDCORE_SPARE_WORKER": "0"}

    def tune(*args: str) -> dict:
        result = subprocess.run([sys.executable, "-m", "kdcore", "tune", *args, "--wait", "--json"],
                                capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    first = tune("--space", "temperature=log:1,16", "--space", "weights.kd=0.1,0.9", "--trials", "2", "--seeds", "2",
                 "--sampler-seed", "0", "--name", "tiny", "--set", "dataset=digits", "--set", "epochs=2",
                 "--set", "teacher.epochs=1")
    return home, first, tune("--study", first["study_id"], "--trials", "1")
