"""kdcore: KD Lab's knowledge-distillation engine (config, data, models, losses, trainer, store, runner, cli)."""

__version__ = "0.1.0"
