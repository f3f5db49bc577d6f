"""Sweeps: grid parsing and validation, and the CLI end to end (the stacked training: test_group.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdcore.errors import ConfigError
from kdcore.store import Store
from kdcore.sweep import expand, parse_grid

ROOT = Path(__file__).resolve().parent.parent
TINY = {"dataset": "digits", "epochs": 3, "teacher": {"arch": "cnn-small", "epochs": 1}, "student": {"arch": "mlp-tiny"}}


def test_parse_grid_types_values_and_refuses_malformed_specs():
    assert parse_grid(["temperature=1,2.5,4", "baseline=true,false"]) == {"temperature": [1, 2.5, 4],
                                                                          "baseline": [True, False]}
    for bad, message in ((["temperature"], "--grid expects key=v1,v2,..., got 'temperature'"),
                         (["=1,2"], "--grid expects key=v1,v2,..., got '=1,2'"),
                         (["temperature="], "--grid expects key=v1,v2,..., got 'temperature='"),
                         (["seed=1,1"], "--grid seed repeats a value"),
                         ([], "a sweep needs at least one --grid key=v1,v2,...")):
        with pytest.raises(ConfigError) as info:
            parse_grid(bad)
        assert str(info.value) == message
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid(["seed=1", "seed=2"])


def test_expand_is_the_cartesian_product_in_grid_order():
    runs = expand(TINY, parse_grid(["temperature=1,4", "weights.kd=0.1,0.9", "seed=0,1,2"]))
    assert len(runs) == 12
    assert runs[0][0] == {"temperature": 1, "weights.kd": 0.1, "seed": 0}
    assert runs[-1][1].temperature == 4 and runs[-1][1].weights.kd == 0.9 and runs[-1][1].seed == 2


@pytest.mark.parametrize("grid, culprit", [
    (["temperature=1,0"], "temperature=0"),
    (["epochs=1,2", "teacher.epochs=0,1"], "teacher.epochs=0"),
    (["lr=0.1", "teacher.lr=-1"], "teacher.lr=-1"),
    (["student.arch=mlp-tiny,resnet99"], "student.arch=resnet99"),
])
def test_an_invalid_grid_value_is_named_before_anything_is_queued(grid, culprit):
    with pytest.raises(ConfigError, match=f"grid value {culprit} is invalid"):
        expand(TINY, parse_grid(grid))


def test_sweep_cli_queues_runs_that_share_one_teacher(tmp_path):
    env = {**os.environ, "KDCORE_HOME": str(tmp_path), "KDCORE_MAX_RUNS": "1"}
    args = [sys.executable, "-m", "kdcore", "sweep", "--set", "dataset=digits", "--set", "epochs=2",
            "--set", "teacher.arch=cnn-small", "--set", "teacher.epochs=1", "--set", "student.arch=mlp-tiny",
            "--grid", "temperature=1,4", "--grid", "seed=0,1", "--wait", "--json"]
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(result["runs"]) == 4 and result["sweep_id"].startswith("sweep-")
    store = Store(tmp_path)
    records = [store.get_run(r) for r in result["runs"]]
    assert all(r.status == "done" and r.sweep_id == result["sweep_id"] for r in records)
    assert sorted((r.config["temperature"], r.config["seed"]) for r in records) == [(1, 0), (1, 1), (4, 0), (4, 1)]
    assert len({r.summary["teacher_key"] for r in records}) == 1
    assert all(r.summary.get("group_size") == 4 for r in records)  # one worker trained them together
    assert len([p for p in (tmp_path / "teachers").glob("*.pt") if p.name.count(".") == 1]) == 1  # one teacher
    # a cell per temperature, distilled vs baseline paired over its 2 seeds (the rule: tests/test_verdict.py)
    assert [cell["temperature"] for cell in result["cells"]] == [1, 4]
    for cell in result["cells"]:
        mine = [r for r in records if r.config["temperature"] == cell["temperature"]]
        diffs = [r.summary["student_test_acc"] - r.summary["baseline_test_acc"] for r in mine]
        half = 12.706204736174694 * abs(diffs[0] - diffs[1]) / 2  # t(0.975; 1) · s_d / √2, s_d = |d0 − d1| / √2
        assert cell["seeds"]["run_ids"] == [r.id for r in sorted(mine, key=lambda r: r.config["seed"])]
        mean = sum(diffs) / 2
        assert cell["seeds"]["diff_ci95"] == pytest.approx([mean - half, mean + half], abs=1e-12)


def test_a_grid_with_a_bad_value_queues_nothing(tmp_path):
    env = {**os.environ, "KDCORE_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "kdcore", "sweep", "--grid", "temperature=1,-2"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "temperature=-2" in out.stderr and "Traceback" not in out.stderr
    assert Store(tmp_path).list_runs() == []
