"""Speed ratio of each fused C++ op over its reference composition, both timed in the same run, interleaved.

    python benchmarks/op_ratios.py [--threads 1 2] [--rounds 15] [--json benchmarks/results/op_ratios.json]

The CPU ratios of ``diffsmooth-fast bench ops`` (:mod:`diffsmooth_fast.bench.ops`), at several thread counts, for
the ops whose pure reference is what plain PyTorch would run (B = 250, m = 5, float32). Each round times every
implementation once, one after the other, so a slow spell of a shared machine hits both; the ratio is reported
on the minimum (the least disturbed round) and on the median.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from diffsmooth_fast.bench.ops import time_op

OPS = ["vote", "denoise-fixed", "denoise-given", "noisy_input-given"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ops", nargs="+", default=OPS, choices=OPS)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    rows = []
    for threads in dict.fromkeys(args.threads):  # in order, without repeats
        torch.set_num_threads(threads)
        for op in args.ops:
            t = time_op(op, "cpu", rounds=args.rounds, impls=("ref", "cpp"))
            row = {"op": op, "threads": threads, "rounds": t.rounds, "ref_min_s": t.min_s["ref"],
                   "ref_median_s": t.median_s["ref"], "cpp_min_s": t.min_s["cpp"], "cpp_median_s": t.median_s["cpp"],
                   "ratio_min": t.min_s["ref"] / t.min_s["cpp"], "ratio_median": t.median_s["ref"] / t.median_s["cpp"]}
            rows.append(row)
            print(f"threads {threads}  {op:18s} ref {row['ref_min_s'] * 1e3:8.3f} ms  cpp {row['cpp_min_s'] * 1e3:8.3f} ms"
                  f"  ratio {row['ratio_min']:5.2f} (min)  {row['ratio_median']:5.2f} (median)", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
