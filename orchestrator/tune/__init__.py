"""Optuna tuning of a grid's search space: the study, its trials as tracked runs, the summary.

May import ``execute``, ``analyze``, ``store`` and ``grid``; sits beside ``launch``.
"""
