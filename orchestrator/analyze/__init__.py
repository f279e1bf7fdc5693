"""Results: run records -> statistics (intervals, paired tests, separation) -> tables, summaries and figures.

May import ``store`` and ``grid``; the statistics themselves are pure.
"""
