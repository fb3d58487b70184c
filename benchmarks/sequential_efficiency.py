"""Sequential certification against the fixed-n CERTIFY: grid accuracy, samples per image and wall time, one run.

Run: python benchmarks/sequential_efficiency.py --out DIR --images 120 [--chunk 10] [--radii cifar10]
         [--json RESULT.json] -- CERTIFY OPTIONS
e.g. python benchmarks/sequential_efficiency.py --out seq-cohen-0.25 --images 120 -- --dataset demo --skip 3 \\
         --method cohen --sigma 0.25 --n0 100 --n 100000 --batch 10000

Both runs are ``diffsmooth-fast certify`` with the options after ``--`` (same seed, alpha and budget --n), the
sequential one with ``--sequential --radii R`` added: estimation sample j is the same noise in both. They write
DIR/fixed.tsv and DIR/sequential.tsv in turns, ``--chunk`` images at a time (``--max`` raised, ``--resume``), in
ABBA order, so a change of load on a shared machine falls on both alike; a stopped comparison continues where it
was. Wall times are the sums of the files' ``time`` columns (per image, model loading left out). Prints one JSON
object (and writes it to ``--json``): certified accuracy of both at every grid radius and the images the
sequential run loses or gains there, mean and median estimation samples per image, wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from scipy.stats import norm

from diffsmooth_fast.run import analyze, resume, tsv
from diffsmooth_fast.smoothing import sequential, stats


def certify(options: list[str], path: str, images: int, sequential: list[str]) -> list[str]:
    """The certify command that brings ``path`` to ``images`` rows (continuing it when it exists)."""
    resume = ["--resume"] if os.path.exists(path) else []
    return [sys.executable, "-m", "diffsmooth_fast", "certify", *options, *sequential, "--max", str(images),
            "--out", path, "--quiet", *resume]


def rows_of(path: str) -> list[tsv.CertifyRow]:
    return analyze.counted_rows(path, warn=lambda text: print(f"warning: {text}", file=sys.stderr))[1]


def votes_of(radius: float, n: int, alpha: float, sigma: float) -> int:
    """The most votes of n whose CERTIFY radius the TSV writes as ``radius`` (3 significant digits): the file
    keeps radii, not counts. The most, so that the floor below is not overstated."""
    def written(votes: int) -> float:
        lower = stats.clopper_pearson_lower(votes, n, alpha)
        return float(f"{stats.radius(sigma, lower):.3}") if lower >= 0.5 else -1.0  # -1: not certified

    low, high = n // 2, n  # written() is non-decreasing; a certified row has more than n / 2 votes
    while low < high:
        mid = (low + high + 1) // 2
        if written(mid) <= radius:
            low = mid
        else:
            high = mid - 1
    return low


def floor_of(rows: list[tsv.CertifyRow], radii: tuple[float, ...], n: int, alpha: float, sigma: float) -> list[float]:
    """Per image, Wald's floor (sequential.certify_floor) on the samples that any sequential test needs to certify
    the grid radius the fixed run certified, as often as the fixed run does; 0 where it abstained."""
    floors = []
    for row in rows:
        grid = [r for r in radii if row.predict >= 0 and r <= row.radius]
        if not grid:
            floors.append(0.0)
            continue
        threshold = float(norm.cdf(grid[-1] / sigma))  # 1/2 at radius 0: p_A > 1/2 certifies the prediction
        floors.append(sequential.certify_floor(votes_of(row.radius, n, alpha, sigma), n, alpha, threshold))
    return floors


def compare(fixed_path: str, sequential_path: str, radii: tuple[float, ...], n: int) -> dict[str, object]:
    """The comparison of two finished files (budget n) over the images both hold."""
    fixed = {r.idx: r for r in rows_of(fixed_path)}
    seq = {r.idx: r for r in rows_of(sequential_path)}
    both = sorted(fixed.keys() & seq.keys())

    # certified and correct at each grid radius: [image, (fixed, sequential), radius]
    reached = np.array([[[bool(row.correct) and row.radius >= r for r in radii] for row in (fixed[i], seq[i])]
                        for i in both])
    fewer, more = reached[:, 0] & ~reached[:, 1], reached[:, 1] & ~reached[:, 0]
    samples = np.array([seq[i].samples for i in both], dtype=float)
    time_fixed, time_seq = sum(fixed[i].time for i in both), sum(seq[i].time for i in both)
    settings = resume.read_sidecar(fixed_path).get("settings", {})
    floor = np.array(floor_of([fixed[i] for i in both], radii, n, settings["alpha"], settings["sigma"]))

    def acr(rows: dict[int, tsv.CertifyRow]) -> float:
        return stats.average_certified_radius([rows[i].radius for i in both], [rows[i].correct for i in both])

    return {
        "images": len(both),
        "idx": both,
        "certified_accuracy": {
            "radii": list(radii),
            "fixed": reached[:, 0].mean(axis=0).round(4).tolist(),
            "sequential": reached[:, 1].mean(axis=0).round(4).tolist(),
            "images_fewer_in_sequential": fewer.sum(axis=0).tolist(),
            "images_more_in_sequential": more.sum(axis=0).tolist(),
        },
        "images_with_a_grid_radius_lost": int(fewer.any(axis=1).sum()),
        "acr": {"fixed": acr(fixed), "sequential": acr(seq)},
        "samples_per_image": {
            "fixed": n,
            "sequential_mean": float(samples.mean()),
            "sequential_median": float(np.median(samples)),
            "reduction_mean": round(n / float(samples.mean()), 2),
            "reduction_median": round(n / float(np.median(samples)), 2),
            "runs_using_all_n": int((samples == n).sum()),
            "sequential_each": samples.astype(int).tolist(),
        },
        "floor": {
            "what": "Wald's bound, per image, on the mean samples any valid sequential test needs to certify the "
                    "fixed run's grid radius as often as the fixed run (counts recovered from its radii): no "
                    "procedure that keeps the fixed run's accuracy averages fewer samples than this",
            "mean": round(float(floor.mean()), 1),
            "reduction_mean": round(n / float(floor.mean()), 2) if floor.mean() else None,
        },
        "wall_seconds_sum_of_time_column": {"fixed": round(time_fixed, 2), "sequential": round(time_seq, 2),
                                            "ratio": round(time_fixed / time_seq, 2) if time_seq else None},
        "same_prediction": sum(fixed[i].predict == seq[i].predict for i in both),
    }


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for fixed.tsv and sequential.tsv")
    parser.add_argument("--images", type=int, required=True, help="images to certify (certify's --max)")
    parser.add_argument("--chunk", type=int, default=10, help="images per turn")
    parser.add_argument("--radii", default="cifar10", help="the grid: cifar10, imagenet or 0,0.25,...")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv[:split])
    options = argv[split + 1:]
    if "--n" not in options:
        parser.error("give the budget as --n after -- (the paper's N: 100000 on CIFAR-10)")
    radii = analyze.parse_radii(args.radii)
    os.makedirs(args.out, exist_ok=True)
    paths = {"fixed": os.path.join(args.out, "fixed.tsv"), "sequential": os.path.join(args.out, "sequential.tsv")}
    extra = {"fixed": [], "sequential": ["--sequential", "--radii", args.radii]}
    commands = {}
    for turn, done in enumerate(range(args.chunk, args.images + args.chunk, args.chunk)):
        order = ("fixed", "sequential") if turn % 2 == 0 else ("sequential", "fixed")  # ABBA
        for kind in order:
            command = certify(options, paths[kind], min(done, args.images), extra[kind])
            commands[kind] = " ".join(command[command.index("certify"):]).replace(" --resume", "")
            subprocess.run(command, check=True)
    result = {"what": __doc__.splitlines()[0], "settings": " ".join(options), "commands": commands,
              **compare(paths["fixed"], paths["sequential"], radii, int(options[options.index("--n") + 1]))}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
