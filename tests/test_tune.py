"""Auto-tuning (kdcore.tune): the search space, the pruning hook, a driver that restarts, and one real study."""

from __future__ import annotations

import math

import optuna
import pytest

from kdcore.cli import main
from kdcore.errors import ConfigError
from kdcore.store import Store
from kdcore.tune.pruning import PruningCallback
from kdcore.tune.space import check_space, parse_dimension, parse_space, sample
from kdcore.tune.study import create_study, default_pruner, drive, get_study, load_optuna, rung_epochs
from kdcore.tune.verdict import confirm_verdict
from run_helpers import kdcore, last_json

DIGITS = {"dataset": "digits", "epochs": 2, "teacher": {"epochs": 1}}


# --- the space ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, kind, low, high, log, choices", [
    ("temperature=log:1,32", "float", 1, 32, True, ()),
    ("weights.kd=0.1,0.95", "float", 0.1, 0.95, False, ()),
    ("epochs=int:2,5", "int", 2, 5, False, ()),
    ("method=kd,dkd,dist", "choice", None, None, False, ("kd", "dkd", "dist")),
    ("batch_size=choice:32,64", "choice", None, None, False, (32, 64)),
    ("lr=0.001,0.002,0.004", "choice", None, None, False, (0.001, 0.002, 0.004)),  # three numbers: a choice
])
def test_a_spec_parses_to_its_dimension(text, kind, low, high, log, choices):
    dim = parse_dimension(text)
    assert (dim.kind, dim.low, dim.high, dim.log, dim.choices) == (kind, low, high, log, choices)
    assert parse_dimension(dim.text) == dim  # the stored text reads back the same


@pytest.mark.parametrize("args, message", [
    (["--space", "temperature=log:0,4"], "log scale needs 0 < lo"),
    (["--space", "temperature=4,4"], "is empty"),
    (["--space", "temperature=0,4"], "temperature=0.0 cannot run"),
    (["--space", "nonsense=1,2"], "unknown config key 'nonsense'"),
    (["--space", "method=kd,banana"], "unknown method 'banana'"),
    (["--space", "method.beta=0,5"], "no method of this study (kd) has a parameter 'beta' (dkd, dist do)"),
    (["--space", "method=fitnets"], "method=fitnets cannot run"),  # a space that only makes invalid configs
    (["--space", "seed=0,5"], "not lucky seeds"),
    (["--space", "temperature"], "expects KEY=SPEC"),
    (["--space", "temperature=1,4"], "--trials must be a positive integer, got 0"),
    (["--space", "temperature=1,4", "--set", "epochs=4", "--first-rung", "4"], "--first-rung must be an epoch from 1 to 3"),
])
def test_bad_input_exits_2_with_one_line_and_queues_nothing(args, message, capsys):
    trials = ["--trials", "0"] if "--trials must" in message else ["--trials", "2"]
    assert main(["tune", *args, *trials, "--set", "dataset=digits"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    store = Store()
    assert store.list_sweeps() == [] and store.list_runs() == []


def test_an_empty_space_is_refused():
    with pytest.raises(ConfigError, match="at least one --space"):
        parse_space([])


def test_a_methods_parameters_are_sampled_only_for_that_method():
    dims = parse_space(["method=kd,dkd", "method.beta=1,10", "temperature=1,8"])
    check_space(DIGITS, dims)
    assert sample(optuna.trial.FixedTrial({"method": "kd", "temperature": 2.0}), dims, DIGITS) == {
        "method": "kd", "temperature": 2.0}
    assert sample(optuna.trial.FixedTrial({"method": "dkd", "method.beta": 3.0, "temperature": 2.0}), dims, DIGITS) \
        == {"method": "dkd", "method.beta": 3.0, "temperature": 2.0}


def test_trials_report_to_the_pruner_at_the_rung_epochs_before_their_last():
    assert rung_epochs(default_pruner("sha", 30), 30) == [3, 9, 27]  # a tenth of the budget, then ×3
    assert rung_epochs(default_pruner("hyperband", 2), 2) == [1]
    assert rung_epochs(default_pruner("none", 30), 30) == []
    assert rung_epochs(default_pruner("sha", 30, first_rung=10), 30) == [10]  # --first-rung: later, fewer rungs
    assert rung_epochs(default_pruner("sha", 30, first_rung=2), 30) == [2, 6, 18]


# --- the verdict --------------------------------------------------------------------------------------------------


def test_confirm_verdict_pairs_seeds_and_reports_the_gap_closed():
    tuned = {seed: {"student_test_acc": a, "baseline_test_acc": b, "teacher_test_acc": 0.98}
             for seed, (a, b) in enumerate(((0.95, 0.90), (0.96, 0.91), (0.97, 0.92)))}
    default = {seed: {"student_test_acc": a, "baseline_test_acc": b, "teacher_test_acc": 0.98}
               for seed, (a, b) in enumerate(((0.93, 0.90), (0.935, 0.91), (0.945, 0.92)))}
    verdict = confirm_verdict(tuned, default)
    diffs = [0.02, 0.025, 0.025]  # tuned − default per seed: mean ± t(0.975, 2)·sd/√3, by hand
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert verdict["tuned_vs_default"]["diff_mean"] == pytest.approx(mean)
    assert verdict["tuned_vs_default"]["diff_ci95"] == pytest.approx([mean - 4.302653 * sd / math.sqrt(3),
                                                                      mean + 4.302653 * sd / math.sqrt(3)])
    assert verdict["tuned_vs_default"]["verdict"] == "better" and verdict["verdict"].startswith("tuned vs default: better")
    assert verdict["tuned"]["gap_closed"] == pytest.approx((0.96 - 0.91) / (0.98 - 0.91))
    assert verdict["tuned"]["ci95"] == pytest.approx(4.302653 * 0.01 / math.sqrt(3))


# --- pruning and restarts (real Optuna storage and store, no training) -----------------------------------------


def _study(store: Store, trials: int = 4, seeds: int = 0) -> str:
    return create_study(store, DIGITS, ["temperature=log:1,16"], trials=trials, seeds=seeds)


def test_a_trial_behind_the_others_at_a_rung_is_pruned_and_cancelled_with_the_reason(kd_home):
    store = Store()
    study_id = _study(store)
    spec = get_study(store, study_id)
    study = load_optuna(store, spec)
    for value in (0.9, 0.8, 0.85):  # three trials reached rung epoch 1 before it, all far ahead
        trial = study.ask()
        trial.report(value, 1)
        assert not trial.should_prune() or value < 0.9
        study.tell(trial, value)
    laggard = study.ask()
    run_id = store.create_run({}, status="running", sweep_id=study_id, pid=1)
    callback = PruningCallback(store, run_id, spec, laggard._trial_id, rungs=[1])
    callback.on_epoch_end("student", 1, {"val_acc": 0.2})
    assert callback.should_stop() and callback.pruned_at == 1
    assert store.cancel_reason(run_id) == "pruned at epoch 1"
    assert load_optuna(store, spec).trials[-1].intermediate_values == {1: 0.2}


def test_a_new_driver_tells_optuna_how_the_runs_of_a_dead_one_ended(kd_home):
    from kdcore.runner import Runner

    store = Store()
    study_id = _study(store, trials=2)
    study = load_optuna(store, get_study(store, study_id))
    done, pruned = study.ask(), study.ask()  # asked by a driver that died while their runs trained
    for trial, status, error, summary in ((done, "done", None, {"student_val_acc": 0.75}),
                                          (pruned, "cancelled", "pruned at epoch 1", None)):
        run_id = store.create_run({}, status="running", sweep_id=study_id, pid=1)
        trial.set_user_attr("run_id", run_id)
        store.finish(run_id, status, summary=summary, error=error)
    spec = drive(Runner(store), study_id)
    states = [t.state.name for t in load_optuna(store, spec).trials]
    assert states == ["COMPLETE", "PRUNED"] and spec["status"] == "done"
    assert spec["best"]["val_acc"] == 0.75


# --- one real study --------------------------------------------------------------------------------------------


def test_a_study_runs_its_trials_as_runs_and_confirms_the_best(tuned_study):
    home, first, report = tuned_study
    assert first["status"] == "done" and [t["number"] for t in first["trials"]] == [0, 1]
    trials = report["trials"]  # extended by one trial: numbering goes on, the first two are kept
    assert report["status"] == "done" and [t["number"] for t in trials] == [0, 1, 2] and report["trials_wanted"] == 3
    assert [t["run_id"] for t in trials[:2]] == [t["run_id"] for t in first["trials"]]
    for trial in trials:
        assert 1 <= trial["params"]["temperature"] <= 16 and 0.1 <= trial["params"]["weights.kd"] <= 0.9
        assert trial["state"] in ("complete", "pruned")
        if trial["state"] == "pruned":  # stopped at the rung: one epoch trained, and the reason says so
            assert trial["epochs"] == 1 and trial["error"] == "pruned at epoch 1"
        else:
            assert trial["epochs"] == 2 and trial["steps"] > 0
    best = max((t for t in trials if t["state"] == "complete"), key=lambda t: (t["val_acc"], -t["number"]))
    assert report["best"]["val_acc"] == best["val_acc"] and report["best"]["run_id"] == best["run_id"]
    assert report["student_steps"] == sum(t["steps"] for t in trials)
    listed = {r["run_id"]: r for r in last_json(kdcore(home, "runs", "--json"))["runs"]}
    assert {t["run_id"] for t in trials} <= set(listed)  # trials are ordinary runs
    confirm = report["confirm"]
    assert confirm["number"] == best["number"] and len(confirm["best"]) == len(confirm["default"]) == 2
    assert all(listed[r]["status"] == "done" and listed[r]["baseline_test_acc"] is not None
               for r in confirm["best"] + confirm["default"])
    tuned_acc = [listed[r]["student_test_acc"] for r in confirm["best"]]
    assert report["verdict"]["tuned"]["mean"] == pytest.approx(sum(tuned_acc) / 2)
    assert listed[confirm["best"][0]]["temperature"] == pytest.approx(best["params"]["temperature"])


def test_on_a_postgresql_store_the_study_lives_in_that_database(postgres_server, tmp_path):
    """With KDCORE_DB, Optuna's tables sit beside the store's (every machine of a cluster reaches them)."""
    store = Store(tmp_path / "home", db=postgres_server.new_database())
    study_id = create_study(store, DIGITS, ["temperature=log:1,8"], trials=1)
    study = load_optuna(store, get_study(store, study_id))
    trial = study.ask()
    trial.report(0.5, 1)
    study.tell(trial, 0.5)
    assert [t.value for t in load_optuna(store, get_study(store, study_id)).trials] == [0.5]
    assert not (tmp_path / "home" / "studies.db").exists()
