"""The ``orch`` command: one thin module per command group (parse, call, map errors to exit codes).

May import every other sub-package; nothing imports it.
"""
