"""Quantisation-aware fine-tuning: the model trains while its forward pass rounds as int8 inference will.

Post-training quantisation (`kdcore.compress.quantize`) rounds a model that never saw rounding.
Quantisation-aware training (Jacob et al. 2018, sec. 3; Krishnamoorthi 2018, "Quantizing deep
convolutional networks for efficient inference") fine-tunes it with *fake quantisation* in the forward
pass: each value is rounded to the grid int8 inference will use and mapped back to float, so the loss
sees the rounding errors, while the backward pass treats the rounding as the identity inside the grid's
range (the straight-through estimator, Bengio et al. 2013). Here the fine-tuning distils from the run's
teacher (`kdcore.compress.recover`), and afterwards the learned float weights go through the very same
ONNX Runtime static quantisation as PTQ; the result is measured running in ONNX Runtime.

The fake quantisation copies ONNX Runtime's scheme as `quantize_int8` asks for it:
- weights of every Linear/Conv2d but the classifier (kept fp32): int8, symmetric, per output channel,
  scale = max|w| / 127 (/ 64 with `reduce_range`, on CPUs without VNNI), zero point 0;
- the input of every Linear/Conv2d: uint8, asymmetric, per tensor, over a range that always holds 0,
  first set from the calibration inputs (min–max, as ONNX Runtime calibrates), then followed by a moving
  average of each training batch's range (momentum 0.01).
Both use torch's `fake_quantize_per_channel_affine` / `fake_quantize_per_tensor_affine` operators (their
gradients are the straight-through estimator); nothing from the deprecated `torch.ao.quantization`.
Where ONNX Runtime folds BatchNorm into a convolution before quantising, the rounding here is of the
unfolded weights: close, not identical.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from kdcore.compress.prune import PRUNABLE, classifier_layers

ACTIVATION_RANGE = (0, 255)  # uint8
RANGE_MOMENTUM = 0.01  # of a batch's range in the moving average (PyTorch's MovingAverageMinMaxObserver's)


def weight_range(reduce_range: bool) -> tuple[int, int]:
    """The int8 grid of symmetric weights: ±127, or ±64 in ONNX Runtime's reduced (7-bit) range."""
    return (-64, 64) if reduce_range else (-127, 127)


class WeightFakeQuant(nn.Module):
    """A parametrisation: the weight rounded to its per-output-channel symmetric int8 grid (STE backward)."""

    def __init__(self, reduce_range: bool) -> None:
        super().__init__()
        self.qmin, self.qmax = weight_range(reduce_range)

    def forward(self, weight: Tensor) -> Tensor:
        with torch.no_grad():
            absmax = weight.detach().abs().flatten(1).amax(dim=1)
            scale = (2 * absmax / (self.qmax - self.qmin)).clamp_min(torch.finfo(torch.float32).tiny).float()
        zero_point = torch.zeros(len(scale), dtype=torch.int32, device=weight.device)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, self.qmin, self.qmax)


class ActivationFakeQuant:
    """A forward pre-hook: the layer's input rounded to a uint8 grid over its tracked range [low, high] ∋ 0."""

    def __init__(self) -> None:
        self.low: float | None = None
        self.high: float | None = None

    def observe(self, x: Tensor, momentum: float | None) -> None:
        """Widen the range to hold `x` (momentum None: min–max calibration), or move it towards x's range."""
        low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        if self.low is None or momentum is None:
            self.low = low if self.low is None else min(self.low, low)
            self.high = high if self.high is None else max(self.high, high)
        else:
            self.low += momentum * (low - self.low)
            self.high += momentum * (high - self.high)

    def params(self) -> tuple[float, int]:
        """(scale, zero point) of ONNX Runtime's asymmetric uint8 for the range (`compute_scale_zp`)."""
        qmin, qmax = ACTIVATION_RANGE
        scale = (self.high - self.low) / (qmax - qmin) or 1.0
        return scale, int(min(max(round(qmin - self.low / scale), qmin), qmax))

    def __call__(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        x = inputs[0]
        if module.training:
            self.observe(x.detach(), RANGE_MOMENTUM)
        if self.low is None:
            return inputs
        scale, zero_point = self.params()
        return (torch.fake_quantize_per_tensor_affine(x, scale, zero_point, *ACTIVATION_RANGE), *inputs[1:])


@contextlib.contextmanager
def fake_quantized(model: nn.Module, calibration: Tensor, reduce_range: bool) -> Iterator[list[ActivationFakeQuant]]:
    """Within the block, `model` computes with int8-rounded weights and uint8-rounded layer inputs; after it,
    the model is its plain float self again, with the weights the training left (ONNX Runtime rounds them
    when it quantises). `calibration`: inputs on the model's device that set the first activation ranges."""
    layers = [m for m in model.modules() if isinstance(m, PRUNABLE)]
    head = {id(m) for m in classifier_layers(model)}
    observers = [ActivationFakeQuant() for _ in layers]
    handles = []
    try:
        calibrating = [layer.register_forward_pre_hook(_calibrate(observer)) for layer, observer in zip(layers, observers)]
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(calibration)  # the float model, as ONNX Runtime calibrates it
        model.train(was_training)
        for handle in calibrating:
            handle.remove()
        for layer in layers:
            if id(layer) not in head:
                parametrize.register_parametrization(layer, "weight", WeightFakeQuant(reduce_range))
        handles = [layer.register_forward_pre_hook(observer) for layer, observer in zip(layers, observers)]
        yield observers
    finally:
        for handle in handles:
            handle.remove()
        for layer in layers:
            if parametrize.is_parametrized(layer, "weight"):
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)


def _calibrate(observer: ActivationFakeQuant):
    def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        observer.observe(inputs[0].detach(), None)

    return hook
