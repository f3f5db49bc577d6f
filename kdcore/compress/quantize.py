"""Post-training int8 quantisation in ONNX Runtime, calibrated on training inputs.

Static quantisation (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference"): weights become int8 per output channel (symmetric), activations
uint8 per tensor with scales and zero points fixed from the ranges seen on a few hundred training
inputs (min–max calibration). The model is written in the QDQ format (QuantizeLinear/DequantizeLinear
around each op), which ONNX Runtime's CPU provider fuses into integer kernels. Accuracy is then
measured by running the quantised file in ONNX Runtime (`kdcore.compress.measure`), never estimated.

Two choices keep the int8 model's predictions those of the fp32 one:
- On x86 CPUs without VNNI, ONNX Runtime's uint8 × int8 kernels (AVX2 `vpmaddubsw`) add pairs of
  products in 16 bits and can saturate; its documentation's remedy is `reduce_range` (7-bit weights),
  taken here when the CPU lacks VNNI. On the preset it moves agreement with the fp32 student's
  predictions from 98.7% to 99.7% of the test set.
- The classifier (the layer that gives the logits) stays in fp32, as is common practice (the first and
  last layers are the most sensitive; Jacob et al. sec. 3): a few hundred parameters, and logits that
  are not rounded to 256 levels before the argmax.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from kdcore.compress.export import INPUT_NAME, written_atomically

CALIBRATION_SAMPLES = 512  # enough for stable min–max ranges of small nets; more only costs time
CALIBRATION_BATCH = 64


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol: one {input name: batch} dict per call, then None."""

    def __init__(self, inputs: np.ndarray) -> None:
        self.batches = iter([{INPUT_NAME: inputs[i: i + CALIBRATION_BATCH]}
                             for i in range(0, len(inputs), CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def calibration_inputs(train_x: np.ndarray, samples: int = CALIBRATION_SAMPLES, seed: int = 0) -> np.ndarray:
    """A fixed random subset of the training inputs."""
    rng = np.random.default_rng(seed)
    picked = rng.permutation(len(train_x))[: min(samples, len(train_x))]
    return np.ascontiguousarray(train_x[np.sort(picked)])


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray) -> Path:
    """Write the int8 version of the fp32 ONNX model at `fp32_path` to `out_path` (atomically)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger("root").setLevel(logging.ERROR)  # the quantiser's advice goes to the root logger
    with tempfile.TemporaryDirectory(prefix="kdcore-quant-") as scratch, written_atomically(out_path) as partial:
        prepared = Path(scratch) / "prepared.onnx"  # shapes inferred and graph optimised, as ORT recommends
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        quantize_static(str(prepared), str(partial), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=not cpu_has_vnni(), activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=classifier_nodes(prepared),
                        extra_options={"CalibTensorRangeSymmetric": False, "WeightSymmetric": True})
    return Path(out_path)


def classifier_nodes(path: str | Path) -> list[str]:
    """Names of the nodes that compute the graph's output: a Gemm, or a MatMul and the Add of its bias."""
    import onnx

    graph = onnx.load(str(path)).graph
    producers = {output: node for node in graph.node for output in node.output}
    node = producers.get(graph.output[0].name)
    names = []
    while node is not None and node.op_type in ("Gemm", "MatMul", "Add") and len(names) < 2:
        names.append(node.name)
        if node.op_type != "Add":
            break
        node = next((producers[i] for i in node.input if i in producers and producers[i].op_type == "MatMul"), None)
    return names


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI (8-bit dot products without 16-bit saturation); False when unknown."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))
