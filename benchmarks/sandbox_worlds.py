"""The reduced sandbox world against the full one, seed by seed (issue 41): does a seed's paired difference keep
its sign when the world shrinks? Reads the per-seed files of two `spreadpref sandbox` directories run on the
same seeds and settings, and prints (or writes) the table.

    spreadpref sandbox --seeds 4 --reduced -o runs/reduced
    spreadpref sandbox --seeds 4 -o runs/full
    python benchmarks/sandbox_worlds.py runs/reduced runs/full --out docs/results/sandbox-worlds/comparison.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def final_rewards(directory: Path) -> dict[int, dict[str, float]]:
    """Each seed's final gold reward per variant."""
    rewards = {}
    for path in sorted(directory.glob("seed-*.json")):
        result = json.loads(path.read_text())
        rewards[result["seed"]] = {name: rows[-1]["gold_reward"] for name, rows in result["variants"].items()}
    return rewards


def comparison(reduced: Path, full: Path) -> str:
    from spreadpref.sandbox import COMPARISONS
    from spreadpref.sandbox.compare import label

    small, large = final_rewards(reduced), final_rewards(full)
    seeds = sorted(set(small) & set(large))
    lines = [
        f"Final gold reward, a − b, reduced / full world, seeds {', '.join(map(str, seeds))} (* the signs differ):",
        "",
        "| a | b | " + " | ".join(f"seed {s}" for s in seeds) + " | mean, reduced / full | signs agree |",
        "|---|---|" + "---|" * len(seeds) + "---|---|",
    ]
    agree_all = 0
    for a, b in COMPARISONS:
        cells, agree = [], 0
        for s in seeds:
            x, y = small[s][a] - small[s][b], large[s][a] - large[s][b]
            same = (x > 0) == (y > 0)
            agree += same
            cells.append(f"{x:+.3f} / {y:+.3f}{'' if same else ' *'}")
        mean_small = statistics.mean(small[s][a] - small[s][b] for s in seeds)
        mean_large = statistics.mean(large[s][a] - large[s][b] for s in seeds)
        agree_all += agree
        lines.append(
            f"| {label(a)} | {label(b)} | {' | '.join(cells)} | {mean_small:+.3f} / {mean_large:+.3f} | "
            f"{agree} of {len(seeds)} |"
        )
    lines += ["", f"Per-seed signs agree in {agree_all} of {len(seeds) * len(COMPARISONS)}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reduced", type=Path)
    parser.add_argument("full", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    text = comparison(args.reduced, args.full)
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
