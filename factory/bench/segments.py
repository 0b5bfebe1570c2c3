"""A learning run of the training benchmarks: one recipe trained through the runner (Ray Train,
DeepSpeed) within a CPU budget of the process tree, split into segments that resume by run name, and
evaluated at step 0 and at each snapshot and end bundle (train_emixer's planner, meter and segments)."""

from __future__ import annotations

import os
from typing import Any, Callable

from factory.bench.train_emixer import (BUDGET_MARGIN, CpuMeter, SegmentPlanner, run_segment, segment_bundles,
                                        segment_steps, snapshot_every)

# evaluate(nets, model_config) -> scores; keys starting with "_" (arrays) stay out of the JSON
Evaluate = Callable[[dict, dict], dict[str, Any]]


def scalars(point: dict[str, Any]) -> dict[str, float]:
    """An evaluation point's numeric scores, for the run's TensorBoard events (eval/...)."""
    return {key: float(value) for key, value in point.items()
            if key not in ("step", "train_cpu_minutes") and isinstance(value, (int, float)) and not isinstance(value, bool)}


def learn(recipe: str, config_for: Callable[..., Any], evaluate: Evaluate, args, work: str, meter: CpuMeter,
          describe: Callable[[dict], str] | None = None) -> dict[str, Any]:
    """Train `recipe` in `args.segments` segments within `args.minutes` CPU-minutes; `config_for(storage,
    steps, **changes)` gives each segment's TrainConfig. Returns every point, the final one (the last inside
    the budget), the last bundle and the CPU minutes spent."""
    from factory.models.bundle import load_bundle
    from factory.train.data import prepare_data
    from factory.train.progress import record_evaluation
    from factory.train.recipes import get_recipe

    storage = os.path.join(work, "runs")
    cpu = meter.seconds()
    first = config_for(storage, 1)
    name = first.name
    prepare_data(first, get_recipe(recipe), progress=False)
    data_cpu = meter.seconds() - cpu
    planner = SegmentPlanner(budget_s=args.minutes * 60, segments=args.segments, margin=BUDGET_MARGIN)
    train_cpu, eval_cpu, points, step, last = 0.0, 0.0, [], 0, None
    for segment in range(args.segments):
        steps = segment_steps(planner, train_cpu, segment, args.first_steps)
        if not steps:
            break
        bundle_url = os.path.join(work, "bundles", name, f"step-{step + steps:06d}")
        config = config_for(storage, step + steps, bundle_out=bundle_url,
                            snapshot_every=snapshot_every(args.points, args.segments, segment, steps))
        cpu = meter.seconds()
        stats = run_segment(config)
        segment_cpu = meter.seconds() - cpu
        step_cpu = sum(worker["step_cpu_s"] for worker in stats["workers"])
        planner.observe(steps, segment_cpu, step_cpu)
        segment_start, step = step, step + steps
        cpu = meter.seconds()
        for at, url in segment_bundles(os.path.join(storage, config.name, "snapshots"), segment_start, step, bundle_url):
            bundle = load_bundle(url)
            if not points:  # step 0: the networks as training started (built from the seed alone)
                initial = get_recipe(recipe).build(bundle.model_config, seed=config.seed)
                points.append({"step": 0, "train_cpu_minutes": 0.0, **evaluate(initial, bundle.model_config)})
                record_evaluation(storage, config.name, 0, scalars(points[-1]))
            at_cpu = train_cpu + (segment_cpu - step_cpu) + step_cpu * (at - segment_start) / steps
            point = {"step": at, "train_cpu_minutes": at_cpu / 60, **evaluate(bundle.nets, bundle.model_config),
                     "losses": {k: float(v) for k, v in bundle.metadata["metrics"].items()
                                if k != "steps" and not k.startswith("lr_")}}
            points.append(point)
            record_evaluation(storage, config.name, at, scalars(point))
            if describe is not None:
                print(describe(point), flush=True)
            last = bundle
        train_cpu += segment_cpu
        eval_cpu += meter.seconds() - cpu
    if last is None:
        raise RuntimeError(f"the budget of {args.minutes} CPU-minutes did not fit one {recipe} segment")
    for point in points:
        point["over_budget"] = point["train_cpu_minutes"] > args.minutes
    final = [p for p in points if not p["over_budget"]][-1]
    return {"points": points, "final": final, "bundle": last,
            "cpu_minutes": {"training": train_cpu / 60, "evaluation": eval_cpu / 60, "training_data": data_cpu / 60}}


def strip(point: dict[str, Any]) -> dict[str, Any]:
    """A point without its arrays (keys starting with "_")."""
    return {k: v for k, v in point.items() if not k.startswith("_")}
