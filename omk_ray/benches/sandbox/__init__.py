"""Run untrusted code (model completions) confined: see `pool.py` for what is isolated and how.

    sandbox = Sandbox(Limits(wall_s=10), workers=2)
    outcome = sandbox.run(Program(program=solution, test_code=tests))   # Outcome(status="pass", ...)
    outcomes = sandbox.run_many(programs)                     # `workers` at a time, in order
"""

from omk_ray.benches.sandbox.pool import Sandbox
from omk_ray.benches.sandbox.programs import Limits, Outcome, Program, Status

__all__ = ["Limits", "Outcome", "Program", "Sandbox", "Status"]
