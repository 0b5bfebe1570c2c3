"""Brain phantom benchmark: is physiological age learnable from one CT slice?

  python -m factory.bench.brain_age [--out docs/bench/brain_age.json] [--train 2000] [--test 500]

Writes 2,000 training and 500 held-out CT phantoms (different seeds, so different patients) as NIfTI,
reads them back through the volume adapter (resized to --input-size), trains a small CNN regressor
from scratch on CPU and reports Pearson r, MAE and RMSE of the predicted age on the held-out slices,
with generation and training wall times and the machine. Run it under `nice -n 10`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch
from tqdm import tqdm

from factory.data.adapters.volumes import open_volumes
from factory.data.phantoms.brain_formats import write_dataset
from factory.evaluate.brain_age import BRAIN_WINDOW, predict_ages, train_regressor, windowed

def machine_info() -> dict:
    return {"cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine()}


def load_ct(root: str, input_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = open_volumes(root, size=input_size)
    images, ages = [], []
    for i in tqdm(range(len(dataset)), desc="reading slices", unit="slice"):
        study = dataset[i]
        images.append(study.image)
        ages.append(study.labels[0])
    return windowed(torch.stack(images), BRAIN_WINDOW), torch.stack(ages)


def train_and_test(x_train, y_train, x_test, epochs: int, seed: int) -> tuple[np.ndarray, list[float]]:
    model, losses = train_regressor(x_train, y_train, epochs, seed)
    return predict_ages(model, x_test), losses


def run(train: int, test: int, size: int, input_size: int, epochs: int, seed: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        write_dataset(os.path.join(folder, "train"), train, "ct", "nifti", dims=2, size=size, seed=seed)
        write_dataset(os.path.join(folder, "test"), test, "ct", "nifti", dims=2, size=size, seed=seed + 1)
        generate_s = time.perf_counter() - start
        x_train, y_train = load_ct(os.path.join(folder, "train"), input_size)
        x_test, y_test = load_ct(os.path.join(folder, "test"), input_size)
    start = time.perf_counter()
    predicted, losses = train_and_test(x_train, y_train, x_test, epochs, seed)
    train_s = time.perf_counter() - start
    truth = y_test.numpy()
    error = predicted - truth
    return {
        "task": "physiological age from one axial CT slice (brain phantom)",
        "train_slices": train, "test_slices": test, "phantom_size": size, "input_size": input_size,
        "epochs": epochs, "seed": seed, "test_patients": f"seed {seed + 1} (none shared with training)",
        "pearson_r": round(float(np.corrcoef(predicted, truth)[0, 1]), 4),
        "mae_years": round(float(np.abs(error).mean()), 2),
        "rmse_years": round(float(np.sqrt((error ** 2).mean())), 2),
        "baseline_mae_years_predicting_mean": round(float(np.abs(truth - y_train.numpy().mean()).mean()), 2),
        "train_loss_per_epoch": losses,
        "generate_and_write_s": round(generate_s, 1),
        "slices_per_s_written": round((train + test) / generate_s, 1),
        "train_s": round(train_s, 1),
        "machine": machine_info(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/bench/brain_age.json")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--size", type=int, default=128, help="phantom slice side")
    parser.add_argument("--input-size", type=int, default=64, help="side the CNN sees")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    result = run(args.train, args.test, args.size, args.input_size, args.epochs, args.seed, args.threads)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", "train_loss_per_epoch")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
