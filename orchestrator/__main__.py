"""``python -m orchestrator`` is ``orch`` (for machines where the package is on PYTHONPATH only)."""

from orchestrator.cli.main import main

if __name__ == "__main__":
    main()
