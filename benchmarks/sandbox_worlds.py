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
    from spreadpref.sandbox.compare import FINAL, value

    rewards = {}
    for path in sorted(directory.glob("seed-*.json")):
        result = json.loads(path.read_text())
        rewards[result["seed"]] = {name: value(result, name, FINAL, "gold_reward") for name in result["variants"]}
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
        reduced_d = [small[s][a] - small[s][b] for s in seeds]
        full_d = [large[s][a] - large[s][b] for s in seeds]
        same = [(x > 0) == (y > 0) for x, y in zip(reduced_d, full_d)]
        cells = [f"{x:+.3f} / {y:+.3f}{'' if ok else ' *'}" for x, y, ok in zip(reduced_d, full_d, same)]
        agree_all += sum(same)
        lines.append(
            f"| {label(a)} | {label(b)} | {' | '.join(cells)} | {statistics.mean(reduced_d):+.3f} / "
            f"{statistics.mean(full_d):+.3f} | {sum(same)} of {len(seeds)} |"
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
