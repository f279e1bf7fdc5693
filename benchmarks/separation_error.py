"""False-separation rate and power of ``orch sweep --until-separated``: the old overlap rule and the new one.

Monte-Carlo of the rounds as the sweep runs them: every setting starts with the grid's 3
seeds; at each look the rule decides which rivals are separated from the leader; the
leader and the rivals not separated get 2 more seeds (at most 10 each); the study ends
when every rival is separated or those left are at 10. Per-seed values are independent
normal with σ = 1 (paired by seed: seed s of every setting is column s).

* NEW: :func:`orchestrator.analyze.separation.separate`, the function the sweep calls (one-sided
  paired t-tests of every ordered pair on common seeds, Holm over the K·(K−1) pairs at
  alpha / L per look, L = 5 for 3, 5, 7, 9, 10 seeds).
* OLD: the rule before it (kept here as :func:`old_overlap`): a rival is separated when its
  unpaired 95% t-interval does not overlap the leader's; uncorrected.

Rows: K settings all equal (gap 0), or K − 1 equal settings and one ``gap`` σ behind them.
``false sep.``: studies that end declaring some setting separated from a leader that is
not truly better than it (with all equal: any separation). ``power``: studies that end
with the setting behind separated from the leader. ``seeds``: mean seeds per setting.

    python benchmarks/separation_error.py                      # 10,000 studies per row
    python benchmarks/separation_error.py --studies 40000 --out benchmarks/results/separation_error_cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import cpu_model, finish  # noqa: E402
from orchestrator.analyze.separation import ALPHA, Separation, separate  # noqa: E402

SETTINGS = (2, 3, 7, 14)  # K: 2 settings, 3, seed_norms' 7, norms × batch sizes' 14
GAPS = (0.0, 1.0, 2.0, 3.0)  # σ between the setting behind and the others
FIRST, PER_ROUND, MAX_SEEDS = 3, 2, 10  # the grid's seeds, --seeds-per-round, --max-seeds
CHUNK = 2000  # studies simulated at once (K = 14: 2000 × 14 × 14 × 10 doubles, 31 MB)


def old_overlap(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rule before the error-controlled one: (leader, separated) for (..., K, n) values.

    A rival is separated when its 95% t-interval does not overlap the leader's; fewer than
    two values count as overlapping (no interval).
    """
    from scipy import stats

    n = (~np.isnan(values)).sum(-1)
    mean = np.nansum(values, -1) / np.maximum(n, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(np.nansum((values - mean[..., None]) ** 2, -1) / (n - 1))
        half = stats.t.ppf(0.975, np.maximum(n - 1, 1)) * std / np.sqrt(n)
    half = np.where(n >= 2, half, np.nan)
    leader = np.argmax(np.where(n > 0, mean, -np.inf), -1)
    low, high = mean - half, mean + half
    lead_low = np.take_along_axis(low, leader[..., None], -1)
    lead_high = np.take_along_axis(high, leader[..., None], -1)
    overlaps = np.isnan(half) | np.isnan(lead_low) | ((low <= lead_high) & (high >= lead_low))
    separated = ~overlaps
    np.put_along_axis(separated, leader[..., None], False, -1)
    return leader, separated


def new_rule(alpha: float):
    sep = Separation("sim", "max", MAX_SEEDS, PER_ROUND, alpha, grid_seeds=FIRST)

    def decide(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = separate(values, alpha=sep.alpha, looks=sep.looks, direction=sep.direction)
        return d.leader, d.separated

    return decide


def simulate(decide, k: int, gap: float, studies: int, seed: int) -> dict[str, float]:
    """Run ``studies`` sweeps of K settings under ``decide``; rates of false separation and power."""
    rng = np.random.default_rng(seed)
    true = np.zeros(k)
    true[-1] = -gap
    false = power = seeds = 0
    for start in range(0, studies, CHUNK):
        s = min(CHUNK, studies - start)
        draws = rng.standard_normal((s, k, MAX_SEEDS)) + true[:, None]
        counts = np.full((s, k), FIRST)
        leader = np.zeros(s, dtype=int)
        separated = np.zeros((s, k), dtype=bool)
        going = np.arange(s)
        while going.size:
            have = np.arange(MAX_SEEDS) < counts[going][..., None]
            lead, sep = decide(np.where(have, draws[going], np.nan))
            leader[going], separated[going] = lead, sep
            rivals_left = (~sep).sum(-1) > 1  # the leader is never separated from itself
            adds = np.where(~sep & rivals_left[:, None], np.minimum(PER_ROUND, MAX_SEEDS - counts[going]), 0)
            counts[going] += adds
            going = going[adds.sum(-1) > 0]
        not_better = true[None, :] >= true[leader][:, None]  # j at least as good as the leader
        false += int((separated & not_better).any(-1).sum())
        power += int(separated[:, -1].sum()) if gap else 0
        seeds += int(counts.sum())
    return {"false": false / studies, "power": power / studies if gap else float("nan"),
            "seeds": seeds / (studies * k)}


def table(studies: int, seed: int, alpha: float) -> list[str]:
    rules = {"old": old_overlap, "new": new_rule(alpha)}
    out = ["| K | gap (σ) | false sep. old | false sep. new | power old | power new | seeds old | seeds new |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k in SETTINGS:
        for g, gap in enumerate(GAPS):
            r = {name: simulate(rule, k, gap, studies, seed + 100 * k + g) for name, rule in rules.items()}

            def pct(x: float) -> str:
                return "–" if x != x else f"{100 * x:.2f}%"

            out.append(f"| {k} | {gap:g} | {pct(r['old']['false'])} | {pct(r['new']['false'])} | "
                       f"{pct(r['old']['power'])} | {pct(r['new']['power'])} | {r['old']['seeds']:.2f} | "
                       f"{r['new']['seeds']:.2f} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=10_000, help="simulated sweeps per row and rule (10,000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--alpha", type=float, default=ALPHA, help=f"--separation-alpha ({ALPHA})")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here (markdown)")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = table(args.studies, args.seed, args.alpha)
    header = ["# --until-separated: false-separation rate and power, old overlap rule vs new rule", "",
              f"- command: `{' '.join(['python', 'benchmarks/separation_error.py', *sys.argv[1:]])}`",
              f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
              f"- cpu: {cpu_model()}; python {platform.python_version()}, numpy {np.__version__}, "
              f"scipy {scipy.__version__}",
              f"- {args.studies} studies per row and rule (seed {args.seed}); 3 seeds, +2 per round, at most 10; "
              f"σ = 1; new rule at alpha = {args.alpha:g} (guarantee: false sep. ≤ {args.alpha:g} in every row)",
              "- rows: K settings all equal (gap 0), or K − 1 equal and one `gap` σ behind them; false sep.: studies "
              "that end declaring a setting separated from a leader not truly better than it; power: studies that "
              "end with the setting behind separated; seeds: mean seeds per setting. OLD: non-overlapping unpaired "
              "95% intervals, uncorrected; NEW: orchestrator.analyze.separation.separate (Holm over all ordered pairs of "
              "one-sided paired t-tests, alpha/L per look, L = 5)",
              f"- took {time.perf_counter() - started:.0f} s on a machine shared with other work", ""]
    finish(header, "\n".join(rows), args.out)


if __name__ == "__main__":
    main()
