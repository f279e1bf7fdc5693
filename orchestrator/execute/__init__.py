"""Running points: the job a point is, the runner that trains it under a tracked run, slots and the
scheduler, and the stop module that turns signals into a stop (the one place that handles them).

May import ``store``, ``grid`` and ``orchestrator.errors``.
"""
