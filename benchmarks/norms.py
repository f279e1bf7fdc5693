"""Benchmark the hand-written norm layers against their PyTorch counterparts.

Times forward + backward (input, weight and bias gradients) in training mode on
a (128, 16, 32, 32) input, eager and under ``torch.compile``, and prints a
markdown table with the ratio ours / torch (lower is better; 1.00 = parity).

CPU: float32, contiguous. CUDA (the training configuration): bf16 input in
channels_last under ``torch.autocast("cuda", dtype=torch.bfloat16)``, fp32
parameters.

Usage::

    python benchmarks/norms.py                  # CPU, plus CUDA where available
    python benchmarks/norms.py --device cuda --repeats 50
    python benchmarks/norms.py --no-compile
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import make_norm  # noqa: E402

SHAPE = (128, 16, 32, 32)

# (ours, reference label, reference factory)
PAIRS: list[tuple[str, str, Callable[[int], nn.Module]]] = [
    ("bn", "nn.BatchNorm2d", lambda c: nn.BatchNorm2d(c)),
    ("in", "nn.InstanceNorm2d(affine=True)", lambda c: nn.InstanceNorm2d(c, affine=True)),
    ("bin", "nn.BatchNorm2d", lambda c: nn.BatchNorm2d(c)),
    ("ln", "nn.GroupNorm(1,C)", lambda c: nn.GroupNorm(1, c)),
    ("gn", "nn.GroupNorm(16,C)", lambda c: nn.GroupNorm(16, c)),
]


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name} ({torch.get_num_threads()} threads)"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class _Case:
    """One module on one input: a callable doing forward + backward."""

    def __init__(self, module: nn.Module, device: str, compiled: bool) -> None:
        self.device = device
        self.module = module.to(device).train()
        if device == "cuda":
            x = torch.randn(SHAPE, device=device, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
            self.autocast: contextlib.AbstractContextManager = torch.autocast("cuda", dtype=torch.bfloat16)
        else:
            x = torch.randn(SHAPE, device=device)
            self.autocast = contextlib.nullcontext()
        self.x = x.requires_grad_(True)
        self.grad = torch.randn_like(x)
        self.fn = torch.compile(self.module) if compiled else self.module

    def step(self) -> None:
        self.x.grad = None
        self.module.zero_grad(set_to_none=True)
        with self.autocast:
            y = self.fn(self.x)
        y.backward(self.grad.to(y.dtype))

    def block_ms(self, repeats: int) -> float:
        """Mean milliseconds per step over ``repeats`` back-to-back steps."""
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            self.step()
        _sync(self.device)
        return (time.perf_counter() - t0) * 1e3 / repeats


def bench_pair(name: str, make_ref: Callable[[int], nn.Module], device: str, compiled: bool,
               repeats: int, block: int, warmup: int) -> tuple[float, float]:
    """Best-block ms per forward+backward for ours and the reference.

    ``repeats`` timed steps each, in blocks of ``block`` steps that alternate
    between ours and the reference; the fastest block is reported, which is
    the estimate least disturbed by other processes on a shared machine.
    """
    torch.manual_seed(0)
    ours = _Case(make_norm(name, SHAPE[1]), device, compiled)
    ref = _Case(make_ref(SHAPE[1]), device, compiled)
    for case in (ours, ref):
        for _ in range(warmup):  # includes compilation when compiled
            case.step()
    ours_ms, ref_ms = [], []
    for _ in range(max(1, repeats // block)):
        ours_ms.append(ours.block_ms(block))
        ref_ms.append(ref.block_ms(block))
    return min(ours_ms), min(ref_ms)


def main(argv: list[str] | None = None) -> None:
    """Parse options, run every (layer, mode, device) case and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all",
                        help="'all' = CPU, plus CUDA where available (default)")
    parser.add_argument("--repeats", type=int, default=60, help="timed steps per layer and side (default 60)")
    parser.add_argument("--block", type=int, default=0,
                        help="steps per timed block, ours and torch alternating (default: 2 on cpu, 10 on cuda)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    modes = ["eager"] if args.no_compile else ["eager", "compile"]

    print("# Norm layers: forward + backward, training mode, ours vs PyTorch\n")
    print(f"- torch {torch.__version__}, Python {platform.python_version()}")
    print(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    for d in devices:
        print(f"- {d}: {_device_name(d)}")
    print(f"- input {SHAPE}; cpu: float32 contiguous; cuda: bf16 channels_last under bf16 autocast")
    print(f"- ms per step: fastest block of {args.block or '2 (cpu) / 10 (cuda)'} steps out of {args.repeats} "
          f"timed steps (ours and torch blocks alternate), after {args.warmup} warm-up steps; ratio = ours / torch\n")
    print("| layer | reference | mode | device | ours ms | torch ms | ratio |")
    print("|---|---|---|---|---:|---:|---:|")
    for device in devices:
        for mode in modes:
            for name, ref_label, make_ref in PAIRS:
                block = args.block or (10 if device == "cuda" else 2)
                ours_ms, ref_ms = bench_pair(name, make_ref, device, mode == "compile",
                                             args.repeats, block, args.warmup)
                print(f"| {name} | {ref_label} | {mode} | {device} | {ours_ms:.3f} | {ref_ms:.3f} | "
                      f"{ours_ms / ref_ms:.2f} |", flush=True)


if __name__ == "__main__":
    main()
