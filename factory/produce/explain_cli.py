"""`medsynth explain --bundle B IMAGE_OR_DATA... --out DIR`: a bundle that explains chest X-rays (the
`justify` model; factory.produce.explain) writes, for each input image, its explanation as JSON, the
counterfactual X-ray as PNG and one side-by-side PNG (input | counterfactual, labelled), and one
self-contained HTML page for the batch (images inline as data URIs).

Inputs are PNG/JPEG files, or with `--layout` dataset roots read through the adapters (`--count N`
takes the first N images of all inputs). Every image is resized to the bundle's image size, as 8-bit
grayscale. DIR is a local folder, new or empty: nothing in it is ever overwritten.

With `--out` a URL (s3://BUCKET/PREFIX, or any other fsspec URL) and one dataset root with `--layout`,
the dataset is explained on the production actor pool instead (factory.produce.runs.run_explanation):
shards of (image, justification caption, counterfactual image, labels, json), exactly once, resumable,
the same bytes for any number of actors, like every production run.
"""

from __future__ import annotations

import argparse
import html
import json
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from factory.config import ExplainConfig
from factory.errors import BadInputError

CHUNK = 4  # images per call of the model: the bar moves often, M's L-BFGS still runs on a batch
SIDE = 256  # side of each panel of the side-by-side PNG: room for its label at any model size
LABEL_HEIGHT = 16
# Settings of a pool run only (ExplainConfig): a folder run refuses them rather than ignore them.
POOL_ONLY = ("actors", "cpus_per_actor", "gpus_per_actor", "shard_size", "batch_size", "run_id")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DATA",
                        help="PNG/JPEG files, or dataset roots with --layout")
    parser.add_argument("--bundle", required=True, help="bundle URL of a model that explains (justify)")
    parser.add_argument("--out", required=True, help="local folder for the results (new or empty), or a URL "
                                                     "(s3://...) for shards written on the production pool")
    parser.add_argument("--layout", help="the inputs are dataset roots in this layout (mimic-cxr, iu-xray, "
                                         "chexpert, nih, folder)")
    parser.add_argument("--count", type=int, help="explain only the first COUNT images of the inputs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the counterfactual search (default 0)")
    pool = parser.add_argument_group("production pool (--out a URL, one dataset root with --layout)")
    for name, field in ExplainConfig.model_fields.items():
        if name in POOL_ONLY:
            kind = {int: int, float: float}.get(field.annotation, str)
            pool.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=field.description)


def run(args: argparse.Namespace) -> int:
    if is_url(args.out):
        return run_on_pool(args)
    given = [f"--{name.replace('_', '-')}" for name in POOL_ONLY if getattr(args, name, None) is not None]
    if given:
        raise BadInputError(given[0], "sets a production pool run; give --out a URL (s3://...) and a dataset "
                                      "with --layout, or leave it out")
    out = _check_out(args.out)
    if args.count is not None and args.count < 1:
        raise BadInputError("--count", f"must be at least 1, not {args.count}")
    if args.seed < 0:
        raise BadInputError("--seed", f"must be at least 0, not {args.seed}")
    from factory.produce.explain import explaining_bundle

    metadata = explaining_bundle(args.bundle)  # refused before any network is built
    size = int(metadata["model_config"]["image_size"])
    # Every input is looked at (listed, opened) before the model loads and anything is written.
    inputs = list(_inputs(args.inputs, args.layout, size, args.count))
    if not inputs:
        raise BadInputError(" ".join(args.inputs), "holds no images to explain")
    explained = explain_inputs(args.bundle, inputs, out, seed=args.seed)
    print(f"{explained} images explained: {out / 'index.html'}")
    return 0


def is_url(out: str) -> bool:
    """A URL (scheme://...) is written as shards on the pool; a plain path is a folder of files."""
    return "://" in out


def run_on_pool(args: argparse.Namespace) -> int:
    """One dataset explained into shards at the URL `args.out` on the production actor pool."""
    import shlex
    import sys

    from factory.config import validate_config
    from factory.produce.runs import run_explanation

    if args.layout is None:
        raise BadInputError(args.out, "shards at a URL are made from a dataset: give its root with --layout "
                                      "(image files are explained into a local folder)")
    if len(args.inputs) != 1:
        raise BadInputError(" ".join(args.inputs), "a production run explains one dataset; give one root")
    _check_layout(args.layout)
    values = {name: getattr(args, name) for name in (*POOL_ONLY, "count", "seed") if getattr(args, name) is not None}
    config = validate_config(ExplainConfig, {**values, "out": args.out, "bundle": args.bundle,
                                             "source": args.inputs[0], "layout": args.layout}, "command line")
    manifest = run_explanation(config, command=shlex.join(["medsynth", *sys.argv[1:]]))
    print(f"run {manifest['run_id']}: {manifest['count']} explained images of {config.source} in "
          f"{len(manifest['shards'])} shards ({manifest['bytes'] / 2**20:.1f} MiB) at {config.out}")
    return 0


def _check_out(out: str) -> Path:
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise BadInputError(out, "exists and is not an empty folder; explain into a new one (nothing is overwritten)")
    return path


def _check_layout(layout: str) -> None:
    from factory.data.adapters import LAYOUTS

    if layout not in LAYOUTS or layout == "volumes":
        raise BadInputError("--layout", f"{layout!r} is not a chest X-ray layout; choose from "
                                        f"{', '.join(name for name in LAYOUTS if name != 'volumes')}")


def _inputs(paths: list[str], layout: str | None, size: int, count: int | None) -> Iterator[tuple[str, np.ndarray]]:
    """(name, 8-bit image of the bundle's size) of each input image, in order, at most `count`."""
    taken = 0
    for source in paths:
        for name, image in (_dataset_images(source, layout, size) if layout else [_file_image(source, size)]):
            if count is not None and taken >= count:
                return
            taken += 1
            yield name, image


def _to_uint8(tensor) -> np.ndarray:
    return np.rint(tensor[0].clamp(0, 1).numpy() * 255).astype(np.uint8)


def _file_image(path: str, size: int) -> tuple[str, np.ndarray]:
    from factory.data.adapters.cxr import decode_image

    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise BadInputError(path, f"cannot read the image ({err.strerror})") from err
    return path, _to_uint8(decode_image(data, path, size))


def _dataset_images(root: str, layout: str, size: int) -> Iterator[tuple[str, np.ndarray]]:
    from factory.data.adapters import open_dataset

    _check_layout(layout)
    dataset = open_dataset(root, layout, size=size)
    for index in range(len(dataset)):
        study = dataset[index]
        yield f"{root}#{study.study_id}", _to_uint8(study.image)


def file_stem(n: int, name: str) -> str:
    """The output files' stem of input n: its position, then its name's last part in safe characters."""
    last = re.split(r"[/#\\]", name.rstrip("/"))[-1]
    last = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(last).stem if "." in last else last)[:60]
    return f"{n:04d}-{last}" if last else f"{n:04d}"


def explain_inputs(bundle_url: str, inputs: list[tuple[str, np.ndarray]], out: Path, seed: int = 0,
                   progress: bool = True) -> int:
    """Explain every (name, image) into `out`: per image a JSON, the counterfactual PNG and the side by
    side PNG; the batch's index.html last. Returns the number of images."""
    from PIL import Image
    from tqdm import tqdm

    from factory.models.bundle import load_bundle
    from factory.produce.explain import explain_images

    bundle = load_bundle(bundle_url)
    images = np.stack([image for _, image in inputs])
    out.mkdir(parents=True, exist_ok=True)
    cards = []
    with tqdm(total=len(inputs), desc="explained", unit="image", disable=not progress) as bar:
        for start in range(0, len(inputs), CHUNK):
            found = explain_images(bundle, images[start:start + CHUNK], seed=seed, batch_size=CHUNK)
            for n, item in enumerate(found, start):
                name, image = inputs[n]
                stem = file_stem(n, name)
                record = {"input": name, **item.to_json(), "counterfactual": f"{stem}.counterfactual.png",
                          "side_by_side": f"{stem}.side-by-side.png", "bundle_id": bundle.bundle_id, "seed": seed}
                (out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
                Image.fromarray(item.counterfactual).save(out / record["counterfactual"])
                pair = side_by_side(image, item.counterfactual, f"input: {item.diagnosis}",
                                    f"counterfactual: {item.alternative}")
                Image.fromarray(pair).save(out / record["side_by_side"])
                cards.append(_card(record, pair))
            bar.update(len(found))
    (out / "index.html").write_text(_page(bundle.bundle_id, seed, cards))
    return len(inputs)


def side_by_side(image: np.ndarray, counterfactual: np.ndarray, left: str, right: str) -> np.ndarray:
    """(input | counterfactual) as one 8-bit image, each panel SIDE pixels wide under its label."""
    from PIL import Image, ImageDraw

    panels = [Image.fromarray(a).resize((SIDE, SIDE), Image.BILINEAR) for a in (image, counterfactual)]
    canvas = Image.new("L", (2 * SIDE + 4, SIDE + LABEL_HEIGHT), color=255)
    draw = ImageDraw.Draw(canvas)
    for i, (panel, text) in enumerate(zip(panels, (left, right))):
        canvas.paste(panel, (i * (SIDE + 4), LABEL_HEIGHT))
        draw.text((i * (SIDE + 4) + 2, 2), text, fill=0)
    return np.asarray(canvas)


def _card(record: dict, pair: np.ndarray) -> str:
    from factory.evaluate.report_html import png_uri, table

    rows = [[name, p] for name, p in record["probabilities"].items()]
    reached = "reached" if record["alternative_reached"] else "not reached"
    return (f"<h2>{html.escape(record['input'])}</h2><img src='{png_uri(pair, scale=1)}' alt='input and "
            f"counterfactual'><p class='labels'>diagnosis: {html.escape(record['diagnosis'])}; nearest "
            f"alternative: {html.escape(record['alternative'])} ({reached})</p>"
            f"<p class='report'>{html.escape(record['caption'])}</p>{table(rows, ['diagnosis', 'probability'])}")


def _page(bundle_id: str, seed: int, cards: list[str]) -> str:
    from factory.evaluate.report_html import STYLE

    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Explanations</title><style>{STYLE}</style>"
            f"</head><body><h1>Explanations by {html.escape(bundle_id)}</h1><p class='note'>For each image: the "
            f"diagnosis with the probability of every diagnosis, the caption that justifies it, and the X-ray of "
            f"the nearest alternative diagnosis (the counterfactual; reached: its representation decodes to that "
            f"diagnosis). Seed {seed}.</p>{''.join(cards)}</body></html>\n")
