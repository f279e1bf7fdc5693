"""orch: sweep orchestration with experiment tracking for deep-learning ablations."""

__version__ = "0.1.0"
