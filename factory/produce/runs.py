"""From a validated ProduceConfig to a finished run: one function for the CLI and the Ray job."""

from __future__ import annotations

from typing import Any

from factory.config import ProduceConfig
from factory.errors import FactoryError
from factory.produce.pool import produce
from factory.produce.shards import RunSpec, canonical_sha256


def production_spec(config: ProduceConfig, command: str = "") -> tuple[dict[str, Any], RunSpec]:
    if config.bundle is not None:
        raise FactoryError(f"{config.bundle}: producing from bundles is not available yet; use source: phantom-cxr")
    producer = {"type": config.source, "size": config.size}
    gates = [gate.model_dump(exclude_none=True) for gate in config.gates]
    settings = {"producer": producer, "shard_size": config.shard_size, "batch_size": config.batch_size, "gates": gates}
    # Same settings, same run id: running the same command again resumes instead of starting over.
    run_id = config.run_id or f"{config.source}-s{config.seed}-{canonical_sha256([settings, config.count])[:8]}"
    spec = RunSpec(run_id=run_id, requested=config.count, shard_size=config.shard_size, seed=config.seed,
                   sample_kind="pair", config=settings, command=command)
    return producer, spec


def run_production(config: ProduceConfig, command: str = "", progress: bool = True) -> dict[str, Any]:
    producer, spec = production_spec(config, command)
    return produce(producer, config.out, spec, actors=config.actors, cpus_per_actor=config.cpus_per_actor,
                   gpus_per_actor=config.gpus_per_actor, batch_size=config.batch_size,
                   gates=spec.config["gates"], progress=progress)
