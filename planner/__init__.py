"""profile -> optimal schedule (docs/design.md §3).

- ``problem``: the constrained shortest path as integer data (candidate windows, scales, pruning)
- ``branch``:  exact Lagrangian branch and bound for per-image statements (the default there)
- ``cpsat``:   CP-SAT model (build / solve / decode), ``bounds``: exact Lagrangian edge elimination
- ``oracle``:  independent exact DP over the same data (one budget: priors; tests)
- ``fixed``:   the paper's hand plan
- ``plan``:    ``plan_schedule`` -> checked ``schedules.Schedule``; ``request``: ``parastep plan``'s checked arguments -> a plan

Importing this package does not import ortools; the DP never loads it, the branch and bound loads
only its LP solver (GLOP) and CP-SAT loads CP-SAT.
"""

from .plan import PlanResult, plan_schedule, verify_schedule

__all__ = ["PlanResult", "plan_schedule", "verify_schedule"]
