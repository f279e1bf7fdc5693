"""Grid files: read, validate and expand a YAML grid into points with run keys, through the grid's
entry (the code its runs call, ``entry.py``). Pure: no store, no torch, no mlflow. May import only
``orchestrator.errors`` and ``experiments`` (the YAML reader, the built-in entry).
"""
