"""`medsynth bench train xraygan`: XRAY-GAN's CGAN and UCGAN learn on phantom chest X-rays.

Learning curves (per model): each trains through the runner (Ray Train, 2 workers, DeepSpeed) within
the same CPU budget as `medsynth bench train emixer` (`--minutes` CPU-minutes of the process tree,
split into `--segments` runs that resume by name; train_emixer's planner, meter and judge). At each
evaluation point (step 0, then snapshot and end bundles):
  CGAN   one image per held-out real phantom's label vector: the judge's macro ROC-AUC on the images
         for their conditioning labels, next to the judge on those real phantoms; FID in judge
         features from a second real set, next to real-vs-real FID.
  UCGAN  as many images from noise; C's pseudo-labels; the share kept at the threshold t; the
         judge's macro-AUC on the kept images for their pseudo-labels; FID of all images.
Table 3 (the paper's): a classifier (the judge's architecture, from scratch, the augmentation
study's loop) trained on each final generator's images only (CGAN: conditioning labels; UCGAN: kept
pseudo-labels), tested on the held-out real phantoms: precision and recall per finding at 0.5.
Table 4 (the paper's): UCGAN trained in process (plain torch engines, the same recipe) on
`--table4-real` real phantoms for `--table4-steps` steps per run; C's macro-AUC on the held-out real
phantoms for each threshold t, against the same C trained on real images only (C alone, as UCGAN's C
step at xi = 0), mean and spread over `--seeds` seeds, with C's curve every `--table4-every` steps.
`--table4-unlabelled N` adds N films whose labels are withheld (half of every batch, in every arm: G, D
and T learn from them, C's cross-entropy does not); `--thresholds none` runs the real-only arm alone.
`--models none` runs Table 4 alone.
EMIXER's image branch at the same budget comes from its own benchmark's JSON (`--emixer-json`), put in
the same table.

Writes docs/bench/train_xraygan.json (machine, settings, CPU minutes, every point and table), the
tables as Markdown (docs/bench/train_xraygan_tables.md, beside the JSON) and the curves as a PNG
(docs/bench/xraygan-learning.png). `--replot A.json B.json` draws the PNG from saved runs (say, one per model)
scored by the same judge, training nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any, Sequence

import numpy as np

from factory.bench import segments
from factory.bench.train_emixer import CpuMeter, bench_settings, get_judge, machine, real_sets, write_results
from factory.bench.xraygan_plot import plot_xraygan
from factory.data.labels import CXR_LABELS

MODELS = ("xraygan-cgan", "xraygan-ucgan")
# CPU-sized widths (the job configs' on GPUs: jobs/configs/train-xraygan-*.yaml). The CGAN's D is
# matching-aware and projects the labels onto its features (neither is the paper's; at 30 CPU-minutes
# the judge read the CGAN's images at macro-AUC 0.818 with both, 0.684 with the mismatch term alone;
# docs/bench/train_xraygan.md).
BENCH_MODEL: dict[str, dict[str, Any]] = {
    "xraygan-cgan": {"g_width": 32, "d_width": 32, "mismatch_weight": 0.5, "projection": True},
    "xraygan-ucgan": {"g_width": 32, "d_width": 32, "c_width": 16},
}
TABLE4_OFFSET = 3_000_000  # Table 4's real training phantoms: indices apart from every other set
MINIMUM = {"cgan_macro_auc": 0.80, "ucgan_gain_over_real_only": 0.02}


# --- evaluation ----------------------------------------------------------------------------------

def generated(model: str, nets: dict, config: dict, labels: np.ndarray, seed: int, batch: int = 250):
    """(images uint8 (N, S, S), labels (N, L) 0/1, confidence (N,) or None): CGAN on the given label
    vectors, UCGAN from noise with C's pseudo-labels."""
    import torch

    from factory.models import registry
    from factory.models.spec import ImageSampling

    product = registry.spec(model).product(ImageSampling)
    conditioning = torch.from_numpy(np.nan_to_num(labels, nan=0.0) == 1).float()
    noise = torch.randn(len(labels), product.z_dim(config), generator=torch.Generator().manual_seed(seed))
    images, vectors, confidence = [], [], []
    for start in range(0, len(labels), batch):
        part = slice(start, start + batch)
        if product.conditional:
            images.append(product.generate(nets, conditioning[part], noise[part]))
            vectors.append(conditioning[part].numpy())
        else:
            chunk = product.generate(nets, None, noise[part])
            found, sure = product.pseudo_label(nets, chunk)
            images.append(chunk), vectors.append(found), confidence.append(sure)
    return (np.concatenate(images), np.concatenate(vectors).astype(np.float32),
            np.concatenate(confidence) if confidence else None)


class Evaluator:
    def __init__(self, judge, real, seed: int):
        from factory.evaluate.image_metrics import fid, multilabel_auc

        self.judge, self.real, self.seed = judge, real, seed
        features, probabilities = judge.evaluate(real.images)
        self.reference_features = judge.features(real.reference_images)
        auc = multilabel_auc(probabilities, real.labels, CXR_LABELS)
        self.baseline = {"count": len(real.images), "real_macro_auc": auc["macro_auc"], "real_auc": auc["auc"],
                         "positives": auc["positives"], "real_vs_real_fid": fid(self.reference_features, features)}

    def __call__(self, model: str, nets: dict, config: dict) -> dict[str, Any]:
        from factory.evaluate.image_metrics import fid, label_fidelity

        images, labels, confidence = generated(model, nets, config, self.real.labels, self.seed)
        features, probabilities = self.judge.evaluate(images)
        scores: dict[str, Any] = {"fid": fid(self.reference_features, features)}
        keep = np.ones(len(images), bool) if confidence is None else confidence >= config["threshold"]
        scores["kept"] = float(keep.mean())
        if keep.sum() >= 2:
            fidelity = label_fidelity(probabilities[keep], labels[keep], CXR_LABELS)
            scores.update(macro_auc=fidelity["macro_auc"], auc=fidelity["auc"])
        else:
            scores.update(macro_auc=float("nan"), auc={})
        if confidence is not None:
            scores["pseudo_label_counts"] = {n: int(c) for n, c in zip(CXR_LABELS, labels[keep].sum(axis=0))}
        return {**scores, "_images": images, "_labels": labels, "_keep": keep}


def classifier_on(images: np.ndarray, labels: np.ndarray, real, *, seed: int, epochs: int) -> dict[str, Any]:
    """Table 3: a judge-architecture classifier trained from scratch on (images, labels) only, tested on
    the held-out real phantoms: per-finding precision and recall at 0.5, and macro-AUC."""
    import torch

    from factory.evaluate.image_metrics import multilabel_auc, present
    from factory.evaluate.judge import Judge, _fit, to_judge_input
    from factory.models import registry
    from factory.seeding import global_rng_seeded

    size = int(images.shape[-1])
    config = registry.make_config("judge", {"image_size": size, "num_labels": len(CXR_LABELS)})
    with global_rng_seeded(seed, torch.device("cpu")):
        net = registry.build_networks("judge", config)["judge"]
        _fit(net, to_judge_input(images, size), torch.from_numpy(present(labels).astype(np.float32)), epochs, 64,
             3e-3, seed, torch.device("cpu"), False)
    probabilities = Judge(net, list(CXR_LABELS), device="cpu").probabilities(real.images)
    stated, truth = probabilities >= 0.5, present(real.labels)
    table = {}
    for k, name in enumerate(CXR_LABELS):
        tp, fp, fn = (int((stated[:, k] & truth[:, k]).sum()), int((stated[:, k] & ~truth[:, k]).sum()),
                      int((~stated[:, k] & truth[:, k]).sum()))
        table[name] = {"precision": tp / (tp + fp) if tp + fp else float("nan"),
                       "recall": tp / (tp + fn) if tp + fn else float("nan"), "positives": int(truth[:, k].sum())}
    return {"per_finding": table, "macro_auc": multilabel_auc(probabilities, real.labels, CXR_LABELS)["macro_auc"],
            "trained_on": len(images)}


# --- learning runs -------------------------------------------------------------------------------

def train_config(args, model: str, storage: str, steps: int, **changes):
    from factory.config import TrainConfig

    settings = {"name": f"{model}-bench", "storage_path": storage, "recipe": model, "model": BENCH_MODEL[model],
                "data": {"source": "phantom-cxr", "count": args.count, "size": args.size, "seed": args.seed},
                "steps": steps, "batch_size": args.batch, "workers": args.workers, "zero_stage": args.zero_stage,
                "checkpoint_every": steps, "seed": args.seed, "max_failures": 0}
    settings.update(changes)
    return TrainConfig.model_validate(settings)


def learn(model: str, args, work: str, evaluator: Evaluator, meter: CpuMeter) -> dict[str, Any]:
    """One model's segments and evaluation points, then Table 3 on its final images."""
    run = segments.learn(model, lambda storage, steps, **changes: train_config(args, model, storage, steps, **changes),
                         lambda nets, config: evaluator(model, nets, config), args, work, meter,
                         lambda point: _point_line(model, point))
    final = run["final"]
    cpu = meter.seconds()
    keep = final["_keep"]
    table3 = (classifier_on(final["_images"][keep], final["_labels"][keep], evaluator.real, seed=args.seed,
                            epochs=args.table3_epochs) if keep.sum() >= 2 else None)
    return {"points": [segments.strip(p) for p in run["points"]], "final": segments.strip(final), "table3": table3,
            "model_config": run["bundle"].model_config,
            "cpu_minutes": {**run["cpu_minutes"], "table3": (meter.seconds() - cpu) / 60},
            "_images": final["_images"][:16]}


def _point_line(model: str, point: dict) -> str:
    return (f"{model} step {point['step']:5d}  CPU {point['train_cpu_minutes']:5.1f} min  "
            f"macro-AUC {point['macro_auc']:.3f}  FID {point['fid']:8.2f}  kept {point['kept']:.2f}")


# --- Table 4 -------------------------------------------------------------------------------------

def table4(args, real) -> dict[str, Any]:
    """UCGAN's C on `--table4-real` real phantoms, per threshold and real-only, over seeds (in process).

    Each threshold arm trains the whole UCGAN (G, D, T and C): the pseudo-labels come from the current
    C inside training (§4.2), so the threshold changes C and G from the first step and no arm's run
    can be shared with another's. The real-only arm trains C alone, with the same initial weights,
    batches, optimiser and loss as UCGAN's C step at xi = 0: G, D and T could not change its weights
    there, and UCGAN's C keeps the running statistics of its real batches. C's macro-AUC on the held-out
    real phantoms is read every `--table4-every` steps (its curve, to see whether it has levelled).
    Seeds run in `--table4-jobs` processes at once (the CPU meter counts them)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    settings = {k: getattr(args, k) for k in ("seed", "size", "batch", "thresholds", "table4_real", "table4_steps",
                                              "table4_every", "table4_threads", "table4_unlabelled")}
    seeds = range(args.seeds)
    if args.table4_jobs > 1:
        # spawn: the parent's torch thread pool does not survive a fork safely
        with ProcessPoolExecutor(args.table4_jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            per_seed = list(pool.map(table4_seed, [settings] * len(seeds), [real.images] * len(seeds),
                                     [real.labels] * len(seeds), seeds))
    else:
        per_seed = [table4_seed(settings, real.images, real.labels, seed) for seed in seeds]
    runs = {label: [arms[label] for arms in per_seed] for label in per_seed[0]}
    summary = {label: {"mean": float(np.mean([r["macro_auc"] for r in v])),
                       "std": float(np.std([r["macro_auc"] for r in v])), "runs": v} for label, v in runs.items()}
    return {"real_images": args.table4_real, "unlabelled_images": args.table4_unlabelled, "steps": args.table4_steps,
            "seeds": args.seeds, "batch": args.batch, "arms": summary}


def real_only_step(recipe, engines: dict, images, targets) -> None:
    """Table 4's real-only arm: UCGAN's C step at xi = 0 (tau x cross-entropy on the real batch), alone."""
    from factory.train.recipes.xraygan import soft_cross_entropy

    C = engines["C"]
    C.backward(recipe.config["tau"] * soft_cross_entropy(C(images), targets))
    C.step()


def table4_seed(settings: dict[str, Any], test_images: np.ndarray, test_labels: np.ndarray,
                seed: int) -> dict[str, dict[str, Any]]:
    """One seed of Table 4: every arm's run (table4)."""
    import torch

    from factory.data.phantoms.cxr import generate_study
    from factory.evaluate.image_metrics import multilabel_auc
    from factory.models.xraygan.ucgan import class_targets
    from factory.train.engines import torch_engines
    from factory.train.recipes import get_recipe

    size, batch, steps = settings["size"], settings["batch"], settings["table4_steps"]
    # One thread: on a loaded 2-core machine, two intra-op threads spent 9.3 CPU-s a UCGAN step, against 1.3.
    torch.set_num_threads(settings["table4_threads"])
    labelled, unlabelled = settings["table4_real"], settings.get("table4_unlabelled", 0)
    # Unlabelled films: further phantoms whose labels are withheld (all-zero targets weigh nothing in
    # C's cross-entropy); each batch is then half labelled, half unlabelled.
    studies = [generate_study(settings["seed"], TABLE4_OFFSET + i, size) for i in range(labelled + unlabelled)]
    images = torch.from_numpy(np.stack([s.image for s in studies])).float().div(127.5).sub(1)[:, None]
    labels = torch.from_numpy(np.stack([s.labels for s in studies]) == 1).float()
    targets = class_targets(labels, CXR_LABELS)
    targets[labelled:] = 0
    labels[labelled:] = 0
    from_labelled = batch - batch // 2 if unlabelled else batch
    test = torch.from_numpy(test_images).float().div(127.5).sub(1)[:, None]
    every = settings["table4_every"] or steps
    checkpoints = sorted({*range(every, steps + 1, every), steps})

    def macro_auc(C: torch.nn.Module) -> float:
        C.eval()
        with torch.inference_mode():
            probabilities = torch.cat([torch.softmax(C(x), dim=1) for x in test.split(250)]).numpy()
        C.train()
        return multilabel_auc(probabilities, test_labels, CXR_LABELS)["macro_auc"]

    runs: dict[str, dict[str, Any]] = {}
    for label, threshold in [("real only", None)] + [(f"t={t}", t) for t in settings["thresholds"]]:
        cpu = time.process_time()
        recipe = get_recipe("xraygan-ucgan")
        changes = {} if threshold is None else {"threshold": threshold}
        nets = recipe.build({**BENCH_MODEL["xraygan-ucgan"], "image_size": size, **changes}, seed=seed)
        if threshold is None:
            nets = {"C": nets["C"]}
        engines = torch_engines(nets, recipe.optimizer_config)
        generator = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng([seed, 4])
        curve, kept = [], []
        for step in range(1, steps + 1):
            index = torch.from_numpy(rng.choice(labelled, size=from_labelled, replace=False))
            if unlabelled:
                index = torch.cat([index, labelled + torch.from_numpy(
                    rng.choice(unlabelled, size=batch - from_labelled, replace=False))])
            if threshold is None:
                real_only_step(recipe, engines, images[index], targets[index])
            else:
                losses = recipe.train_step(engines, {"image": images[index], "labels": labels[index],
                                                     "targets": targets[index]}, step - 1, generator)
                kept.append(losses["c_kept"])
            if step in checkpoints:
                curve.append({"step": step, "macro_auc": macro_auc(nets["C"])})
        run = {"seed": seed, "macro_auc": curve[-1]["macro_auc"], "curve": curve,
               "cpu_minutes": (time.process_time() - cpu) / 60}
        if kept:
            run["kept_share"] = float(np.mean(kept))
        runs[label] = run
        print(f"table 4 seed {seed} {label:9s} macro-AUC {run['macro_auc']:.3f}  CPU {run['cpu_minutes']:.1f} min"
              + (f"  kept {run['kept_share']:.2f}" if kept else ""), flush=True)
    return runs


# --- output --------------------------------------------------------------------------------------

def tables(result: dict[str, Any]) -> str:
    real = result["real"]
    lines = ["| generator | train CPU-min | judge macro-AUC (its labels) | FID (judge features) | kept |",
             "|---|---|---|---|---|"]
    models = [m for m in MODELS if m in result]
    for model in models:
        for p in result[model]["points"]:
            lines.append(f"| {model} step {p['step']} | {p['train_cpu_minutes']:.1f} | {p['macro_auc']:.3f} | "
                         f"{p['fid']:.1f} | {p['kept']:.2f} |")
    emixer = result.get("emixer_image_branch")
    if emixer:
        other = "" if emixer.get("same_judge", True) else f", scored by another judge ({emixer['judge_bundle_id']})"
        lines.append(f"| emixer (final, {emixer['source']}{other}) | {emixer['train_cpu_minutes']:.1f} | "
                     f"{emixer['macro_auc']:.3f} | {emixer['fid']:.1f} | |")
    lines.append(f"| real phantoms | | {real['real_macro_auc']:.3f} | {real['real_vs_real_fid']:.1f} (real vs real) | |")
    if models:
        lines += ["", "Table 3: classifier trained on generated images only, tested on held-out real phantoms",
                  "", "| finding | " + " | ".join(f"{m} precision | {m} recall" for m in models) + " | positives |",
                  "|---|" + "---|---|" * len(models) + "---|"]
        for name in CXR_LABELS:
            cells = []
            for model in models:
                t3 = result[model]["table3"]
                row = t3["per_finding"][name] if t3 else {"precision": float("nan"), "recall": float("nan")}
                cells += [f"{row['precision']:.3f}", f"{row['recall']:.3f}"]
            positives = next((result[m]["table3"]["per_finding"][name]["positives"] for m in models
                              if result[m]["table3"]), "")
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {positives} |")
    t4 = result.get("table4")
    if t4:
        unlabelled = t4.get("unlabelled_images", 0)
        pool = (f" and {unlabelled} unlabelled ones (each batch half labelled, half unlabelled)" if unlabelled else "")
        lines += ["", f"Table 4: UCGAN's C macro-AUC on held-out real phantoms, {t4['real_images']} real training "
                      f"images{pool}, {t4['steps']} steps of batch {t4['batch']}, mean ± std of {t4['seeds']} seeds", "",
                  "| arm | macro-AUC | per seed | kept share | CPU-min per run |", "|---|---|---|---|---|"]
        for arm, s in t4["arms"].items():
            kept = [r["kept_share"] for r in s["runs"] if "kept_share" in r]
            seeds = ", ".join(f"{r['macro_auc']:.3f}" for r in s["runs"])
            kept_cell = f"{np.mean(kept):.2f}" if kept else ""
            lines.append(f"| {arm} | {s['mean']:.3f} ± {s['std']:.3f} | {seeds} | {kept_cell} | "
                         f"{np.mean([r['cpu_minutes'] for r in s['runs']]):.1f} |")
    return "\n".join(lines)


def emixer_image_branch(path: str, judge_id: str) -> dict[str, Any] | None:
    """EMIXER's final image scores from its own benchmark's JSON, if there is one, and whether the judge
    that scored them is this run's (`judge_id`): scores of another judge do not share a scale."""
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        result = json.load(f)
    final = result.get("final") or {}
    if "macro_auc" not in final:
        return None
    judge = result.get("judge", {}).get("bundle_id")
    if judge != judge_id:
        print(f"note: {path} was scored by judge {judge}, this run by {judge_id}; its row is marked so")
    return {"source": os.path.basename(path), "macro_auc": final["macro_auc"], "fid": final["fid"],
            "train_cpu_minutes": final["train_cpu_minutes"], "budget_minutes": result["settings"]["minutes"],
            "judge_bundle_id": judge, "same_judge": judge == judge_id}


def parse_thresholds(text: str) -> list[float]:
    if text.strip() == "none":  # the real-only arm alone: how far C gets on real images
        return []
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise SystemExit(f"--thresholds must be numbers in [0, 1], not {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medsynth bench train xraygan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget per model in CPU-minutes "
                                                                     "(process tree; EMIXER's bench default)")
    parser.add_argument("--segments", type=int, default=2)
    parser.add_argument("--first-steps", type=int, default=40, help="cap the first segment's steps (0: no cap)")
    parser.add_argument("--points", type=int, default=4, help="evaluation points per model (plus step 0)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--count", type=int, default=5000, help="training phantoms")
    parser.add_argument("--batch", type=int, default=16, help="micro-batch per worker (and Table 4's batch)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--zero-stage", type=int, default=2, choices=[0, 1, 2])
    parser.add_argument("--models", default=",".join(MODELS),
                        help="which learning runs (comma-separated; none: Table 4 alone)")
    parser.add_argument("--eval-count", type=int, default=500, help="held-out real phantoms (and samples) per point")
    parser.add_argument("--eval-threads", type=int, default=2)
    parser.add_argument("--table3-epochs", type=int, default=8, help="epochs of Table 3's classifier")
    parser.add_argument("--table4-real", type=int, default=500, help="Table 4: real training phantoms")
    parser.add_argument("--table4-steps", type=int, default=300,
                        help="Table 4: steps per run (0: no Table 4); thresholds x seeds UCGAN runs, each step about "
                             "1.2 CPU-s at 64 px and batch 16 with the bench widths (0.33 at 32 px), and seeds "
                             "real-only runs of C alone, about 0.12 CPU-s a step at 64 px")
    parser.add_argument("--table4-unlabelled", type=int, default=0,
                        help="Table 4: further phantoms with their labels withheld; each batch is then half "
                             "labelled (C's cross-entropy), half unlabelled (G, D, T and C's statistics), in every arm")
    parser.add_argument("--table4-jobs", type=int, default=1, help="Table 4: seeds run in this many processes at once")
    parser.add_argument("--table4-threads", type=int, default=1, help="Table 4: torch threads")
    parser.add_argument("--table4-every", type=int, default=50,
                        help="Table 4: read C's macro-AUC every this many steps (0: at the end only)")
    parser.add_argument("--thresholds", type=parse_thresholds, default=[0.6, 0.7, 0.8, 0.9],
                        help="Table 4: the UCGAN arms' t (comma-separated; none: the real-only arm alone)")
    parser.add_argument("--seeds", type=int, default=3, help="Table 4: seeds per arm")
    parser.add_argument("--judge", help="a judge bundle URL (default: train one at --size into the work folder)")
    parser.add_argument("--judge-count", type=int, default=5000)
    parser.add_argument("--judge-epochs", type=int, default=8)
    parser.add_argument("--emixer-json", default="docs/bench/train_emixer.json",
                        help="EMIXER's learning benchmark, for its image branch in the same table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="folder for the judge, runs and bundles (default: a new temporary one)")
    parser.add_argument("--out", default="docs/bench/train_xraygan.json")
    parser.add_argument("--plot", default="docs/bench/xraygan-learning.png", help="learning curves PNG")
    parser.add_argument("--replot", nargs="+", metavar="JSON",
                        help="train nothing: draw --plot from these benchmark JSONs (same judge and held-out set)")
    args = parser.parse_args(argv)
    if args.replot:
        return replot(args.replot, args.plot)
    models = [] if args.models == "none" else [m.strip() for m in args.models.split(",") if m.strip()]
    if set(models) - set(MODELS) or not (models or args.table4_steps):
        raise SystemExit(f"--models must name some of {list(MODELS)} (or none, with Table 4), not {args.models!r}")
    os.environ.setdefault("RAY_ADDRESS", "")  # a local Ray instance: the CPU meter sees its processes

    import torch

    work = args.work or tempfile.mkdtemp(prefix="medsynth-bench-xraygan-")
    os.makedirs(work, exist_ok=True)
    print(f"work folder: {work}")
    torch.set_num_threads(args.eval_threads)
    meter, started = CpuMeter(), time.perf_counter()
    judge, judge_info = get_judge(args, work, meter)
    real = real_sets(args.eval_count, args.size, args.seed)
    evaluator = Evaluator(judge, real, seed=args.seed + 17)
    base = evaluator.baseline
    print(f"real: judge macro-AUC {base['real_macro_auc']:.3f}, real-vs-real FID {base['real_vs_real_fid']:.2f}")
    result: dict[str, Any] = {"benchmark": "train xraygan", "real": base, "judge": judge_info}
    for model in models:
        result[model] = learn(model, args, work, evaluator, meter)
    cpu = meter.seconds()
    result["table4"] = table4(args, real) if args.table4_steps else None
    table4_cpu = meter.seconds() - cpu
    result["emixer_image_branch"] = emixer_image_branch(args.emixer_json, judge_info["bundle_id"])
    minimum: dict[str, Any] = {}
    if "xraygan-cgan" in result:
        value = result["xraygan-cgan"]["final"]["macro_auc"]
        minimum["cgan_judge_macro_auc"] = {"target": MINIMUM["cgan_macro_auc"], "value": value,
                                           "met": bool(value >= MINIMUM["cgan_macro_auc"])}
    if result["table4"] and "t=0.8" in result["table4"]["arms"]:
        arms = result["table4"]["arms"]
        gain = arms["t=0.8"]["mean"] - arms["real only"]["mean"]
        minimum["ucgan_c_gain_at_t_0.8"] = {"target": MINIMUM["ucgan_gain_over_real_only"], "value": gain,
                                            "seeds": args.seeds, "real_images": args.table4_real,
                                            "unlabelled_images": args.table4_unlabelled,
                                            "met": bool(gain >= MINIMUM["ucgan_gain_over_real_only"])}
    result["minimum"] = minimum
    result["settings"] = bench_settings(args, judge_info) | {"bench_model": BENCH_MODEL}
    result["machine"] = machine()
    result["cpu_minutes"] = {"judge": judge_info["cpu_s"] / 60, "table4": table4_cpu / 60, "total": meter.seconds() / 60}
    result["wall_minutes"] = (time.perf_counter() - started) / 60
    meter.close()
    write_results(args.out, {k: ({n: v2 for n, v2 in v.items() if not n.startswith("_")} if k in MODELS else v)
                              for k, v in result.items()}, tables(result))
    plot_xraygan([result], args.plot, MODELS)
    print(json.dumps(minimum, indent=2))
    print(f"wrote {args.out} and {args.plot}")
    return 0


def replot(paths: Sequence[str], plot: str) -> int:
    """Draw the learning curves of saved benchmark JSONs into one PNG."""
    results = []
    for path in paths:
        with open(path) as f:
            results.append(json.load(f))
    try:
        plot_xraygan(results, plot, MODELS)
    except (ValueError, KeyError) as err:
        raise SystemExit(f"cannot draw these results together: {err}") from err
    print(f"wrote {plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
