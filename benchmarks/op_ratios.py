"""Speed ratio of each fused C++ op over its reference composition, both timed in the same run, interleaved.

    python benchmarks/op_ratios.py [--threads 1 2] [--rounds 15] [--json benchmarks/results/op_ratios.json]

Uses the inputs and calls of benchmarks/test_bench_ops.py (a CIFAR-10 batch: B = 250, m = 5, float32). Each
round times every implementation once, one after the other, so a slow spell of a shared machine hits both; the
ratio is reported on the minimum (the least disturbed round) and on the median. pytest-benchmark runs the two
implementations minutes apart, which on a loaded machine moves the ratio by 2x; use this for the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_bench_ops as bench  # noqa: E402  (the benchmark suite's inputs and calls)

OPS = ["vote", "denoise-fixed", "denoise-given", "noisy_input-given"]


def _seconds(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def measure(op: str, rounds: int) -> dict:
    inputs = bench._inputs("cpu")
    fns = {impl: bench._call(op, impl, "cpu", inputs) for impl in ("ref", "cpp")}
    for fn in fns.values():
        fn()  # warm-up: extension load, allocator
    calls = max(1, round(0.02 / _seconds(fns["cpp"], 3)))  # ~20 ms of fused calls per round
    times: dict[str, list[float]] = {impl: [] for impl in fns}
    for _ in range(rounds):
        for impl, fn in fns.items():
            times[impl].append(_seconds(fn, calls))
    row = {"op": op, "threads": torch.get_num_threads(), "calls_per_round": calls, "rounds": rounds}
    for impl, ts in times.items():
        row[f"{impl}_min_s"], row[f"{impl}_median_s"] = min(ts), statistics.median(ts)
    row["ratio_min"] = row["ref_min_s"] / row["cpp_min_s"]
    row["ratio_median"] = row["ref_median_s"] / row["cpp_median_s"]
    return row


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
            row = measure(op, args.rounds)
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
