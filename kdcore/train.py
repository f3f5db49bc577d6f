"""The training loop: one loop for every stage, for one model or for K stacked students.

    state = TrainState.start(stage, members, config, device)       # or .resume(...) from a checkpoint
    results = fit(stage, state, data, config, device, callbacks, checkpoints)

A `Stage` says what is trained and how one step's loss is made (an `Objective` from
`kdcore.methods`); `Members` are the trained networks: one ordinary model (`Single`), or the
students of K runs of a sweep stacked with `torch.func` and trained with `vmap` (`Stacked`), so
each step is a few batched matmuls instead of K separate steps. The stack is exact: parameters of
different students never mix, Adam and SGD act elementwise, and each student draws its batches
from its own seeded generator, so a stacked student equals the same run trained alone up to float
rounding. Everything the loop keeps (members, extra modules, optimizer, generators, best state,
history, epoch) lives in one `TrainState`, whose `checkpoint(k)` is the one schema `resume` reads,
and every step's loss parts reach the callbacks through one flush.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from kdcore import checkpoints, distributed
from kdcore.callbacks import Callback
from kdcore.data import Splits, apply_views, augment, random_views, view_count
from kdcore.errors import Cancelled, DivergedError
from kdcore.evaluation import autocast, predict
from kdcore.methods.objective import Objective, Outputs, StepContext

FLUSH_EVERY = 25  # steps per host sync: loss values are read back in batches, not every step

TeacherSource = Callable[[Tensor, Tensor, "Tensor | None"], Outputs]  # (indices, x, views) -> teacher outputs


@dataclass
class Stage:
    """One trained stage: its objective, budget, per-member numbers, validation and snapshots."""

    name: str
    epochs: int
    batch_size: int
    lr: float
    seeds: list[int]  # one per member: its batch order (and augmentation) generator
    objective: Objective
    hyper: list[dict[str, float]]  # one per member: temperature and CE/KD weights (see kdcore.methods.objective)
    teacher: TeacherSource  # the teacher's outputs for a batch: precomputed, looked up, or a forward
    validate: Callable[[int, Tensor], dict[str, float]]  # (member, its validation logits) -> val metrics
    snapshot: Callable[[int, nn.Module], dict[str, Any]] | None = None  # soft labels drawn after each epoch
    augment: bool = False
    epoch_steps: int | None = None  # steps per epoch; None: one pass over the data. More: several shuffled passes


@dataclass
class Best:
    """A member's selection so far: the weights of its best validation epoch, and its history."""

    state: dict[str, Tensor]
    epoch: int = 0
    val_acc: float = -1.0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class StageResult:
    best_state: dict[str, Tensor]
    best_epoch: int
    best_val_acc: float
    samples_per_s: float
    history: list[dict[str, float]] = field(default_factory=list)


# --- the trained networks ------------------------------------------------------------------------------


class Single:
    """One ordinary model."""

    count = 1

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def parameters(self) -> list[Tensor]:
        return list(self.model.parameters())

    def train(self) -> None:
        self.model.train()

    def forward(self, x: Tensor) -> Outputs:
        return self.model.forward_features(x)

    def predict(self, x: Tensor, amp: bool) -> Tensor:
        """[1, N, C] logits in eval mode."""
        return predict(self.model, x, amp=amp).unsqueeze(0)

    def module(self, k: int) -> nn.Module:
        return self.model

    def state_dict(self, k: int) -> dict[str, Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, k: int, state: dict[str, Tensor]) -> None:
        self.model.load_state_dict(state)

    def optimizer_state(self, optimizer: torch.optim.Optimizer, k: int) -> dict[str, Any]:
        return optimizer.state_dict()


class Stacked:
    """K models of one architecture as one stacked set of parameters, run with vmap.

    vmap cannot update BatchNorm's running statistics per member: models with buffers cannot stack
    (`stackable`).
    """

    def __init__(self, models: list[nn.Module]) -> None:
        self.models = models  # kept as the skeletons that member k is materialised into
        self.count = len(models)
        self.params, self.buffers = stack_module_state(models)
        skeleton = copy.deepcopy(models[0]).to("meta")

        def call(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(skeleton, (p, b), (x,))

        self._each = torch.vmap(call, in_dims=(0, 0, 0))  # each member its own batch
        self._shared = torch.vmap(call, in_dims=(0, 0, None))  # every member the same inputs

    @staticmethod
    def stackable(model: nn.Module) -> bool:
        return not any(True for _ in model.buffers()) and getattr(model, "stackable", True)

    def parameters(self) -> list[Tensor]:
        return list(self.params.values())

    def train(self) -> None:
        pass  # no dropout or batch statistics in a stackable model

    def forward(self, x: Tensor) -> Outputs:
        """x [K, B, ...] → logits [K, B, C] (no features: methods that need them do not stack)."""
        return self._each(self.params, self.buffers, x), None, None

    def predict(self, x: Tensor, amp: bool) -> Tensor:
        with torch.no_grad():
            return self._shared(self.params, self.buffers, x).float()

    def module(self, k: int) -> nn.Module:
        """Member k as an ordinary module (its own copy of the weights)."""
        model = self.models[k]
        model.load_state_dict(self.state_dict(k))
        return model

    def state_dict(self, k: int) -> dict[str, Tensor]:
        return {name: tensor[k].detach().clone() for name, tensor in {**self.params, **self.buffers}.items()}

    def load_state_dict(self, k: int, state: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for name, tensor in {**self.params, **self.buffers}.items():
                tensor[k].copy_(state[name])

    def optimizer_state(self, optimizer: torch.optim.Optimizer, k: int) -> dict[str, Any]:
        """Member k's optimizer state, in the layout of an optimizer over that member alone."""
        state = optimizer.state_dict()
        stacked = self.parameters()
        sliced = {}
        for index, per_param in state["state"].items():
            shape = stacked[index].shape
            sliced[index] = {name: (value[k].clone() if torch.is_tensor(value) and value.shape == shape else value)
                             for name, value in per_param.items()}
        return {"state": sliced, "param_groups": state["param_groups"]}


# --- the state of a stage in training ---------------------------------------------------------------------


@dataclass
class TrainState:
    """Everything the loop keeps; `checkpoint(k)` / `load_checkpoint` are the one schema of progress.pt."""

    members: Single | Stacked
    extra: nn.Module | None  # the objective's own trainable modules (a projector, heads, a peer, a temperature)
    optimizer: torch.optim.Optimizer
    generators: list[torch.Generator]  # one per member: batch order
    aug_generator: torch.Generator | None
    best: list[Best]
    epoch: int = 0  # the last finished epoch

    @classmethod
    def start(cls, stage: Stage, members: Single | Stacked, config: Any, device: torch.device) -> TrainState:
        extra = stage.objective.modules
        groups = getattr(members.module(0), "optimizer_groups", None) if isinstance(members, Single) else None
        params = groups() if groups is not None else [{"params": members.parameters()}]  # a pretrained encoder: its lr_scale
        if extra is not None:
            params.append({"params": list(extra.parameters())})
        generators = [torch.Generator().manual_seed(seed) for seed in stage.seeds]
        aug = torch.Generator(device=device).manual_seed(stage.seeds[0] + 1) if stage.augment else None
        best = [Best(copy.deepcopy(members.state_dict(k))) for k in range(members.count)]
        return cls(members, extra, make_optimizer(config, params, stage.lr), generators, aug, best)

    def checkpoint(self, stage: str, k: int, done: dict[str, Any]) -> dict[str, Any]:
        """Member k's progress: what `load_checkpoint` needs to continue after `self.epoch` on its own."""
        best = self.best[k]
        return {
            "stage": stage, "epoch": self.epoch, "model": self.members.state_dict(k),
            "optimizer": self.members.optimizer_state(self.optimizer, k), "generator": self.generators[k].get_state(),
            "best_state": best.state, "best_epoch": best.epoch, "best_val_acc": best.val_acc, "history": best.history,
            "done": done,
            **({"extra": self.extra.state_dict()} if self.extra is not None else {}),
            **({"aug_generator": self.aug_generator.get_state()} if self.aug_generator is not None else {}),
        }

    def load_checkpoint(self, saved: dict[str, Any]) -> None:
        """Continue a single member from its checkpoint."""
        self.members.load_state_dict(0, saved["model"])
        if self.extra is not None and "extra" in saved:
            self.extra.load_state_dict(saved["extra"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.generators[0].set_state(saved["generator"])
        if self.aug_generator is not None and "aug_generator" in saved:
            self.aug_generator.set_state(saved["aug_generator"])
        self.best[0] = Best(saved["best_state"], saved["best_epoch"], saved["best_val_acc"], list(saved.get("history", [])))
        self.epoch = saved["epoch"]


class Progress:
    """Where a member's per-epoch checkpoint lives (none: not saved), so `resume` continues where it stopped."""

    def __init__(self, folder: Path | None) -> None:
        self.path = folder / "progress.pt" if folder else None

    def load(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        return checkpoints.load(self.path, "progress checkpoint")

    def save(self, state: dict[str, Any]) -> None:
        """Replace the checkpoint atomically. The run's folder is never made again here: one removed under a
        running worker fails the run (CheckpointError) rather than leave a run whose earlier files are gone."""
        if self.path is not None and distributed.is_main():  # one writer when several processes train the run
            checkpoints.save_atomic(state, self.path, create_folder=False)


def make_optimizer(config: Any, params, lr: float) -> torch.optim.Optimizer:
    """The configured optimizer, fused (one kernel for all parameters: ~15% faster small-model steps)."""
    params = list(params)
    if config.optimizer == "sgd":
        momentum = config.momentum
        cls, kwargs = torch.optim.SGD, {"momentum": momentum, "nesterov": config.nesterov and momentum > 0}
    else:
        cls, kwargs = (torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam), {}
    try:
        return cls(params, lr=lr, weight_decay=config.weight_decay, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # a device without fused kernels (e.g. MPS on older torch)
        return cls(params, lr=lr, weight_decay=config.weight_decay, **kwargs)


def cosine(lr: float, step: int, total: int) -> float:
    """Cosine decay from lr to 0 over the stage; robust and needs no tuning per dataset."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def step_decay(lr: float, epoch: int, milestones: list[int], decay: float) -> float:
    """The step schedule of the CIFAR-100 KD literature (CRD, DKD: lr × 0.1 after epochs 150, 180 and 210):
    lr × decay^(number of milestones before `epoch`), epochs counted from 1. Milestones past the stage's
    last epoch never act."""
    return lr * decay ** sum(1 for milestone in milestones if epoch > milestone)


def learning_rate(config: Any, lr: float, step: int, steps_per_epoch: int, total: int) -> float:
    """The configured schedule's lr for optimizer step `step` (counted from 0) of a stage of `total` steps."""
    if config.schedule == "step":
        return step_decay(lr, step // max(steps_per_epoch, 1) + 1, config.lr_milestones, config.lr_decay)
    return cosine(lr, step, total)


# --- the loop --------------------------------------------------------------------------------------------


def fit(stage: Stage, state: TrainState, data: Splits, config: Any, device: torch.device, callbacks: list[Callback],
        progress: list[Progress], done: dict[str, Any] | None = None) -> list[StageResult | BaseException]:
    """Train a stage with model selection on validation and a checkpoint after every epoch.

    Returns one result per member, or the exception that ended it (cancelled, diverged); members
    that end early stop training while the others go on.
    """
    members, k_count = state.members, state.members.count
    if config.compile and device.type == "cuda" and isinstance(members, Single):
        members.model.compile()  # in place: the state_dict keeps its keys, so checkpoints stay portable
    n = len(data.train_x)
    batch_size = min(stage.batch_size, n)
    batch_size -= batch_size % distributed.world()  # devices=N: N equal shares of every global batch
    steps_per_epoch = n // batch_size  # drop the ragged last batch: a batch of 1 breaks BatchNorm
    if stage.epoch_steps is not None:  # e.g. a baseline on a few labels, taking as many steps as the student
        steps_per_epoch = stage.epoch_steps
    total_steps = steps_per_epoch * stage.epochs
    use_views = view_count(data.info) > 0  # discrete augmentations: the teacher's outputs can be looked up
    lengths = (data.train_x >= 0).sum(dim=1).cpu() if data.info.kind == "text" else None  # tokens per sentence
    step_parts = _single_step if isinstance(members, Single) else _stacked_step
    hyper = _hyper_tensors(stage.hyper, device) if isinstance(members, Stacked) else stage.hyper[0]
    alive = [True] * k_count
    trained = [p for group in state.optimizer.param_groups for p in group["params"]]
    ended: list[BaseException | None] = [None] * k_count
    if state.epoch > 0:
        for cb in callbacks:
            cb.on_resume(stage.name, state.epoch)
            cb.on_log(f"{stage.name}: resumed after epoch {state.epoch}")
    for cb in callbacks:
        cb.on_stage_start(stage.name, stage.epochs, steps_per_epoch)
    if stage.snapshot is not None and state.epoch == 0 and distributed.is_main():  # the untrained model: epoch 1's start
        for k, cb in enumerate(callbacks):
            cb.on_snapshot(stage.name, 0, stage.snapshot(k, members.module(k)))
    rates = []
    for epoch in range(state.epoch + 1, stage.epochs + 1):
        members.train()
        if state.extra is not None:
            state.extra.train()
        orders = torch.stack([shuffled(n, steps_per_epoch * batch_size, g) for g in state.generators])
        if lengths is not None:
            orders = torch.stack([bucketed(order, lengths, batch_size, g) for order, g in zip(orders, state.generators)])
        orders = orders.to(device)
        pending: list[dict[str, Tensor]] = []
        correct = torch.zeros(k_count, device=device)
        started = time.perf_counter()
        for i in range(steps_per_epoch):
            step = (epoch - 1) * steps_per_epoch + i + 1
            idx = orders[:, i * batch_size : (i + 1) * batch_size]  # [K, B]
            for group in state.optimizer.param_groups:
                scale = group.get("lr_scale", 1.0)  # a pretrained encoder fine-tunes slower than its new head
                group["lr"] = learning_rate(config, stage.lr, step - 1, steps_per_epoch, total_steps) * scale
            with autocast(device, config.amp):
                parts, logits, y = step_parts(stage, state, data, idx, epoch, step, steps_per_epoch, hyper, use_views)
            loss = parts["loss"]  # [K]: members never share gradients, so the sum trains each on its own
            if not all(alive):  # a member that ended stops learning
                loss = torch.where(torch.tensor(alive, device=device), loss, torch.zeros_like(loss))
            loss = loss.sum()
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(trained)  # devices=N: the global batch's gradient, as DDP makes it
            state.optimizer.step()
            correct += (logits.detach().argmax(-1) == y).sum(-1)
            pending.append({name: value.detach().float() for name, value in parts.items()})
            if len(pending) == FLUSH_EVERY or i == steps_per_epoch - 1:
                _flush(stage.name, epoch, step - len(pending) + 1, pending, callbacks, alive, ended)
                pending = []
            if pending and distributed.active():
                continue  # devices=N: rank 0's stop flags go to every rank after each flush (≤ FLUSH_EVERY steps)
            stops = distributed.main_flags([alive[k] and cb.should_stop() for k, cb in enumerate(callbacks)])
            for k in range(k_count):
                if stops[k]:
                    ended[k], alive[k] = Cancelled(f"{stage.name} stopped at epoch {epoch} step {step}"), False
            if not any(alive):
                return list(ended)  # type: ignore[arg-type]
        elapsed = time.perf_counter() - started
        rates.append(steps_per_epoch * batch_size / max(elapsed, 1e-9) / k_count)
        state.epoch = epoch
        correct = distributed.total(correct)  # every rank's share of the epoch's examples
        _end_epoch(stage, state, data, config, callbacks, progress, done or {}, alive, correct / (steps_per_epoch * batch_size),
                   epoch * steps_per_epoch, rates[-1],
                   learning_rate(config, stage.lr, epoch * steps_per_epoch - 1, steps_per_epoch, total_steps))
    samples_per_s = sorted(rates)[len(rates) // 2] if rates else 0.0
    return [ended[k] if ended[k] is not None else
            StageResult(state.best[k].state, state.best[k].epoch, state.best[k].val_acc, samples_per_s, state.best[k].history)
            for k in range(k_count)]


def fit_one(stage: Stage, state: TrainState, data: Splits, config: Any, device: torch.device, callback: Callback,
            progress: Progress, done: dict[str, Any] | None = None) -> StageResult:
    """`fit` for a single model: its result, or the exception that ended it, raised."""
    (result,) = fit(stage, state, data, config, device, [callback], [progress], done)
    if isinstance(result, BaseException):
        raise result
    return result


def shuffled(n: int, count: int, generator: torch.Generator) -> Tensor:
    """`count` indices into n examples: a random permutation, cut short (the ragged last batch dropped), or as
    many permutations one after another as it takes when an epoch is longer than the data."""
    passes = [torch.randperm(n, generator=generator) for _ in range(max(1, math.ceil(count / n)))]
    return (passes[0] if len(passes) == 1 else torch.cat(passes))[:count]


BUCKET_BATCHES = 32  # length bucketing: each run of this many batches is sorted by sentence length


def bucketed(order: Tensor, lengths: Tensor, batch_size: int, generator: torch.Generator) -> Tensor:
    """Length bucketing for text: `order` (a multiple of batch_size long) cut into windows of BUCKET_BATCHES
    batches, each window sorted by sentence length and cut into batches, the batches then shuffled. Every
    text model trims a batch to its longest sentence, so batches of like lengths carry little padding."""
    window = batch_size * BUCKET_BATCHES
    pieces = [chunk[torch.argsort(lengths[chunk], stable=True)] for chunk in order.split(window)]
    batches = torch.cat(pieces).view(-1, batch_size)
    return batches[torch.randperm(len(batches), generator=generator)].reshape(-1)


def _single_step(stage: Stage, state: TrainState, data: Splits, idx: Tensor, epoch: int, step: int, steps_per_epoch: int,
                 hyper: dict[str, float], use_views: bool) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    idx = idx[0]
    share = distributed.part(len(idx))  # the whole batch unless devices=N
    views = None
    if state.aug_generator is None:
        idx = idx[share]
        x = data.train_x[idx]
    else:  # the whole global batch's random draws, then this rank's share: the same draws as one process
        x = data.train_x[idx]
        if use_views:
            views = random_views(len(idx), data.info, state.aug_generator, x.device)
            x = apply_views(x, data.info, views, data.black)
            views = views[share]
        else:
            x = augment(x, data.info, state.aug_generator, data.black)
        idx, x = idx[share], x[share]
    y = data.train_y[idx]
    labeled = data.train_labeled[idx] if data.train_labeled is not None else None
    objective = stage.objective
    x = objective.prepare_batch(x)  # mixup for function_matching; x itself otherwise
    teacher_out = objective.teacher_outputs(x) if objective.needs_teacher_forward else stage.teacher(idx, x, views)
    student_out = state.members.forward(x)  # costs what model(x) costs
    parts = objective.step(StepContext(x, y, idx, epoch, step, student_out, teacher_out, hyper, steps_per_epoch,
                                       labeled))
    return {name: value.reshape(1) for name, value in parts.items()}, student_out[0].unsqueeze(0), y.unsqueeze(0)


def _stacked_step(stage: Stage, state: TrainState, data: Splits, idx: Tensor, epoch: int, step: int, steps_per_epoch: int,
                  hyper: dict[str, Tensor], use_views: bool) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    x, y = data.train_x[idx], data.train_y[idx]  # [K, B, ...], [K, B]
    labeled = data.train_labeled[idx] if data.train_labeled is not None else None  # [K, B] or None
    logits = state.members.forward(x)[0].float()  # [K, B, C]
    teacher_logits = stage.teacher(idx, x, None)[0]  # [K, B, C]

    def one(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, indices: Tensor, numbers: dict[str, Tensor],
            mask: Tensor | None):
        ctx = StepContext(None, labels, indices, epoch, step, (student_logits, None, None), (teacher_logits, None, None),
                          numbers, steps_per_epoch, mask)
        return stage.objective.step(ctx)

    in_dims = (0, 0, 0, 0, 0, 0 if labeled is not None else None)
    return torch.vmap(one, in_dims=in_dims)(logits, teacher_logits, y, idx, hyper, labeled), logits, y


def _hyper_tensors(hyper: list[dict[str, float]], device: torch.device) -> dict[str, Tensor]:
    return {key: torch.tensor([h[key] for h in hyper], device=device, dtype=torch.float32) for key in hyper[0]}


def _flush(stage: str, epoch: int, first_step: int, pending: list[dict[str, Tensor]], callbacks: list[Callback],
           alive: list[bool], ended: list[BaseException | None]) -> None:
    """Read a batch of step losses back to the host, stop a member on divergence, report each step."""
    names = list(pending[0])
    rows = torch.stack([torch.stack([parts[name] for name in names], dim=-1) for parts in pending])  # [S, K, N]
    rows = distributed.average(rows).tolist()  # devices=N: the global batch's mean, as one process reports it
    for k, cb in enumerate(callbacks):
        if not alive[k]:
            continue
        for offset, row in enumerate(rows):
            values = row[k]
            if not all(math.isfinite(v) for v in values):
                ended[k] = DivergedError(f"{stage} diverged at epoch {epoch} step {first_step + offset}: loss is "
                                         f"{values[0]} (try a lower lr or temperature)")
                alive[k] = False
                break
            cb.on_metrics(stage, epoch, first_step + offset, {f"train_{name}": v for name, v in zip(names, values)})


def _end_epoch(stage: Stage, state: TrainState, data: Splits, config: Any, callbacks: list[Callback],
               progress: list[Progress], done: dict[str, Any], alive: list[bool], train_acc: Tensor, step: int,
               samples_per_s: float, lr: float) -> None:
    """Validate every live member, report, select, checkpoint."""
    val_logits = state.members.predict(data.val_x, config.amp)  # [K, N_val, C]
    for k, cb in enumerate(callbacks):
        if not alive[k]:
            continue
        values = {"train_acc": train_acc[k].item(), "samples_per_s": samples_per_s, "lr": lr,
                  **stage.validate(k, val_logits[k])}
        cb.on_metrics(stage.name, state.epoch, step, values)
        model = state.members.module(k)
        if stage.snapshot is not None and distributed.is_main():
            cb.on_snapshot(stage.name, state.epoch, stage.snapshot(k, model))
        best = state.best[k]
        if values["val_acc"] > best.val_acc:  # strict: ties keep the earlier, cheaper epoch
            best.state, best.epoch, best.val_acc = copy.deepcopy(state.members.state_dict(k)), state.epoch, values["val_acc"]
        best.history.append({"epoch": state.epoch, **values})
        progress[k].save(state.checkpoint(stage.name, k, done))
        cb.on_epoch_end(stage.name, state.epoch, values)
