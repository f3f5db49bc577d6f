"""`python -m kdcore <command>`: the engine from the command line.

Every command builds the same `RunConfig` as the app (from `--config FILE` and `--set key=value`),
prints a human table or, with `--json`, one JSON object as its last line of standard output.
User errors are one line on standard error and a non-zero exit, never a traceback.
Commands import torch only when they train or build models, so `--help` and `status` are quick.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kdcore.callbacks import Callback
from kdcore.errors import ConfigError, KDError

if TYPE_CHECKING:
    from kdcore.config import RunConfig

EXIT_USER_ERROR = 2
EXIT_RUN_FAILED = 1


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _emit(args: argparse.Namespace, data: dict[str, Any], human: Callable[[], None]) -> None:
    if args.json:
        print(json.dumps(data, default=str))
    else:
        human()


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", metavar="NAME", default=None,
                   help="start from a named preset (see list-presets); --config and --set apply over it")
    p.add_argument("--config", metavar="FILE", help="JSON or YAML config file")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override one setting, e.g. --set temperature=4 --set teacher.arch=resnet20 (repeatable)")


def _owner_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--owner", metavar="NAME", default=None,
                   help="who the runs belong to: the queue is fair across owners, and KDCORE_MAX_RUNS_PER_OWNER "
                        "caps one owner's queued + running runs")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")


def _build_config(args: argparse.Namespace):
    """The config of `--config` and `--set`, refused (exit 2, nothing recorded) unless it can run."""
    from kdcore.config import build_config

    config = build_config(args.config, args.overrides, preset=args.preset)
    _check_teacher_checkpoint(config)
    return config


def _check_teacher_checkpoint(config) -> None:
    """The checks of a runnable config that read files (and torch), beyond those of the config itself: a
    `teacher.checkpoint` that does not fit the teacher or the data, a `labeled_fraction` that leaves a class
    without a label, a `transfer` set of another shape or a `csv:` one that cannot be read, timm models and
    pretrained weights that cannot be had, a CSV that cannot be read or split, an `hf:` model that cannot be had."""
    from kdcore.dataset_names import is_csv

    if config.teacher.checkpoint:
        from kdcore.checkpoints import check_teacher_checkpoint

        check_teacher_checkpoint(config)
    if config.labeled_fraction < 1 or config.transfer is not None:
        from kdcore.data import check_labels

        check_labels(config)
    if is_csv(config.dataset) or config.teacher.arch.startswith("hf:"):
        from kdcore.data.splits import check_text

        check_text(config)
    if config.teacher.pretrained or "timm:" in config.teacher.arch + config.student.arch:
        from kdcore.pretrained import check_available

        check_available(config)


def _table(rows: list[list[Any]], header: list[str]) -> None:
    cells = [header] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "-"


# --- commands that need no background runner ----------------------------------------------------------


def cmd_list_datasets(args: argparse.Namespace) -> int:
    from kdcore.data import list_datasets
    from kdcore.dataset_names import user_datasets

    infos = list_datasets(args.data_root)
    # the user's own data (csv:<path>, imagefolder:<path>) is listed with the built-in sets, so it is found
    own = [{**row, "input_shape": None, "num_classes": None, "offline": True, "size": None} for row in user_datasets()]
    data = {"datasets": [{"name": i.name, "description": i.description, "input_shape": list(i.input_shape),
                          "num_classes": i.num_classes, "kind": i.kind, "offline": i.offline, "size": i.size}
                         for i in infos] + own}
    _emit(args, data, lambda: _table(
        [[i.name, "x".join(map(str, i.input_shape)), i.num_classes, i.size or "?", "yes" if i.offline else "no",
          i.description] for i in infos] + [[row["name"], "-", "-", "-", "yes", row["description"]] for row in own],
        ["name", "shape", "classes", "size", "offline", "description"]))
    return 0


def cmd_list_models(args: argparse.Namespace) -> int:
    from kdcore.data import dataset_info
    from kdcore.models import list_models

    info = dataset_info(args.dataset, args.data_root)
    models = list_models(info.input_shape, info.num_classes)
    data = {"dataset": info.name, "input_shape": list(info.input_shape), "num_classes": info.num_classes,
            "models": models}
    _emit(args, data, lambda: (
        print(f"parameter counts for {info.name} ({'x'.join(map(str, info.input_shape))}, {info.num_classes} classes)"),
        _table([[m["name"], f"{m['params']:,}" if m["params"] is not None else f"n/a ({_misfit(m['name'])})",
                 m["description"]] for m in models], ["name", "params", "description"])))
    return 0


def _misfit(arch: str) -> str:
    from kdcore.model_names import needs_image, needs_text

    return "reads text" if needs_text(arch) else "needs images" if needs_image(arch) else "takes images or points"


def cmd_list_methods(args: argparse.Namespace) -> int:
    from kdcore.methods import list_methods

    methods = list_methods()
    _emit(args, {"methods": methods}, lambda: _table(
        [[m["name"], m["title"], ", ".join(f"{k}={p['default']:g}" for k, p in m["params"].items()) or "-"]
         for m in methods], ["name", "title", "parameters (defaults; set with --set method.NAME=VALUE)"]))
    return 0


def cmd_list_presets(args: argparse.Namespace) -> int:
    from kdcore.presets import PRESETS, describe

    presets = [describe(preset) for preset in PRESETS.values()]
    _emit(args, {"presets": presets}, lambda: _print_presets(presets))
    return 0


def _print_presets(presets: list[dict[str, Any]]) -> None:
    for i, preset in enumerate(presets):
        print(("\n" if i else "") + f"{preset['name']}: {preset['description']}")
        settings = preset["settings"] or {key: preset["config"][key] for key in _TEACHING_KEYS}
        for key, value in settings.items():
            shown = ",".join(map(str, value)) if isinstance(value, list) else json.dumps(value).strip('"')
            print(f"  {key}={shown}")
        if preset["notes"]:
            print(f"  note: {preset['notes']}")
        reference = preset["reference"]
        if reference:
            numbers = {"teacher": reference["teacher_test_acc"], "student alone": reference["student_test_acc"],
                       **{name.upper(): acc for name, acc in reference["methods"].items()}}
            print("  published test accuracy: " + ", ".join(f"{k} {_pct(v)}" for k, v in numbers.items()))
            for source in reference["sources"]:
                print(f"    {source}")


_TEACHING_KEYS = ("dataset", "teacher.arch", "teacher.epochs", "student.arch", "epochs", "batch_size", "optimizer",
                  "lr", "schedule", "temperature", "weights.ce", "weights.kd", "method")


class TerminalProgress(Callback):
    """A one-line progress display on a terminal (stderr), redrawn a few times a second."""

    def __init__(self) -> None:
        self.stage, self.epochs, self.steps, self.last = "", 0, 0, 0.0
        self.values: dict[str, float] = {}

    def on_stage_start(self, stage, epochs, steps_per_epoch):
        self.stage, self.epochs, self.steps = stage, epochs, steps_per_epoch
        self._draw(0, 0, force=True)

    def on_metrics(self, stage, epoch, step, values):
        self.values.update(values)
        self._draw(epoch, step)

    def on_stage_end(self, stage, values):
        self._draw(self.epochs, self.epochs * self.steps, force=True)
        sys.stderr.write("\n")

    def _draw(self, epoch: int, step: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        frac = min(step / max(self.epochs * self.steps, 1), 1.0) if self.epochs else 1.0
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        loss, acc = self.values.get("train_loss"), self.values.get("val_acc")
        extra = (f" loss {loss:.4f}" if loss is not None else "") + (f" val acc {acc:.4f}" if acc is not None else "")
        sys.stderr.write(f"\r{self.stage:<11} [{bar}] epoch {epoch}/{self.epochs}{extra}   ")
        sys.stderr.flush()


def cmd_run(args: argparse.Namespace, config: RunConfig | None = None) -> int:
    from kdcore.store import Store
    from kdcore.worker import execute

    if config is None:
        config = _build_config(args)
        if int(os.environ.get("WORLD_SIZE") or 1) > 1:  # launched by torchrun: one process of N
            return _run_under_torchrun(args, config)
    store = Store()
    run_id = store.create_run(config.to_dict(), name=config.name, status="running", pid=os.getpid())
    interactive = sys.stderr.isatty() and not args.quiet
    if interactive:
        print(f"run {run_id}: {config.teacher.arch} → {config.student.arch} on {config.dataset}, "
              f"T={config.temperature:g}", file=sys.stderr)
    summary = execute(store, run_id, config, extra_callbacks=[TerminalProgress()] if interactive else [])
    if summary.get("status") != "done":
        if args.json:
            print(json.dumps(summary))
        if summary.get("status") == "cancelled":
            print(f"kdcore: run {run_id} cancelled", file=sys.stderr)
            return EXIT_RUN_FAILED
        print(f"kdcore: error: {summary.get('error')} (run {run_id} failed)", file=sys.stderr)
        return EXIT_USER_ERROR  # execute() returns (rather than raises) only for user errors
    summary = {**summary, "seeds": _seeds(store, store.get_run(run_id))}
    _emit(args, summary, lambda: _print_summary(summary))
    return 0


def _run_under_torchrun(args: argparse.Namespace, config: RunConfig) -> int:
    """`torchrun --nproc-per-node N -m kdcore run ...`: the run trains on the N processes (devices=N). Rank 0 is
    the run as `run` makes it (store, summary, exit status); the others train with it and write nothing."""
    from kdcore import distributed

    world = int(os.environ["WORLD_SIZE"])
    if config.devices not in (1, world):
        raise ConfigError(f"devices={config.devices} but torchrun started {world} processes; leave devices out")
    config = config.replace(devices=world)
    distributed.from_torchrun()
    try:
        if distributed.is_main():
            return cmd_run(args, config)
        from kdcore.errors import Cancelled
        from kdcore.trainer import run_pipeline

        try:
            run_pipeline(config, [])  # rank 0 sends its run's config, teacher cache and folder
        except (Cancelled, KDError):  # rank 0 ends the same way and reports it
            pass
        return 0
    finally:
        distributed.close()


def _seeds(store, record) -> dict[str, Any] | None:
    """The run's config over every seed in the store (`kdcore.seeds.seeds_summary`); None unless done."""
    if record.status != "done" or not record.summary:
        return None
    from kdcore.seeds import seeds_summary

    return seeds_summary(record, store.list_runs(status="done"))


def _print_summary(s: dict[str, Any]) -> None:
    print(f"run {s['run_id']} done in {s['wall_s']:.1f} s")
    rows = [["teacher", _pct(s["teacher_test_acc"]), f"{s['teacher_params']:,}"],
            ["student (distilled)", _pct(s["student_test_acc"]), f"{s['student_params']:,}"]]
    if s.get("baseline_test_acc") is not None:
        rows.append(["student alone (baseline)", _pct(s["baseline_test_acc"]), f"{s['student_params']:,}"])
    _table(rows, ["model", "test acc", "params"])
    if s.get("gap_closed") is not None:
        print(f"gap closed: {100 * s['gap_closed']:.1f}%  compression: {s['compression']:.1f}x")
    seeds = s.get("seeds")
    if seeds and seeds["baseline_mean"] is not None:
        print(f"over {seeds['n']} seed{'s' if seeds['n'] != 1 else ''} of this config, distilled vs baseline: "
              f"{seeds['text']}" + ("" if seeds["n"] > 1 else " (python -m kdcore repeat RUN_ID --seeds 3)"))


# --- background runs -----------------------------------------------------------------------------------


def _runner():
    from kdcore.runner import Runner

    return Runner()


def cmd_submit(args: argparse.Namespace) -> int:
    config = _build_config(args)
    runner = _runner()
    run_id = runner.submit(config, owner=args.owner)
    record = runner.store.get_run(run_id)
    _emit(args, {"run_id": run_id, "status": record.status}, lambda: print(f"{run_id} {record.status}"))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    runner = _runner()
    runner.tick()
    record = runner.store.get_run(args.run_id)
    data = record.to_json()
    seeds = _seeds(runner.store, record)
    if seeds is not None:
        data["seeds"] = seeds

    def human() -> None:
        print(f"{record.id}  {record.status}" + (f"  (pid {record.pid})" if data.get("pid") else ""))
        if record.progress and record.active:
            p = record.progress
            print(f"  stage {p.get('stage')} epoch {p.get('epoch')}/{p.get('epochs')}")
        if record.error:
            print(f"  error: {record.error}")
        if record.summary:
            _print_summary({**record.summary, "seeds": seeds})

    _emit(args, data, human)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    runner = _runner()
    runner.tick()
    records = runner.store.list_runs(status=args.status or None, limit=args.limit, owner=args.owner)
    rows = []
    for r in records:
        s = r.summary or {}
        c = r.config
        rows.append({"run_id": r.id, "status": r.status, "name": r.name, "owner": r.owner, "dataset": c.get("dataset"),
                     "teacher": c.get("teacher", {}).get("arch"), "student": c.get("student", {}).get("arch"),
                     "temperature": c.get("temperature"), "teacher_test_acc": s.get("teacher_test_acc"),
                     "student_test_acc": s.get("student_test_acc"), "baseline_test_acc": s.get("baseline_test_acc"),
                     "wall_s": s.get("wall_s"), "created": r.created, "sweep_id": r.sweep_id})
    owners = any(r["owner"] for r in rows)  # the owner column only where someone said who they are
    _emit(args, {"runs": rows}, lambda: _table(
        [[r["run_id"], r["status"], *([r["owner"]] if owners else []), r["dataset"], f"{r['teacher']} → {r['student']}",
          r["temperature"], _pct(r["teacher_test_acc"]), _pct(r["student_test_acc"]), _pct(r["baseline_test_acc"])]
         for r in rows],
        ["run", "status", *(["owner"] if owners else []), "dataset", "teacher → student", "T", "teacher", "student",
         "baseline"]))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    record = _runner().cancel(args.run_id)
    _emit(args, {"run_id": record.id, "status": record.status, "cancel_requested": record.cancel_requested},
          lambda: print(f"{record.id} {record.status}" + (" (stopping)" if record.active else "")))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    record = _runner().resume(args.run_id)
    _emit(args, {"run_id": record.id, "status": record.status}, lambda: print(f"{record.id} {record.status}"))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    _runner().delete(args.run_id)
    _emit(args, {"run_id": args.run_id, "deleted": True}, lambda: print(f"{args.run_id} deleted"))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from kdcore.sweep import CONFIRM_ABOVE, build_sweep, submit_sweep

    base, grid, runs = build_sweep(args.config, args.overrides, args.grid, preset=args.preset)
    checked = set()
    for _, config in runs:  # every grid point, before anything is queued
        teacher = (config.teacher.checkpoint, config.teacher.arch, config.dataset, config.labeled_fraction,
                   config.transfer, config.teacher.pretrained, config.student.arch)
        if teacher not in checked:
            _check_teacher_checkpoint(config)
            checked.add(teacher)
    if len(runs) > CONFIRM_ABOVE and not args.yes:
        raise KDError(f"the sweep has {len(runs)} runs (over {CONFIRM_ABOVE}); add --yes to queue them all")
    runner = _runner()
    sweep_id, run_ids = submit_sweep(runner, base, grid, runs, name=args.name or "", owner=args.owner)
    print(f"sweep {sweep_id}: {len(run_ids)} runs queued", file=sys.stderr)
    data: dict[str, Any] = {"sweep_id": sweep_id, "runs": run_ids}
    if args.wait:
        records = runner.wait(run_ids)
        data["statuses"] = {r.id: r.status for r in records}
        data["results"] = [{"run_id": r.id, "status": r.status, **values,
                            **{k: (r.summary or {}).get(k) for k in ("teacher_test_acc", "student_test_acc",
                                                                      "baseline_test_acc", "wall_s")}}
                           for r, (values, _) in zip(records, runs)]
        data["cells"] = _cells(records, [k for k in grid if k != "seed"])

    def human() -> None:
        print(f"{sweep_id}")
        if args.wait:
            keys = list(grid)
            _table([[row["run_id"], row["status"], *[row[k] for k in keys], _pct(row["student_test_acc"]),
                     _pct(row["baseline_test_acc"])] for row in data["results"]],
                   ["run", "status", *keys, "student", "baseline"])
            if data["cells"]:
                swept = [k for k in keys if k != "seed"]
                print("\ndistilled vs baseline over each cell's seeds:")
                _table([[*[cell[k] for k in swept], cell["seeds"]["n"], cell["seeds"]["text"]] for cell in data["cells"]],
                       [*swept, "seeds", "verdict"])
        else:
            print("\n".join(run_ids))

    _emit(args, data, human)
    failed = [r for r, st in data.get("statuses", {}).items() if st != "done"]
    return EXIT_RUN_FAILED if failed else 0


def cmd_repeat(args: argparse.Namespace) -> int:
    from kdcore.seeds import repeat_run, repeat_sweep

    runner = _runner()
    if args.id.startswith("sweep-"):
        run_ids = repeat_sweep(runner, args.id, args.seeds)
    else:
        run_ids = repeat_run(runner, args.id, args.seeds)
    records = [runner.store.get_run(r) for r in run_ids]
    data = {"id": args.id, "seeds": args.seeds, "queued": [{"run_id": r.id, "seed": r.config.get("seed"),
                                                            "status": r.status} for r in records]}
    _emit(args, data, lambda: print(
        f"{len(run_ids)} run{'s' if len(run_ids) != 1 else ''} queued: " + ", ".join(
            f"{r.id} (seed {r.config.get('seed')})" for r in records) if run_ids
        else f"{args.id} already has {args.seeds} seeds (finished or on their way): nothing queued"))
    return 0


def _cells(records: list, swept: list[str]) -> list[dict[str, Any]]:
    """A sweep's cells (runs that differ only in seed): the swept values and the cell's `seeds` block."""
    from kdcore.config import flatten
    from kdcore.seeds import cells

    out = []
    for record, seeds in cells(records):
        flat = flatten(record.config)
        out.append({**{k: flat.get(k.replace("method.", "method_params.", 1)) for k in swept}, "seeds": seeds})
    return out


def cmd_tune(args: argparse.Namespace) -> int:
    from kdcore.config import config_data
    from kdcore.tune.report import study_report
    from kdcore.tune.study import create_study, drive, extend, get_study, request_stop, start_driver

    runner = _runner()
    store = runner.store
    if args.study:
        if args.space or args.overrides or args.config or args.preset or args.first_rung is not None:
            raise KDError("--study continues a recorded study, whose space, config and pruner are fixed: leave out "
                          "--space, --preset, --set, --config and --first-rung")
        study_id = args.study
        get_study(store, study_id)
        if args.stop:
            request_stop(store, study_id)
            _emit(args, {"study_id": study_id, "stop_requested": True}, lambda: print(f"{study_id} stopping"))
            return 0
        if args.trials is not None:
            extend(store, study_id, args.trials)
    else:
        if args.stop:
            raise KDError("--stop needs --study ID")
        if args.trials is None:
            raise KDError("a study needs --trials N (how many settings to try)")
        base = config_data(args.config, args.overrides, args.preset)  # a preset, a file, --set, in that order
        study_id = create_study(store, base, args.space, trials=args.trials, seeds=args.seeds, batch=args.batch,
                                pruner=args.pruner, first_rung=args.first_rung, sampler_seed=args.sampler_seed,
                                name=args.name, owner=args.owner)
        print(f"study {study_id}: {args.trials} trials over {len(args.space)} setting(s)", file=sys.stderr)
    if not args.wait:
        pid = start_driver(store, study_id)
        _emit(args, {"study_id": study_id, "status": "running", "driver_pid": pid},
              lambda: print(f"{study_id} running (driver pid {pid}); follow it on the Tune page or with "
                            f"`python -m kdcore tune --study {study_id} --wait`"))
        return 0

    def progress(spec: dict[str, Any]) -> None:
        if not (args.json or args.quiet):
            best = spec.get("best") or {}
            print(f"{len(spec['trials'])}/{spec['trials_wanted']} trials; best validation accuracy "
                  f"{_pct(best.get('val_acc'))}" + (f" (#{best['number']})" if best else ""), file=sys.stderr)

    spec = drive(runner, study_id, on_batch=progress)
    report = study_report(store, study_id)
    _emit(args, report, lambda: _print_study(report))
    return 0 if spec["status"] == "done" else EXIT_RUN_FAILED


def _print_study(report: dict[str, Any]) -> None:
    keys = [text.partition("=")[0] for text in report["space"]]
    print(f"{report['study_id']}  {report['status']}  ({len(report['trials'])} trials, "
          f"{report['student_steps']} student steps)")
    _table([[t["number"], t["run_id"], t["state"], *[_fmt(t["params"].get(k)) for k in keys], _pct(t["val_acc"]),
             t["epochs"]] for t in report["trials"]], ["#", "run", "state", *keys, "val acc", "epochs"])
    best = report["best"]
    if best:
        print(f"best: #{best['number']} ({best['run_id']}) validation accuracy {_pct(best['val_acc'])}: "
              + ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items()))
    verdict = report["verdict"]
    if verdict:
        def line(name: str, row: dict[str, Any]) -> str:
            ci = f" ± {100 * row['ci95']:.2f}" if row.get("ci95") is not None else ""
            return f"  {name:<8} test {_pct(row['mean'])}{ci} over {row['n']} seed(s)"
        print("on the test split:")
        for name in ("tuned", "default", "alone"):
            print(line(name, verdict[name]))
        print(f"  {verdict['verdict']}")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "-" if value is None else str(value)


METRIC_COLUMNS = ("stage", "epoch", "step", "name", "value")


def cmd_metrics(args: argparse.Namespace) -> int:
    from kdcore.store import Store

    if args.csv and args.json:
        raise KDError("metrics: choose one of --csv and --json")
    store = Store()
    record = store.get_run(args.run_id)  # an unknown or malformed id is a one-line error
    rows, _ = store.metrics_since(record.id)
    points = [dict(zip(METRIC_COLUMNS, row[1:6])) for row in rows]  # (id, stage, epoch, step, name, value, t)
    if args.csv:
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(METRIC_COLUMNS)
        writer.writerows([p[c] for c in METRIC_COLUMNS] for p in points)
        return 0
    series = _series(points)
    data = {"run_id": record.id, "status": record.status, "series": series, "metrics": points}
    _emit(args, data, lambda: (
        print(f"{record.id}  {record.status}  {len(points)} points in {len(series)} series "
              "(every point: --csv or --json)"),
        _table([[s["stage"], s["name"], s["points"], _epochs(s), f"{s['last']:.6g}",
                 f"{s['min']:.6g}", f"{s['max']:.6g}"] for s in series],
               ["stage", "name", "points", "epochs", "last", "min", "max"])))
    return 0


def _epochs(series: dict[str, Any]) -> str:
    first, last = series["first_epoch"], series["last_epoch"]
    return str(first) if first == last else f"{first}-{last}"


def _series(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per (stage, name), in the order the series were first recorded."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for p in points:
        grouped.setdefault((p["stage"], p["name"]), []).append(p)
    return [{"stage": stage, "name": name, "points": len(ps), "first_epoch": ps[0]["epoch"],
             "last_epoch": ps[-1]["epoch"], "last": ps[-1]["value"], "min": min(p["value"] for p in ps),
             "max": max(p["value"] for p in ps)} for (stage, name), ps in grouped.items()]


# --- deployment: export and the compression report (kdcore.compress) -------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from kdcore.compress.checks import export_format, finished_run, output_path
    from kdcore.store import Store

    store = Store()
    export_format(args.format, args.quantize)  # bad input is refused before torch loads
    if args.out is not None:
        output_path(args.out)
    finished_run(store, args.run_id)
    from kdcore.compress.report import export_run

    result = export_run(store, args.run_id, args.format, quantize=args.quantize, out=args.out)
    _emit(args, result, lambda: print(f"{result['path']}  ({result['bytes']:,} bytes)"))
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from kdcore.compress.options import CompressOptions

    from kdcore.compress.checks import finished_run
    from kdcore.store import Store

    options = CompressOptions(prune=args.prune, structured=args.structured, recover_epochs=args.recover_epochs,
                              quantize=args.quantize, repeats=args.repeats, prune_model=args.prune_model,
                              recover_from=args.recover_from, prune_steps=args.prune_steps,
                              qat_epochs=args.qat_epochs)  # refused here, before torch loads
    record = finished_run(Store(), args.run_id, verb="compressed")
    from kdcore.compress.checks import prunable_teacher
    from kdcore.config import RunConfig

    prunable_teacher(RunConfig.from_dict(record.config), options)
    from kdcore.compress.report import compress_run

    def progress(step: int, total: int, message: str) -> None:
        print(f"compress: [{step}/{total}] {message}", file=sys.stderr, flush=True)

    report = compress_run(Store(), args.run_id, options, progress)
    _emit(args, report, lambda: _table(
        [[v["variant"], _pct(v["test_acc"]), f"{v['nonzero_params']:,}", f"{v['bytes']:,}",
          _ms(v["torch_p50_ms"]), _ms(v["torch_p95_ms"]), _ms(v["ort_p50_ms"]), _ms(v["ort_p95_ms"]),
          f"{v['ort_throughput']:,.0f}"] for v in report["variants"]],
        ["variant", "test acc", "params", "ONNX bytes", "torch p50", "p95", "ORT p50", "p95", "ORT samples/s @64"]))
    return 0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


# --- experiment trackers (kdcore.tracking) -----------------------------------------------------------------


def cmd_sync(args: argparse.Namespace) -> int:
    from kdcore.config import TrackingConfig
    from kdcore.store import Store

    if not (args.mlflow or args.tensorboard):
        raise KDError("sync: name where to export: --mlflow URI and/or --tensorboard DIR")
    try:
        targets = TrackingConfig(mlflow=args.mlflow, tensorboard=args.tensorboard)  # checked as the config keys are
    except KDError as exc:
        raise KDError(str(exc).replace("tracking.mlflow", "--mlflow").replace("tracking.tensorboard", "--tensorboard")) from None
    store = Store()
    records = [store.get_run(run_id) for run_id in dict.fromkeys(args.run_ids)]  # every id known before any export
    for record in records:
        if record.active:
            raise KDError(f"sync: run {record.id} is {record.status}; sync exports runs that have ended "
                          "(to log a run while it trains, set tracking.mlflow / tracking.tensorboard)")
    from kdcore.tracking import TRACKERS, export_run, reason

    exported = []
    for record in records:
        entry: dict[str, Any] = {"run_id": record.id, "status": record.status}
        places = []
        for name, tracker_class in TRACKERS.items():
            target = getattr(targets, name)
            if not target:
                continue
            tracker = tracker_class(target)
            try:
                export_run(store, record, tracker)
            except Exception as exc:  # the tracker's failure (unreachable, unwritable): this export fails, not the run
                print(f"kdcore: error: sync: {name} at {target} failed for run {record.id}: {reason(exc)}",
                      file=sys.stderr)
                return EXIT_RUN_FAILED
            entry[name] = tracker.record()
            places.append(tracker.where())
        exported.append(entry)
        if not args.json:
            print(f"{record.id} → " + "; ".join(places))
    if args.json:
        print(json.dumps({"runs": exported}))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from kdcore.worker import spare_main, worker_main

    if args.spare:
        return spare_main()
    if not args.run_id:
        raise KDError("worker needs a RUN_ID (or --spare)")
    return worker_main(args.run_id)


# --- the parser ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m kdcore", description="KD Lab's distillation engine: train a teacher, distil a "
                     "student, compare with the student trained alone.")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)

    def command(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        _json_arg(p)
        return p

    p = command("run", cmd_run, "train a distillation in the foreground (recorded in the run store)")
    _config_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = command("submit", cmd_submit, "queue a background run and return its id at once")
    _config_args(p)
    _owner_arg(p)
    p = command("status", cmd_status, "show a run's status, progress and results")
    p.add_argument("run_id")
    p = command("runs", cmd_runs, "list runs, newest first")
    p.add_argument("--status", action="append", choices=["queued", "starting", "running", "done", "failed", "cancelled"],
                   help="only runs with this status (repeatable)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--owner", default=None, help="only runs of this owner")
    for name, func, text in (("cancel", cmd_cancel, "stop a queued or running run"),
                             ("resume", cmd_resume, "continue a failed or cancelled run from its last epoch checkpoint"),
                             ("delete", cmd_delete, "delete a finished run and its files (refused while running)")):
        p = command(name, func, text)
        p.add_argument("run_id")
    p = command("sweep", cmd_sweep, "queue a grid of runs that share one teacher, e.g. --grid temperature=1,4,16")
    _config_args(p)
    p.add_argument("--grid", metavar="KEY=V1,V2,...", action="append", default=[], required=True,
                   help="a swept setting and its values (repeatable; the sweep is the Cartesian product)")
    p.add_argument("--name", default="", help="a label for the sweep and its runs")
    p.add_argument("--wait", action="store_true", help="wait until every run has finished")
    p.add_argument("--yes", action="store_true", help="confirm a sweep of more than 100 runs")
    _owner_arg(p)
    p = command("repeat", cmd_repeat, "queue the missing seeds of a run's config (or of every cell of a sweep), so "
                "that distilled vs baseline gets a seed-noise verdict")
    p.add_argument("id", metavar="RUN_ID|SWEEP_ID")
    p.add_argument("--seeds", type=int, default=3, help="how many seeds the config should have in all (default 3)")
    p = command("tune", cmd_tune, "search settings with Optuna (each trial an ordinary run), e.g. --space "
                "temperature=log:1,32 --space weights.kd=0.1,0.95 --trials 12; the best is re-run on seeds")
    _config_args(p)
    p.add_argument("--space", metavar="KEY=SPEC", action="append", default=[],
                   help="a searched setting (repeatable): lo,hi | log:lo,hi | int:lo,hi | choice:a,b,... (a list of "
                        "non-numeric values is a choice); method.<param> applies to the methods that have it")
    p.add_argument("--trials", type=int, default=None, metavar="N",
                   help="settings to try (with --study: more trials for that study)")
    p.add_argument("--seeds", type=int, default=3, metavar="K",
                   help="re-run the best settings and the base config on K seeds with the student alone, on the "
                        "test split (0: none; default 3)")
    p.add_argument("--batch", type=int, default=4, help="trials asked for at once; they train as one stacked "
                   "group where they can (default 4)")
    p.add_argument("--pruner", choices=["sha", "hyperband", "none"], default="sha",
                   help="stop unpromising trials from their validation accuracy (default: successive halving)")
    p.add_argument("--first-rung", type=int, default=None, metavar="E",
                   help="the first epoch at which the pruner compares trials, then ×3, ×9, ... below the last epoch "
                        "(default: a tenth of the epochs)")
    p.add_argument("--sampler-seed", type=int, default=None, help="seed of the TPE sampler")
    p.add_argument("--name", default="", help="a label for the study and its runs")
    p.add_argument("--study", metavar="ID", default=None, help="continue (or, with --trials, extend) a recorded study")
    p.add_argument("--stop", action="store_true", help="with --study: cancel its trials and stop its driver")
    p.add_argument("--wait", action="store_true", help="drive the study in the foreground until it ends "
                   "(default: in a background process, and return at once)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    _owner_arg(p)
    p = command("metrics", cmd_metrics, "print every recorded series of a run (stage, epoch, step, name, value)")
    p.add_argument("run_id")
    p.add_argument("--csv", action="store_true", help="every point as CSV with a header row")
    p = command("list-datasets", cmd_list_datasets, "list datasets with shape, classes and offline availability")
    p.add_argument("--data-root", default=None, help="where torchvision datasets are looked for")
    p = command("list-models", cmd_list_models, "list architectures with their parameter counts for a dataset")
    p.add_argument("--dataset", default="mnist-5k")
    p.add_argument("--data-root", default=None)
    command("list-methods", cmd_list_methods, "list distillation methods with their papers and parameters")
    command("list-presets", cmd_list_presets, "list the named presets (--preset NAME) with their settings and, for "
            "the published recipe, the published accuracies")
    p = command("export", cmd_export, "write a finished run's student as ONNX (fp32 or int8) or a .pt checkpoint")
    p.add_argument("run_id")
    p.add_argument("--format", required=True, choices=["onnx", "pt"])
    p.add_argument("--quantize", choices=["int8"], default=None, help="post-training int8, calibrated on training data")
    p.add_argument("--out", default=None, help="file to write (default: the run's artefacts in the store)")
    p = command("compress", cmd_compress, "the deployment report of a finished run: teacher, student and compressed "
                "students with accuracy, parameters, bytes, latency and throughput")
    p.add_argument("run_id")
    p.add_argument("--prune", type=float, default=None, metavar="F",
                   help="prune a fraction F in (0, 1) of the model --prune-model names (the student by default)")
    p.add_argument("--structured", action="store_true", help="remove channels/neurons instead of single weights (the "
                   "classifier is then refit to the unpruned model's logits by least squares)")
    p.add_argument("--prune-model", default="student", metavar="student|teacher|both",
                   help="which of the run's models to prune (default: student)")
    p.add_argument("--prune-steps", type=int, default=1, metavar="K", help="prune in K steps, each followed by its "
                   "recovery (iterative pruning; default 1)")
    p.add_argument("--recover-epochs", type=int, default=0, metavar="N", help="distil the pruned model for N epochs "
                   "(after each pruning step)")
    p.add_argument("--recover-from", default="teacher", metavar="teacher|unpruned|both",
                   help="what the recovery distils from: the run's teacher, the unpruned model, or both as an "
                   "ensemble (default: teacher)")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="post-training int8 of the student and of each pruned model")
    p.add_argument("--qat-epochs", type=int, default=0, metavar="N", help="with --quantize: also N epochs of "
                   "quantisation-aware fine-tuning distilled from the teacher, then int8 (PTQ and QAT compared)")
    p.add_argument("--repeats", type=int, default=200, help="timed calls per latency measurement")
    p = command("sync", cmd_sync, "export runs that have ended to MLflow and/or TensorBoard: params (the config), "
                "every recorded series at its step, the summary and the student checkpoint (a run exported again "
                "replaces its earlier export)")
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    p.add_argument("--mlflow", metavar="URI", default=None, help="MLflow tracking URI: sqlite:///mlflow.db, a folder "
                   "(file store), http://host:5000, ...; experiment $MLFLOW_EXPERIMENT_NAME or 'KD Lab'")
    p.add_argument("--tensorboard", metavar="DIR", default=None, help="TensorBoard log folder; each run is written to "
                   "DIR/RUN_ID/ (view: tensorboard --logdir DIR)")
    p = sub.add_parser("worker", help="(internal) train one queued run; started by the runner")
    p.add_argument("run_id", nargs="?")
    p.add_argument("--spare", action="store_true", help="(internal) warm up, then wait to be handed a run")
    p.set_defaults(func=cmd_worker, json=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return args.func(args)
    except KDError as exc:
        print(f"kdcore: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("kdcore: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... metrics RUN --csv | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
