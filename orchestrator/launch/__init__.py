"""Launchers: local slots, the PostgreSQL queue and Slurm, each handed the points that are missing.

May import ``execute``, ``analyze``, ``store`` and ``grid``.
"""
