"""profile -> optimal schedule (DESIGN §3).

- ``problem``: the constrained shortest path as integer data (candidate windows, scales, pruning)
- ``cpsat``:   CP-SAT model (build / solve / decode), ``bounds``: exact Lagrangian edge elimination
- ``oracle``:  independent exact DP over the same data (tests, ``--solver dp``)
- ``fixed``:   the paper's hand plan
- ``plan``:    ``plan_schedule`` -> checked ``schedules.Schedule``; ``command``: ``parastep plan``

Importing this package does not import ortools (``plan_schedule`` loads it when it solves).
"""

from .plan import PlanResult, plan_schedule, verify_schedule

__all__ = ["PlanResult", "plan_schedule", "verify_schedule"]
