"""The built-in study as the orchestrator's entry: what a grid needs to know about its config.

The orchestrator runs a sweep's code through one seam, the entry
(:class:`orchestrator.grid.entry.Entry`): a grid may name one with ``entry:``; without one,
:data:`STUDY` is the entry. Through it the grid learns the study's config keys and their
types, builds and checks a resolved config, blames the key a failed check comes from,
computes run keys, names runs, and picks ``orch tune``'s default search space and the
per-epoch value its pruner watches, so that no key or metric of the study is spelled in the
orchestrator. Nothing here imports torch.

Run keys are :func:`experiments.config.run_key` of the resolved config and run names follow
:data:`NAME_PREFIXES`: stored sweeps are found again by both, so neither may change.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from experiments import config, metric_names

__all__ = ["DEFAULT_SPACE", "HEADLINE_KEYS", "NAME_PREFIXES", "RELATED_KEYS", "STUDY", "Study", "report_metric"]

# check() reports a cross-field problem under one key (GroupNorm's groups must divide every
# width, a dataset folder belongs to its dataset); when that key keeps its default, the grid
# blames the first of these keys that an axis, include entry or --set varies.
RELATED_KEYS: dict[str, tuple[str, ...]] = {
    "model.gn_groups": ("model.norm", "model.widths"),
    "model.norm": ("model.widths", "model.gn_groups", "model.bin_rho"),
    "data.root": ("data.name", "data.download"),
}

# Run-name parts: "gn-bs8-step5-n3-s0". "" shows the value alone; any other key shows its
# last dotted part before the value ("lr0.05", "gamma0.2").
NAME_PREFIXES: dict[str, str] = {
    "model.norm": "",
    "data.name": "",
    "data.batch_size": "bs",
    "schedule.step_size": "step",
    "model.depth_n": "n",
}

# The keys that tell the study's runs apart at a glance: a lone run's name (``orch run``:
# "gn-bs128-s0") and the x axis of a report's score figure when swept.
HEADLINE_KEYS = ("model.norm", "data.batch_size")

# orch tune's search space when a grid names none: the StepLR schedule, epochs between decays
# and the decay factor (the step size's range ends below the runs' max_epochs, see default_space).
STEP_SIZE = "schedule.step_size"
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    STEP_SIZE: {"type": "int", "low": 2, "high": 30},
    "schedule.gamma": {"type": "float", "low": 0.05, "high": 0.9, "log": True},
}


def default_space(settings: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """:data:`DEFAULT_SPACE` for a grid whose settings have these params (dotted key → value).

    StepLR decays after every ``step_size`` epochs, so a step size of ``max_epochs`` or more
    never acts, and every trial drawing one trains the same run. The range ends at the
    shortest setting's ``max_epochs - 1`` (at most 30); a run of 1 or 2 epochs keeps the range
    1..2, the narrowest an int range can be.
    """
    space = dict(DEFAULT_SPACE)
    if STEP_SIZE in space and settings:
        max_epochs = min(int(s["train.max_epochs"]) for s in settings)
        high = min(space[STEP_SIZE]["high"], max(2, max_epochs - 1))
        space[STEP_SIZE] = {**space[STEP_SIZE], "low": min(space[STEP_SIZE]["low"], high - 1), "high": high}
    return space


def report_metric(metric: str, direction: str) -> str:
    """The per-epoch value (as logged: ``epoch/<name>``) that ``orch tune``'s pruner sees when a
    study optimises summary ``metric``.

    The metric itself when training reports it every epoch (``val_f1_macro``, ``val_acc``…);
    else its validation counterpart (``test_acc`` → ``val_acc``); else, for a metric with
    none (``train_seconds``), ``val_f1_macro`` when maximising and ``val_loss`` when
    minimising, so that the reported value moves in the study's direction.
    """
    if metric in metric_names.EPOCH_SCORES:
        name = metric
    else:
        split, _, rest = metric.partition("_")
        if split in ("train", "test") and f"val_{rest}" in metric_names.EPOCH_SCORES:
            name = f"val_{rest}"
        else:
            name = metric_names.DEFAULT_OBJECTIVE if direction == "maximize" else metric_names.VAL_LOSS
    return metric_names.epoch_key(name)


class Study:
    """The ResNet normalization study (:mod:`experiments.train`) as an entry."""

    name = "experiments.study:STUDY"
    spec: dict[str, Any] = {}
    folder = None
    progress_keys = (metric_names.epoch_key(metric_names.DEFAULT_OBJECTIVE), metric_names.epoch_key(metric_names.VAL_LOSS),
                     metric_names.DEFAULT_OBJECTIVE, "test_acc")

    fields = config.FIELD_TYPES
    related_keys = RELATED_KEYS
    name_prefixes = NAME_PREFIXES
    headline_keys = HEADLINE_KEYS
    summary_metrics = metric_names.SUMMARY_METRICS
    default_metric = metric_names.DEFAULT_OBJECTIVE

    @staticmethod
    def coerce(key: str, value: Any) -> Any:
        return config.coerce(key, value)

    @staticmethod
    def build(values: Mapping[str, Any]) -> config.RunConfig:
        return config.build(values)

    @staticmethod
    def check(cfg: config.RunConfig, check_paths: bool) -> None:
        config.check(cfg, check_paths=check_paths)

    @staticmethod
    def check_device(cfg: config.RunConfig, device_type: str) -> None:
        config.check_device(cfg, device_type)

    @staticmethod
    def params(cfg: config.RunConfig) -> dict[str, Any]:
        return config.to_flat(cfg)

    @staticmethod
    def seeded(cfg: config.RunConfig, seed: int) -> config.RunConfig:
        return dataclasses.replace(cfg, seed=seed)

    @staticmethod
    def run_key(cfg: config.RunConfig) -> str:
        return config.run_key(cfg)

    @staticmethod
    def user_config(cfg: config.RunConfig) -> config.RunConfig:
        return cfg

    @staticmethod
    def checkpoint_seconds(cfg: config.RunConfig) -> float:
        return cfg.train.checkpoint_seconds

    @staticmethod
    def train(cfg: config.RunConfig, run: Any) -> dict[str, float] | None:
        from experiments.study_run import train_run

        return train_run(cfg, run)

    @staticmethod
    def default_space(settings: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        return default_space(settings)

    @staticmethod
    def report_metric(metric: str, direction: str) -> str:
        return report_metric(metric, direction)

    @staticmethod
    def max_steps(cfg: config.RunConfig) -> int:
        return cfg.train.max_epochs  # one logged step per epoch

    @staticmethod
    def load_config(path: str | None, overrides: Sequence[str]) -> config.RunConfig:
        return config.load(path, tuple(overrides))


STUDY = Study()
