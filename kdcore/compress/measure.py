"""Measuring a deployable model on this machine's CPU: accuracy, size, latency and throughput.

Latency is per sample at batch 1: `repeats` timed calls after a warm-up, reported as the median
(p50) and the 95th percentile (p95) in milliseconds. Throughput is samples per second at batch 64,
over repeats/5 timed batches. PyTorch runs in eval mode under inference_mode; ONNX Runtime runs the
file with its CPU provider and all graph optimisations. Both get the same number of threads (the
process's torch threads), so the two columns compare runtimes, not thread counts.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdcore.compress.export import INPUT_NAME

THROUGHPUT_BATCH = 64
EVAL_BATCH = 256
WARMUP_CALLS = 10


@dataclass(frozen=True)
class Speed:
    p50_ms: float  # per sample at batch 1
    p95_ms: float
    throughput: float  # samples per second at batch 64


def time_calls(call: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls, after a warm-up."""
    for _ in range(WARMUP_CALLS):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100), linear between order statistics (numpy's default)."""
    return float(np.percentile(np.asarray(values), q))


def speed(run_batch: Callable[[np.ndarray], object], inputs: np.ndarray, repeats: int) -> Speed:
    """Latency at batch 1 and throughput at batch 64 of `run_batch` on real inputs."""
    single = inputs[:1]
    batch = np.ascontiguousarray(np.resize(inputs, (THROUGHPUT_BATCH, *inputs.shape[1:])))
    latencies = time_calls(lambda: run_batch(single), repeats)
    batches = time_calls(lambda: run_batch(batch), max(repeats // 5, 1))
    return Speed(1e3 * statistics.median(latencies), 1e3 * percentile(latencies, 95),
                 THROUGHPUT_BATCH / statistics.median(batches))


# --- PyTorch ---------------------------------------------------------------------------------------------


def torch_runner(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """Logits of `model` (moved to the CPU, eval mode) for a float32 array."""
    model = model.cpu().eval()

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x)).float().numpy()

    return run


# --- ONNX Runtime ----------------------------------------------------------------------------------------


def onnx_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime session on the CPU with `threads` intra-op threads (default: torch's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's notes about unused initialisers are not a user's business
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runner(session) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {INPUT_NAME: x})[0]

    return run


# --- accuracy and size -------------------------------------------------------------------------------------


def logits_of(run_batch: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """Logits of a whole split, in batches of EVAL_BATCH."""
    return np.concatenate([run_batch(np.ascontiguousarray(x[i: i + EVAL_BATCH])) for i in range(0, len(x), EVAL_BATCH)])


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def file_bytes(path: str | Path) -> int:
    return Path(path).stat().st_size
