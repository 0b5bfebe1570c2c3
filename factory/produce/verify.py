"""Verify a finished run against its manifest: every shard, and a translation run's Zarr volumes."""

from __future__ import annotations

from typing import Any

from factory.errors import FactoryError, IntegrityError
from factory.produce.shards import read_sidecar, sidecar_name, verify_shard
from factory.produce.volumes import verify_volumes
from factory.storage import StorageOptions


def verify_run(out: str, manifest: dict[str, Any], storage_options: StorageOptions = None,
               deep: bool = True, progress: bool = False) -> None:
    """Check every listed shard against the manifest (see shards.verify_shard) and its commit record
    (present and equal to the manifest's), and the Zarr volumes of a translation run (see
    volumes.verify_volumes)."""
    from tqdm import tqdm

    with tqdm(manifest["shards"], desc="verify shards", unit="shard", disable=not progress) as records:
        for record in records:
            verify_shard(out, record, storage_options, deep=deep, sample_kind=manifest["sample_kind"])
            sidecar = read_sidecar(out, record["index"], storage_options)
            if sidecar != record:
                name = sidecar_name(record["index"])
                raise IntegrityError(name, "missing: the manifest lists this shard as committed" if sidecar is None
                                     else "does not match the shard's record in the manifest")
    volumes = (manifest.get("extra") or {}).get("volumes")
    if volumes:
        try:
            import zarr  # noqa: F401
        except ModuleNotFoundError as err:
            raise FactoryError(f"{out} holds Zarr volumes; verifying them needs zarr: "
                               "pip install 'medsynth-factory[volumes]'") from err
        verify_volumes(out, volumes, deep=deep)
