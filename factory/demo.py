"""`medsynth demo`: the product's chain on built-in phantom data, locally, with a final summary.

The chain: phantom chest X-ray studies -> a short distributed EMIXER training (2 Ray Train workers,
one DeepSpeed ZeRO-2 engine per network) -> a bundle -> a Ray actor pool producing labelled
image/report pairs into WebDataset shards with a manifest, verified; brain phantoms -> a short DUIIT
training (MRI and PET -> CT with the age regressor) -> a bundle -> the same pool translating MRI/PET
volumes into CT shards and a Zarr group; a judge classifier -> the run's HTML evaluation report. A
few dozen training steps show the machinery, not useful models: learning is measured by the
training benchmarks (`medsynth bench train emixer`, `medsynth bench duiit`), not by the demo.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from factory import storage

DEMO_MODEL = {"g_width": 16, "d_width": 16, "f_width": 8, "hidden": 128, "word_layers": 2}
DEMO_DUIIT = {"g_width": 8, "g_blocks": 2, "d_width": 8, "sources": ["mri", "pet"]}
STEPS = 6


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="medsynth-demo", help="output folder or URL (default: ./medsynth-demo)")
    parser.add_argument("--studies", type=int, default=2000, help="phantom studies to train on")
    # 24 steps keep the whole demo under its 10 minutes on 2 cores (stage timings: docs/bench/demo.md).
    parser.add_argument("--steps", type=int, default=24, help="training steps")
    parser.add_argument("--count", type=int, default=2000, help="pairs to produce")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--shard-size", type=int, default=250, help="samples per shard")
    parser.add_argument("--actors", type=int, default=2, help="production actors (and training workers)")
    parser.add_argument("--duiit-steps", type=int, default=20, help="DUIIT training steps")
    parser.add_argument("--volumes", type=int, default=3, help="MRI and PET phantom volumes to translate (each)")
    parser.add_argument("--judge-count", type=int, default=2000, help="phantom studies the judge learns from")
    parser.add_argument("--evaluate-count", type=int, default=500, help="pairs the report evaluates")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from factory.config import ProduceConfig, TrainConfig
    from factory.produce.inspect import summary
    from factory.produce.verify import verify_run
    from factory.produce.runs import run_production
    from factory.train.runner import train

    from factory.config import EvaluateConfig, TranslateConfig
    from factory.data.phantoms.brain_formats import write_dataset
    from factory.evaluate.judge import train_judge
    from factory.evaluate.run_report import evaluate_config
    from factory.produce.runs import run_translation

    started = time.monotonic()
    command = shlex.join(["medsynth", *sys.argv[1:]])
    bundle_url = storage.join(args.out, "bundle")
    run_url = storage.join(args.out, "pairs")
    train_config = TrainConfig(
        name=f"demo-emixer-s{args.seed}", storage_path=storage.join(args.out, "train"), steps=args.steps,
        checkpoint_every=max(args.steps // 2, 1), batch_size=16, workers=args.actors, zero_stage=2,
        model=DEMO_MODEL, data={"count": args.studies, "size": args.size, "seed": args.seed},
        seed=args.seed, bundle_out=bundle_url)
    print(f"[1/{STEPS}] training EMIXER for {args.steps} steps on {args.studies} phantom chest X-rays "
          f"({args.size}x{args.size}) with {args.actors} Ray Train workers, DeepSpeed ZeRO-2 (a few minutes)")
    result = train(train_config)
    print(f"      step {result.metrics.get('step')}, checkpoint {result.checkpoint.path}, bundle {bundle_url}")

    print(f"[2/{STEPS}] producing {args.count} labelled image/report pairs from the bundle with {args.actors} Ray actors")
    manifest = run_production(ProduceConfig(bundle=bundle_url, count=args.count, out=run_url, actors=args.actors,
                                            shard_size=args.shard_size, seed=args.seed), command=command)
    verify_run(run_url, manifest, progress=True)

    duiit_bundle = storage.join(args.out, "duiit-bundle")
    duiit_config = TrainConfig(
        name=f"demo-duiit-s{args.seed}", storage_path=storage.join(args.out, "train"), recipe="duiit",
        steps=args.duiit_steps, checkpoint_every=args.duiit_steps, batch_size=4, workers=args.actors, zero_stage=2,
        model=DEMO_DUIIT, data={"source": "phantom-brain", "counts": {"ct": 60, "mri": 120, "pet": 120},
                                "size": args.size, "seed": args.seed},
        seed=args.seed, bundle_out=duiit_bundle)
    print(f"[3/{STEPS}] training DUIIT (MRI and PET -> CT, joint age regressor) for {args.duiit_steps} steps on "
          f"unpaired brain phantoms with {args.actors} Ray Train workers")
    train(duiit_config)
    print(f"      bundle {duiit_bundle}")

    sources = storage.join(args.out, "brain-sources")
    translated_url = storage.join(args.out, "translated-ct")
    print(f"[4/{STEPS}] translating {args.volumes} MRI and {args.volumes} PET phantom volumes (3-D, other patients) "
          f"into CT shards and a Zarr group with {args.actors} Ray actors")
    for modality in ("mri", "pet"):
        write_dataset(sources, args.volumes, modality, fmt="nifti", dims=3, size=args.size, seed=args.seed + 7)
    translated = run_translation(TranslateConfig(bundle=duiit_bundle, source=sources, out=translated_url,
                                                 actors=args.actors, shard_size=64, seed=args.seed), command=command)
    verify_run(translated_url, translated, progress=True)

    judge_url = storage.join(args.out, "judge")
    print(f"[5/{STEPS}] training the judge classifier (phantoms of other patients, {args.judge_count} studies)")
    judged = train_judge(judge_url, count=args.judge_count, size=args.size, epochs=3, seed=args.seed)
    print(f"      held-out macro-AUC {judged.macro_auc:.3f}, bundle {judge_url}")

    report_url = storage.join(args.out, "report.html")
    print(f"[6/{STEPS}] evaluating {args.evaluate_count} pairs against real phantoms into {report_url}")
    report = evaluate_config(EvaluateConfig(run=run_url, out=report_url, judge=judge_url, count=args.evaluate_count,
                                            real_count=args.evaluate_count, seed=args.seed))
    metrics = report["metrics"]

    print()
    print(summary(run_url, manifest, verified="every shard's sha256 and tar contents match"))
    print(f"translated CT: {translated['count']} slices in {len(translated['shards'])} shards, "
          f"{len((translated.get('extra') or {}).get('volumes', {}).get('arrays', []))} volumes in volumes.zarr")
    print(f"evaluation: FID {metrics['images']['fid']:.3g} (real vs real {metrics['images']['fid_real_vs_real']:.3g}), "
          f"judge macro-AUC on synthetic {metrics['label_fidelity']['synthetic_macro_auc']:.3f} "
          f"(real {metrics['label_fidelity']['real_macro_auc']:.3f}); after {args.steps} steps these are "
          "an untrained generator's numbers")
    if "reports" in metrics:
        ce = metrics["reports"]["clinical_efficacy"]
        # Why the demo's reports state no findings: F needs hundreds of teacher-forced updates for that
        # (docs/bench/train_emixer.md); the demo's minutes buy a few dozen.
        print(f"reports: clinical efficacy micro-F1 {ce['micro']['f1']:.3f} (an always-normal report scores 0): "
              f"after {args.steps} steps F writes the report's form, not an image's findings; the training "
              "benchmark's generated pairs reach micro-F1 0.53 after 168 to 216 steps of 16 likelihood updates "
              "(28 CPU-minutes; docs/bench/train_emixer.md), more than the demo's minutes buy")
    local = "://" not in args.out
    root = os.path.abspath(args.out) if local else args.out

    def where(url: str) -> str:
        return os.path.abspath(url) if local else url

    print(f"\ndemo finished in {time.monotonic() - started:.0f}s; everything is under {root}")
    print(f"  training runs, checkpoints, data caches  {storage.join(root, 'train')}")
    print(f"  bundles (EMIXER, DUIIT, judge)          {where(bundle_url)}, {where(duiit_bundle)}, {where(judge_url)}")
    print(f"  image/report pairs + manifest           {where(run_url)}")
    print(f"  translated CT shards + volumes.zarr     {where(translated_url)}")
    print(f"  evaluation report (open in a browser)   {where(report_url)}")
    print(f"  look at a sample   medsynth inspect {where(run_url)} --sample 0 --out {storage.join(root, 'sample-0')}")
    print(f"  stream it          factory.stream.open_run('{where(run_url)}')")
    return 0
