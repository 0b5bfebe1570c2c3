"""`medsynth bundle init RECIPE --out URL`: write an untrained bundle of the right shape.

Untrained bundles (trained=false) let the production factory, its benchmarks and tests run at the
real model size without a training run. Weights are a function of --seed. EMIXER's report
vocabulary is built from phantom chest X-ray reports (the phantom's own report grammar, no images
drawn); DUIIT has no vocabulary, its one label is age and --sources picks its source modalities. An untrained
judge (the evaluation classifier; `medsynth evaluate judge` trains one) reads the chest X-ray labels.
"""

from __future__ import annotations

import argparse

from factory.models.registry import MODELS

REPORT_COUNT = 2000  # enough phantom reports for every grammar word to pass EMIXER's min count of 6


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = sub.add_parser("init", help="write an untrained bundle (random weights) of a recipe's shape",
                          description="write an untrained bundle (random weights) of a recipe's shape")
    init.add_argument("recipe", choices=sorted(MODELS), help="model recipe")
    init.add_argument("--out", required=True, help="bundle folder or URL (local path, file://, s3://)")
    init.add_argument("--size", type=int, default=64, help="image size in pixels (default 64; emixer: a power of two, "
                                                                 "duiit: a multiple of 4)")
    init.add_argument("--width", type=int, help="channel width of the generators and discriminators "
                                                "(and EMIXER's report encoder; default: the recipe's)")
    init.add_argument("--seed", type=int, default=0, help="seed of the weights and the vocabulary's reports")
    init.add_argument("--sources", help="duiit: source modalities translated into CT, comma-separated "
                                        "(default: mri,pet)")


def run(args: argparse.Namespace) -> int:
    from factory.errors import BadInputError

    sources = [s.strip() for s in args.sources.split(",") if s.strip()] if args.sources else None
    if sources is not None and args.recipe != "duiit":
        raise BadInputError("--sources", f"only duiit takes source modalities, not {args.recipe}")
    metadata = init_bundle(args.out, args.recipe, size=args.size, width=args.width, seed=args.seed, sources=sources)
    print(f"{metadata['bundle_id']}  {args.out}  (untrained, {metadata['files'][0]['bytes']:,} bytes of weights)")
    return 0


def phantom_vocabulary(seed: int, count: int = REPORT_COUNT):
    """A vocabulary from `count` phantom chest X-ray reports (findings and wording drawn as the phantom does)."""
    import numpy as np

    from factory.data.phantoms.cxr_findings import resolve_prevalence, sample_findings
    from factory.data.text.reports import write_report
    from factory.data.text.vocab import Vocabulary

    prevalence = resolve_prevalence(None)
    reports = (write_report(sample_findings(np.random.default_rng([seed, i, 0]), prevalence),
                            np.random.default_rng([seed, i, 2])) for i in range(count))
    return Vocabulary.build(reports)


def init_bundle(out: str, recipe: str, size: int = 64, width: int | None = None, seed: int = 0,
                sources: list[str] | None = None) -> dict:
    from factory.errors import BadInputError
    from factory.models import registry
    from factory.models.bundle import write_bundle

    if recipe == "duiit":
        shape = _duiit_shape(size, width, sources)
    elif recipe == "judge":
        if width is not None:
            raise BadInputError("--width", "the judge is a torchvision ResNet of fixed widths; pick it by arch")
        shape = _judge_shape(size)
    else:
        shape = _emixer_shape(size, width, seed)
    overrides, label_names, vocabulary, description = shape
    try:
        config = registry.make_config(recipe, overrides)
    except ValueError as err:
        raise BadInputError(out, f"cannot build {recipe}: {err}") from err
    nets = registry.build_networks(recipe, config, seed=seed)
    return write_bundle(
        out, recipe, nets, config, label_names, vocabulary,
        training_data={"fingerprint": "untrained", "count": 0,
                       "description": f"untrained: random weights from seed {seed}{description}"},
        metrics={}, trained=False)


def _emixer_shape(size: int, width: int | None, seed: int) -> tuple[dict, list[str], dict, str]:
    from factory.data.labels import CXR_LABELS

    vocabulary = phantom_vocabulary(seed)
    overrides = {"image_size": size, "vocab_size": len(vocabulary), "num_labels": len(CXR_LABELS)}
    if width is not None:
        overrides.update(g_width=width, d_width=width, f_width=width)
    return (overrides, list(CXR_LABELS), vocabulary.to_json(),
            f"; vocabulary from {REPORT_COUNT} phantom chest X-ray reports")


def _judge_shape(size: int) -> tuple[dict, list[str], None, str]:
    from factory.data.labels import CXR_LABELS

    return {"image_size": size, "num_labels": len(CXR_LABELS)}, list(CXR_LABELS), None, ""


def _duiit_shape(size: int, width: int | None, sources: list[str] | None) -> tuple[dict, list[str], None, str]:
    overrides: dict = {"image_size": size}
    if sources is not None:
        overrides["sources"] = sources
    if width is not None:
        overrides.update(g_width=width, d_width=width)
    return overrides, ["age"], None, ""
