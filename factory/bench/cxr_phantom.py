"""Chest X-ray phantom benchmarks.

  python -m factory.bench.cxr_phantom throughput [--count 2000] [--size 128] [--out FILE.json]
      studies per second on one core, image AND report included.
  python -m factory.bench.cxr_phantom learnability [--out docs/bench/cxr_learnability.json]
      a small CNN trained from scratch on 5,000 phantoms, per-finding AUC on 1,000 held-out ones
      (a Markdown table is written beside the JSON).
  python -m factory.bench.cxr_phantom contact-sheet [--out docs/cxr-contact-sheet.png]
      64 phantoms with their labels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from tqdm import tqdm

from factory.data.labels import CXR_LABELS
from factory.data.phantoms.cxr import generate_study, phantom_arrays
from factory.seeding import global_rng_seeded


def machine_info() -> dict:
    return {"cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine()}


def throughput(count: int, size: int, seed: int = 0) -> dict:
    torch.set_num_threads(1)
    generate_study(seed, 0, size)  # grids and texture bank are built once per size; not part of the rate
    start = time.perf_counter()
    for index in range(count):
        generate_study(seed, index, size)
    wall = time.perf_counter() - start
    return {"size": size, "count": count, "wall_s": round(wall, 3), "studies_per_s_per_core": round(count / wall, 1),
            "includes": "findings, image and report", "machine": machine_info()}


def small_cnn(classes: int) -> nn.Module:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                             nn.MaxPool2d(2))

    return nn.Sequential(block(1, 16), block(16, 32), block(32, 64), block(64, 96),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(96, classes))


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney rank statistic, ties averaged."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = truth > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def learnability(train: int, test: int, size: int, input_size: int, epochs: int, seed: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    x_train, y_train = phantom_arrays(seed, 0, train, size, input_size)
    x_test, y_test = phantom_arrays(seed, train, test, size, input_size)
    generated = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    with global_rng_seeded(seed):  # layer initialisation draws from the global generator
        model = small_cnn(len(CXR_LABELS))
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    batch = 64
    steps = epochs * ((train + batch - 1) // batch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    with tqdm(total=steps, desc="train", unit="step") as bar:
        for _ in range(epochs):
            for idx in torch.randperm(train, generator=gen).split(batch):
                loss = loss_fn(model(xt[idx]), yt[idx])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
    model.eval()
    with torch.no_grad():
        scores = torch.cat([torch.sigmoid(model(b)) for b in torch.from_numpy(x_test).split(256)]).numpy()
    aucs = {name: round(roc_auc(scores[:, k], y_test[:, k]), 3) for k, name in enumerate(CXR_LABELS)}
    return {
        "task": "per-finding AUC of a small CNN trained from scratch on phantom chest X-rays",
        "train_studies": train, "test_studies": test, "phantom_size": size, "input_size": input_size,
        "epochs": epochs, "seed": seed, "test_positives": {n: int(y_test[:, k].sum()) for k, n in enumerate(CXR_LABELS)},
        "auc": aucs, "min_auc": min(aucs.values()), "max_auc": max(aucs.values()),
        "generate_s": round(generated - start, 1), "wall_s": round(time.perf_counter() - start, 1),
        "machine": machine_info(),
    }


def markdown_table(result: dict) -> str:
    lines = ["| Finding | AUC | test positives |", "|---|---|---|"]
    for name, auc in result["auc"].items():
        lines.append(f"| {name} | {auc:.3f} | {result['test_positives'][name]} |")
    m = result["machine"]
    lines.append("")
    lines.append(f"{result['train_studies']} training / {result['test_studies']} held-out phantoms drawn at "
                 f"{result['phantom_size']}px, fed at {result['input_size']}px, {result['epochs']} epochs; "
                 f"wall time {result['wall_s']} s on {m['cpu_count']} CPUs ({m['torch_threads']} torch threads), "
                 f"torch {m['torch']}.")
    return "\n".join(lines) + "\n"


def contact_sheet(path: str, seed: int = 0, size: int = 128, columns: int = 8, rows: int = 8) -> None:
    caption = 34
    sheet = Image.new("RGB", (columns * size, rows * (size + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    short = {"No Finding": "normal", "Cardiomegaly": "cardiomeg", "Pleural Effusion": "effusion",
             "Pneumothorax": "PTX", "Consolidation/Pneumonia": "consol", "Edema": "edema",
             "Nodule/Mass": "nodule", "Atelectasis": "atelect", "Support Devices": "device"}
    for i in range(columns * rows):
        study = generate_study(seed, i, size)
        x0, y0 = (i % columns) * size, (i // columns) * (size + caption)
        sheet.paste(Image.fromarray(study.image).convert("RGB"), (x0, y0))
        words = [short["No Finding"]] if not study.findings else [
            f"{f.kind if f.name == 'Support Devices' else short[f.name]}"
            f"{'-' + f.laterality[0].upper() if f.laterality else ''} {f.severity:.1f}" for f in study.findings]
        lines = [", ".join(words[k:k + 2]) for k in range(0, len(words), 2)]
        draw.multiline_text((x0 + 2, y0 + size + 1), "\n".join(lines[:3]), fill=(0, 0, 0), spacing=0)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m factory.bench.cxr_phantom", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tp = sub.add_parser("throughput")
    tp.add_argument("--count", type=int, default=2000)
    tp.add_argument("--size", type=int, default=128)
    tp.add_argument("--out")
    lp = sub.add_parser("learnability")
    lp.add_argument("--out", default="docs/bench/cxr_learnability.json")
    lp.add_argument("--train", type=int, default=5000)
    lp.add_argument("--test", type=int, default=1000)
    lp.add_argument("--size", type=int, default=128, help="phantom side as drawn")
    lp.add_argument("--input-size", type=int, default=64, help="side fed to the CNN (area-downsampled)")
    lp.add_argument("--epochs", type=int, default=12)
    lp.add_argument("--seed", type=int, default=0)
    lp.add_argument("--threads", type=int, default=2)
    cp = sub.add_parser("contact-sheet")
    cp.add_argument("--out", default="docs/cxr-contact-sheet.png")
    cp.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "throughput":
        result = throughput(args.count, args.size)
        text = json.dumps(result, indent=2)
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text + "\n")
    elif args.command == "learnability":
        result = learnability(args.train, args.test, args.size, args.input_size, args.epochs, args.seed, args.threads)
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
            f.write(markdown_table(result))
        print(markdown_table(result))
    else:
        contact_sheet(args.out, args.seed)
        print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
