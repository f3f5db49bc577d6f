"""A tuning study: Optuna asks for settings, KD Lab trains them as ordinary runs, the best is confirmed on seeds.

    create_study   check the space, record the study (a sweep of kind "tune") and its Optuna study
    drive          ask the sampler for a batch of trials, queue them as runs of the study (the worker trains
                   those that can stack as one group, sharing the teacher and its soft labels), wait, tell
                   Optuna each result; repeat until the study has its trials; then re-run the best settings
                   and the base config on K seeds with the student alone, and record the verdict
    extend         more trials for a finished or stopped study (drive it again to train them)

The sampler is TPE; a pruner (successive halving by default, or Hyperband) stops unpromising trials from
their validation accuracy at the rung epochs: the worker reports to Optuna as it trains (`kdcore.tune.pruning`)
and a pruned trial ends as a cancelled run, "pruned at epoch E". Selection reads validation accuracy only;
test accuracy is read once, in the confirmation runs.

Everything lives with the runs: the study's spec and its trial→run map in the store's sweeps table, Optuna's
search state in `Store.study_storage_url()`. A driver that dies (a restart) loses nothing: `drive` again picks
up where it stopped, adopting trials whose runs are still training. Optuna is imported only here, by drivers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from typing import Any

from kdcore.config import RunConfig
from kdcore.errors import ConfigError, KDError, RunNotFound
from kdcore.store import ACTIVE, Store
from kdcore.tune.space import Dimension, check_space, config_for, parse_space, sample

KIND = "tune"
PRUNERS = ("sha", "hyperband", "none")
DEFAULT_BATCH = 4  # trials asked at once: they train as one stacked group; more would starve TPE of feedback
DEFAULT_SEEDS = 3
REDUCTION_FACTOR = 3  # successive halving keeps the best third of trials at each rung
POLL_S = 0.5


class StudyError(KDError):
    """A study that cannot be driven (unknown, already driven by another process, ...)."""


def rung_epochs(pruner: dict[str, Any], epochs: int) -> list[int]:
    """The epochs at which trials report to the pruner: min_resource·η^k below the last epoch (a trial that
    reached its last epoch has cost all it will cost: it completes)."""
    if pruner.get("kind", "none") == "none":
        return []
    rungs, epoch = [], int(pruner["min_resource"])
    while epoch < epochs:
        rungs.append(epoch)
        epoch *= int(pruner["reduction_factor"])
    return rungs


def default_pruner(kind: str, epochs: int, first_rung: int | None = None) -> dict[str, Any]:
    """Rungs at `first_rung` (default ~epochs/10), ×3, ×9, ...: 30 epochs → 3, 9, 27 (a trial pruned at the first
    rung costs a tenth); first_rung=10 → 10 alone. A later first rung prunes on accuracies nearer the final ones
    (on the preset pair, trials at T = 1 lead at epoch 3 and end last: BENCHMARKS.md, Auto-tune)."""
    if kind not in PRUNERS:
        raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got {kind!r}")
    if first_rung is not None and (isinstance(first_rung, bool) or not isinstance(first_rung, int)
                                   or not 1 <= first_rung < epochs):
        raise ConfigError(f"--first-rung must be an epoch from 1 to {epochs - 1} (below the trials' {epochs} epochs), "
                          f"got {first_rung!r}")
    return {"kind": kind, "min_resource": first_rung or max(1, epochs // 10), "reduction_factor": REDUCTION_FACTOR,
            "max_resource": epochs}


def build_pruner(spec: dict[str, Any]):
    import optuna

    kind = spec.get("kind", "none")
    if kind == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec["min_resource"],
                                                      reduction_factor=spec["reduction_factor"])
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec["min_resource"], max_resource=spec["max_resource"],
                                              reduction_factor=spec["reduction_factor"])
    return optuna.pruners.NopPruner()


def build_sampler(spec: dict[str, Any]):
    """TPE, multivariate and grouped (a method's own parameters form their own group), random for the first
    third of the trials (at least 2, at most 10), lying about running trials so a batch spreads out."""
    import optuna

    startup = max(2, min(10, spec["trials_wanted"] // 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=spec.get("sampler_seed"), n_startup_trials=startup, multivariate=True,
                                          group=True, constant_liar=True)


def load_optuna(store: Store, spec: dict[str, Any]):
    """The study's Optuna study (its storage beside the runs), with the study's sampler and pruner."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=spec["sweep_id"], storage=_storage(store), sampler=build_sampler(spec),
                             pruner=build_pruner(spec["pruner"]))


def _storage(store: Store):
    import optuna

    url = store.study_storage_url()
    # On SQLite, a long busy timeout: the driver and every worker of the study write to the same file.
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


# --- creating ---------------------------------------------------------------------------------------------------


def create_study(store: Store, base: dict[str, Any], space: list[str], *, trials: int, seeds: int = DEFAULT_SEEDS,
                 batch: int = DEFAULT_BATCH, pruner: str = "sha", first_rung: int | None = None,
                 sampler_seed: int | None = None, name: str = "", owner: str | None = None) -> str:
    """Check everything, then record the study; returns its id (`sweep-…`). Nothing is recorded on a bad input."""
    dims = parse_space(space)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials must be a positive integer, got {trials!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 0:
        raise ConfigError(f"--seeds must be an integer >= 0 (0: no confirmation runs), got {seeds!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"--batch must be a positive integer, got {batch!r}")
    base = {**base, "baseline": base.get("baseline", True)}
    check_space(base, dims)
    epochs = RunConfig.from_dict(dict(base)).epochs
    pruner_spec = default_pruner(pruner, epochs, first_rung)
    spec = {"kind": KIND, "name": name, "base": base, "space": [d.text for d in dims], "trials_wanted": trials,
            "seeds": seeds, "batch": batch, "pruner": pruner_spec, "sampler_seed": sampler_seed,
            "owner": owner, "status": "queued", "size": 0, "trials": {}, "confirm": None, "verdict": None,
            "importance": {}, "driver_pid": None, "error": None, "stop_requested": False}
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_id = store.create_sweep(spec)
    optuna.create_study(study_name=study_id, storage=_storage(store), direction="maximize", load_if_exists=True)
    return study_id


def get_study(store: Store, study_id: str) -> dict[str, Any]:
    try:
        spec = store.get_sweep(study_id)
    except RunNotFound as exc:  # a study is a sweep to the store; to the user it is a study
        text = str(exc).replace("no sweep", "no study").replace("sweep id", "study id")
        raise RunNotFound(text) from None
    if spec.get("kind") != KIND:
        raise StudyError(f"{study_id} is a sweep, not a tuning study")
    return spec


def extend(store: Store, study_id: str, more: int) -> dict[str, Any]:
    """Ask for `more` trials beyond those the study wanted (its driver trains them on its next batch)."""
    if isinstance(more, bool) or not isinstance(more, int) or more < 1:
        raise ConfigError(f"--trials must be a positive integer, got {more!r}")
    get_study(store, study_id)

    def change(spec: dict[str, Any]) -> None:
        spec["trials_wanted"] += more
        spec["status"] = "queued" if spec["status"] in ("done", "stopped", "failed") else spec["status"]
        spec["stop_requested"] = False
    return store.edit_sweep(study_id, change)


def request_stop(store: Store, study_id: str) -> None:
    """Ask the study's driver to cancel its trials and stop; it can be driven again later."""
    get_study(store, study_id)
    store.edit_sweep(study_id, lambda spec: spec.update(stop_requested=True))


def start_driver(store: Store, study_id: str) -> int:
    """Drive the study in a background process in its own session (it outlives the app or the shell that started
    it); returns its pid. `python -m kdcore tune --study ID --wait` is that process."""
    env = {**os.environ, "KDCORE_HOME": str(store.home.resolve()), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kdcore", "tune", "--study", study_id, "--wait", "--quiet"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True, cwd=os.getcwd())
    import threading

    threading.Thread(target=proc.wait, daemon=True, name=f"reap-{study_id}").start()
    return proc.pid


def driver_alive(spec: dict[str, Any]) -> bool:
    from kdcore.runner import pid_alive

    return bool(spec.get("driver_pid")) and pid_alive(spec["driver_pid"])


# --- driving -------------------------------------------------------------------------------------------------------


def drive(runner, study_id: str, *, poll_s: float = POLL_S, on_batch=None) -> dict[str, Any]:
    """Run the study to its end in this process (see the module's docstring); returns the final spec.
    on_batch(spec): called after each batch is told (the CLI prints a line)."""
    store = runner.store
    spec = _claim(store, study_id)
    try:
        study = load_optuna(store, spec)
        dims = [_dimension(text) for text in spec["space"]]
        while True:
            _settle(runner, study, study_id, poll_s)  # trials whose runs a previous driver left behind
            spec = get_study(store, study_id)
            if spec["stop_requested"]:
                return _set(store, study_id, status="stopped", driver_pid=None)
            told = sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())
            wanted = spec["trials_wanted"] - told
            if wanted <= 0:
                break
            _ask_batch(runner, study, study_id, spec, dims, min(wanted, spec["batch"]))
            _summarise(store, study, study_id)
            if on_batch:
                on_batch(get_study(store, study_id))
        _summarise(store, study, study_id)
        spec = get_study(store, study_id)
        if spec["seeds"] and not spec["stop_requested"] and _best_trial(study) is not None:
            _set(store, study_id, status="confirming")
            _confirm(runner, study, study_id, spec, poll_s)
            spec = get_study(store, study_id)
            if spec["stop_requested"]:
                return _set(store, study_id, status="stopped", driver_pid=None)
        return _set(store, study_id, status="done", driver_pid=None)
    except KeyboardInterrupt:  # the study is not over: its trials go on training, and it can be driven again
        _set(store, study_id, driver_pid=None)
        raise
    except BaseException as exc:
        _set(store, study_id, status="failed", driver_pid=None, error=f"{type(exc).__name__}: {exc}"[:500])
        raise


def _claim(store: Store, study_id: str) -> dict[str, Any]:
    """Become the study's one driver (refused while another live process drives it)."""
    spec = get_study(store, study_id)
    if driver_alive(spec) and spec["driver_pid"] != os.getpid():
        raise StudyError(f"study {study_id} is being driven by process {spec['driver_pid']}")
    return _set(store, study_id, driver_pid=os.getpid(), status="running", error=None)


def _set(store: Store, study_id: str, **values: Any) -> dict[str, Any]:
    return store.edit_sweep(study_id, lambda spec: spec.update(values))


def _dimension(text: str) -> Dimension:
    (dim,) = parse_space([text])
    return dim


def _ask_batch(runner, study, study_id: str, spec: dict[str, Any], dims: list[Dimension], count: int) -> None:
    """Ask for `count` trials, queue them as runs of the study, wait for them, tell Optuna how each ended."""
    store, base = runner.store, spec["base"]
    label = spec["name"] or study_id
    asked = []
    for _ in range(count):
        trial = study.ask()
        values = sample(trial, dims, base)
        try:
            config = config_for({**base, "baseline": False}, values, dims)  # trials are selected on validation only
        except ConfigError as exc:  # a combination the space's ends did not rule out
            study.tell(trial, state=_state("FAIL"))
            store.edit_sweep(study_id, lambda s, n=trial.number, e=str(exc), v=values: s.setdefault(
                "invalid", []).append({"number": n, "params": v, "error": e}))
            continue
        asked.append((trial, values, config))
    names = [(f"{label} #{trial.number}: " + ", ".join(f"{k}={_short(v)}" for k, v in values.items()))[:200]
             for trial, values, _ in asked]

    def record(s: dict[str, Any], run_ids: list[str]) -> None:
        # the storage's id of the trial (Optuna has no public accessor): the worker reports to it by this id
        s["trials"].update({run_id: {"number": trial.number, "trial_id": trial._trial_id, "params": values}
                            for run_id, (trial, values, _) in zip(run_ids, asked)})
        s["size"] = _size(s)
    # queued and recorded in the study in one transaction: no worker (the app's page may start one) can take a
    # trial before the study names it, and the batch's workers find one another to train as one group
    run_ids = runner.submit_many([(config, name) for (_, _, config), name in zip(asked, names)], sweep_id=study_id,
                                 start=False, owner=spec.get("owner"), sweep_change=record)
    for run_id, (trial, _, _) in zip(run_ids, asked):
        trial.set_user_attr("run_id", run_id)
    _wait(runner, run_ids, study_id, poll_s=POLL_S)
    _settle(runner, study, study_id, POLL_S)


def _size(spec: dict[str, Any]) -> int:
    """The study's runs: its trials and its confirmation runs (the Sweeps and Compare pages show this count)."""
    confirm = spec.get("confirm") or {}
    return len(spec["trials"]) + len(confirm.get("best", [])) + len(confirm.get("default", []))


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _state(name: str):
    from optuna.trial import TrialState

    return TrialState[name]


def _wait(runner, run_ids: list[str], study_id: str, *, poll_s: float) -> list:
    """Wait for the runs to end, keeping the queue moving; a stop request cancels those still active."""
    store = runner.store
    stopping = False
    while True:
        runner.tick()
        records = [store.get_run(r) for r in run_ids]
        active = [r for r in records if r.status in ACTIVE]
        if not active:
            return records
        if not stopping and get_study(store, study_id)["stop_requested"]:
            stopping = True
            for record in active:
                runner.cancel(record.id)
        time.sleep(poll_s)


def _settle(runner, study, study_id: str, poll_s: float) -> None:
    """Tell Optuna how each trial whose run has ended went; wait first for runs still training."""
    store = runner.store
    running = [t for t in study.get_trials(deepcopy=False, states=(_state("RUNNING"),))]
    run_ids = {t.number: t.user_attrs.get("run_id") for t in running}
    live = [r for r in run_ids.values() if r]
    if live:
        _wait(runner, live, study_id, poll_s=poll_s)
    for trial in running:
        run_id = run_ids[trial.number]
        if not run_id:  # asked, but the driver died before it queued the run
            study.tell(trial.number, state=_state("FAIL"))
            continue
        record = store.get_run(run_id)
        value = (record.summary or {}).get("student_val_acc")
        if record.status == "done" and value is not None:
            study.tell(trial.number, float(value))
        elif record.status == "cancelled" and (record.error or "").startswith("pruned"):
            study.tell(trial.number, state=_state("PRUNED"))
        else:
            study.tell(trial.number, state=_state("FAIL"))


def _best_trial(study):
    complete = study.get_trials(deepcopy=False, states=(_state("COMPLETE"),))
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def _summarise(store: Store, study, study_id: str) -> None:
    """Record the best trial so far and the parameters' importance (fANOVA), for the CLI and the Tune page."""
    best = _best_trial(study)
    importance: dict[str, float] = {}
    complete = study.get_trials(deepcopy=False, states=(_state("COMPLETE"),))
    if len(complete) >= 3:
        try:
            import optuna

            importance = {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
        except (RuntimeError, ValueError):  # e.g. every trial has the same value: nothing to attribute
            importance = {}
    best_row = None if best is None else {"number": best.number, "run_id": best.user_attrs.get("run_id"),
                                          "val_acc": best.value, "params": best.params}
    _set(store, study_id, best=best_row, importance=importance)


# --- confirming on seeds ---------------------------------------------------------------------------------------


def _confirm(runner, study, study_id: str, spec: dict[str, Any], poll_s: float) -> None:
    """The best settings and the base config, each on K seeds with the student alone beside them (test split)."""
    from kdcore.tune.verdict import confirm_verdict

    store = runner.store
    confirm = spec.get("confirm") or {}
    best = _best_trial(study)
    if confirm.get("number") != best.number:  # none yet, or the study was extended and another trial leads
        dims = [_dimension(text) for text in spec["space"]]
        base, label = spec["base"], spec["name"] or study_id
        seed0 = RunConfig.from_dict(dict(base)).seed
        confirm = {"number": best.number, "best": [], "default": []}
        runs = []
        for seed in range(seed0, seed0 + spec["seeds"]):
            runs.append((config_for({**base, "seed": seed, "baseline": True}, best.params, dims),
                         f"{label}: best (#{best.number}), seed {seed}"))
            runs.append((RunConfig.from_dict({**base, "seed": seed, "baseline": True}),
                         f"{label}: default, seed {seed}"))

        def record(s: dict[str, Any], run_ids: list[str]) -> None:
            confirm["best"], confirm["default"] = run_ids[0::2], run_ids[1::2]
            s["confirm"] = confirm
            s["size"] = _size(s)
        runner.submit_many(runs, sweep_id=study_id, start=False, owner=spec.get("owner"), sweep_change=record)
    records = _wait(runner, confirm["best"] + confirm["default"], study_id, poll_s=poll_s)
    done = {r.id: r for r in records if r.status == "done"}

    def by_seed(run_ids: list[str]) -> dict[int, dict[str, Any]]:
        return {done[r].config["seed"]: done[r].summary or {} for r in run_ids if r in done}
    verdict = confirm_verdict(by_seed(confirm["best"]), by_seed(confirm["default"]))
    _set(store, study_id, verdict=verdict)
