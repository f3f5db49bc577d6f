"""Pruning a trained model: global magnitude pruning to a sparsity, or structured channel/neuron pruning.

Unstructured (Han et al. 2015, "Learning both Weights and Connections"): the smallest |w| over all
Linear and Conv2d weights of the network together are set to zero, exactly round(sparsity · N) of
the N weights (ties broken by position). The tensors keep their shapes; the masks say which weights
are pruned, and `hold_at_zero` keeps them there while the model is trained further.

Structured (Li et al. 2017, "Pruning Filters for Efficient ConvNets"): in every prunable layer the
channels (conv) and neurons (hidden Linear) of smallest L2 norm are removed, with what depends on
them (the next layer's inputs, BatchNorm, residual additions), by torch-pruning's dependency graph.
The classifier keeps its classes. The model gets genuinely narrower layers: fewer parameters, and
fewer multiply-adds in every runtime.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

PRUNABLE = (nn.Linear, nn.Conv2d)  # their weights hold almost every parameter; biases and norms stay dense


@dataclass(frozen=True)
class Pruned:
    """What a pruning did: the requested fraction, the parameters before and after, and the weight
    sparsity reached (the fraction of prunable weights that are zero)."""

    fraction: float
    structured: bool
    params_before: int
    params_after: int
    sparsity: float


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


def channel_prune(model: nn.Module, fraction: float, input_shape: tuple[int, ...]) -> Pruned:
    """Remove `fraction` of the channels/neurons of every prunable layer (smallest L2 norm), in place."""
    import torch_pruning as tp  # imported here: only structured pruning needs it

    before = nonzero_parameters(model)
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
    return Pruned(fraction, True, before, nonzero_parameters(model), weight_sparsity(model))
