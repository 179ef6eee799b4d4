"""``parastep exec sched.yaml``: run a schedule on ``world_size`` processes (docs/design.md §4, §8).

The arguments are checked before any process starts: the schedule (``schedules.check``), the
``--out`` folder (``outputs.check_out_dir``), the model folder against the profiled one
(``pipeline.check_model``), the conditioning and size flags against the pipeline's signature and
the schedule (``inputs.settled_inputs``) and the world against this machine (``launch``). Then
every rank runs ``execute.rank_worker``, which says what the report holds and how it is timed.
"""

from __future__ import annotations

from ..errors import UserError
from ..outputs import check_out_dir
from ..schedules.check import violations
from ..schedules.io import load_schedule
from .execute import ExecJob, rank_worker
from .inputs import settled_inputs
from .launch import check_torchrun_world, check_world, in_torchrun, launch, resolve_device
from .pipeline import check_model


def run(args) -> int:
    schedule = load_schedule(args.schedule)
    problems = violations(schedule)
    if problems:
        raise UserError(f"{args.schedule}: invalid schedule: {problems[0]}; run 'parastep validate {args.schedule}'")
    check_out_dir(str(args.out))
    if in_torchrun():
        check_torchrun_world(schedule.world_size)
    loc = check_model(schedule, args.model_path)   # unknown, missing or another model: one line before any process starts
    inputs, unknown = settled_inputs(schedule, args, loc)
    job = ExecJob(schedule=schedule, schedule_path=str(args.schedule), inputs=inputs, seed=args.seed,
                  out_dir=str(args.out), reference=bool(args.reference), model_path=args.model_path, threads=args.threads,
                  repeats=getattr(args, "repeats", 1), check_after_load=unknown)
    if not in_torchrun():
        from .registry import weights_bytes

        check_world(schedule.world_size, device=resolve_device(args.device),
                    copy_bytes=weights_bytes(loc.folder) if loc.folder is not None else None)
    launch(rank_worker, job, world_size=schedule.world_size, device=args.device, threads=args.threads,
           timeout_s=args.timeout_s)
    return 0
