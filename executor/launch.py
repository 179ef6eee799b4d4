"""Process launch for ``parastep exec`` (docs/design.md §4): spawn the world ourselves, or join torchrun's.

``launch(worker, job, world_size=..., device=..., threads=..., timeout_s=...)`` runs
``worker(ctx, job)`` on every rank with torch.distributed initialized (gloo on CPU, nccl on CUDA,
``timeout=timeout_s`` for every collective):

- under torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment, multi-node included) it runs
  in this process with the given environment; a WORLD_SIZE different from the schedule's is
  refused before ``worker`` (and so any model loading) runs;
- a world of one runs in this process (no spawn);
- otherwise it spawns ``world_size`` processes (``spawn`` start method, MASTER_ADDR=127.0.0.1,
  a free port). If a rank raises or dies, the others are terminated and ONE line is raised in
  the parent (``UserError``): the first error, rank-tagged. A rank that died without a message
  (killed, ``os._exit``) is reported as such. Set ``PARASTEP_TRACEBACK=1`` to see tracebacks.

CPU ranks use ``threads`` intra-op threads (default 1); :func:`cpu_threads` is the one place
that sets torch's thread count (the profiler and ``evaluate`` use it too). :func:`check_world`
refuses, before anything is spawned or loaded, a world this machine cannot hold: more CUDA ranks
than GPUs, or more CPU ranks than copies of the model fit in the available memory.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Literal, Optional

from ..errors import UserError

DeviceChoice = Literal["auto", "cpu", "cuda"]
_GRACE_S = 1.0       # after the first failure, how long to wait for the other ranks' messages


@dataclass(frozen=True)
class RankContext:
    rank: int
    world_size: int
    local_rank: int
    device: Any          # torch.device
    backend: str
    torchrun: bool


class RankFailed(UserError):
    """A rank raised or died; the message names the rank and the first error."""


def in_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_device(device: DeviceChoice) -> str:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given but no CUDA device is available; use --device cpu")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@contextlib.contextmanager
def cpu_threads(where: Any, threads: int) -> Iterator[None]:
    """Run with ``threads`` intra-op threads when ``where`` (a device, a device name, or anything
    with a ``.device``, e.g. a pipeline) is the CPU; restored afterwards. On CUDA: nothing changes.
    Oversubscribed cores make multi-threaded kernels crawl, so ranks sharing a CPU use few."""
    import torch

    device = getattr(where, "device", where)
    if not str(device).startswith("cpu"):
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def available_memory_bytes() -> Optional[int]:
    """Memory a new process can still get: MemAvailable, capped by what the cgroup (v2) limit of
    this container leaves beside its anonymous memory (page cache can be reclaimed); None where
    neither can be read."""
    found: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            found.extend(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.stat", encoding="ascii") as f:
            anon = next(int(line.split()[1]) for line in f if line.startswith("anon "))
        if limit != "max":
            found.append(max(0, int(limit) - anon))
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    return min(found) if found else None


def check_torchrun_world(world_size: int) -> int:
    """Under torchrun: the launched WORLD_SIZE, refused in one line unless it is ``world_size``."""
    launched = int(os.environ["WORLD_SIZE"])
    if launched != world_size:
        raise UserError(f"the schedule is for world_size={world_size} but torchrun launched {launched} processes; "
                        f"run torchrun with {world_size} processes in all, or plan for {launched} GPUs")
    return launched


def check_world(world_size: int, *, device: str, copy_bytes: Optional[int] = None,
                available_bytes: Optional[int] = None) -> None:
    """Refuse, in one line, a ``world_size`` this machine cannot run on ``device`` ("cpu" or
    "cuda"): fewer CUDA devices than ranks, or (CPU) ``world_size`` copies of ``copy_bytes`` (the
    model's weights on disk, a lower bound of one rank's memory) beyond ``available_bytes``
    (default :func:`available_memory_bytes`)."""
    if world_size <= 1:
        return
    if device == "cuda":
        import torch

        have = torch.cuda.device_count()
        if have < world_size:
            raise UserError(f"the schedule needs {world_size} ranks but this machine has {have} CUDA device(s); "
                            "use torchrun across machines, or plan for fewer GPUs (parastep plan --gpus N)")
        return
    if not copy_bytes:
        return
    avail = available_bytes if available_bytes is not None else available_memory_bytes()
    if avail is None or world_size * copy_bytes <= avail:
        return
    gib = 2 ** 30
    fit = avail // copy_bytes
    raise UserError(f"the schedule runs {world_size} CPU ranks, each loading the model ({copy_bytes / gib:.2f} GiB of weights "
                    f"on disk): at least {world_size * copy_bytes / gib:.1f} GiB, but {avail / gib:.1f} GiB of memory is available; "
                    + (f"plan for at most {fit} ranks (parastep plan --gpus {fit})" if fit >= 2 else "run on a machine with more memory")
                    + " or run on GPUs (--device cuda)")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return first if isinstance(exc, UserError) else f"{type(exc).__name__}: {first}"


def _rank_main(worker: Callable, job: Any, *, rank: int, world_size: int, local_rank: int, device: str,
               threads: int, timeout_s: float, torchrun: bool, destroy: bool = True) -> None:
    import torch
    import torch.distributed as dist

    if device == "cpu":
        backend, dev = "gloo", torch.device("cpu")
    else:
        torch.cuda.set_device(local_rank)
        backend, dev = "nccl", torch.device("cuda", local_rank)
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
    if not torchrun:
        kwargs.update(rank=rank, world_size=world_size)
    if backend == "nccl":
        kwargs["device_id"] = dev
    dist.init_process_group(**kwargs)
    try:
        with cpu_threads(dev, threads):
            worker(RankContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                               device=dev, backend=backend, torchrun=torchrun), job)
    finally:
        if destroy:
            try:
                dist.destroy_process_group()
            except Exception:  # a failed collective may leave the group unusable; exiting is what matters
                pass


def _child(rank: int, world_size: int, port: int, worker: Callable, job: Any, device: str, threads: int,
           timeout_s: float, errors) -> None:
    try:  # tqdm's default lock is a multiprocessing semaphore that a killed rank would leak
        import threading

        from tqdm import tqdm

        tqdm.set_lock(threading.RLock())
    except ImportError:
        pass
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    try:
        _rank_main(worker, job, rank=rank, world_size=world_size, local_rank=rank, device=device,
                   threads=threads, timeout_s=timeout_s, torchrun=False, destroy=False)
        errors.send((time.time(), rank, None, "done", 0))
        errors.close()
        sys.stdout.flush()
        sys.stderr.flush()
        # skip interpreter teardown: a gloo pair torn down while a peer is still working (rank 0's
        # --reference run) can abort in a C++ destructor; the work is done and its files are closed
        os._exit(0)
    except BaseException as exc:  # report, then exit non-zero; the parent prints one line
        if os.environ.get("PARASTEP_TRACEBACK"):
            traceback.print_exc()
        code = exc.exit_code if isinstance(exc, UserError) else 1
        try:
            errors.send((time.time(), rank, isinstance(exc, UserError), _one_line(exc), code))
            errors.close()
        except OSError:
            pass
        sys.stderr.flush()
        os._exit(code)


def _run_in_process(worker: Callable, job: Any, *, device: str, threads: int, timeout_s: float) -> None:
    """A world of one: no process to spawn; a gloo/nccl group of size 1 on a free loopback port."""
    keys = ("MASTER_ADDR", "MASTER_PORT")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    try:
        _rank_main(worker, job, rank=0, world_size=1, local_rank=0, device=device, threads=threads,
                   timeout_s=timeout_s, torchrun=False)
    except UserError:
        raise
    except Exception as exc:
        if os.environ.get("PARASTEP_TRACEBACK"):
            raise
        raise RankFailed(f"rank 0: {_one_line(exc)}", exit_code=1) from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def launch(worker: Callable[[RankContext, Any], None], job: Any, *, world_size: int, device: DeviceChoice = "auto",
           threads: int = 1, timeout_s: float = 300.0) -> None:
    """Run ``worker(ctx, job)`` on every rank of a ``world_size`` world (see module docstring)."""
    dev = resolve_device(device)
    if in_torchrun():
        launched = check_torchrun_world(world_size)
        _rank_main(worker, job, rank=int(os.environ["RANK"]), world_size=launched,
                   local_rank=int(os.environ["LOCAL_RANK"]), device=dev, threads=threads, timeout_s=timeout_s,
                   torchrun=True)
        return
    if world_size == 1:
        _run_in_process(worker, job, device=dev, threads=threads, timeout_s=timeout_s)
        return
    check_world(world_size, device=dev)
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    port = free_port()
    pipes = [ctx.Pipe(duplex=False) for _ in range(world_size)]     # (read end, write end): one per rank
    procs = [ctx.Process(target=_child, args=(r, world_size, port, worker, job, dev, threads, timeout_s, pipes[r][1]),
                         name=f"parastep-rank{r}") for r in range(world_size)]
    for p in procs:
        p.start()
    for _, w in pipes:
        w.close()
    messages: list[tuple] = []
    open_ends = [r for r, _ in pipes]

    def drain() -> None:
        for conn in list(open_ends):
            try:
                while conn.poll():
                    messages.append(conn.recv())
            except (EOFError, OSError):
                open_ends.remove(conn)

    failed_at: float | None = None
    while True:
        drain()
        finished = {m[1] for m in messages if m[2] is None}       # ranks that reported their work done
        dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in finished]
        if (any(m[2] is not None for m in messages) or dead) and failed_at is None:
            failed_at = time.monotonic()
        alive = [p for p in procs if p.is_alive()]
        if not alive or (failed_at is not None and time.monotonic() - failed_at > _GRACE_S):
            break
        time.sleep(0.02)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()
    drain()
    for r, _ in pipes:
        r.close()
    done = {m[1] for m in messages if m[2] is None}
    messages = [m for m in messages if m[2] is not None]
    if len(done) == world_size and not messages:
        crashed = [r for r, p in enumerate(procs) if p.exitcode != 0]
        if crashed:   # every rank finished its work; a crash after that cannot have touched the output
            print(f"parastep: warning: rank(s) {crashed} exited abnormally after finishing their work", file=sys.stderr)
        return
    if failed_at is None and all(p.exitcode == 0 for p in procs):
        return
    reported = {m[1] for m in messages}
    silent = [r for r, p in enumerate(procs) if p.exitcode not in (0, None) and r not in reported
              and p.exitcode != -15]   # -15: terminated by us after another rank failed
    user = sorted((m for m in messages if m[2]), key=lambda m: m[0])
    if user:
        _, rank, _, text, code = user[0]
        raise RankFailed(f"rank {rank}: {text}", exit_code=code)
    if silent:
        r = silent[0]
        code = procs[r].exitcode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise RankFailed(f"rank {r} {how} without an error message; the run was aborted on all {world_size} ranks", exit_code=1)
    if messages:
        _, rank, _, text, code = sorted(messages, key=lambda m: m[0])[0]
        if "timed out" in text.lower() or "timeout" in text.lower():
            text += f" (every collective waits at most {timeout_s:g} s: raise --timeout if the ranks are only slow)"
        raise RankFailed(f"rank {rank}: {text}", exit_code=code or 1)
    raise RankFailed(f"the run failed on {world_size} ranks without an error message", exit_code=1)
