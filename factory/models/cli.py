"""`medsynth bundle init MODEL --out URL`: write an untrained bundle of the right shape.

Untrained bundles (trained=false) let the production factory, its benchmarks and tests run at the
real model size without a training run. Weights are a function of --seed. Each model's spec says
what its untrained bundle holds (factory.models.spec.UntrainedShape: EMIXER's report vocabulary
comes from phantom reports, DUIIT's one label is age, the judge reads the chest X-ray labels) and
which options beyond --size and --seed it takes.
"""

from __future__ import annotations

import argparse

from factory.models import registry


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = sub.add_parser("init", help="write an untrained bundle (random weights) of a model's shape",
                          description="write an untrained bundle (random weights) of a model's shape")
    init.add_argument("recipe", choices=registry.names(), help="model")
    init.add_argument("--out", required=True, help="bundle folder or URL (local path, file://, s3://)")
    init.add_argument("--size", type=int, default=64, help="image size in pixels (default 64; emixer: a power of two, "
                                                                 "duiit: a multiple of 4)")
    init.add_argument("--width", type=int, help="channel width of the generators and discriminators "
                                                "(and EMIXER's report encoder; default: the model's)")
    init.add_argument("--seed", type=int, default=0, help="seed of the weights and the vocabulary's reports")
    init.add_argument("--sources", help="duiit: source modalities translated into CT, comma-separated "
                                        "(default: mri,pet)")


def run(args: argparse.Namespace) -> int:
    from factory import storage
    from factory.errors import BadInputError
    from factory.models.bundle import METADATA_NAME

    existing = storage.join(args.out, METADATA_NAME)
    if storage.exists(existing):  # a trained bundle is never replaced by random weights
        raise BadInputError(existing, "already holds a bundle; choose another --out")
    sources = [s.strip() for s in args.sources.split(",") if s.strip()] if args.sources else None
    metadata = init_bundle(args.out, args.recipe, size=args.size, width=args.width, seed=args.seed, sources=sources)
    print(f"{metadata['bundle_id']}  {args.out}  (untrained, {metadata['files'][0]['bytes']:,} bytes of weights)")
    return 0


def init_bundle(out: str, recipe: str, size: int = 64, seed: int = 0, created_at: str | None = None,
                **options) -> dict:
    """Write an untrained bundle of model `recipe` at `out`; `options` (width, sources) as its spec
    takes them, None meaning the default. Returns the bundle's metadata."""
    from factory.errors import BadInputError
    from factory.models.bundle import write_bundle

    spec = registry.spec(recipe)
    given = {name: value for name, value in options.items() if value is not None}
    refused = sorted(set(given) - set(spec.untrained_options))
    if refused:
        takes = ", ".join(f"--{name}" for name in spec.untrained_options)
        raise BadInputError(f"--{refused[0]}", f"{recipe} bundles take " + (f"only {takes} besides --size and --seed"
                                                                          if takes else "only --size and --seed"))
    shape = spec.untrained(size=size, seed=seed, **given)
    try:
        config = spec.make_config(shape.overrides)
    except ValueError as err:
        raise BadInputError(out, f"cannot build {recipe}: {err}") from err
    nets = registry.build_networks(recipe, config, seed=seed)
    return write_bundle(
        out, recipe, nets, config, shape.label_names, shape.vocabulary,
        training_data={"fingerprint": "untrained", "count": 0,
                       "description": f"untrained: random weights from seed {seed}{shape.description}"},
        metrics={}, trained=False, created_at=created_at)
