"""`medsynth demo`: the product's chain on built-in phantom data, locally, with a final summary.

Today the chain is: phantom chest X-ray studies -> a run of WebDataset shards with a manifest ->
verification and a summary of the run. Training, actor-pool production and evaluation join as they land.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from factory import storage


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="medsynth-demo", help="output folder or URL (default: ./medsynth-demo)")
    parser.add_argument("--count", type=int, default=512, help="phantom pairs to write")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--shard-size", type=int, default=128, help="samples per shard")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from factory.produce.inspect import summary
    from factory.produce.manifest import verify_run
    from factory.produce.phantom import phantom_pairs
    from factory.produce.shards import RunSpec
    from factory.produce.writer import write_run

    started = time.monotonic()
    run_url = storage.join(args.out, "phantom-pairs")
    spec = RunSpec(
        run_id=f"phantom-s{args.seed}",
        requested=args.count,
        shard_size=args.shard_size,
        seed=args.seed,
        sample_kind="pair",
        config={"source": "phantom-cxr", "size": args.size},
        command=shlex.join(["medsynth", *sys.argv[1:]]),
    )
    print(f"[1/2] writing {args.count} phantom chest X-ray pairs ({args.size}x{args.size}) to {run_url}")
    manifest = write_run(phantom_pairs(args.seed, range(args.count), args.size), run_url, spec)
    print("[2/2] verifying the run")
    verify_run(run_url, manifest, progress=True)
    print()
    print(summary(run_url, manifest, verified="every shard's sha256 and tar contents match"))
    where = os.path.abspath(run_url) if "://" not in run_url else run_url
    print(f"\ndemo finished in {time.monotonic() - started:.1f}s")
    print(f"  shards + manifest: {where}")
    print(f"  look at a sample:  medsynth inspect {where} --sample 0 --out {os.path.join(args.out, 'sample-0')}")
    return 0
