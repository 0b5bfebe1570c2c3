"""From a validated ProduceConfig to a finished run: one function for the CLI and the Ray job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from factory import storage
from factory.config import ProduceConfig
from factory.errors import BadInputError
from factory.produce.pool import produce
from factory.produce.shards import RunSpec, canonical_sha256


def label_policy(labels: str) -> str | dict[str, int]:
    """balanced | prior | a YAML/JSON file mapping label combinations ("A+B") to counts."""
    if labels in ("balanced", "prior"):
        return labels
    try:
        counts = yaml.safe_load(Path(labels).read_text())
    except OSError as err:
        raise BadInputError(labels, f"cannot read label counts ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise BadInputError(labels, f"not valid YAML/JSON ({err})") from err
    if not isinstance(counts, dict) or not all(isinstance(v, int) and v >= 0 for v in counts.values()):
        raise BadInputError(labels, "must map label combinations (e.g. 'Cardiomegaly+Edema') to counts")
    return {str(k): int(v) for k, v in counts.items()}


def production_spec(config: ProduceConfig, command: str = "") -> tuple[dict[str, Any], RunSpec]:
    if config.bundle is not None:
        from factory.models.bundle import read_metadata

        bundle = read_metadata(config.bundle)  # its sha256 joins the run's identity
        labels = label_policy(config.labels)
        if isinstance(labels, dict) and sum(labels.values()) != config.count:
            raise BadInputError(config.labels, f"label counts add up to {sum(labels.values())}, "
                                               f"not the run's count {config.count}")
        producer = {"type": "bundle-pairs", "bundle": storage.absolute(config.bundle), "bundle_sha256": bundle["sha256"],
                    "labels": labels, "count": config.count}
        name = bundle["recipe"]
    else:
        producer = {"type": config.source, "size": config.size}
        name = config.source
    gates = [gate.model_dump(exclude_none=True) for gate in config.gates]
    settings = {"producer": producer, "shard_size": config.shard_size, "batch_size": config.batch_size, "gates": gates}
    # Same settings, same run id: running the same command again resumes instead of starting over.
    run_id = config.run_id or f"{name}-s{config.seed}-{canonical_sha256([settings, config.count])[:8]}"
    spec = RunSpec(run_id=run_id, requested=config.count, shard_size=config.shard_size, seed=config.seed,
                   sample_kind="pair", config=settings, command=command)
    return producer, spec


def run_production(config: ProduceConfig, command: str = "", progress: bool = True) -> dict[str, Any]:
    producer, spec = production_spec(config, command)
    return produce(producer, config.out, spec, actors=config.actors, cpus_per_actor=config.cpus_per_actor,
                   gpus_per_actor=config.gpus_per_actor, batch_size=config.batch_size,
                   gates=spec.config["gates"], progress=progress)
