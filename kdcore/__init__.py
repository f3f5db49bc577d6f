"""kdcore: KD Lab's knowledge-distillation engine (config, data, models, losses, trainer, store, runner, cli)."""

import os

# Several runs, the app and the browser often share a few cores. OpenMP's default is to spin while
# waiting at each parallel region; when another process holds a core, a small model's steps then
# run several times (up to ~100x) slower. Passive waiting costs next to nothing when the machine is
# idle. Must be set before torch loads OpenMP, which is why it lives here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
