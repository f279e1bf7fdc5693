"""Results: run records -> statistics (intervals, paired tests, separation) -> tables, notes and figures.

May import ``store`` only (and ``experiments.metric_names``); the statistics themselves are pure.
"""
