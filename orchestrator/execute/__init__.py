"""Running points: the job a point is, the runner that trains it under a tracked run, slots and the scheduler.

May import ``store``, ``grid`` and ``orchestrator.errors``.
"""
