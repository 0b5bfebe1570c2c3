"""`medsynth demo`: the product's chain on built-in phantom data, locally, with a final summary.

Today the chain is: phantom chest X-ray studies -> a short distributed EMIXER training (2 Ray Train
workers, one DeepSpeed ZeRO-2 engine per network) -> a bundle -> a Ray actor pool producing labelled
image/report pairs into WebDataset shards with a manifest -> verification and a summary of the run.
Evaluation joins as it lands. A few dozen training steps show the machinery, not a useful model:
learning is measured by a training benchmark, not by the demo.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from factory import storage

DEMO_MODEL = {"g_width": 16, "d_width": 16, "f_width": 8, "hidden": 128, "word_layers": 2}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="medsynth-demo", help="output folder or URL (default: ./medsynth-demo)")
    parser.add_argument("--studies", type=int, default=2000, help="phantom studies to train on")
    parser.add_argument("--steps", type=int, default=40, help="training steps")
    parser.add_argument("--count", type=int, default=2000, help="pairs to produce")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--shard-size", type=int, default=250, help="samples per shard")
    parser.add_argument("--actors", type=int, default=2, help="production actors (and training workers)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from factory.config import ProduceConfig, TrainConfig
    from factory.produce.inspect import summary
    from factory.produce.manifest import verify_run
    from factory.produce.runs import run_production
    from factory.train.runner import train

    started = time.monotonic()
    command = shlex.join(["medsynth", *sys.argv[1:]])
    bundle_url = storage.join(args.out, "bundle")
    run_url = storage.join(args.out, "pairs")
    train_config = TrainConfig(
        name=f"demo-emixer-s{args.seed}", storage_path=storage.join(args.out, "train"), steps=args.steps,
        checkpoint_every=max(args.steps // 2, 1), batch_size=16, workers=args.actors, zero_stage=2,
        model=DEMO_MODEL, data={"count": args.studies, "size": args.size, "seed": args.seed},
        seed=args.seed, bundle_out=bundle_url)
    print(f"[1/3] training EMIXER for {args.steps} steps on {args.studies} phantom chest X-rays "
          f"({args.size}x{args.size}) with {args.actors} Ray Train workers, DeepSpeed ZeRO-2 (a minute or two)")
    result = train(train_config)
    print(f"      step {result.metrics.get('step')}, checkpoint {result.checkpoint.path}, bundle {bundle_url}")

    print(f"[2/3] producing {args.count} labelled image/report pairs from the bundle with {args.actors} Ray actors")
    manifest = run_production(ProduceConfig(bundle=bundle_url, count=args.count, out=run_url, actors=args.actors,
                                            shard_size=args.shard_size, seed=args.seed), command=command)
    print("[3/3] verifying every shard against the manifest")
    verify_run(run_url, manifest, progress=True)
    print()
    print(summary(run_url, manifest, verified="every shard's sha256 and tar contents match"))
    local = "://" not in args.out
    root = os.path.abspath(args.out) if local else args.out
    where = os.path.abspath(run_url) if local else run_url
    print(f"\ndemo finished in {time.monotonic() - started:.0f}s; everything is under {root}")
    print(f"  training run, checkpoints, data cache  {storage.join(root, 'train', train_config.name)}")
    print(f"  generator bundle                       {storage.join(root, 'bundle')}")
    print(f"  shards + manifest                      {where}")
    print(f"  look at a sample   medsynth inspect {where} --sample 0 --out {storage.join(root, 'sample-0')}")
    print(f"  stream it          webdataset.WebDataset('{where}/shard-{{000000..{len(manifest['shards']) - 1:06d}}}.tar')")
    return 0
