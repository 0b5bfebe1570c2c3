"""`medsynth evaluate RUN_URL ... | judge ... | augment ...`: evaluation jobs.

  RUN_URL  measure a run against real data and write one self-contained HTML report (metrics as JSON beside it):
           pairs, images: `medsynth evaluate RUN_URL --judge URL --out report.html [--real ROOT --real-layout L]`
           translations:  `medsynth evaluate RUN_URL --out report.html [--real ROOT --real-layout volumes]
                          [--paired ROOT] [--window LOW HIGH]` (HU histogram, SSIM/PSNR, age regressor)
  augment  EMIXER's augmentation study: `medsynth evaluate augment RUN_URL --out DIR [--real ROOT --real-layout L]`
  judge    train the judge classifier on phantoms (or a dataset you own), print its held-out AUCs and
           write it as a bundle: `medsynth evaluate judge --out URL [--count N] [--size 64] [--epochs E]`

The first word is an action's name or else a run's URL. Each action is a (configure, run) pair in
ACTIONS. Heavy imports (torch) stay inside the run functions, so `medsynth --help` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Callable

CXR_LAYOUTS = ("mimic-cxr", "iu-xray", "chexpert", "nih", "folder")


def _configure_judge(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="bundle folder or URL (local path, file://, s3://)")
    parser.add_argument("--count", type=int, default=10000, help="phantom studies, train + held out (default 10000)")
    parser.add_argument("--size", type=int, default=64, help="image side the judge reads (default 64)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, weights and batch order")
    parser.add_argument("--phantom-seed", type=int, default=1,
                        help="phantom study seed (default 1: training configs draw the generator's phantoms from 0)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share held out for the AUCs (default 0.2)")
    parser.add_argument("--data", metavar="ROOT", help="train on a dataset you own instead of phantoms")
    parser.add_argument("--layout", choices=CXR_LAYOUTS, help="layout of --data")
    parser.add_argument("--arch", choices=["resnet10", "resnet18", "resnet34"], default="resnet18",
                        help="the ResNet (default resnet18; resnet10 for EMIXER's F encoder to start from, with "
                             "--phantom-seed 2: other patients than the generator's and the judge's)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")


def _run_judge(args: argparse.Namespace) -> int:
    from factory.errors import BadInputError
    from factory.evaluate.judge import auc_table, dataset_data, train_judge

    if (args.data is None) != (args.layout is None):
        raise BadInputError("evaluate judge", "--data and --layout go together")
    data = None
    if args.data is not None:
        from factory.data.adapters import open_dataset

        data = dataset_data(open_dataset(args.data, args.layout, size=args.size), args.size)
    result = train_judge(args.out, data=data, count=args.count, size=args.size, epochs=args.epochs, seed=args.seed,
                         phantom_seed=args.phantom_seed, test_fraction=args.test_fraction, arch=args.arch,
                         device=args.device)
    print(auc_table(result.auc, result.positives, result.macro_auc))
    print(f"\n{result.metadata['bundle_id']}  {args.out}  ({result.train_count} trained, {result.test_count} held out, "
          f"{args.epochs} epochs, {result.wall_s:.0f} s)")
    return 0


def _configure_augment(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_URL", help="the synthetic run whose samples are added")
    parser.add_argument("--out", required=True, help="folder for augment.json, augment.md and augment.png")
    parser.add_argument("--real", metavar="ROOT", help="real studies (default: chest X-ray phantoms)")
    parser.add_argument("--real-layout", choices=CXR_LAYOUTS, help="layout of --real")
    parser.add_argument("--phantom-count", type=int, default=3000, help="phantom studies when no --real (default 3000)")
    parser.add_argument("--real-counts", default="200", help="R, comma-separated (default 200)")
    parser.add_argument("--synthetic-counts", default="0,100,200,400", help="S, comma-separated (default 0,100,200,400)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated (default 0,1,2)")
    parser.add_argument("--test-count", type=int, default=500, help="held-out real studies (default 500)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)


def _run_augment(args: argparse.Namespace) -> int:
    from factory.errors import BadInputError
    from factory.evaluate.augment import augmentation_study, table_markdown, write_study

    def integers(text: str, name: str) -> list[int]:
        try:
            return [int(v) for v in text.split(",") if v.strip()]
        except ValueError as err:
            raise BadInputError("evaluate augment", f"{name}: {text!r} is not comma-separated integers") from err

    if (args.real is None) != (args.real_layout is None):
        raise BadInputError("evaluate augment", "--real and --real-layout go together")
    if args.real:
        from factory.data.adapters import open_dataset

        real = open_dataset(args.real, args.real_layout, size=128)
    else:
        from factory.data.phantoms.dataset import PhantomCxrDataset

        real = PhantomCxrDataset(args.phantom_count, size=max(args.size, 64), seed=2)
    result = augmentation_study(real, args.run, real_counts=integers(args.real_counts, "--real-counts"),
                                synthetic_counts=integers(args.synthetic_counts, "--synthetic-counts"),
                                seeds=integers(args.seeds, "--seeds"), test_count=args.test_count,
                                epochs=args.epochs, size=args.size)
    urls = write_study(result, args.out)
    print(table_markdown(result))
    print(f"\n{urls['json']}\n{urls['plot']}  (include it in a run report with --augment {urls['json']})")
    return 0


# action -> (help, configure, run)
ACTIONS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "judge": ("train the judge classifier and write it as a bundle", _configure_judge, _run_judge),
    "augment": ("augmentation study: a classifier on R real vs R real + S synthetic, tested on held-out real",
                _configure_augment, _run_augment),
}


def _configure_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_URL", help="the run to evaluate (folder or s3:// URL with a manifest)")
    parser.add_argument("--out", required=True, help="the HTML report to write (its metrics go beside it as .json)")
    parser.add_argument("--judge", help="judge bundle URL (`medsynth evaluate judge` writes one); pair and image "
                        "runs need it")
    parser.add_argument("--real", metavar="ROOT", help="real studies the generator did not train on (default: "
                        "chest X-ray phantoms of other patients than the generator's training phantoms; for a "
                        "translation run, brain phantom CT)")
    parser.add_argument("--real-layout", choices=(*CXR_LAYOUTS, "volumes"),
                        help="layout of --real (volumes: the CT studies of a volumes dataset, translation runs)")
    parser.add_argument("--paired", metavar="ROOT", help="translation runs: CT of the same subjects as the sources, "
                        "volumes layout, study ids equal to the source's (default: the phantom's paired CT when the "
                        "sources are brain phantoms)")
    parser.add_argument("--window", nargs=2, type=float, metavar=("LOW", "HIGH"), help="translation runs: the HU "
                        "window of the histogram and SSIM/PSNR (default: the range the bundle's model represents)")
    parser.add_argument("--age-epochs", type=int, help="translation runs: epochs of the brain-age regressor "
                        "(default 20)")
    parser.add_argument("--train", metavar="ROOT", help="the generator's training studies, for the memorization audit "
                        "(default: found from the bundle when it trained on the phantom)")
    parser.add_argument("--train-layout", choices=CXR_LAYOUTS, help="layout of --train")
    parser.add_argument("--count", type=int, default=1000, help="synthetic samples to evaluate (default 1000)")
    parser.add_argument("--real-count", type=int, default=1000, help="real studies to compare with (default 1000)")
    parser.add_argument("--augment", metavar="JSON", help="an augmentation study's result (`medsynth evaluate augment`) "
                        "to include")
    parser.add_argument("--seed", type=int, default=0)


def _run_report(args: argparse.Namespace) -> int:
    from factory.config import EvaluateConfig, validate_config
    from factory.evaluate.run_report import evaluate_config

    settings = {k: v for k, v in vars(args).items() if k in EvaluateConfig.model_fields and v is not None}
    result = evaluate_config(validate_config(EvaluateConfig, settings, "command line"))
    metrics = result["metrics"]
    if result["settings"].get("kind") == "translation":
        hu, distance = metrics["hounsfield"]["translated"], metrics["wasserstein_hu"]
        print(f"HU p1..p99 {hu['p1']:.0f}..{hu['p99']:.0f}, Wasserstein to real CT {distance['translated_vs_real']:.3g} HU "
              f"(real vs real {distance['real_vs_real']:.3g}) in the window {metrics['window']}")
        if "paired" in metrics:
            print(f"paired ({metrics['paired']['count']} slices): SSIM {metrics['paired']['ssim']:.3f}, "
                  f"PSNR {metrics['paired']['psnr_db']:.2f} dB, MAE {metrics['paired']['mae_hu']:.1f} HU")
        age = metrics["age"]
        if "translated" in age:
            print(f"age regressor MAE: translations {age['translated']['mae_years']:.2f} years, "
                  f"held-out real CT {age['real_held_out']['mae_years']:.2f}")
        print(f"report {result['html']}\nmetrics {result['json']}")
        return 0
    print(f"FID {metrics['images']['fid']:.3g} (real vs real {metrics['images']['fid_real_vs_real']:.3g}), "
          f"judge macro-AUC {metrics['label_fidelity']['synthetic_macro_auc']:.3f} "
          f"(real {metrics['label_fidelity']['real_macro_auc']:.3f})")
    if "reports" in metrics:
        ce = metrics["reports"]["clinical_efficacy"]
        print(f"BLEU-1 {metrics['reports']['bleu_1']:.3f}, clinical efficacy micro-F1 {ce['micro']['f1']:.3f}, "
              f"macro-F1 {ce['macro']['f1']:.3f} (exact match {ce['exact_match']:.3f})")
    if "memorization" in metrics:
        print(f"memorization: {len(metrics['memorization']['flagged_any'])} samples closer to a training image than "
              "the 1st percentile of real-to-real distances")
    print(f"report {result['html']}\nmetrics {result['json']}")
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("target", metavar="RUN_URL|ACTION", help=f"a run to report on, or one of {sorted(ACTIONS)}")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the report's or the action's options")


def _action_parser(target: str) -> argparse.ArgumentParser:
    if target in ACTIONS:
        help_text, configure_action, run_action = ACTIONS[target]
        parser = argparse.ArgumentParser(prog=f"medsynth evaluate {target}", description=help_text)
        configure_action(parser)
        parser.set_defaults(_action=run_action)
    else:
        parser = argparse.ArgumentParser(prog="medsynth evaluate", description="write a run's HTML report")
        _configure_report(parser)
        parser.set_defaults(_action=_run_report)
    return parser


def run(args: argparse.Namespace) -> int:
    options = args.options if args.target in ACTIONS else [args.target, *args.options]
    parsed = _action_parser(args.target).parse_args(options)
    return int(parsed._action(parsed) or 0)


def main(argv: list[str] | None = None) -> int:
    """`python -m factory.evaluate.cli ...`, the same as `medsynth evaluate ...`."""
    import sys

    from factory.errors import FactoryError

    parser = argparse.ArgumentParser(prog="medsynth evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except FactoryError as err:
        print(f"medsynth evaluate: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
