"""Seed-noise verdicts (`kdcore.verdict`), seed siblings and repeats (`kdcore.seeds`), their CLI (`status --json`
carries `seeds`, `repeat`) and the pure read model of the pages (`app.read_model.seeds`, the method table).

The statistics are checked against scipy (computed here, separately) and against hand values; the CLI runs
in-process over a real store whose one training slot this test process holds, so nothing trains.
"""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from app.read_model.method_table import method_table, method_table_csv_rows
from app.read_model.seeds import cell_verdicts, config_groups, format_ci, format_difference, seeds_present
from kdcore.cli import main
from kdcore.config import RunConfig
from kdcore.seeds import missing_seeds, seed_family, seeds_summary, siblings_by_seed
from kdcore.store import Store
from kdcore.verdict import BETTER, NOISE, NONE, WORSE, mean_interval, regularized_beta, seed_verdict, t_quantile


def reference_paired(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of a − b: scipy's t quantile over numpy's float64 mean and sample std."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half


# --- the statistics -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 19, 60, 500, 1.5, 3.7, 12.25])
@pytest.mark.parametrize("p", [0.975, 0.95, 0.995])
def test_t_quantile_matches_scipy(p: float, df: float) -> None:
    assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


def test_t_quantile_by_hand_and_its_limits() -> None:
    # printed tables: t(0.975; 1) = 12.706, t(0.975; 2) = 4.303, t(0.975; 4) = 2.776, t(0.975; 30) = 2.042
    assert [round(t_quantile(0.975, df), 3) for df in (1, 2, 4, 30)] == [12.706, 4.303, 2.776, 2.042]
    assert t_quantile(0.5, 3) == 0.0
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959964, abs=1e-5)  # the normal's
    assert regularized_beta(0.5, 0.5, 0.5) == pytest.approx(0.5)  # symmetric
    assert regularized_beta(2, 3, 0.4) == pytest.approx(stats.beta.cdf(0.4, 2, 3), rel=1e-12)
    with pytest.raises(ValueError):
        t_quantile(0.3, 2)
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)


def test_mean_interval_matches_scipys_t_interval() -> None:
    values = [0.812, 0.835, 0.801, 0.828]
    mean, half = mean_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(np.mean(values)) and (mean - half, mean + half) == pytest.approx((low, high))
    assert mean_interval([0.5]) == (0.5, None)


def test_a_paired_verdict_by_hand() -> None:
    # differences 1.0, 1.5, 0.5 points: mean 1.0, sd 0.5, half-width 4.3027 × 0.5 / √3 = 1.2421: noise
    verdict = seed_verdict({0: 0.810, 1: 0.825, 2: 0.805}, {0: 0.800, 1: 0.810, 2: 0.800})
    assert verdict.paired and verdict.seeds == (0, 1, 2) and verdict.verdict == NOISE
    assert verdict.diff_mean == pytest.approx(0.010)
    assert verdict.half_width == pytest.approx(4.302652729911275 * 0.005 / math.sqrt(3), rel=1e-9)
    assert verdict.text == "within seed noise (+1.0 ± 1.2 points, better on 3 of 3 seeds)"
    # differences 0.8, 1.0, 0.6 points: half-width 4.3027 × 0.2 / √3 = 0.50: better
    better = seed_verdict({0: 0.808, 1: 0.810, 2: 0.806}, {0: 0.800, 1: 0.800, 2: 0.800})
    assert better.verdict == BETTER and better.wins == 3
    assert better.text == "better on 3 of 3 seeds, +0.8 ± 0.5 points"
    worse = seed_verdict({0: 0.800, 1: 0.800, 2: 0.800}, {0: 0.808, 1: 0.810, 2: 0.806})
    assert worse.verdict == WORSE and worse.text == "worse on 3 of 3 seeds, −0.8 ± 0.5 points"


def test_a_paired_verdict_matches_scipys_paired_t_interval() -> None:
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 10):
        b = 0.8 + 0.01 * rng.standard_normal(n)
        a = b + 0.004 + 0.006 * rng.standard_normal(n)
        verdict = seed_verdict(dict(enumerate(a)), dict(enumerate(b)))
        low, high = stats.ttest_rel(a, b).confidence_interval(0.95)
        assert (verdict.diff_low, verdict.diff_high) == pytest.approx((low, high), rel=1e-9, abs=1e-12)
        assert verdict.verdict == (BETTER if low > 0 else WORSE if high < 0 else NOISE)
        assert verdict.wins == int((a > b).sum())


def test_without_shared_seeds_the_interval_is_welchs() -> None:
    a, b = {0: 0.81, 1: 0.84, 2: 0.80}, {5: 0.70, 6: 0.74, 7: 0.73, 8: 0.71}
    verdict = seed_verdict(a, b)
    low, high = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False).confidence_interval(0.95)
    assert not verdict.paired and (verdict.diff_low, verdict.diff_high) == pytest.approx((low, high), rel=1e-9)
    assert verdict.verdict == BETTER and verdict.text.startswith("better, +9.7 ± ")  # 81.67 − 72.00
    assert verdict.text.endswith("points (unpaired: 3 vs 4 seeds)")
    # one shared seed is not enough to pair: Welch over all values
    assert not seed_verdict({0: 0.8, 1: 0.82}, {1: 0.8, 2: 0.79}).paired


def test_one_seed_gives_no_verdict_and_missing_values_are_left_out() -> None:
    one = seed_verdict({0: 0.812}, {0: 0.800})
    assert one.verdict == NONE and one.text == "one seed: no verdict (+1.2 points)" and one.diff_low is None
    assert seed_verdict({0: 0.8, 1: float("nan")}, {0: 0.79, 1: 0.8}).verdict == NONE  # NaN: one pair left
    assert seed_verdict({0: 0.8, 1: 0.9}, {0: None, 1: None}).text == "no verdict: nothing to compare with"
    same = seed_verdict({0: 0.81, 1: 0.82}, {0: 0.80, 1: 0.81})  # equal differences: a zero-width interval
    assert same.verdict == BETTER and same.half_width == pytest.approx(0, abs=1e-12)
    assert json.loads(json.dumps(same.to_json()))["diff_ci95"] == pytest.approx([0.01, 0.01])


# --- seed siblings ---------------------------------------------------------------------------------------------


def _record(run_id: str, seq: int, *, seed: int, student: float | None, alone: float | None,
            status: str = "done", sweep_id: str | None = None, **settings) -> SimpleNamespace:
    config = RunConfig().replace(dataset="digits", epochs=1, seed=seed, **settings).to_dict()
    summary = {"student_test_acc": student, "baseline_test_acc": alone} if status == "done" else None
    return SimpleNamespace(id=run_id, seq=seq, status=status, config=config, summary=summary, sweep_id=sweep_id,
                           name="", owner=None)


def test_seed_family_ignores_the_seed_and_what_does_not_change_the_experiment() -> None:
    base = RunConfig().replace(dataset="digits").to_dict()
    assert seed_family(base) == seed_family({**base, "seed": 7, "name": "x", "device": "cpu", "data_root": "/d"})
    assert seed_family(base) != seed_family({**base, "temperature": 2.0})
    assert seed_family(base) != seed_family({**base, "teacher": {**base["teacher"], "seed": 1}})
    older = {k: v for k, v in base.items() if k != "labeled_fraction"}  # stored before the setting existed
    assert seed_family(older) == seed_family(base)


def test_seeds_summary_pairs_the_newest_finished_run_of_each_seed() -> None:
    records = [_record("r1", 1, seed=0, student=0.70, alone=0.70),  # seed 0 again later: left out
               _record("r2", 2, seed=0, student=0.808, alone=0.800),
               _record("r3", 3, seed=1, student=0.810, alone=0.800),
               _record("r4", 4, seed=2, student=0.806, alone=0.800),
               _record("r5", 5, seed=3, student=None, alone=None, status="failed"),
               _record("r6", 6, seed=4, student=0.99, alone=0.5, temperature=2.0)]  # another config
    assert list(siblings_by_seed(records[0], records)) == [2, 1, 0]
    seeds = seeds_summary(records[0], records)
    mean, low, high = reference_paired([0.808, 0.810, 0.806], [0.8, 0.8, 0.8])
    assert seeds["n"] == 3 and seeds["seeds"] == [0, 1, 2] and seeds["run_ids"] == ["r2", "r3", "r4"]
    assert seeds["diff_mean"] == pytest.approx(mean) and seeds["diff_ci95"] == pytest.approx([low, high])
    assert seeds["distilled_mean"] == pytest.approx(0.808) and seeds["baseline_ci95"] == pytest.approx([0.8, 0.8])
    assert seeds["verdict"] == BETTER and seeds["text"] == "better on 3 of 3 seeds, +0.8 ± 0.5 points"
    alone = seeds_summary(records[5], records)
    assert alone["n"] == 1 and alone["verdict"] == NONE and alone["distilled_ci95"] is None
    assert alone["text"].startswith("one seed: no verdict")
    no_baseline = [_record("n0", 8, seed=0, student=0.8, alone=None, baseline=False),
                   _record("n1", 9, seed=1, student=0.82, alone=None, baseline=False)]
    unjudged = seeds_summary(no_baseline[0], no_baseline)
    assert unjudged["n"] == 2 and unjudged["verdict"] == NONE and unjudged["text"].startswith("no baseline: no verdict")


def test_missing_seeds_fill_the_gaps_first() -> None:
    assert missing_seeds({0}, 3) == [1, 2]
    assert missing_seeds({0, 2, 5}, 5) == [1, 3]
    assert missing_seeds({0, 1, 2}, 3) == []


def test_cell_verdicts_and_config_groups_read_model() -> None:
    records = [_record("a0", 1, seed=0, student=0.81, alone=0.80),
               _record("a1", 2, seed=1, student=0.83, alone=0.80),
               _record("b0", 3, seed=0, student=0.78, alone=0.80, temperature=1.0),
               _record("b1", 4, seed=1, student=0.77, alone=0.80, temperature=1.0),
               _record("b2", 5, seed=2, student=None, alone=None, status="queued", temperature=1.0)]
    cells = cell_verdicts(records, ["temperature", "seed"])
    assert [(c["temperature"], c["n"]) for c in cells] == [(4.0, 2), (1.0, 2)]
    mean, low, high = reference_paired([0.78, 0.77], [0.80, 0.80])
    assert cells[1]["diff_ci95"] == pytest.approx([low, high])
    assert cells[1]["verdict"] == NOISE and high > 0  # worse on both seeds, but t(0.975; 1) = 12.7
    assert format_difference(cells[1]) == f"{100 * mean:+.2f} ± {100 * (high - low) / 2:.2f}".replace("-", "−")
    assert format_ci(0.8123, [0.80, 0.82]) == "81.23 ± 1.00" and format_ci(0.5, None) == "50.00"
    assert format_ci(None, None) == "—"
    groups = config_groups([records[2], records[0], records[1]], records)
    assert [g["label"] for g in groups] == ["temperature=1", "temperature=4"]
    versus = groups[1]["versus_first"]  # T=4 against T=1, paired on seeds 0 and 1
    low, high = stats.ttest_rel([0.81, 0.83], [0.78, 0.77]).confidence_interval(0.95)
    assert versus.paired and (versus.diff_low, versus.diff_high) == pytest.approx((low, high))
    assert seeds_present(records) == 3


def test_method_table_judges_each_method_against_the_student_alone_by_seed() -> None:
    def run(run_id, method, seed, student, baseline=None):
        record = _record(run_id, 0, seed=seed, student=student, alone=baseline, method=method)
        record.summary.update(teacher_test_acc=0.95, teacher_key="t")
        return record

    records = [run("k0", "kd", 0, 0.86, 0.80), run("k1", "kd", 1, 0.87, 0.81), run("k2", "kd", 2, 0.85, 0.80),
               run("d0", "dkd", 0, 0.80), run("d1", "dkd", 1, 0.82), run("d9", "dkd", 9, 0.79)]
    (row,) = method_table(records)
    kd, dkd = row["methods"]["kd"]["verdict"], row["methods"]["dkd"]["verdict"]
    low, high = stats.ttest_rel([0.86, 0.87, 0.85], [0.80, 0.81, 0.80]).confidence_interval(0.95)
    assert kd.paired and kd.verdict == BETTER and (kd.diff_low, kd.diff_high) == pytest.approx((low, high))
    low, high = stats.ttest_rel([0.80, 0.82], [0.80, 0.81]).confidence_interval(0.95)  # seed 9 has no baseline
    assert dkd.seeds == (0, 1) and (dkd.diff_low, dkd.diff_high) == pytest.approx((low, high))
    csv = {line["column"]: line for line in method_table_csv_rows([row])}
    assert csv["kd"]["verdict"] == BETTER and csv["kd"]["seeds_paired"] == 3 and csv["teacher"]["verdict"] is None


# --- the CLI: status --json carries `seeds`; repeat queues the missing ones -------------------------------------


@pytest.fixture
def held_store(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A store whose one training slot a run of this (alive) process holds: what is queued stays queued."""
    monkeypatch.setenv("KDCORE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KDCORE_MAX_RUNS", "1")
    store = Store(tmp_path / "home")
    store.create_run(RunConfig().replace(dataset="digits").to_dict(), status="running", pid=os.getpid())
    yield store
    store.close()


def finished(store: Store, seed: int, student: float, baseline: float | None, *, sweep_id: str | None = None,
             **settings) -> str:
    config = RunConfig().replace(dataset="digits", epochs=1, seed=seed, **settings).to_dict()
    run_id = store.create_run(config, status="running", sweep_id=sweep_id, name=f"seed {seed}")
    store.finish(run_id, "done", summary={"run_id": run_id, "status": "done", "student_test_acc": student,
                                          "baseline_test_acc": baseline, "teacher_test_acc": 0.9, "wall_s": 1.0,
                                          "teacher_params": 100, "student_params": 10, "compression": 10.0,
                                          "gap_closed": None})
    return run_id


def json_out(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_status_json_carries_the_paired_difference_over_seeds(held_store, capsys) -> None:
    ids = [finished(held_store, seed, student, 0.80) for seed, student in enumerate([0.808, 0.810, 0.806])]
    finished(held_store, 0, 0.5, 0.9, temperature=9.0)  # another config: not a sibling
    assert main(["status", ids[1], "--json"]) == 0
    seeds = json_out(capsys)["seeds"]
    mean, low, high = reference_paired([0.808, 0.810, 0.806], [0.8] * 3)
    assert seeds["n"] == 3 and seeds["run_ids"] == ids and seeds["verdict"] == "better"
    assert seeds["diff_mean"] == pytest.approx(mean) and seeds["diff_ci95"] == pytest.approx([low, high])
    assert main(["status", ids[0]]) == 0
    assert "over 3 seeds of this config, distilled vs baseline: better on 3 of 3 seeds" in capsys.readouterr().out
    alone = finished(held_store, 0, 0.8, 0.79, temperature=2.0)
    main(["status", alone, "--json"])
    assert json_out(capsys)["seeds"]["text"] == "one seed: no verdict (+1.0 points)"
    main(["status", alone])
    assert "(python -m kdcore repeat RUN_ID --seeds 3)" in capsys.readouterr().out


def test_repeat_queues_the_missing_seeds_of_a_run_and_of_a_sweep(held_store, capsys) -> None:
    first = finished(held_store, 0, 0.81, 0.80)
    assert main(["repeat", first, "--seeds", "3", "--json"]) == 0
    queued = json_out(capsys)["queued"]
    assert [q["seed"] for q in queued] == [1, 2] and {q["status"] for q in queued} == {"queued"}
    records = {q["run_id"]: held_store.get_run(q["run_id"]) for q in queued}
    assert all(seed_family(r.config) == seed_family(held_store.get_run(first).config) for r in records.values())
    assert [r.name for r in records.values()] == ["seed 0 · seed 1", "seed 0 · seed 2"]
    assert main(["repeat", first, "--seeds", "3", "--json"]) == 0  # queued seeds count: nothing more
    assert json_out(capsys)["queued"] == []

    sweep_id = held_store.create_sweep({"name": "grid", "base": {}, "grid": {"temperature": [1, 4]}, "size": 2})
    for temperature in (1.0, 4.0):
        finished(held_store, 0, 0.8, 0.8, sweep_id=sweep_id, temperature=temperature)
    assert main(["repeat", sweep_id, "--seeds", "2"]) == 0
    assert "2 runs queued" in capsys.readouterr().out
    added = [r for r in held_store.list_runs(sweep_id=sweep_id) if r.status == "queued"]
    assert sorted((r.config["temperature"], r.config["seed"]) for r in added) == [(1.0, 1), (4.0, 1)]
    assert {r.name for r in added} == {"grid: temperature=1.0, seed=1", "grid: temperature=4.0, seed=1"}
    sweep = held_store.get_sweep(sweep_id)
    assert sweep["grid"] == {"temperature": [1, 4], "seed": [1]} and sweep["size"] == 4

    study = held_store.create_sweep({"kind": "tune", "name": "study", "trials": {}})  # its runs are its trials
    trial = finished(held_store, 0, 0.8, 0.8, sweep_id=study, temperature=2.0)
    assert main(["repeat", trial, "--seeds", "2", "--json"]) == 0
    (added,) = json_out(capsys)["queued"]
    assert held_store.get_run(added["run_id"]).sweep_id is None and held_store.get_sweep(study)["trials"] == {}
    assert main(["repeat", study]) == 2
    assert "is a tuning study, not a grid" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--seeds", "1"], "--seeds must be a whole number from 2 to 20, got 1"),
    (["--seeds", "99"], "--seeds must be a whole number from 2 to 20, got 99"),
])
def test_repeat_refuses_bad_input_in_one_line(held_store, capsys, args, message) -> None:
    run_id = finished(held_store, 0, 0.8, 0.8)
    assert main(["repeat", run_id, *args]) == 2
    assert capsys.readouterr().err == f"kdcore: error: {message}\n"
    assert main(["repeat", "run-00000000"]) == 2
    assert capsys.readouterr().err.startswith("kdcore: error: no run run-00000000")
    assert main(["repeat", "sweep-nope"]) == 2
    assert "malformed sweep id" in capsys.readouterr().err
    assert [r.status for r in held_store.list_runs(status="queued")] == []
