"""`medsynth demo`: the product's chain on built-in phantom data, locally, with a final summary.

Today the chain is: phantom chest X-ray studies -> a local Ray actor pool writing WebDataset shards
and a manifest -> verification and a summary of the run. Training and evaluation join as they land.
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
    parser.add_argument("--count", type=int, default=2000, help="phantom pairs to produce")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--shard-size", type=int, default=250, help="samples per shard")
    parser.add_argument("--actors", type=int, default=2, help="production actors")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from factory.produce.inspect import summary
    from factory.produce.manifest import verify_run
    from factory.produce.pool import produce
    from factory.produce.shards import RunSpec

    started = time.monotonic()
    run_url = storage.join(args.out, "phantom-pairs")
    producer = {"type": "phantom-cxr", "size": args.size}
    spec = RunSpec(
        run_id=f"demo-phantom-s{args.seed}",
        requested=args.count,
        shard_size=args.shard_size,
        seed=args.seed,
        sample_kind="pair",
        config={"producer": producer, "shard_size": args.shard_size},
        command=shlex.join(["medsynth", *sys.argv[1:]]),
    )
    print(f"[1/2] producing {args.count} phantom chest X-ray image/report pairs ({args.size}x{args.size}) "
          f"with {args.actors} Ray actors into {run_url}")
    manifest = produce(producer, run_url, spec, actors=args.actors)
    print("[2/2] verifying every shard against the manifest")
    verify_run(run_url, manifest, progress=True)
    print()
    print(summary(run_url, manifest, verified="every shard's sha256 and tar contents match"))
    where = os.path.abspath(run_url) if "://" not in run_url else run_url
    sample_dir = os.path.join(os.path.abspath(args.out) if "://" not in args.out else ".", "sample-0")
    print(f"\ndemo finished in {time.monotonic() - started:.0f}s; everything is under {os.path.dirname(where)}")
    print(f"  shards + manifest  {where}")
    print(f"  look at a sample   medsynth inspect {where} --sample 0 --out {sample_dir}")
    print(f"  stream it          webdataset.WebDataset('{where}/shard-{{000000..{len(manifest['shards']) - 1:06d}}}.tar')")
    return 0
