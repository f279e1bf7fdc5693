"""Typed run configuration: one frozen dataclass per concern, defaults stated once.

Every field is addressed by a dotted key (``data.batch_size``, ``model.norm``,
``schedule.gamma``, ``seed``) from YAML files, grid axes and ``--set key=value``.
Unknown keys and wrong types raise :class:`ConfigError`, which names the key and
the fix. This module imports neither torch nor mlflow: grid validation and
``orch --help`` go through it and must stay fast.

Defaults follow the seed study's early-stopping recipe: SGD lr 0.1, StepLR step 5
gamma 0.2, at most 50 epochs, patience 5 on validation loss, batch 128, n=2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Any, Mapping, NoReturn

import yaml

from experiments.errors import ConfigError
from experiments.yaml_source import YamlSource, read_yaml
from models._checks import BIN_GATES, INIT_NAMES, NORM_NAMES, norm_constraint_error

DATASET_NAMES = ("digits", "cifar10", "imagefolder")
VAL_SPLITS = ("stratified", "tail")  # how the validation set is carved from the training split
STANDARDIZATIONS = ("channel", "pixel")  # input statistics: one mean/std per channel, or per pixel and channel
PRECISIONS = ("auto", "bf16", "fp32", "tf32")  # auto: bf16 on CUDA, fp32 on the CPU
PROBE_METHODS = ("interpolated", "order")  # feature percentiles: interpolated, or order statistics
# PyYAML (YAML 1.1) reads 1e-3 as a string; numeric fields take it as the number it plainly is.
_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"  # one of DATASET_NAMES
    root: str | None = None  # dataset folder (cifar10, imagefolder); ~ is expanded
    download: bool = False  # cifar10 only: let torchvision fetch the archive
    val_size: float = 0.2  # carved from the training split: a fraction (< 1) or a count (>= 1)
    test_size: float = 0.2  # carved from the training split only when the dataset has no test split
    split_seed: int = 0  # fixed seed of the train/val(/test) carve, independent of `seed`
    batch_size: int = 128  # training batch, images per optimizer step
    eval_batch_size: int = 1024  # evaluation batch; does not change results
    augment: bool = False  # pad-4-and-crop plus horizontal flip on training batches
    val_split: str = "stratified"  # VAL_SPLITS: a class-stratified random carve, or the tail of each class
    standardize: str = "channel"  # STANDARDIZATIONS: the training split's mean/std per channel, or per pixel


@dataclass(frozen=True)
class ModelConfig:
    norm: str = "bn"  # one of NORM_NAMES
    depth_n: int = 2  # blocks per stage: 6n+2 weighted layers
    widths: tuple[int, int, int] = (16, 32, 64)  # channels of the three stages
    gn_groups: int = 16  # GroupNorm groups (norm=gn)
    bin_rho: float = 0.5  # initial Batch-Instance gate (norm=bin)
    bin_gate: str = "channel"  # BIN_GATES: one gate per channel, or one per layer (norm=bin)
    conv_bias: bool = False  # every conv gets a bias
    init: str = "torch_default"  # INIT_NAMES: conv weight initialisation (the study's recipe; see docs)
    stem_padding: int = 1  # stem conv padding: 1 keeps 32x32, 0 gives 30x30 maps


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.1  # SGD learning rate
    momentum: float = 0.0
    weight_decay: float = 0.0  # never applied to Batch-Instance gates
    gate_lr_mult: float = 1.0  # Batch-Instance gates train at lr x this


@dataclass(frozen=True)
class ScheduleConfig:
    step_size: int = 5  # StepLR: epochs between decays
    gamma: float = 0.2  # StepLR: multiplicative decay


@dataclass(frozen=True)
class TrainConfig:
    max_epochs: int = 50
    patience: int = 5  # epochs without a new best validation loss before stopping
    compile: bool = False  # torch.compile the model (pays off on CUDA for long runs)
    precision: str = "auto"  # PRECISIONS: bf16 autocast, float32, or float32 with TF32 matmuls (CUDA)
    probe_method: str = "interpolated"  # PROBE_METHODS: how the feature percentiles are taken
    checkpoint_seconds: float = 60.0  # a checkpoint at the first epoch end after this many seconds; 0: every epoch


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0  # model init, batch order and augmentation


SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig) if f.name != "seed"}
_SECTION_CLASSES = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "train": TrainConfig,
}


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


FIELD_TYPES: dict[str, Any] = {"seed": int}
for _section, _cls in _SECTION_CLASSES.items():
    for _name, _type in _field_types(_cls).items():
        FIELD_TYPES[f"{_section}.{_name}"] = _type

KEYS: tuple[str, ...] = tuple(FIELD_TYPES)


def _type_name(tp: Any) -> str:
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) if a is not type(None) else "null" for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {len(typing.get_args(tp))} integers"
    return str(tp)


def coerce(key: str, value: Any) -> Any:
    """Check ``value`` against the type of dotted ``key`` and return it normalised.

    Raises:
        ConfigError: unknown key or a value of the wrong type.
    """
    if key not in FIELD_TYPES:
        raise ConfigError(f"unknown key; valid keys: {', '.join(KEYS)}", key=key)
    return _coerce(FIELD_TYPES[key], value, key)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    bad = ConfigError(f"expected {_type_name(tp)}, got {value!r}", key=key)
    if tp in (int, float) and isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
        value = float(value)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError:
                pass
        raise bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad
        return tuple(_coerce(a, v, key) for a, v in zip(args, value))
    raise TypeError(f"unsupported config field type {tp!r}")  # a bug here, not user input


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping → dotted keys. Keys that already contain dots are kept as given."""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and key in SECTIONS:
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def build(values: Mapping[str, Any] | None = None, *, source: str | None = None) -> RunConfig:
    """Build a RunConfig from a nested or dotted mapping over the defaults.

    Raises:
        ConfigError: an unknown key or a wrong type (checked for every key).
    """
    flat = flatten(values or {})
    sections: dict[str, dict[str, Any]] = {s: {} for s in _SECTION_CLASSES}
    seed = RunConfig.seed
    for key, value in flat.items():
        try:
            value = coerce(key, value)
        except ConfigError as err:
            raise ConfigError(err.problem, key=key, source=source) from None
        if key == "seed":
            seed = value
        else:
            section, name = key.split(".", 1)
            sections[section][name] = value
    return RunConfig(seed=seed, **{s: cls(**sections[s]) for s, cls in _SECTION_CLASSES.items()})


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=0.05"`` → ``("optim.lr", 0.05)``; the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r} (e.g. --set optim.lr=0.05)")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if key not in FIELD_TYPES:
        raise ConfigError(f"unknown key in --set; valid keys: {', '.join(KEYS)}", key=key)
    return key, value


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping, turning every failure into one ConfigError naming the file
    and, where it has one, the line (a syntax error, a key given twice)."""
    return _read_config_file(path).data


def _read_config_file(path: str | os.PathLike[str]) -> YamlSource:
    doc = read_yaml(path)
    if doc.data is None:
        return dataclasses.replace(doc, data={})
    if not isinstance(doc.data, dict):
        raise ConfigError(f"expected a mapping of keys at the top level, got {type(doc.data).__name__}",
                          source=doc.source)
    return doc


def load(path: str | os.PathLike[str] | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults ← YAML file ← ``--set`` overrides, then :func:`check`.

    An error about a key that the file sets names the file's line for it.
    """
    doc = _read_config_file(path) if path else None
    values = flatten(doc.data) if doc else {}
    source = doc.source if doc else None
    from_set: set[str] = set()
    for item in overrides:
        key, value = parse_override(item)
        values[key] = value
        from_set.add(key)
    try:
        cfg = build(values, source=source)
        check(cfg, source=source)
    except ConfigError as err:
        line = doc.lines.get(err.key) if doc and err.key and err.key not in from_set else None
        if line is None:
            raise
        raise ConfigError(f"{err.problem} (line {line})", key=err.key, source=source) from None
    return cfg


def check(cfg: RunConfig, *, source: str | None = None, check_paths: bool = True) -> None:
    """Range, name and compatibility checks that need no torch.

    Args:
        check_paths: also check that the dataset folder exists; ``False`` skips only
            that filesystem check (a dry run on a machine without the data).

    Raises:
        ConfigError: the first problem found, naming the key and the fix.
    """

    def fail(key: str, msg: str) -> NoReturn:
        raise ConfigError(msg, key=key, source=source)

    _check_names(cfg, fail)
    _check_ranges(cfg, fail)
    problem = norm_constraint_error(cfg.model.norm, cfg.model.widths, groups=cfg.model.gn_groups)
    if problem:
        fail("model.gn_groups" if cfg.model.norm == "gn" else "model.norm", problem)
    _check_data_root(cfg.data, fail, check_paths)


def _check_names(cfg: RunConfig, fail: Callable[[str, str], NoReturn]) -> None:
    d, m, t = cfg.data, cfg.model, cfg.train
    for key, value, names, what in (
        ("data.name", d.name, DATASET_NAMES, "dataset"),
        ("data.val_split", d.val_split, VAL_SPLITS, "validation split"),
        ("data.standardize", d.standardize, STANDARDIZATIONS, "standardization"),
        ("model.norm", m.norm, NORM_NAMES, "norm"),
        ("model.bin_gate", m.bin_gate, BIN_GATES, "gate granularity"),
        ("model.init", m.init, INIT_NAMES, "init"),
        ("train.precision", t.precision, PRECISIONS, "precision"),
        ("train.probe_method", t.probe_method, PROBE_METHODS, "probe method"),
    ):
        if value not in names:
            fail(key, f"unknown {what} {value!r}; choose one of {', '.join(names)}")


def _check_ranges(cfg: RunConfig, fail: Callable[[str, str], NoReturn]) -> None:
    d, m, o, s, t = cfg.data, cfg.model, cfg.optim, cfg.schedule, cfg.train
    positive = {
        "data.batch_size": d.batch_size, "data.eval_batch_size": d.eval_batch_size, "data.val_size": d.val_size,
        "data.test_size": d.test_size, "model.depth_n": m.depth_n, "model.gn_groups": m.gn_groups,
        "optim.lr": o.lr, "optim.gate_lr_mult": o.gate_lr_mult, "schedule.step_size": s.step_size,
        "schedule.gamma": s.gamma, "train.max_epochs": t.max_epochs, "train.patience": t.patience,
    }
    for key, value in positive.items():
        if not value > 0:
            fail(key, f"must be greater than 0, got {value}")
    if any(w <= 0 for w in m.widths):
        fail("model.widths", f"every width must be greater than 0, got {list(m.widths)}")
    if m.stem_padding not in (0, 1):
        fail("model.stem_padding", f"the stem conv is 3x3: padding 1 keeps the size, 0 shrinks it by 2; got {m.stem_padding}")
    non_negative = {"optim.momentum": o.momentum, "optim.weight_decay": o.weight_decay,
                    "train.checkpoint_seconds": t.checkpoint_seconds}
    for key, value in non_negative.items():
        if not value >= 0:
            fail(key, f"must be 0 or more, got {value}")
    if o.momentum >= 1:
        fail("optim.momentum", f"must be below 1, got {o.momentum}")
    if not 0 <= m.bin_rho <= 1:
        fail("model.bin_rho", f"the Batch-Instance gate lies in [0, 1], got {m.bin_rho}")
    if s.gamma > 1:
        fail("schedule.gamma", f"a decay factor above 1 grows the learning rate; use a value in (0, 1], got {s.gamma}")
    for key, size in (("data.val_size", d.val_size), ("data.test_size", d.test_size)):
        if size >= 1 and not float(size).is_integer():
            fail(key, f"a value of 1 or more is a count of examples and must be whole, got {size}")


def _check_data_root(d: DataConfig, fail: Callable[[str, str], NoReturn], check_paths: bool) -> None:
    if d.name not in ("cifar10", "imagefolder"):
        return
    if not d.root:
        fail("data.root", f"dataset {d.name!r} needs data.root, the folder that holds it")
    root = Path(d.root).expanduser()
    if check_paths and d.name == "imagefolder" and not (root / "train").is_dir():
        fail(
            "data.root",
            f"{root} has no train/ folder; point data.root at a tree with train/<class>/*.jpg "
            "(e.g. extract cifar10-jpeg.tar.xz and use its cifar10/ folder)",
        )
    if check_paths and d.name == "cifar10" and not d.download and not (root / "cifar-10-batches-py").is_dir():
        fail(
            "data.root",
            f"no CIFAR-10 at {root} (expected {root / 'cifar-10-batches-py'}); "
            "set data.download=true to fetch it, or use data.name=imagefolder on an extracted JPEG tree",
        )


def check_device(cfg: RunConfig, device_type: str) -> None:
    """Settings a device cannot run: bf16 and tf32 need CUDA (the CPU trains in float32).

    Raises:
        ConfigError: naming the key and the fix.
    """
    if device_type != "cuda" and cfg.train.precision in ("bf16", "tf32"):
        raise ConfigError(f"{cfg.train.precision} needs a CUDA GPU; on the CPU training runs in float32: "
                          "use train.precision=fp32 or auto", key="train.precision")


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Nested plain-Python form (tuples as lists), as written to config.yaml."""

    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    out: dict[str, Any] = {}
    for section in _SECTION_CLASSES:
        # Fields hold plain values, so no deep copy (dataclasses.asdict) is needed: it made
        # this 5x slower, which a 10,000-point grid felt (run keys are built from this).
        sec = getattr(cfg, section)
        out[section] = {f.name: plain(getattr(sec, f.name)) for f in dataclasses.fields(sec)}
    out["seed"] = cfg.seed
    return out


def to_flat(cfg: RunConfig) -> dict[str, Any]:
    """Dotted keys → values: the MLflow params of a run."""
    return flatten(to_dict(cfg))


# Keys that change how a run is carried out but not what it computes: they are left out of
# the run key, so that changing them neither reruns finished points nor refuses a checkpoint.
EXECUTION_KEYS = ("train.checkpoint_seconds",)

# Keys added after run keys were first written, with the value that computes what the code
# did before the key existed: at that value the key is left out of the run key (and of a
# checkpoint's config), so adding a knob neither reruns finished points nor refuses their
# checkpoints. A key added later goes here with its default.
OMITTED_AT_DEFAULT: dict[str, Any] = {"data.standardize": "channel"}


def result_dict(cfg: RunConfig) -> dict[str, Any]:
    """:func:`to_dict` without the :data:`EXECUTION_KEYS`, nor the :data:`OMITTED_AT_DEFAULT`
    keys at their default: what decides a run's results."""
    out = to_dict(cfg)
    for key in EXECUTION_KEYS:
        section, name = key.split(".", 1)
        del out[section][name]
    for key, default in OMITTED_AT_DEFAULT.items():
        section, name = key.split(".", 1)
        if out[section][name] == default:
            del out[section][name]
    return out


def run_key(cfg: RunConfig) -> str:
    """Deterministic id of a resolved config: the same settings give the same key,
    whatever the YAML formatting or key order that produced them."""
    canonical = json.dumps(result_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
