"""Grid files: read, validate and expand a YAML grid into points with run keys. Pure: no store, no torch.

May import only ``orchestrator.errors``.
"""
