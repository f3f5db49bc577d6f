"""One run on several processes: data-parallel training as DistributedDataParallel does it.

`devices=N` (or a launch with `torchrun --nproc-per-node N`) trains the run on N processes: NCCL
between GPUs (one per process), gloo between CPU processes. Every process runs the same pipeline
(`kdcore.trainer.run_pipeline`) in lock step:

- each global batch is drawn from the same seeded permutation on every rank, and rank r trains on
  its contiguous 1/N of it (`part`); after `backward` the gradients of every trained parameter (the
  model's and the objective's own modules) are averaged across ranks in one flat all-reduce
  (`average_gradients`), DDP's arithmetic, so each optimizer step equals a single process's step on
  the whole global batch up to float rounding (for losses that are per-example means: no
  BatchNorm batch statistics, dropout, mixup or relational losses over the batch);
- the teacher's soft labels on the training set are computed once, each rank its 1/N of the rows,
  and gathered (`sharded`); a cached table is read by rank 0 and broadcast (`from_main`);
- the loss parts and accuracy that reach the callbacks are averaged across ranks, and rank 0's
  decisions (cancel, a cached teacher) are broadcast, so every rank takes the same path;
- only rank 0 writes: metrics, logs, checkpoints, the teacher cache (the peers have no callbacks).

`launched()` (used by `run_pipeline` for `devices=N`) starts N-1 peer processes of
`python -m kdcore.distributed`, meeting over a rendezvous file in a private temporary folder (no
port is opened beyond gloo's own 127.0.0.1 connections); a peer that dies fails the run with the
peer's last words; rank 0 stopping (done, cancelled, failed) ends every peer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from kdcore.errors import Cancelled, KDError

PEER_GRACE_S = 30.0  # how long rank 0 waits for peers to finish on their own before it ends them
RENDEZVOUS_TIMEOUT_S = 300.0  # for a peer to start (import torch) on a busy machine
COLLECTIVE_TIMEOUT_S = 1800.0  # a rank waiting this long for the others (rank 0 saving a large checkpoint...) fails


@dataclass
class _Group:
    rank: int
    world: int
    local_rank: int
    device_type: str  # "cuda" (NCCL) or "cpu" (gloo)


_group: _Group | None = None


def active() -> bool:
    """True inside a run trained by more than one process."""
    return _group is not None


def rank() -> int:
    return _group.rank if _group else 0


def world() -> int:
    return _group.world if _group else 1


def is_main() -> bool:
    """Rank 0, the one process that writes (also True when not distributed)."""
    return rank() == 0


def device(resolved: torch.device) -> torch.device:
    """This rank's training device: its own GPU (by local rank) on CUDA, the CPU otherwise."""
    if _group is None or resolved.type != "cuda":
        return resolved
    return torch.device("cuda", _group.local_rank)


def init(rank: int, world: int, *, init_method: str, device_type: str, local_rank: int | None = None) -> None:
    """Join the process group of a run (every rank calls this once)."""
    global _group
    local_rank = rank if local_rank is None else local_rank
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    from datetime import timedelta

    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", init_method=init_method, rank=rank,
                            world_size=world, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    _group = _Group(rank, world, local_rank, device_type)


def close() -> None:
    global _group
    if _group is not None:
        _group = None
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


# --- what the training loop asks -----------------------------------------------------------------------


def part(size: int) -> slice:
    """This rank's contiguous share of a global batch of `size` (size divisible by the world size)."""
    share = size // world()
    return slice(rank() * share, (rank() + 1) * share)


def _comm(tensor: Tensor) -> tuple[Tensor, bool]:
    """`tensor` where the backend can reduce it (NCCL: on the GPU; gloo: on the CPU), and whether it was moved."""
    want = "cuda" if _group is not None and _group.device_type == "cuda" else "cpu"
    return (tensor, False) if tensor.device.type == want else (tensor.to(want), True)


def average(tensor: Tensor) -> Tensor:
    """The mean of `tensor` over the ranks (the tensor itself when not distributed)."""
    if _group is None:
        return tensor
    out, _ = _comm(tensor.detach().clone())
    dist.all_reduce(out)
    return (out / _group.world).to(tensor.device)


def total(tensor: Tensor) -> Tensor:
    """The sum of `tensor` over the ranks."""
    if _group is None:
        return tensor
    out, _ = _comm(tensor.detach().clone())
    dist.all_reduce(out)
    return out.to(tensor.device)


def average_gradients(params: list[Tensor]) -> None:
    """Average the gradients of `params` over the ranks in one flat all-reduce (DDP's one bucket).

    Every rank has the same parameters with a gradient (the same model, the same objective), so the
    flattened buffers line up. Each rank's loss is the mean over its share of the global batch; the
    mean of those means is the mean over the global batch, as one process would compute it."""
    if _group is None:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat, moved = _comm(torch.cat([g.reshape(-1) for g in grads]))
    dist.all_reduce(flat)
    flat = (flat / _group.world).to(grads[0].device) if moved else flat.div_(_group.world)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def main_flags(flags: list[bool]) -> list[bool]:
    """Rank 0's flags on every rank (a cancel seen by rank 0 stops every rank at the same step)."""
    if _group is None:
        return flags
    tensor, _ = _comm(torch.tensor(flags, dtype=torch.uint8))
    dist.broadcast(tensor, src=0)
    return [bool(v) for v in tensor.tolist()]


def main_says(flag: bool) -> bool:
    return main_flags([flag])[0]


def from_main(value: Any) -> Any:
    """Rank 0's picklable `value` on every rank."""
    if _group is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=torch.device("cuda", _group.local_rank) if _group.device_type == "cuda"
                               else None)
    return box[0]


def tensor_from_main(tensor: Tensor | None, device: torch.device) -> Tensor:
    """Rank 0's tensor on every rank (peers pass None)."""
    if _group is None:
        assert tensor is not None
        return tensor
    shape, dtype = from_main((tuple(tensor.shape), tensor.dtype) if is_main() else None)
    buffer, _ = _comm(tensor.to(device) if is_main() else torch.empty(shape, dtype=dtype, device=device))
    dist.broadcast(buffer, src=0)
    return buffer.to(device)


def sharded(compute: Callable[[Tensor], Tensor], x: Tensor, dim: int = 0) -> Tensor:
    """`compute(x)` with each rank computing its contiguous share of the rows of `x`, gathered on every rank.
    `compute` maps m rows to a tensor whose dimension `dim` has m entries (logits [m, C], a view table
    [V, m, C])."""
    if _group is None:
        return compute(x)
    chunks = torch.tensor_split(x, _group.world)
    mine = compute(chunks[_group.rank])
    longest = max(len(c) for c in chunks)
    pad = list(mine.shape)
    pad[dim] = longest - mine.shape[dim]
    padded, _ = _comm(torch.cat([mine, mine.new_zeros(pad)], dim=dim) if pad[dim] else mine)
    gathered = [torch.empty_like(padded) for _ in chunks]
    dist.all_gather(gathered, padded.contiguous())
    parts = [g.narrow(dim, 0, len(c)) for g, c in zip(gathered, chunks)]
    return torch.cat(parts, dim=dim).to(mine.device)


# --- launching the peers (rank 0) ------------------------------------------------------------------------


class _Peers:
    """The peer processes (ranks 1..N-1) that rank 0 started, each with its output in a temporary file."""

    def __init__(self, world: int, folder: Path, env: dict[str, str]) -> None:
        self.logs = [open(folder / f"rank{r}.log", "w+b") for r in range(1, world)]
        self.procs = [subprocess.Popen([sys.executable, "-m", "kdcore.distributed", str(folder), str(r)],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
                      for r, log in zip(range(1, world), self.logs)]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def wait_ready(self, folder: Path, timeout_s: float) -> None:
        """Wait until every peer has imported what it needs and is about to join (its `ready-R` file), so that
        rank 0 never waits in the rendezvous for a peer that died while starting."""
        deadline = time.monotonic() + timeout_s
        while not all((folder / f"ready-{r}").exists() for r in range(1, len(self.procs) + 1)):
            reason = self.failure() or next((f"rank {r} exited with code {p.returncode} while starting"
                                            for r, p in enumerate(self.procs, start=1) if p.poll() is not None), None)
            if reason is not None:
                raise KDError(f"a peer process of this run failed: {reason}")
            if time.monotonic() > deadline:
                raise KDError(f"the peer processes of this run did not start within {timeout_s:.0f} s")
            time.sleep(0.05)

    def failure(self) -> str | None:
        """'rank R exited with code C: its last line', for the first peer that ended badly; None if none did."""
        for r, (proc, log) in enumerate(zip(self.procs, self.logs), start=1):
            code = proc.poll()
            if code not in (None, 0, _EXIT_CANCELLED):
                log.seek(0)
                lines = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()]
                return f"rank {r} exited with code {code}: {lines[-1].strip() if lines else 'no output'}"[:1000]
        return None

    def end(self, grace_s: float) -> None:
        """Wait up to `grace_s` for the peers to finish, then end those still running (and reap them all)."""
        deadline = time.monotonic() + grace_s
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for log in self.logs:
            log.close()


_EXIT_CANCELLED = 3  # a peer that stopped because rank 0 said so


@contextlib.contextmanager
def launched(devices: int, device_type: str, job: dict[str, Any], log: Callable[[str], None]) -> Iterator[None]:
    """Run the body as rank 0 of `devices` processes, the others started here running `job` (run_pipeline's
    arguments); on the way out every peer has ended. A peer's failure fails the run with its reason."""
    if device_type == "cuda" and torch.cuda.device_count() < devices:
        raise KDError(f"devices={devices} but this machine has {torch.cuda.device_count()} GPU(s)")
    folder = Path(tempfile.mkdtemp(prefix="kdcore-ddp-"))
    (folder / "job.json").write_text(json.dumps({**job, "world": devices, "device_type": device_type}))
    threads = max(1, torch.get_num_threads() // devices)  # the cores this run had, shared by its processes
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    peers = _Peers(devices, folder, env)
    torch.set_num_threads(threads)
    log(f"devices={devices}: rank 0 and peers {', '.join(map(str, peers.pids))} ({'nccl' if device_type == 'cuda' else 'gloo'})")
    ok = False
    try:
        try:
            peers.wait_ready(folder, RENDEZVOUS_TIMEOUT_S)
            init(0, devices, init_method=(folder / "rendezvous").as_uri(), device_type=device_type)
            yield
            ok = True
        except (KDError, Cancelled):
            raise
        except Exception as exc:  # a collective that failed: most often because a peer died
            time.sleep(0.5)  # let a dying peer's exit be seen
            reason = peers.failure()
            if reason is not None:
                raise KDError(f"a peer process of this run failed: {reason}") from exc
            raise
    finally:
        close()
        peers.end(PEER_GRACE_S if ok else 2.0)
        shutil.rmtree(folder, ignore_errors=True)


def _watch_parent() -> None:
    """A peer whose rank 0 is gone (killed) exits rather than wait in a collective."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def peer_main(folder: str, rank_text: str) -> int:
    """Entry of a peer: join rank 0's group and run the same pipeline, writing nothing."""
    _watch_parent()
    job = json.loads((Path(folder) / "job.json").read_text())
    from kdcore.config import RunConfig
    from kdcore.trainer import run_pipeline

    (Path(folder) / f"ready-{rank_text}").touch()
    init(int(rank_text), job["world"], init_method=(Path(folder) / "rendezvous").as_uri(), device_type=job["device_type"])
    try:
        run_pipeline(RunConfig.from_dict(job["config"]), [], teacher_cache=job["teacher_cache"],
                     artifacts=job["artifacts"], resume=job["resume"])
    except Cancelled:
        return _EXIT_CANCELLED
    finally:
        close()
    return 0


def from_torchrun() -> bool:
    """Join the group torchrun set up (WORLD_SIZE > 1 in the environment); True when this process did."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1 or _group is not None:
        return False
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    init(int(os.environ["RANK"]), size, init_method="env://", device_type=device_type,
         local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    return True


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a peer process of a run trained on several devices (internal)")
    parser.add_argument("folder")
    parser.add_argument("rank")
    args = parser.parse_args()
    from kdcore import distributed  # this file runs as __main__: the trainer must see the group in kdcore.distributed

    code = distributed.peer_main(args.folder, args.rank)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # a peer writes nothing: skip the interpreter's teardown (seconds, which rank 0 would wait for)
