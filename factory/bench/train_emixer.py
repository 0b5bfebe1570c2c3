"""`medsynth bench train emixer`: EMIXER learns on phantom chest X-rays, and what DeepSpeed costs.

Learning (default): EMIXER trains through the runner (Ray Train, 2 workers, DeepSpeed) on phantom
chest X-rays within a CPU budget (`--minutes`, CPU-minutes of the whole process tree: driver, Ray's
own processes and the workers), in `--segments` (2) training runs: each resumes the run by name,
trains to its step target, exporting snapshot bundles along the way (the runner's `snapshot_every`)
and a bundle at its end, which the driver then evaluates while the workers are gone. The first
segment is short (`--first-steps`: its size rests on a prior cost per step), the later ones share
what is left evenly, their step counts from the CPU each earlier segment spent per step and on
start-up (Ray workers, DeepSpeed, checkpoint; about a minute of CPU each, so few segments) with a
10 % margin, so the run ends inside the budget (or the wall-clock cap, `--wall-minutes`, on a shared
machine); the minimum is checked at the last point inside the budget. The phantom training set is
generated before the first segment and reported apart (`cpu_minutes.training_data`).

Every evaluation point (the untrained networks at step 0, then `--points` bundles) conditions
the generator on the label vectors of held-out real phantoms (same phantom seed as the training
data, indices it never saw) and reports:
  macro_auc         the judge's macro ROC-AUC on the generated images for their conditioning labels,
                    next to the judge's AUC on those real phantoms (same labels, its ceiling here);
  fid               Fréchet distance in the judge's feature space from a second held-out real set,
                    next to real-vs-real FID of the two real sets (same sizes);
  labeler agreement of the generated reports with the conditioning labels (factory.evaluate.
                    text_metrics.labeler_agreement): `agreement` is exact match of every finding the
                    labeler reads (the headline; an always-"normal" report gets the share of normal
                    studies), beside per-finding `accuracy` (flattered by the many absent findings),
                    micro `f1` of present findings, and macro F1 over findings (computed here);
  bleu_1..4         of the generated reports against the held-out studies' real reports.
The judge (factory.evaluate.judge) is trained once at the benchmark's size, or taken from `--judge`.

Compare (`--compare`): the same recipe, data, batch and 2 workers for N steps each under plain
torch DDP, DeepSpeed ZeRO-0 and ZeRO-2 (fresh runs); steps/s from step k0 to the end (start-up and
the first steps left out) and each worker's peak resident memory, with ratios.

Writes JSON with the machine's description (docs/bench/train_emixer.json, or
docs/bench/train_emixer_compare.json) and, for learning, the curves as a PNG (docs/emixer-learning.png).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from factory.data.labels import CXR_LABELS

# EMIXER at 64 px on CPU workers: the production config's widths (jobs/configs/train.yaml), sentences
# capped at 20 tokens (nearly all phantom sentences are shorter). This run has a few hundred steps,
# not the paper's 400k at batch 512, so: G at 2e-4 instead of 5e-5; F at 2e-3 (its likelihood term is
# what teaches it to write, and it fell faster per step at 2e-3 than at 1e-3 in a probe that also
# changed Adam's β1); the report and joint adversarial terms at 0.1 (at 1.0 their straight-through
# gradients drowned F's likelihood term early on, and F wrote "no. no. no." reports).
# F's encoder is a ResNet-10 with batch norm, and G is also asked that F's label head read its
# conditioning labels (label_consistency_weight, not in the paper). Why: trained alone as a
# classifier, the BigGAN trunk the discriminators use reads the findings far worse than a ResNet, so
# the projection term cannot teach G findings faster than that; side by side, the two changes gave
# G's images a higher judge macro-AUC at equal CPU. The probes and their figures:
# docs/bench/train_emixer.md.
BENCH_MODEL: dict[str, Any] = {
    "g_width": 16, "d_width": 16, "f_encoder": "resnet10", "hidden": 128, "word_layers": 2, "max_words": 20,
    "report_weight": 0.1, "joint_weight": 0.1, "label_consistency_weight": 1.0,
    "lr": {"G": 2e-4, "F": 2e-3, "D_image": 2e-4, "D_report": 2e-4, "D_joint": 2e-4},
    # F's encoder and label head start from a ResNet-10 classifier trained on other patients' phantoms
    # (`--encoder`), frozen, reading films as that classifier does ((x - 0.5) / 0.25 on [0, 1] films).
    "f_encoder_frozen": True, "f_input_mean": 0.5, "f_input_std": 0.25,
    # Sixteen teacher-forced F updates a step (fifteen after the G step, on the same real pairs): F reading
    # real phantoms reaches CE micro-F1 0.5 only after some 1,400 likelihood updates (probe in
    # docs/bench/train_emixer.md), which 8 a step bought only near the budget's end; side by side at 30
    # CPU-minutes, 16 gave generated reports CE micro/macro-F1 0.418/0.398 at 136 steps against 8's
    # 0.384/0.337 at 168 (judge macro-AUC 0.806 against 0.858). An extra update costs about 0.06 CPU-s per
    # worker since it reuses the frozen encoder's features (0.17 before); with it 16 reached 0.530/0.535 at 168,
    # and 0.535/0.519 at 216 once the teacher-forced pass ran in buckets.
    "mle_steps": 16,
}
RUN_NAME = "emixer-bench"
HELD_OUT_OFFSET = 1_000_000  # evaluation studies: phantom indices far past any training count
REFERENCE_OFFSET = 2_000_000  # the second real set (FID reference)
MIN_SEGMENT_STEPS = 5
BUDGET_MARGIN = 0.1  # share of a segment's planned step CPU held back for the machine's drift


# --- CPU accounting ------------------------------------------------------------------------------

class CpuMeter:
    """CPU seconds (user + system) of this process and all its descendants, polled in a thread.

    Ray's processes (GCS, raylet, workers) descend from the driver that started Ray. A process that
    ends keeps the last CPU time seen for it (at most one poll interval is lost per process), so
    workers of finished segments still count."""

    def __init__(self, interval: float = 0.5):
        import psutil

        self._root = psutil.Process()
        self._seen: dict[tuple[int, float], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        import psutil

        try:
            processes = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return
        for process in processes:
            try:
                with process.oneshot():
                    key = (process.pid, process.create_time())
                    times = process.cpu_times()
            except psutil.Error:
                continue  # ended between listing and reading
            with self._lock:
                self._seen[key] = times.user + times.system

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._poll()

    def seconds(self) -> float:
        self._poll()
        with self._lock:
            return float(sum(self._seen.values()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


# --- evaluation ----------------------------------------------------------------------------------

@dataclass
class RealSets:
    """Held-out real phantoms: set A gives the conditioning labels and reference reports, set B the
    FID reference. Images uint8 (N, S, S); labels with CheXpert values (N, 9)."""

    images: np.ndarray
    labels: np.ndarray
    reports: list[str]
    reference_images: np.ndarray
    rewritten_reports: list[str]  # A's findings written again by the phantom's report writer


def real_sets(count: int, size: int, seed: int) -> RealSets:
    from tqdm import tqdm

    from factory.data.phantoms.cxr import generate_study
    from factory.data.text.reports import write_report

    images, labels, reports, rewritten, reference = [], [], [], [], []
    for i in tqdm(range(count), desc="held-out phantoms", unit="study"):
        study = generate_study(seed, HELD_OUT_OFFSET + i, size)
        images.append(study.image)
        labels.append(study.labels)
        reports.append(study.report)
        # Same findings, the writer's other phrasing: how far BLEU against one real report can go.
        rewritten.append(write_report(study.findings, np.random.default_rng([seed, HELD_OUT_OFFSET + i, 99])))
        reference.append(generate_study(seed, REFERENCE_OFFSET + i, size).image)
    return RealSets(np.stack(images), np.stack(labels).astype(np.float32), reports, np.stack(reference), rewritten)


def macro_f1(reports: Sequence[str], labels: np.ndarray) -> float:
    """Macro F1 over findings of what the labeler reads in the reports against the labels (present = 1);
    findings with neither a stated nor an intended positive are left out."""
    from factory.data.text.labeler import label_report
    from factory.evaluate.metrics import present

    intended = present(labels)
    stated = np.array([[label_report(r).get(name) == 1.0 for name in CXR_LABELS] for r in reports])
    scores = []
    for k in range(len(CXR_LABELS)):
        tp = int((stated[:, k] & intended[:, k]).sum())
        total = int(stated[:, k].sum() + intended[:, k].sum())
        if total:
            scores.append(2 * tp / total)
    return float(np.mean(scores)) if scores else float("nan")


def report_scores(reports: Sequence[str], real: RealSets) -> dict[str, Any]:
    from factory.evaluate.metrics import bleu, clinical_efficacy, labeler_agreement, stated_findings

    agreement = labeler_agreement(reports, real.labels, CXR_LABELS)
    return {"ce": clinical_efficacy(stated_findings(reports), real.labels),
            "labeler": {**agreement, "macro_f1": macro_f1(reports, real.labels)},
            **bleu(reports, real.reports, 4)}


# What an always-normal report states: no finding (the floor every CE figure is read against).
NORMAL_REPORT = "The lungs are clear. No pleural effusion or pneumothorax. The heart size is normal."


def reading_scores(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Exact match and per-finding accuracy of thresholded (0.5) per-label probabilities against labels."""
    from factory.evaluate.metrics import present

    stated, intended = probabilities >= 0.5, present(labels)
    return {"agreement": float((stated == intended).all(axis=1).mean()), "accuracy": float((stated == intended).mean())}


class Evaluator:
    """Scores generators against the held-out real sets with one judge; the real baselines once."""

    def __init__(self, judge, real: RealSets, seed: int, batch: int = 250):
        from factory.evaluate.metrics import clinical_efficacy, fid, multilabel_auc

        self.judge, self.real, self.seed, self.batch = judge, real, seed, batch
        features, probabilities = judge.evaluate(real.images)
        self.reference_features = judge.features(real.reference_images)
        auc = multilabel_auc(probabilities, real.labels, CXR_LABELS)
        self.baseline = {
            "count": len(real.images),
            "real_macro_auc": auc["macro_auc"], "real_auc": auc["auc"], "positives": auc["positives"],
            "real_vs_real_fid": fid(self.reference_features, features),
            "real_reports": report_scores(real.reports, real),
            "rewritten_reports": report_scores(real.rewritten_reports, real),
            # A reader's ceiling for exact match: the judge reading the real images (threshold 0.5). A
            # report written from an image can state its findings no better than its reader sees them.
            "judge_reading_real_images": reading_scores(probabilities, real.labels),
            "judge_reading_real_images_ce": clinical_efficacy(probabilities >= 0.5, real.labels),
            "always_normal_report": report_scores([NORMAL_REPORT] * len(real.images), real),
        }

    def __call__(self, nets: dict, model_config: dict, vocabulary) -> dict[str, Any]:
        """Generate one sample per held-out label vector (the same noise at every point) and score it."""
        import torch

        from factory.evaluate.metrics import clinical_efficacy, fid, label_fidelity, stated_findings
        from factory.models import emixer

        conditioning = torch.from_numpy(np.nan_to_num(self.real.labels, nan=0.0) == 1).float()
        noise = torch.randn(len(conditioning), emixer.z_dim(model_config),
                            generator=torch.Generator().manual_seed(self.seed))
        images, reports = [], []
        for start in range(0, len(conditioning), self.batch):
            part = slice(start, start + self.batch)
            batch_images, ids = emixer.generate(nets, conditioning[part], noise[part])
            images.append(batch_images)
            reports += emixer.decode_reports(ids, vocabulary)
        images = np.concatenate(images)
        features, probabilities = self.judge.evaluate(images)
        fidelity = label_fidelity(probabilities, self.real.labels, CXR_LABELS)
        real_reports = self.read_real(nets, vocabulary)
        return {"macro_auc": fidelity["macro_auc"], "auc": fidelity["auc"],
                "fid": fid(self.reference_features, features), **report_scores(reports, self.real),
                # The same CE figures for F reading the real held-out images (how well it writes from a real
                # film) and for the judge reading the generated images (what their pixels show).
                "f_reading_real_images": {"ce": clinical_efficacy(stated_findings(real_reports), self.real.labels),
                                          "example_report": real_reports[0]},
                "judge_reading_generated_ce": clinical_efficacy(probabilities >= 0.5, self.real.labels),
                "example_report": reports[0], "images": images[:16]}

    def read_real(self, nets: dict, vocabulary) -> list[str]:
        """F's reports (its decoding as in production) of the real held-out images."""
        import torch

        from factory.models import emixer

        reports = []
        for start in range(0, len(self.real.images), self.batch):
            images = torch.from_numpy(self.real.images[start:start + self.batch]).float()[:, None] / 127.5 - 1
            reports += emixer.decode_reports(emixer.write_reports(nets, images), vocabulary)
        return reports


def initial_networks(model_config: dict, seed: int) -> dict:
    """The networks as training started: the recipe builds them from the seed alone (every rank alike)."""
    from factory.train.recipes import get_recipe

    return get_recipe("emixer").build(model_config, seed=seed)


def get_encoder(args, work: str, meter: CpuMeter) -> dict[str, Any] | None:
    """The classifier F's encoder starts from (`--encoder`, or one trained here on phantoms of other patients
    than the generator's and the judge's: phantom seed + 2), its URL left in args.encoder_url; None for
    `--encoder none`."""
    from factory.evaluate.judge import train_judge
    from factory.models.bundle import METADATA_NAME, read_metadata

    args.encoder_url = None
    if args.encoder == "none":
        return None
    url = args.encoder or os.path.join(work, "encoder")
    cpu, wall = meter.seconds(), time.perf_counter()
    trained = not (args.encoder or os.path.exists(os.path.join(url, METADATA_NAME)))
    if trained:
        train_judge(url, count=args.judge_count, size=args.size, epochs=args.judge_epochs, seed=args.seed,
                    phantom_seed=args.seed + 2, arch=args.model["f_encoder"], device="cpu")
    meta = read_metadata(url)
    args.encoder_url = url
    return {"url": url, "bundle_id": meta["bundle_id"], "trained_here": trained, "arch": meta["model_config"]["arch"],
            "training_data": meta["training_data"].get("description"),
            "own_held_out_macro_auc": meta["metrics"].get("macro_auc"), "frozen": args.model.get("f_encoder_frozen"),
            "cpu_s": meter.seconds() - cpu, "wall_s": time.perf_counter() - wall}


def get_judge(args, work: str, meter: CpuMeter) -> tuple[Any, dict[str, Any]]:
    from factory.evaluate.judge import Judge, train_judge
    from factory.models.bundle import METADATA_NAME

    url = args.judge or os.path.join(work, "judge")
    cpu, wall = meter.seconds(), time.perf_counter()
    trained = False
    if args.judge or os.path.exists(os.path.join(url, METADATA_NAME)):
        judge = Judge.load(url, device="cpu")
    else:
        judge = train_judge(url, count=args.judge_count, size=args.size, epochs=args.judge_epochs,
                            seed=args.seed, device="cpu").judge
        trained = True
    if judge.image_size != args.size:
        print(f"note: the judge reads {judge.image_size} px; images are resized to it")
    info = {"url": url, "bundle_id": judge.bundle_id, "trained_here": trained, "arch": judge.net.__class__.__name__,
            "image_size": judge.image_size, "own_held_out_macro_auc": judge.metrics.get("macro_auc"),
            "own_held_out_count": judge.metrics.get("test_count"), "epochs": judge.metrics.get("epochs"),
            "cpu_s": meter.seconds() - cpu, "wall_s": time.perf_counter() - wall}
    return judge, info


def bench_settings(args, judge_info: dict[str, Any], leave_out: tuple[str, ...] = ("work",)) -> dict[str, Any]:
    """The options a bench ran with, for its JSON's `settings`. --judge-count and --judge-epochs apply only
    to a judge trained here; a given or reused judge made them unused, so they are recorded as null (the
    JSON's `judge` block has that judge's own)."""
    settings = {k: v for k, v in vars(args).items() if k not in leave_out}
    if not judge_info["trained_here"]:
        settings.update(judge_count=None, judge_epochs=None)
    return settings


# --- training segments ---------------------------------------------------------------------------

def train_config(args, name: str, storage: str, steps: int, **changes):
    from factory.config import TrainConfig

    settings = {"name": name, "storage_path": storage, "recipe": "emixer", "model": args.model,
                "data": {"source": "phantom-cxr", "count": args.count, "size": args.size, "seed": args.seed,
                         "min_word_count": 6},
                "steps": steps, "batch_size": args.batch, "workers": args.workers, "zero_stage": args.zero_stage,
                "checkpoint_every": steps, "seed": args.seed, "max_failures": 0,
                "start_from": getattr(args, "encoder_url", None)}
    settings.update(changes)
    return TrainConfig.model_validate(settings)


def run_segment(config) -> dict[str, Any]:
    """Train (resuming by run name) to config.steps; returns the runner's stats and last metrics."""
    from factory.train.runner import train

    result = train(config, progress=False)
    if result.error:
        raise RuntimeError(f"training failed: {result.error}")
    stats = result.return_value
    if not stats:
        raise RuntimeError("the runner returned no stats (rank 0 gave none)")
    losses = {k: float(v) for k, v in (result.metrics or {}).items()
              if isinstance(v, (int, float)) and not k.startswith("lr_")
              and k not in ("step", "resumed_from", "steps_per_second")}
    return {**stats, "losses": losses}


@dataclass
class SegmentPlanner:
    """Steps for the next segment so that the remaining segments share the remaining CPU evenly:
    steps = (share - start-up CPU) / (CPU per step x (1 + margin)), both estimated from the segments
    so far; the margin covers the machine's drift (a run that overshot its budget without it:
    docs/bench/train_emixer.md)."""

    budget_s: float
    segments: int
    per_step_s: float = 5.0  # priors until a segment has run: 2 workers x ~2.5 CPU-s a step
    startup_s: float = 60.0
    margin: float = 0.0

    def observe(self, steps: int, segment_cpu_s: float, step_cpu_s: float) -> None:
        self.per_step_s = step_cpu_s / max(steps, 1)
        self.startup_s = max(segment_cpu_s - step_cpu_s, 0.0)

    def next_steps(self, used_s: float, done_segments: int) -> int:
        left = self.segments - done_segments
        if left <= 0:
            return 0
        share = (self.budget_s - used_s) / left
        return max(int((share - self.startup_s) / (self.per_step_s * (1 + self.margin))), 0)


def segment_steps(planner: SegmentPlanner, used_s: float, segment: int, first_steps: int | None) -> int:
    """The next segment's steps: the planner's, at most `first_steps` in the first segment; 0 (stop)
    when fewer than MIN_SEGMENT_STEPS fit."""
    steps = planner.next_steps(used_s, segment)
    if segment == 0 and first_steps:
        steps = min(steps, first_steps)
    return steps if steps >= MIN_SEGMENT_STEPS else 0


def snapshot_every(points: int, segments: int, segment: int, steps: int) -> int:
    """The snapshot interval that gives this segment its share of the evaluation points: one at its
    end, the others from snapshots along the way."""
    share = points // segments + (segment < points % segments)
    return max(math.ceil(steps / max(share, 1)), 1)


def learning(args) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from factory.models.bundle import load_bundle
    from factory.train.data import prepare_data
    from factory.train.progress import record_evaluation
    from factory.train.recipes import get_recipe

    work = args.work or tempfile.mkdtemp(prefix="medsynth-bench-train-")
    os.makedirs(work, exist_ok=True)
    print(f"work folder: {work}")
    torch.set_num_threads(args.eval_threads)
    meter = CpuMeter()
    started = time.perf_counter()
    judge, judge_info = get_judge(args, work, meter)
    print(f"judge {judge_info['bundle_id']}: own held-out macro-AUC {judge_info['own_held_out_macro_auc']}")
    encoder_info = get_encoder(args, work, meter)

    cpu = meter.seconds()
    real = real_sets(args.eval_count, args.size, args.seed)
    evaluator = Evaluator(judge, real, seed=args.seed + 17)
    eval_cpu = meter.seconds() - cpu
    base = evaluator.baseline
    print(f"real: macro-AUC {base['real_macro_auc']:.3f}, real-vs-real FID {base['real_vs_real_fid']:.2f}")

    storage = os.path.join(work, "runs")
    # The phantom training set is generated and cached once, here, outside the training budget (as the
    # judge is), so no segment's start-up includes it.
    cpu = meter.seconds()
    prepare_data(train_config(args, RUN_NAME, storage, 1), get_recipe("emixer"))
    data_cpu = meter.seconds() - cpu
    planner = SegmentPlanner(budget_s=args.minutes * 60, segments=args.segments, margin=BUDGET_MARGIN)
    train_cpu, points, step, first_bundle = 0.0, [], 0, None
    wall_cap = args.wall_minutes * 60 if args.wall_minutes else math.inf
    bar = tqdm(total=int(planner.budget_s), desc="training CPU-s", unit="s")
    for segment in range(args.segments):
        steps = segment_steps(planner, train_cpu, segment, args.first_steps)
        if not steps:
            break
        if time.perf_counter() - started > wall_cap:
            print("wall-clock cap reached; stopping")
            break
        bundle_url = os.path.join(work, "bundles", f"step-{step + steps:06d}")
        config = train_config(args, RUN_NAME, storage, step + steps, bundle_out=bundle_url,
                              snapshot_every=snapshot_every(args.points, args.segments, segment, steps))
        cpu = meter.seconds()
        stats = run_segment(config)
        segment_cpu = meter.seconds() - cpu
        train_cpu += segment_cpu
        bar.update(int(segment_cpu))
        step_cpu = sum(worker["step_cpu_s"] for worker in stats["workers"])
        planner.observe(steps, segment_cpu, step_cpu)
        segment_start, step = step, step + steps
        segment_info = {"steps": steps, "cpu_s": segment_cpu, "step_cpu_s": step_cpu,
                        "startup_cpu_s": segment_cpu - step_cpu, "step_wall_s": sum(stats["step_seconds"]),
                        "setup_wall_s": stats["setup_s"],
                        "worker_peak_rss_mb": [w["rss_mb"] for w in stats["workers"]]}

        cpu = meter.seconds()
        for at, url in segment_bundles(os.path.join(storage, RUN_NAME, "snapshots"), segment_start, step, bundle_url):
            bundle = load_bundle(url)
            if first_bundle is None:  # step 0: the same networks before any step
                first_bundle = bundle
                untrained = evaluator(initial_networks(bundle.model_config, args.seed), bundle.model_config,
                                      bundle.vocabulary)
                points.append(_point(0, 0.0, time.perf_counter() - started, untrained, {}))
                record_evaluation(storage, RUN_NAME, 0, evaluation_scalars(points[-1]))
            scores = evaluator(bundle.nets, bundle.model_config, bundle.vocabulary)
            # Training CPU at a snapshot: the segment's start-up, then its steps at their mean cost.
            at_cpu = train_cpu - segment_cpu + (segment_cpu - step_cpu) + step_cpu * (at - segment_start) / steps
            point = _point(at, at_cpu, time.perf_counter() - started, scores,
                           stats["losses"] if at == step else {k: float(v) for k, v in bundle.metadata["metrics"].items()
                                                               if k != "steps" and not k.startswith("lr_")})
            point.update(segment=segment_info, bundle=url)
            points.append(point)
            record_evaluation(storage, RUN_NAME, at, evaluation_scalars(point))
            bar.write(_point_line(point))
        eval_cpu += meter.seconds() - cpu
    bar.close()
    if len(points) < 2:
        raise RuntimeError(f"the budget of {args.minutes} CPU-minutes did not fit one training segment")

    # The minimum is checked at the last point inside the CPU budget; a later one (a segment that still
    # overran) stays in the curve, marked.
    for point in points:
        point["over_budget"] = point["train_cpu_minutes"] > args.minutes
    final_point = [point for point in points if not point["over_budget"]][-1]
    final = {k: v for k, v in final_point.items() if k != "images"}
    if args.final_beam > 1:  # the same final networks, F decoding by beam search instead of greedily
        cpu = meter.seconds()
        bundle = load_bundle(final_point["bundle"])
        bundle.nets["F"].beam = args.final_beam
        beam = evaluator(bundle.nets, bundle.model_config, bundle.vocabulary)
        final["beam"] = {"width": args.final_beam, "ce": beam["ce"], "bleu_1": beam["bleu_1"],
                         "f_reading_real_images": beam["f_reading_real_images"],
                         "example_report": beam["example_report"]}
        eval_cpu += meter.seconds() - cpu
    total_cpu = meter.seconds()
    meter.close()
    minimum = {"synthetic_macro_auc": {"target": 0.75, "value": final["macro_auc"]},
               "ce_micro_f1": {"target": 0.50, "value": final["ce"]["micro"]["f1"],
                               "definition": "labeler on the generated reports against the conditioning labels, "
                                             "micro F1 over the eight findings"},
               "ce_macro_f1": {"target": 0.35, "value": final["ce"]["macro"]["f1"],
                               "definition": "the same, macro F1 over the eight findings"}}
    for entry in minimum.values():
        entry["met"] = bool(entry["value"] >= entry["target"])
    return {
        "benchmark": "train emixer",
        "machine": machine(),
        "settings": {"minutes": args.minutes, "wall_minutes": args.wall_minutes, "points": args.points,
                     "segments": args.segments,
                     "size": args.size, "count": args.count, "batch_per_worker": args.batch, "workers": args.workers,
                     "zero_stage": args.zero_stage, "eval_count": args.eval_count, "seed": args.seed,
                     "model": args.model, "train_config": config.model_dump(mode="json"),
                     "bundle_model_config": first_bundle.model_config},
        "judge": judge_info,
        "f_encoder_start": encoder_info,
        "real": base,
        "points": [{k: v for k, v in p.items() if k != "images"} for p in points],
        "final": final,
        "minimum": minimum,
        "cpu_minutes": {"training": train_cpu / 60, "evaluation": eval_cpu / 60, "judge": judge_info["cpu_s"] / 60,
                        "f_encoder": (encoder_info or {}).get("cpu_s", 0.0) / 60,
                        "training_data": data_cpu / 60,
                        "total": total_cpu / 60},
        "wall_minutes": (time.perf_counter() - started) / 60,
        "_images": final_point["images"],
    }


def evaluation_scalars(point: dict[str, Any]) -> dict[str, float]:
    """An evaluation point's scores, for the run's TensorBoard events (eval/...)."""
    lab = point["labeler"]
    return {"macro_auc": point["macro_auc"], "fid": point["fid"], "bleu_1": point["bleu_1"],
            "labeler_agreement": lab["agreement"], "labeler_f1": lab["f1"], "labeler_macro_f1": lab["macro_f1"]}


def segment_bundles(snapshots: str, after: int, end: int, end_bundle: str) -> list[tuple[int, str]]:
    """(step, bundle URL) of a segment: its snapshots past `after` and before `end`, then its end bundle."""
    found = []
    if os.path.isdir(snapshots):
        for name in os.listdir(snapshots):
            at = int(name.removeprefix("step-"))
            if after < at < end:
                found.append((at, os.path.join(snapshots, name)))
    return sorted(found) + [(end, end_bundle)]


def _point(step: int, train_cpu: float, wall: float, scores: dict, losses: dict) -> dict[str, Any]:
    return {"step": step, "train_cpu_minutes": train_cpu / 60, "wall_minutes": wall / 60, **scores, "losses": losses}


def _point_line(point: dict) -> str:
    ce, real = point["ce"], point["f_reading_real_images"]["ce"]
    return (f"step {point['step']:5d}  CPU {point['train_cpu_minutes']:5.1f} min  macro-AUC {point['macro_auc']:.3f}  "
            f"FID {point['fid']:8.2f}  CE micro-F1 {ce['micro']['f1']:.3f} macro-F1 {ce['macro']['f1']:.3f} "
            f"(F on real {real['micro']['f1']:.3f} / {real['macro']['f1']:.3f}; exact {ce['exact_match']:.3f})  "
            f"BLEU-1 {point['bleu_1']:.3f}")


# --- DDP vs DeepSpeed ----------------------------------------------------------------------------

COMPARED = (("ddp", {"engine": "ddp", "zero_stage": 0}),
            ("zero0", {"engine": "deepspeed", "zero_stage": 0}),
            ("zero2", {"engine": "deepspeed", "zero_stage": 2}))


def compare(args) -> dict[str, Any]:
    from tqdm import tqdm

    if not 0 <= args.warmup < args.steps:
        raise SystemExit(f"--warmup ({args.warmup}) must be below --steps ({args.steps})")
    work = tempfile.mkdtemp(prefix="medsynth-bench-compare-", dir=args.work)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in COMPARED}
    order = [item for _ in range(args.rounds) for item in COMPARED]
    for i, (label, changes) in enumerate(tqdm(order, desc="compare runs", unit="run")):
        config = train_config(args, f"compare-{label}-{i}", os.path.join(work, "runs"), args.steps, **changes)
        began = time.perf_counter()
        stats = run_segment(config)
        timed = stats["step_seconds"][args.warmup:]
        runs[label].append({
            "steps_per_s": len(timed) / sum(timed),
            "mean_step_s": float(np.mean(timed)), "median_step_s": float(np.median(timed)),
            "setup_s": stats["setup_s"], "run_wall_s": time.perf_counter() - began,
            "peak_rss_mb": [w["rss_mb"] for w in stats["workers"]],
            "step_cpu_s_per_step": [w["step_cpu_s"] / args.steps for w in stats["workers"]],
        })
        if "cuda_mb" in stats["workers"][0]:
            runs[label][-1]["peak_cuda_mb"] = [w["cuda_mb"] for w in stats["workers"]]
    summary = {label: {"steps_per_s": float(np.median([r["steps_per_s"] for r in rs])),
                       "peak_rss_mb_max_worker": float(np.median([max(r["peak_rss_mb"]) for r in rs]))}
               for label, rs in runs.items()}
    def ratio(label: str, base: str) -> dict[str, float]:
        return {"steps_per_s": summary[label]["steps_per_s"] / summary[base]["steps_per_s"],
                "peak_rss": summary[label]["peak_rss_mb_max_worker"] / summary[base]["peak_rss_mb_max_worker"]}

    ratios = {"zero0_vs_ddp": ratio("zero0", "ddp"), "zero2_vs_ddp": ratio("zero2", "ddp"),
              "zero2_vs_zero0": ratio("zero2", "zero0")}
    return {"benchmark": "train emixer --compare", "machine": machine(),
            "settings": {"steps": args.steps, "warmup_steps": args.warmup, "rounds": args.rounds,
                         "batch_per_worker": args.batch, "workers": args.workers, "size": args.size,
                         "count": args.count, "model": args.model, "seed": args.seed,
                         "timing": "steps/s from step k0=warmup to the end, each step's wall time on rank 0 "
                                   "(checkpointing and start-up left out); memory: each worker's VmHWM"},
            "runs": runs, "summary": summary, "ratios": ratios}


def compare_table(result: dict[str, Any]) -> str:
    lines = ["| engine | steps/s | peak RSS per worker (MB) | vs DDP steps/s | vs DDP peak RSS |",
             "|---|---|---|---|---|"]
    for label, _ in COMPARED:
        summary = result["summary"][label]
        rss = ", ".join(f"{m:.0f}" for m in result["runs"][label][-1]["peak_rss_mb"])
        ratio = result["ratios"].get(f"{label}_vs_ddp", {"steps_per_s": 1.0, "peak_rss": 1.0})
        lines.append(f"| {label} | {summary['steps_per_s']:.3f} | {rss} | {ratio['steps_per_s']:.3f} | "
                     f"{ratio['peak_rss']:.3f} |")
    return "\n".join(lines)


# --- output --------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    import psutil
    import ray
    import torch

    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "deepspeed": _version("deepspeed"), "load_average_at_end": os.getloadavg()}


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: str, result: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_jsonable({k: v for k, v in result.items() if not k.startswith("_")}), f, indent=2)
        f.write("\n")


def write_results(path: str, result: dict[str, Any], markdown: str) -> None:
    """A benchmark's JSON at `path`, its tables beside it (`<name>_tables.md`, never over a hand-written
    `<name>.md`), and the tables on stdout."""
    write_json(path, result)
    with open(os.path.splitext(path)[0] + "_tables.md", "w") as f:
        f.write(markdown + "\n")
    print(markdown)


def parse_model(pairs: Sequence[str]) -> dict[str, Any]:
    """BENCH_MODEL with `key=value` overrides (dotted keys, YAML values), e.g. lr.G=1e-4."""
    from factory.config import _merge, parse_overrides

    return _merge(BENCH_MODEL, parse_overrides(list(pairs), "--model"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medsynth bench train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", choices=["emixer"], help="the recipe to benchmark")
    parser.add_argument("--compare", action="store_true", help="DDP vs DeepSpeed ZeRO-0 vs ZeRO-2 instead of learning")
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget in CPU-minutes (process tree)")
    parser.add_argument("--wall-minutes", type=float, default=90.0,
                        help="stop starting segments after this (0: no cap)")
    parser.add_argument("--points", type=int, default=6, help="evaluation points (plus step 0)")
    parser.add_argument("--segments", type=int, default=2,
                        help="training runs the budget is split into (each costs a Ray start-up; the first one's "
                             "cost per step sizes the next)")
    parser.add_argument("--first-steps", type=int, default=40,
                        help="cap the first segment's steps (0: no cap): it is sized on a prior cost per step, "
                             "the later ones on the measured cost")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--count", type=int, default=5000, help="training phantoms")
    parser.add_argument("--batch", type=int, default=16, help="micro-batch per worker")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--zero-stage", type=int, default=2, choices=[0, 1, 2], help="learning run's ZeRO stage")
    parser.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                        help="override the benchmark's EMIXER settings (dotted keys, e.g. lr.G=1e-4)")
    parser.add_argument("--eval-count", type=int, default=500, help="held-out real phantoms (and samples) per point")
    parser.add_argument("--eval-threads", type=int, default=2, help="torch threads of the driver's evaluation")
    parser.add_argument("--final-beam", type=int, default=4,
                        help="also score the final networks with F decoding by beam search of this width (1: no)")
    parser.add_argument("--judge", help="a judge bundle URL (default: train one at --size into the work folder)")
    parser.add_argument("--judge-count", type=int, default=5000)
    parser.add_argument("--judge-epochs", type=int, default=8)
    parser.add_argument("--encoder", help="the classifier bundle F's encoder starts from (default: train one like the "
                                          "judge, on phantoms of other patients, into the work folder; 'none': "
                                          "F's encoder starts from scratch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="folder for the judge, runs and bundles (default: a new temporary one)")
    parser.add_argument("--steps", type=int, default=40, help="--compare: steps per engine")
    parser.add_argument("--warmup", type=int, default=10, help="--compare: steps left out of the timing (k0)")
    parser.add_argument("--rounds", type=int, default=1, help="--compare: repeat the three runs, report medians")
    parser.add_argument("--out", help="JSON path (default docs/bench/train_emixer.json or train_emixer_compare.json)")
    parser.add_argument("--plot", default="docs/emixer-learning.png", help="learning curves PNG")
    args = parser.parse_args(argv)
    args.model = parse_model(args.model)
    os.environ.setdefault("RAY_ADDRESS", "")  # a local Ray instance: the CPU meter sees its processes

    if args.compare:
        result = compare(args)
        write_json(args.out or "docs/bench/train_emixer_compare.json", result)
        print(compare_table(result))
        print(json.dumps(_jsonable(result["ratios"]), indent=2))
        return 0
    result = learning(args)
    out = args.out or "docs/bench/train_emixer.json"
    write_json(out, result)
    from factory.bench.learning_plot import plot_learning

    plot_learning(result, result["_images"], args.plot)
    print(learning_table(result))
    print(json.dumps(_jsonable(result["minimum"]), indent=2))
    print(f"CPU minutes: {result['cpu_minutes']['training']:.1f} training, {result['cpu_minutes']['evaluation']:.1f} "
          f"evaluation, {result['cpu_minutes']['judge']:.1f} judge; wall {result['wall_minutes']:.1f} min "
          f"-> {out}, {args.plot}")
    return 0


def learning_table(result: dict[str, Any]) -> str:
    """Markdown: per point, the judge on the generated images, then clinical efficacy (P / R / F1, micro and
    macro over the eight findings) of the generated reports, of F reading real held-out images and of the
    judge reading the generated images; the baselines below."""
    def ce(scores: dict) -> str:
        mi, ma = scores["micro"], scores["macro"]
        return (f"{mi['precision']:.3f} / {mi['recall']:.3f} / **{mi['f1']:.3f}** | "
                f"{ma['precision']:.3f} / {ma['recall']:.3f} / **{ma['f1']:.3f}** | {scores['exact_match']:.3f}")

    real = result["real"]
    lines = ["| step | train CPU-min | reader | judge macro-AUC | FID | CE micro P / R / F1 | CE macro P / R / F1 | "
             "exact match | BLEU-1 |", "|---|---|---|---|---|---|---|---|---|"]
    for p in result["points"]:
        lines.append(f"| {p['step']} | {p['train_cpu_minutes']:.1f} | generated reports | {p['macro_auc']:.3f} | "
                     f"{p['fid']:.1f} | {ce(p['ce'])} | {p['bleu_1']:.3f} |")
        lines.append(f"| | | F reading real images | | | {ce(p['f_reading_real_images']['ce'])} | |")
        lines.append(f"| | | judge reading generated images | | | {ce(p['judge_reading_generated_ce'])} | |")
    beam = result["final"].get("beam")
    if beam:
        final = result["final"]
        lines.append(f"| {final['step']} | {final['train_cpu_minutes']:.1f} | generated reports, beam {beam['width']} | | | "
                     f"{ce(beam['ce'])} | {beam['bleu_1']:.3f} |")
        lines.append(f"| | | F reading real images, beam {beam['width']} | | | "
                     f"{ce(beam['f_reading_real_images']['ce'])} | |")
    lines.append(f"| real | | real reports | {real['real_macro_auc']:.3f} | {real['real_vs_real_fid']:.1f} | "
                 f"{ce(real['real_reports']['ce'])} | {real['rewritten_reports']['bleu_1']:.3f} (rewritten) |")
    lines.append(f"| real | | judge reading real images | | | {ce(real['judge_reading_real_images_ce'])} | |")
    lines.append(f"| | | always-normal report | | | {ce(real['always_normal_report']['ce'])} | "
                 f"{real['always_normal_report']['bleu_1']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
