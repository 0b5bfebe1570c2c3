"""`medsynth bench train medrat`: MedRAT writes reports for held-out phantom films it never saw paired
with a report.

Arms, each trained through the runner (Ray Train, `--workers` workers, DeepSpeed) within the same
budget, `--minutes` CPU-minutes of the process tree (factory.bench.segments):
  medrat             the paper's model (§3): shared memory, contrastive loss, classification head
  no-memory          Table 4's ablations at the same budget: memory_size 0 (f_m = f),
  no-contrastive       contrast_weight 0,
  no-classification    class_weight 0
  emixer-f           EMIXER at its bench's settings (train_emixer.BENCH_MODEL; F's ResNet-10 encoder
                     from scratch, as MedRAT's CNN is), trained on paired phantoms; its F reads the films
At each evaluation point, on `--eval-count` held-out phantoms (indices far past the training ones) with
known reports and labels: BLEU-1..4, ROUGE-L and CIDEr-D against the true report, and clinical efficacy
as the paper measures it (the labeler on the written reports against the films' true labels:
precision, recall and F1, micro and macro over the eight findings).
Baselines at the end: the always-normal report (the phantom writer's report of a film with no finding); retrieval (the final medrat's classification head
reads each film's findings, the training report whose findings match them best is its report); the
true findings written again in the phantom writer's other phrasing (what BLEU against one reference
allows a perfect reader).

Writes docs/bench/train_medrat.json (machine, settings, CPU minutes, every point), the tables
(docs/bench/train_medrat_tables.md) and example rows (docs/medrat-examples.png).
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
from factory.bench.train_emixer import BENCH_MODEL as EMIXER_BENCH_MODEL
from factory.bench.train_emixer import CpuMeter, machine, real_sets, write_results

ABLATIONS: dict[str, dict[str, Any]] = {
    "medrat": {},
    "no-memory": {"memory_size": 0, "memory_top_k": 0},
    "no-contrastive": {"contrast_weight": 0.0},
    "no-classification": {"class_weight": 0.0},
}
ARMS = (*ABLATIONS, "emixer-f")
MINIMUM = {"ce_micro_f1": 0.50, "bleu_1": 0.35}


def text_scores(reports: Sequence[str], real) -> dict[str, Any]:
    """Report-generation metrics against the true reports, and clinical efficacy against the true labels."""
    from factory.evaluate.text_metrics import clinical_efficacy, report_metrics, stated_findings

    return {**report_metrics(reports, real.reports), "ce": clinical_efficacy(stated_findings(reports), real.labels),
            "example_report": reports[0]}


def medrat_reports(nets: dict, vocabulary, images: np.ndarray, batch: int = 250, beam: int | None = None) -> list[str]:
    """MedRAT's reports of the films, decoded as its config says (`beam` None) or by a beam of that width
    (1: greedy)."""
    from factory.models import medrat

    reports: list[str] = []
    for start in range(0, len(images), batch):
        reports += medrat.decode_reports(medrat.caption(nets, images[start:start + batch], beam=beam), vocabulary)
    return reports


def emixer_reports(nets: dict, vocabulary, images: np.ndarray, batch: int = 250) -> list[str]:
    import torch

    from factory.models import emixer

    reports: list[str] = []
    for start in range(0, len(images), batch):
        films = torch.from_numpy(images[start:start + batch]).float()[:, None] / 127.5 - 1
        reports += emixer.decode_reports(emixer.write_reports(nets, films), vocabulary)
    return reports


def train_config(args, arm: str, storage: str, steps: int, **changes):
    from factory.config import TrainConfig

    data = {"source": "phantom-cxr", "count": args.count, "size": args.size, "seed": args.seed, "min_word_count": 6}
    if arm == "emixer-f":
        recipe, model = "emixer", {**EMIXER_BENCH_MODEL, "f_encoder_frozen": False}
    else:
        recipe, model = "medrat", {**args.model, **ABLATIONS[arm]}
    settings = {"name": f"{arm}-bench", "storage_path": storage, "recipe": recipe, "model": model, "data": data,
                "steps": steps, "batch_size": args.batch, "workers": args.workers, "zero_stage": args.zero_stage,
                "checkpoint_every": steps, "seed": args.seed, "max_failures": 0}
    settings.update(changes)
    return TrainConfig.model_validate(settings)


def retrieval_reports(bundle, config, real, args) -> list[str]:
    """The retrieval baseline: the final medrat's classification head reads each film's findings; its report
    is the training report (of the report side) whose present findings differ from them in fewest labels."""
    import torch

    from factory.evaluate.image_metrics import present
    from factory.models import medrat
    from factory.train.data import load_training_data, prepare_data
    from factory.train.recipes import get_recipe

    data = load_training_data(prepare_data(config, get_recipe("medrat"), progress=False))
    corpus = data.parts["reports"]
    corpus_labels = present(np.asarray(corpus.labels)).astype(np.int8)
    model = bundle.nets[medrat.NET_NAME].eval()
    first = next(model.parameters())
    with torch.inference_mode():
        found = []
        for start in range(0, len(real.images), 250):
            x = medrat.to_model_images(real.images[start:start + 250], model, first)
            found.append(torch.sigmoid(model.classify(model.encode_images(x)[1])).numpy() >= 0.5)
    predicted = np.concatenate(found).astype(np.int8)
    distance = np.abs(predicted[:, None, :] - corpus_labels[None, :, :]).sum(axis=-1)
    return [corpus.reports[int(i)] for i in distance.argmin(axis=1)]  # ties: the first report in corpus order


def examples_figure(real, rows: dict[str, list[str]], path: str, count: int = 4) -> None:
    """Example rows: the film, its true report and each writer's report."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["true report", *rows]
    fig, axes = plt.subplots(count, len(columns) + 1, figsize=(3.2 * (len(columns) + 1), 2.8 * count),
                             gridspec_kw={"width_ratios": [1] + [1.6] * len(columns)})
    for r in range(count):
        axes[r, 0].imshow(real.images[r], cmap="gray", vmin=0, vmax=255)
        findings = [n for n, v in zip(real.label_names, real.labels[r]) if v == 1]
        axes[r, 0].set_title("\n".join(textwrap.wrap(", ".join(findings) or "-", 28)), fontsize=6)
        texts = [real.reports[r], *(reports[r] for reports in rows.values())]
        for c, (name, text) in enumerate(zip(columns, texts), start=1):
            axes[r, c].text(0, 1, "\n".join(textwrap.wrap(text, 48)[:14]), fontsize=6, va="top", family="monospace")
            if r == 0:
                axes[r, c].set_title(name, fontsize=9)
        for ax in axes[r]:
            ax.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ce_cell(ce: dict) -> str:
    mi, ma = ce["micro"], ce["macro"]
    return (f"{mi['precision']:.3f} / {mi['recall']:.3f} / **{mi['f1']:.3f}** | "
            f"{ma['precision']:.3f} / {ma['recall']:.3f} / **{ma['f1']:.3f}**")


def tables(result: dict[str, Any]) -> str:
    head = ("| writer | train CPU-min | steps | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | ROUGE-L | CIDEr-D | "
            "CE micro P / R / F1 | CE macro P / R / F1 |")
    lines = [head, "|" + "---|" * 11]

    def row(name: str, scores: dict, cpu: str = "", steps: str = "") -> None:
        lines.append(f"| {name} | {cpu} | {steps} | {scores['bleu_1']:.3f} | {scores['bleu_2']:.3f} | "
                     f"{scores['bleu_3']:.3f} | {scores['bleu_4']:.3f} | {scores['rouge_l']:.3f} | "
                     f"{scores['cider']:.3f} | {ce_cell(scores['ce'])} |")

    for arm in ARMS:
        if arm in result["arms"]:
            for name, key in ((arm, "final"), (f"{arm}, greedy", "final_greedy")):
                final = result["arms"][arm].get(key)
                if final:
                    cpu = "" if final["train_cpu_minutes"] is None else f"{final['train_cpu_minutes']:.1f}"
                    row(name, final, cpu, str(final["step"]))
    for name, scores in result["baselines"].items():
        row(name, scores)
    lines += ["", "Learning curves (clinical-efficacy micro F1 / BLEU-1 per evaluation point):", ""]
    for arm, run in result["arms"].items():
        curve = ", ".join(f"{p['step']}: {p['ce']['micro']['f1']:.3f} / {p['bleu_1']:.3f}" for p in run["points"])
        lines.append(f"- {arm}: {curve}")
    return "\n".join(lines)


def parse_model(pairs: Sequence[str]) -> dict[str, Any]:
    return {key: json.loads(value) for key, _, value in (pair.partition("=") for pair in pairs)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medsynth bench train medrat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per arm in CPU-minutes")
    parser.add_argument("--segments", type=int, default=2)
    parser.add_argument("--first-steps", type=int, default=40, help="cap the first segment's steps (0: no cap)")
    parser.add_argument("--points", type=int, default=3, help="evaluation points per arm (plus step 0)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--count", type=int, default=4000, help="training phantoms (split by patient into the "
                                                               "image side and the report side for medrat)")
    parser.add_argument("--batch", type=int, default=16, help="micro-batch per worker")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--zero-stage", type=int, default=2, choices=[0, 1, 2])
    parser.add_argument("--arms", default=",".join(ARMS), help=f"which arms (comma-separated, of {', '.join(ARMS)})")
    parser.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                        help="medrat config overrides for every medrat arm (JSON values)")
    parser.add_argument("--eval-count", type=int, default=500, help="held-out phantoms per point")
    parser.add_argument("--eval-threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="folder for runs and bundles (default: a new temporary one)")
    parser.add_argument("--out", default="docs/bench/train_medrat.json")
    parser.add_argument("--figure", default="docs/medrat-examples.png")
    parser.add_argument("--bundle", help="score this trained medrat bundle instead of training one (arms: medrat; "
                                         "its training settings are the bundle's, not the options above)")
    args = parser.parse_args(argv)
    args.model = parse_model(args.model)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or set(arms) - set(ARMS):
        raise SystemExit(f"--arms must name some of {list(ARMS)}, not {args.arms!r}")
    if args.bundle and arms != ["medrat"]:
        raise SystemExit("--bundle scores one medrat bundle: give --arms medrat with it")
    os.environ.setdefault("RAY_ADDRESS", "")  # a local Ray instance: the CPU meter sees its processes

    import torch

    from factory.data.labels import CXR_LABELS
    from factory.data.text.reports import write_report
    from factory.models import medrat

    work = args.work or tempfile.mkdtemp(prefix="medsynth-bench-medrat-")
    os.makedirs(work, exist_ok=True)
    print(f"work folder: {work}")
    torch.set_num_threads(args.eval_threads)
    meter, started = CpuMeter(), time.perf_counter()
    real = real_sets(args.eval_count, args.size, args.seed)
    real.label_names = CXR_LABELS
    result: dict[str, Any] = {"benchmark": "train medrat", "arms": {}}
    finals: dict[str, Any] = {}
    for arm in arms:
        def evaluate(nets: dict, config: dict, arm=arm) -> dict[str, Any]:
            return text_scores(writer(arm)(nets, vocabulary, real.images), real)

        def describe(point: dict, arm=arm) -> str:
            return (f"{arm} step {point['step']:5d}  CPU {point['train_cpu_minutes']:5.1f} min  CE micro-F1 "
                    f"{point['ce']['micro']['f1']:.3f}  BLEU-1 {point['bleu_1']:.3f}  | {point['example_report'][:70]}")

        if args.bundle:
            run = scored_bundle(args.bundle, real)
        else:
            vocabulary = training_vocabulary(args, work, arm)
            run = segments.learn("emixer" if arm == "emixer-f" else "medrat",
                                 lambda storage, steps, arm=arm, **changes: train_config(args, arm, storage, steps,
                                                                                         **changes),
                                 evaluate, args, work, meter, describe)
        finals[arm] = run
        result["arms"][arm] = {"points": [segments.strip(p) for p in run["points"]],
                               "final": segments.strip(run["final"]), "model_config": run["bundle"].model_config,
                               "cpu_minutes": run["cpu_minutes"]}
        if arm != "emixer-f" and medrat.make_config(run["bundle"].model_config)["report_beam"] != 1:
            # The same networks decoding greedily: what the beam search adds.
            greedy = text_scores(medrat_reports(run["bundle"].nets, run["bundle"].vocabulary, real.images, beam=1), real)
            result["arms"][arm]["final_greedy"] = {**greedy, "step": run["final"]["step"],
                                                   "train_cpu_minutes": run["final"]["train_cpu_minutes"]}
    cpu = meter.seconds()
    # The phantom writer's own report of a film with no finding: the strongest always-normal report on
    # BLEU against these references (a generic one, train_emixer.NORMAL_REPORT, scores far lower).
    normal_report = write_report([], np.random.default_rng(args.seed))
    baselines = {"always-normal report": text_scores([normal_report] * len(real.images), real),
                 "true findings, rewritten": text_scores(real.rewritten_reports, real)}
    if "medrat" in finals:
        config = train_config(args, "medrat", os.path.join(work, "runs"), 1)
        baselines["retrieval (medrat's classification head)"] = text_scores(
            retrieval_reports(finals["medrat"]["bundle"], config, real, args), real)
    result["baselines"] = baselines
    if "medrat" in finals:
        final = result["arms"]["medrat"]["final"]
        normal = baselines["always-normal report"]["ce"]
        above = all(final["ce"][avg][m] > normal[avg][m] for avg in ("micro", "macro")
                    for m in ("precision", "recall", "f1"))
        result["minimum"] = {
            "ce_micro_f1": {"target": MINIMUM["ce_micro_f1"], "value": final["ce"]["micro"]["f1"],
                            "met": bool(final["ce"]["micro"]["f1"] >= MINIMUM["ce_micro_f1"])},
            "bleu_1": {"target": MINIMUM["bleu_1"], "value": final["bleu_1"],
                       "met": bool(final["bleu_1"] >= MINIMUM["bleu_1"])},
            "above_always_normal_on_every_ce_figure": {"met": bool(above)}}
        rows = {arm: writer(arm)(finals[arm]["bundle"].nets, finals[arm]["bundle"].vocabulary, real.images[:4])
                for arm in finals}
        examples_figure(real, rows, args.figure)
    result["cpu_minutes"] = {"baselines": (meter.seconds() - cpu) / 60, "total": meter.seconds() / 60}
    result["wall_minutes"] = (time.perf_counter() - started) / 60
    result["settings"] = {k: v for k, v in vars(args).items() if k != "work"}
    result["machine"] = machine()
    meter.close()
    write_results(args.out, result, tables(result))
    print(json.dumps(result.get("minimum"), indent=2))
    return 0


def scored_bundle(url: str, real) -> dict[str, Any]:
    """A trained bundle in place of a training run: its final point, scored as the runs' points are."""
    from factory.models.bundle import load_bundle

    bundle = load_bundle(url)
    if bundle.metadata["recipe"] != "medrat":
        raise SystemExit(f"--bundle {url} is a {bundle.metadata['recipe']} bundle, not a medrat one")
    final = {**text_scores(medrat_reports(bundle.nets, bundle.vocabulary, real.images), real),
             "step": int(bundle.metadata["metrics"].get("steps", 0)), "train_cpu_minutes": None, "bundle": url}
    return {"bundle": bundle, "points": [], "final": final, "cpu_minutes": None}


def writer(arm: str):
    return emixer_reports if arm == "emixer-f" else medrat_reports


def training_vocabulary(args, work: str, arm: str):
    """The arm's vocabulary, as its training data builds it (the bundles carry the same; the step-0
    point's networks come without a bundle)."""
    from factory.data.text.vocab import Vocabulary
    from factory.train.data import load_training_data, prepare_data
    from factory.train.recipes import get_recipe

    recipe = "emixer" if arm == "emixer-f" else "medrat"
    config = train_config(args, arm, os.path.join(work, "runs"), 1)
    data = load_training_data(prepare_data(config, get_recipe(recipe), progress=False))
    return Vocabulary.from_json(data.info["vocabulary"], "vocabulary")


if __name__ == "__main__":
    raise SystemExit(main())
