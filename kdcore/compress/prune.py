"""Pruning a trained model: global magnitude pruning to a sparsity, or structured channel/neuron pruning.

Unstructured (Han et al. 2015, "Learning both Weights and Connections"): the smallest |w| over all
Linear and Conv2d weights of the network together are set to zero, exactly round(sparsity · N) of
the N weights (ties broken by position). The tensors keep their shapes; the masks say which weights
are pruned, and `hold_at_zero` keeps them there while the model is trained further.

Structured (Li et al. 2017, "Pruning Filters for Efficient ConvNets"): in every prunable layer the
channels (conv) and neurons (hidden Linear) of smallest L2 norm are removed, with what depends on
them (the next layer's inputs, BatchNorm, residual additions), by torch-pruning's dependency graph.
The classifier keeps its classes. The model gets genuinely narrower layers: fewer parameters, and
fewer multiply-adds in every runtime. Then the classifier is refit (`refit_classifier`): its weights and
bias are solved by least squares so that, on training inputs, its outputs reproduce the unpruned
model's (the reconstruction step of He et al. 2017, "Channel Pruning for Accelerating Very Deep Neural
Networks", and Luo et al.'s ThiNet, applied to the last layer, where it is exact and costs one solve).
Dropping half the neurons of the preset's `mlp-small` leaves 59–86% test accuracy with the columns of
the classifier as they were, 92–93% after the refit (3 student seeds; BENCHMARKS.md), so a short KD
recovery starts near the unpruned model instead of relearning the classifier.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

PRUNABLE = (nn.Linear, nn.Conv2d)  # their weights hold almost every parameter; biases and norms stay dense
REFIT_INPUTS = 20_000  # training inputs the classifier is refit on: plenty for a few hundred features, one solve


@dataclass(frozen=True)
class Pruned:
    """What a pruning did: the requested fraction, the parameters before and after, and the weight
    sparsity reached (the fraction of prunable weights that are zero)."""

    fraction: float
    structured: bool
    params_before: int
    params_after: int
    sparsity: float
    refit_inputs: int = 0  # training inputs the classifier was refit on after pruning (0: not refit)


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of every Linear and Conv2d, in module order."""
    return [(f"{name}.weight" if name else "weight", module.weight) for name, module in model.named_modules()
            if isinstance(module, PRUNABLE)]


def weight_sparsity(model: nn.Module) -> float:
    """The fraction of Linear/Conv2d weights that are exactly zero."""
    weights = [w for _, w in prunable_weights(model)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)


def nonzero_parameters(model: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


def total_parameters(model: nn.Module) -> int:
    """Every parameter, trainable or frozen (a teacher is frozen)."""
    return sum(p.numel() for p in model.parameters())


def magnitude_prune(model: nn.Module, sparsity: float) -> tuple[dict[str, Tensor], Pruned]:
    """Zero the round(sparsity · N) smallest-magnitude weights over all Linear/Conv2d weights, in place.

    Returns the keep-masks (1 where a weight stays) by weight name, and what was done.
    """
    weights = prunable_weights(model)
    before = nonzero_parameters(model)
    flat = torch.cat([w.detach().abs().flatten() for _, w in weights])
    count = round(sparsity * flat.numel())
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:count]] = False  # stable: equal magnitudes go in position order
    masks, offset = {}, 0
    with torch.no_grad():
        for name, weight in weights:
            mask = keep[offset: offset + weight.numel()].view_as(weight)
            offset += weight.numel()
            weight.mul_(mask)
            masks[name] = mask
    return masks, Pruned(sparsity, False, before, nonzero_parameters(model), weight_sparsity(model))


def hold_at_zero(model: nn.Module, masks: dict[str, Tensor]) -> Callable[[], None]:
    """Keep pruned weights at zero while the model trains: their gradients are masked, so Adam's and
    SGD's moments for them stay zero and so do their updates (weight decay of a zero is zero).
    Returns a function that removes the hooks."""
    params = {name: weight_parameter(model, name) for name in masks}
    handles = [params[name].register_hook(_masking(mask.to(params[name].device))) for name, mask in masks.items()]

    def release() -> None:
        for handle in handles:
            handle.remove()

    return release


def weight_parameter(model: nn.Module, name: str) -> nn.Parameter:
    """The trained tensor behind the weight `name` ("layer.weight"): the parameter itself, or, while the weight
    is parametrised (fake quantisation, `kdcore.compress.qat`), the original it is computed from."""
    from torch.nn.utils import parametrize

    module_name, _, tensor_name = name.rpartition(".")
    module = model.get_submodule(module_name)
    if parametrize.is_parametrized(module, tensor_name):
        return getattr(module.parametrizations, tensor_name).original
    return getattr(module, tensor_name)


def _masking(mask: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda grad: grad * mask


def zero_masks(model: nn.Module) -> dict[str, Tensor]:
    """Keep-masks of the Linear/Conv2d weights that are not zero: a pruned model's masks, read back from it."""
    return {name: weight.detach() != 0 for name, weight in prunable_weights(model)}


def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Multiply each masked weight by its mask again (a no-op when `hold_at_zero` held them)."""
    with torch.no_grad():
        for name, mask in masks.items():
            weight = weight_parameter(model, name)
            weight.mul_(mask.to(weight.device))


def classifier_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose outputs are the classes: Linear layers with num_classes outputs (never pruned)."""
    num_classes = getattr(model, "num_classes", None)
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]


def channel_prune(model: nn.Module, fraction: float, input_shape: tuple[int, ...], refit_on: Tensor | None = None,
                  reference: nn.Module | None = None) -> Pruned:
    """Remove `fraction` of the channels/neurons of every prunable layer (smallest L2 norm), in place.

    With `refit_on` (training inputs), the classifier is then refit to reproduce `reference`'s outputs on them
    (default: the model as it was before this pruning), see `refit_classifier`.
    """
    import copy

    import torch_pruning as tp  # imported here: only structured pruning needs it

    before = nonzero_parameters(model)
    if refit_on is not None and reference is None:
        reference = copy.deepcopy(model)
    device = next(model.parameters()).device
    example = torch.zeros(2, *input_shape, device=device)
    was_training = model.training
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                           pruning_ratio=fraction, ignored_layers=classifier_layers(model))
        pruner.step()
    model.train(was_training)
    head = classifier_layers(model)
    if head and hasattr(model, "feature_dim"):
        model.feature_dim = head[-1].in_features  # the penultimate width shrank with the rest
    refit = refit_classifier(model, reference, refit_on) if refit_on is not None else 0
    return Pruned(fraction, True, before, nonzero_parameters(model), weight_sparsity(model), refit)


def refit_classifier(model: nn.Module, reference: nn.Module, inputs: Tensor) -> int:
    """Solve the classifier of `model` (its last Linear layer with num_classes outputs) by least squares, in place,
    so that its outputs on `inputs` (at most REFIT_INPUTS of them) match those of `reference`'s classifier.

    min_{W, b} Σ_i ‖W f_i + b − r_i‖² over the inputs, f_i the features `model`'s classifier reads (its layers
    before it already pruned), r_i the logits `reference`'s classifier gives; solved in float64 on the CPU (SVD
    based); a feature that is zero on every input keeps its weights. Returns how many inputs it used; 0, and
    `model` untouched, when there is no classifier to refit or too few inputs for its width.
    """
    from kdcore.evaluation import predict

    heads, reference_heads = classifier_layers(model), classifier_layers(reference)
    if not heads or not reference_heads:
        return 0
    head, reference_head = heads[-1], reference_heads[-1]
    inputs = inputs[:REFIT_INPUTS]
    features, targets = _layer_io(model, head, inputs, predict)[0], _layer_io(reference, reference_head, inputs, predict)[1]
    if features is None or targets is None or len(features) < 2 * (features.shape[1] + 1):
        return 0
    live = features.abs().amax(dim=0) > 0  # a feature that is zero on every input keeps its weights: they never count
    columns = [features[:, live]] + ([torch.ones(len(features), 1, dtype=torch.float64)] if head.bias is not None else [])
    solution = torch.linalg.lstsq(torch.cat(columns, dim=1), targets, driver="gelsd").solution
    with torch.no_grad():
        head.weight[:, live.to(head.weight.device)] = solution[: int(live.sum())].T.to(head.weight)
        if head.bias is not None:
            head.bias.copy_(solution[-1])
    return len(features)


def _layer_io(model: nn.Module, layer: nn.Module, inputs: Tensor, predict) -> tuple[Tensor | None, Tensor | None]:
    """(what `layer` reads, what it gives) as float64 [N, ·] on the CPU, running `model` on `inputs` in eval mode;
    (None, None) when the layer reads more than one vector per example."""
    seen_in, seen_out = [], []

    def record(module, args, output):
        seen_in.append(args[0].detach().double().cpu())
        seen_out.append(output.detach().double().cpu())

    handle = layer.register_forward_hook(record)
    try:
        with torch.no_grad():
            predict(model, inputs)  # batched; token ids in the same length order for both models
    finally:
        handle.remove()
    features, outputs = torch.cat(seen_in), torch.cat(seen_out)
    if features.dim() != 2 or len(features) != len(inputs):
        return None, None
    return features, outputs
