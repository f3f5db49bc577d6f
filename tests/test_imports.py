"""The modules that must stay quick to import never load torch, nor the trackers' libraries (mlflow,
tensorboard): importing each costs seconds. Nor psycopg, which only a PostgreSQL run store (KDCORE_DB) needs,
nor ray, which only the Ray executor (KDCORE_EXECUTOR=ray) needs.

Config validation, the run store, the scheduler, the CLI's quick commands and the app's pages and
live polls work on names and records only; torch belongs to the worker that trains. Each case runs
in a fresh interpreter, imports the module and does what its users do with it, then checks
`sys.modules`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CONFIG = """
import kdcore.config as c
config = c.RunConfig.from_dict({'dataset': 'digits', 'teacher': {'arch': 'resnet20'}, 'student': {'arch': 'mlp:8'}})
c.build_config(None, ['temperature=2', 'method=dkd', 'method.beta=2'])
config.teacher_key(); c.RunConfig.from_json(config.to_json())
try:
    c.RunConfig.from_dict({'student': {'arch': 'nope'}})
except c.ConfigError:
    pass
"""

TORCH_FREE = {
    "kdcore": "import kdcore, kdcore.errors",
    "kdcore.config": CONFIG,
    "kdcore.dataset_names": "import kdcore.dataset_names as d; d.validate_dataset_name('digits'); d.is_imagefolder('x')",
    "kdcore.model_names": "import kdcore.model_names as m; m.validate_arch('resnet20'); m.check_fits('mlp-tiny', (1, 8, 8))",
    "kdcore.methods": "import kdcore.methods as m; m.list_methods()",
    "kdcore.callbacks": "import kdcore.callbacks",
    "kdcore.store": "from kdcore.store import Store; s = Store(); s.get_run(s.create_run({})); s.list_runs()",
    "kdcore.runner": "from kdcore.runner import Runner, max_runs; r = Runner(); max_runs(r.store); r.reap()",
    "kdcore.tune (space, report, verdict; study and pruning until they drive)":
        "import kdcore.tune.study, kdcore.tune.pruning\nfrom kdcore.tune.space import parse_space, check_space\n"
        "from kdcore.tune.report import list_studies\nfrom kdcore.tune.verdict import confirm_verdict\n"
        "from kdcore.store import Store\n"
        "check_space({'dataset': 'digits'}, parse_space(['temperature=log:1,8', 'method=kd,dkd', 'method.beta=1,4']))\n"
        "list_studies(Store()); confirm_verdict({}, {})\nimport sys; assert 'optuna' not in sys.modules",
    "kdcore.sweep": "import kdcore.sweep as s; s.expand({'dataset': 'digits'}, s.parse_grid(['temperature=1,4']))",
    "kdcore.compare (records only)": "from kdcore.compare import comparison_rows, config_diff; comparison_rows([])",
    "kdcore.cli (runs, list-methods, list-presets)": "from kdcore.cli import main; main(['runs', '--json']); "
                                                     "main(['list-methods']); main(['list-presets', '--json'])",
    "app.read_model (every module)": "import importlib, pkgutil, app.read_model as read_model\n"
                                     "for module in pkgutil.iter_modules(read_model.__path__):\n"
                                     "    importlib.import_module(f'app.read_model.{module.name}')",
    "app.form": "import app.form",
    "app.charts": "import app.charts",
    "app.session": "import app.session",
    "app.screens.live": "import app.screens.live",
    "app.screens.runs": "import app.screens.runs",
    "app.screens.deploy": "import app.screens.deploy",
    "app.workshop (every module) and its pages": "import importlib, pkgutil, app.workshop as workshop\n"
                                                 "for module in pkgutil.iter_modules(workshop.__path__):\n"
                                                 "    importlib.import_module(f'app.workshop.{module.name}')\n"
                                                 "import app.screens.leaderboard, app.screens.instructor, "
                                                 "app.screens.room_sweep, app.screens.workshop, app.screens.lessons",
    "kdcore.owners": "from kdcore.owners import validate_owner, max_runs_per_owner; validate_owner('a'); "
                     "max_runs_per_owner()",
    "kdcore.compress (options, checks, jobs)": "from kdcore.compress import checks, jobs, options\n"
                                               "from kdcore.store import Store\n"
                                               "o = options.CompressOptions(prune=0.5, structured=True, quantize='int8')\n"
                                               "jobs.state(Store(), 'run-00000000', o); o.cli_args()",
    "kdcore.cli (compress: bad input)": "from kdcore.cli import main; assert main(['compress', 'run-00000000']) == 2",
    "kdcore.seeds and kdcore.verdict (status --json, repeat)": "from kdcore.cli import main\n"
                                                              "from kdcore.verdict import seed_verdict\n"
                                                              "seed_verdict({0: 0.8, 1: 0.9}, {0: 0.7, 1: 0.75})\n"
                                                              "assert main(['repeat', 'run-00000000']) == 2",
    "kdcore.tracking (no tracker set), kdcore.worker, kdcore.cli (sync: bad input)":
        "import kdcore.worker\nfrom pathlib import Path\nfrom kdcore.config import RunConfig\n"
        "from kdcore.tracking import callbacks_for\n"
        "assert callbacks_for(RunConfig(), 'run-00000000', log=print, checkpoint=Path('x')) == []\n"
        "from kdcore.cli import main; assert main(['sync', 'run-00000000', '--mlflow', 'm']) == 2",
}


@pytest.mark.parametrize("code", TORCH_FREE.values(), ids=TORCH_FREE.keys())
def test_does_not_import_torch(code, kd_home):
    check = ("\nimport sys\nheavy = [m for m in sys.modules\n"
             "         if m.split('.')[0] in ('torch', 'mlflow', 'tensorboard', 'psycopg', 'ray')]\n"
             "assert not heavy, sorted(heavy)[:5]\n")
    result = subprocess.run([sys.executable, "-c", code + check], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
