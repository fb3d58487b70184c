"""``diffsmooth-fast bench``: ``ops`` times the fused ops, ``e2e`` runs the end-to-end benchmark, ``agreement``
measures low-precision label agreement with float32."""

from __future__ import annotations

import argparse

import torch

from . import agreement, ops, record


def add_parser(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="time the fused ops (ops) or end-to-end certification (e2e)",
                       description="Benchmarks: 'bench ops' times every implementation of the fused ops on this "
                       "device; 'bench e2e --help' describes the end-to-end benchmark.")
    kinds = b.add_subparsers(dest="bench", required=True)
    o = kinds.add_parser("ops", help="each fused op against its plain-PyTorch composition: ms, GB/s, speedup")
    o.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    o.add_argument("--batch", type=int, default=250, help="noisy samples per call (m = 5 copies each)")
    o.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    o.add_argument("--ops", nargs="+", choices=ops.OPS, default=list(ops.OPS), help="which ops")
    o.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    o.add_argument("--json", help="also write the record to this JSON file")
    a = kinds.add_parser("agreement", help="float16/bfloat16 labels against float32 on the demo models")
    agreement.add_arguments(a)
    kinds.add_parser("e2e", add_help=False, help="engine vs paper-style baseline with full-size random-weight models "
                     "(options: bench e2e --help)")


def run(args: argparse.Namespace, rest: list[str]) -> int:
    if args.bench == "e2e":
        from . import end_to_end  # builds models: imported only when asked for

        end_to_end.main(rest)
        return 0
    if rest:
        raise ValueError(f"unrecognized arguments: {' '.join(rest)}")
    if args.bench == "agreement":
        return agreement.run(args)
    for name in ("batch", "rounds", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ops.IMPLS:
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for op in args.ops:
        timing = ops.time_op(op, args.device, batch=args.batch, rounds=args.rounds)
        rows.append(timing.as_dict())
        for line in ops.format_timing(timing):
            print(line, flush=True)
    if args.json:
        out = {**record.header("ops", device),
               "settings": {"batch": args.batch, "m": ops.M, "image": list(ops.SHAPE), "classes": ops.K,
                            "rounds": args.rounds, "dtype": "float32"},
               "ops": rows}
        print(f"wrote {record.write_json(out, args.json)}")
    return 0
