"""Data-parallel training with ``torch.distributed``: gloo on CPU, NCCL on CUDA.

Two ways in:
- ``torchrun --nproc-per-node N -m mcomp distill …``: every process runs the command;
  ``RANK``/``WORLD_SIZE`` in the environment say so, and the pass joins the group
  (:func:`from_environment`).
- ``--nproc N`` (option ``nproc``): the pass itself starts N worker interpreters
  (:func:`spawn`), which rendezvous through a file in a temporary folder; rank 0 writes its
  progress and, at the end, the trained weights into that folder.

Every worker sees the same shuffled order each epoch and takes every N-th example of each
global batch; per-example losses are summed and divided by the global batch size, and the
gradients summed over workers (one all-reduce of one flat buffer per step): N workers
take exactly the steps that one process would take, up to float summation order.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mcomp.errors import BadInput, McompError


@dataclass
class Comm:
    """This process's place in the group; ``world == 1`` when training alone."""

    rank: int = 0
    world: int = 1
    owned: bool = False  # the pass created the process group (and destroys it)

    def allreduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def max_(self, values: list[float]) -> list[float]:
        """The largest of each value over the workers: every worker gets the same, so that plans
        made from them (the epochs that fit in a time budget) agree."""
        if self.world == 1:
            return list(values)
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()

    def sync_grads(self, params: list[torch.Tensor]) -> None:
        """Sums the gradients of ``params`` over the workers in one all-reduce. A parameter that
        got no gradient on any worker keeps none (so the optimizer skips it, as alone)."""
        if self.world == 1 or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        present = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
        flat = torch.cat([g.reshape(-1) for g in grads] + [present])
        self.allreduce_(flat)
        offset = 0
        for i, p in enumerate(params):
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone() if flat[-len(params) + i] > 0 else None
            offset += n

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def from_environment(device: str) -> Comm | None:
    """The group this process belongs to under torchrun (or an existing one), else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Comm(dist.get_rank(), dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or "RANK" not in os.environ:
        return None
    if not dist.is_available():
        raise BadInput("distill: WORLD_SIZE is set but this torch has no torch.distributed")
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend_for(device), init_method="env://")
    return Comm(dist.get_rank(), dist.get_world_size(), owned=True)


def device_for(device: str, comm: Comm) -> str:
    """One GPU per worker: cuda:LOCAL_RANK (or the rank) when several share a machine."""
    if device == "cuda" and comm.world > 1:
        local = int(os.environ.get("LOCAL_RANK", comm.rank))
        return f"cuda:{local % max(torch.cuda.device_count(), 1)}"
    return device


def spawn(nproc: int, job, progress) -> object:
    """Runs ``train.fit(job)`` in ``nproc`` fresh interpreters (``python -m mcomp.passes.distill.ddp``,
    so nothing depends on how the caller's main module imports); returns rank 0's result."""
    with tempfile.TemporaryDirectory(prefix="mcomp-distill-") as tmp:
        folder = Path(tmp)
        (folder / "job.pkl").write_bytes(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
        (folder / "progress").write_text("")
        procs = []
        for rank in range(nproc):
            log = open(folder / f"rank{rank}.log", "wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "mcomp.passes.distill.ddp", str(folder), str(rank),
                                           str(nproc)], stdin=subprocess.DEVNULL, stdout=log, stderr=log))
            log.close()
        seen = 0
        try:
            while True:
                seen = _relay(folder / "progress", seen, progress)
                codes = [p.poll() for p in procs]
                failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
                if failed:
                    raise _failure(folder, failed[0], codes[failed[0]])
                if all(c == 0 for c in codes):
                    break
                time.sleep(0.1)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        _relay(folder / "progress", seen, progress)
        return pickle.loads((folder / "result.pkl").read_bytes())


def _relay(path: Path, seen: int, progress) -> int:
    lines = path.read_text().splitlines()
    for line in lines[seen:]:
        description, done, total = line.rsplit("\t", 2)
        progress(description, int(done), int(total))
    return len(lines)


def _failure(folder: Path, rank: int, code: int) -> McompError:
    error = folder / "error.pkl"
    if error.exists():
        return pickle.loads(error.read_bytes())
    lines = [l for l in (folder / f"rank{rank}.log").read_text(errors="replace").splitlines() if l.strip()]
    return McompError(f"distill: training worker {rank} failed (exit {code}): {lines[-1] if lines else 'no output'}")


def _worker(folder: Path, rank: int, world: int) -> None:
    import torch.distributed as dist

    from mcomp.passes.distill.train import fit

    job = pickle.loads((folder / "job.pkl").read_bytes())
    if job.threads:
        torch.set_num_threads(job.threads)
    device = job.device
    if device.startswith("cuda"):
        device = f"cuda:{rank % max(torch.cuda.device_count(), 1)}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), init_method=f"file://{folder / 'rendezvous'}",
                            rank=rank, world_size=world)
    comm = Comm(rank, world, owned=True)

    def report(description: str, done: int, total: int) -> None:
        with open(folder / "progress", "a") as fh:
            fh.write(f"{description}\t{done}\t{total}\n")

    try:
        result = fit(job, comm, report if rank == 0 else (lambda *a: None), device=device)
        if rank == 0:
            (folder / "result.pkl").write_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        # every worker done before any tears its group down: a worker whose peer had already gone was once
        # aborted in gloo's teardown ("terminate called without an active exception", exit -6) after training
        # had finished. Not on the failure path, where the peer may be waiting in an all-reduce instead.
        dist.barrier()
    except McompError as exc:  # an expected failure (a bad checkpoint): the parent raises it as it is
        (folder / "error.pkl").write_bytes(pickle.dumps(exc))
        raise SystemExit(2) from None
    finally:
        comm.close()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    # Done, the result written and the group destroyed: leave without the interpreter's teardown, in which a
    # finished worker was aborted in some runs of the slow suite (exit -6, "terminate called without an active
    # exception": a C++ thread of torch's still joinable at exit), failing a distillation that had succeeded.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
