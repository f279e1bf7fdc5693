"""What a sweep's own training code uses: the run object, and :func:`current` to find it.

A function entry (``entry: mytrain:main`` in a grid) is called as ``main(config, run)``; a command
entry's script, or any code under either, calls :func:`current`::

    from orchestrator.client import current

    run = current()                      # a stand-in that records nothing when run without orch
    state = run.load_checkpoint()        # None on a fresh start; the state saved last otherwise
    for epoch in range(state["epoch"] if state else 0, run.config["epochs"]):
        ...
        run.log({"val_acc": acc}, step=epoch + 1)
        run.save_checkpoint({"epoch": epoch + 1, ...})
        if run.should_stop():            # preemption, Ctrl-C, or the pruner under `orch tune`
            break

This module is the API orch keeps stable; see docs/how-to/own-code.md.
"""

from orchestrator.execute.run import Run, current

__all__ = ["Run", "current"]
