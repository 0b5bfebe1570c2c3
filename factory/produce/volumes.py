"""Whole translated volumes as a Zarr group beside a translation run's shards.

    OUT/volumes.zarr/                  Zarr v3 group; its zarr.json is written after every array
    OUT/volumes.zarr/{study_id}/       int16 array (slices, rows, columns) of Hounsfield units,
                                       attributes: study_id, age, modality "ct", source_modality,
                                       spacing (mm per axis; null where unknown), units "HU",
                                       bundle_id, bundle_sha256, run_id, config_sha256, first_index
                                       (sample index of slice 0), slices, sha256 (of the voxels as
                                       little-endian int16 in C order)

Only studies with more than one slice become arrays; a 2-D study is its one sample.

When: after every shard has committed and before the manifest. Each volume is assembled by a Ray
task from the committed shards that hold its slices (their `ct.png` members, checked against the
shards' sha256), so nothing is translated twice, no sample passes through the driver, and a volume
never depends on which actor translated which slice.

Exactly once: an array becomes visible to Zarr only when its `zarr.json` exists, and that object is
written last, after all the array's chunks, each object atomically (storage.atomic_put). A task that
dies leaves at most chunks without metadata, which Zarr does not see and the retry rewrites with the
same bytes. A resumed run keeps every array whose metadata names this run and whose voxels match
its sha256 (checked in the tasks), and assembles the rest. The group's zarr.json comes after all
arrays, and the manifest, which lists the arrays, after the group: a run with a manifest has every
volume complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from factory import storage
from factory.data.hounsfield import CT_PNG_OFFSET
from factory.errors import FactoryError, IntegrityError
from factory.produce.samples import sample_key
from factory.produce.shards import RunSpec, read_tar_members
from factory.raytools import connect_ray, dispatch_bounded

if TYPE_CHECKING:  # the plan reads source volumes (torch adapters); verifying a run needs only zarr
    from factory.produce.translate_plan import PlannedStudy

log = logging.getLogger(__name__)

GROUP_NAME = "volumes.zarr"
METADATA_NAME = "zarr.json"
CHUNK_SLICES = 16
MAX_TASKS_IN_FLIGHT = 64  # bounds the driver's bookkeeping, however many volumes a run has


def group_url(out: str) -> str:
    return storage.join(out, GROUP_NAME)


def volume_jobs(spec: RunSpec, studies: Iterable[PlannedStudy],
                records: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """One JSON-able job per planned volume: where its slices are and which shards hold them."""
    jobs = []
    for study in studies:
        last = study.first_index + study.slices - 1
        shards = [records[i] for i in range(study.first_index // spec.shard_size, last // spec.shard_size + 1)]
        jobs.append({"study_id": study.study_id, "first_index": study.first_index, "slices": study.slices,
                     "run_id": spec.run_id, "config_sha256": spec.config_sha256,
                     "shards": [{"name": r["name"], "sha256": r["sha256"]} for r in shards]})
    return jobs


def voxel_sha256(volume: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(volume, dtype="<i2").tobytes()).hexdigest()


def _decode_png16(data: bytes, source: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if not image.mode.startswith("I;16"):
            raise IntegrityError(source, f"ct.png is {image.mode}, not 16-bit grayscale")
        return np.asarray(image).astype(np.uint16)


def read_slices(out: str, job: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """The volume's ct.png slices as int16 HU (slices, rows, columns) and its first slice's metadata."""
    wanted = {sample_key(job["run_id"], job["first_index"] + z): z for z in range(job["slices"])}
    planes: list[np.ndarray | None] = [None] * job["slices"]
    first_meta: dict[str, Any] = {}
    for shard in job["shards"]:
        url = storage.join(out, shard["name"])
        data = storage.read_bytes(url)
        digest = hashlib.sha256(data).hexdigest()
        if digest != shard["sha256"]:
            raise IntegrityError(url, f"sha256 {digest[:12]}… differs from its commit record "
                                      f"{shard['sha256'][:12]}…")
        for name, member in read_tar_members(data, url):
            key, extension = name.split(".", 1)
            z = wanted.get(key)
            if z is None:
                continue
            if extension == "ct.png":
                planes[z] = _decode_png16(member, f"{url}:{name}")
            elif extension == "json" and z == 0:
                first_meta = json.loads(member)
    missing = [z for z, plane in enumerate(planes) if plane is None]
    if missing or not first_meta:
        raise IntegrityError(storage.join(out, job["shards"][0]["name"]),
                             f"study {job['study_id']}: slices {missing[:5]} or its metadata are not in its shards")
    volume = (np.stack(planes).astype(np.int32) - CT_PNG_OFFSET).astype(np.int16)
    return volume, first_meta


def _publish(url: str, build) -> None:
    """Build a Zarr node in a scratch folder with `build(path)`, then copy its objects to `url`, each
    atomically, its zarr.json last: the node is visible to Zarr only once it is complete."""
    with tempfile.TemporaryDirectory(prefix="medsynth-zarr-") as scratch:
        node = os.path.join(scratch, "node")
        build(node)
        files = [os.path.relpath(os.path.join(folder, name), node)
                 for folder, _, names in os.walk(node) for name in names]
        for relative in sorted(files, key=lambda f: (f == METADATA_NAME, f)):
            with open(os.path.join(node, relative), "rb") as f:
                storage.atomic_put(storage.join(url, *relative.split(os.sep)), f.read())


def assemble_volume(out: str, job: dict[str, Any]) -> dict[str, Any]:
    """Write one volume's array from the committed shards; return its manifest record. Runs in a Ray task."""
    import zarr

    volume, meta = read_slices(out, job)
    record = {"name": job["study_id"], "first_index": job["first_index"], "slices": job["slices"],
              "shape": list(volume.shape), "sha256": voxel_sha256(volume)}
    age = meta.get("labels", {}).get("age")
    attributes = {
        "study_id": job["study_id"], "age": age, "modality": "ct", "source_modality": meta["source_modality"],
        "spacing": meta["spacing"], "units": "HU", "bundle_id": meta["source"]["bundle_id"],
        "bundle_sha256": meta["source"]["bundle_sha256"], "run_id": job["run_id"],
        "config_sha256": job["config_sha256"], **{k: record[k] for k in ("first_index", "slices", "sha256")},
    }
    chunks = (min(CHUNK_SLICES, volume.shape[0]), *volume.shape[1:])

    def build(path: str) -> None:
        array = zarr.create_array(path, shape=volume.shape, dtype="int16", chunks=chunks, attributes=attributes)
        array[...] = volume

    _publish(storage.join(group_url(out), job["study_id"]), build)
    return record


def open_array(url: str):
    import zarr

    options = storage.s3_options_from_env() if storage.protocol_of(url) == "s3" else None
    # zarr refuses storage options for plain local paths.
    return zarr.open_array(url, mode="r", **({"storage_options": options} if "://" in url else {}))


def committed_volume(out: str, job: dict[str, Any], deep: bool = True) -> dict[str, Any] | None:
    """The record of a volume already written by this run and intact, else None (it is written again)."""
    url = storage.join(group_url(out), job["study_id"])
    if not storage.exists(storage.join(url, METADATA_NAME)):
        return None
    array = open_array(url)
    attributes = dict(array.attrs)
    if attributes.get("run_id") != job["run_id"] or attributes.get("config_sha256") != job["config_sha256"]:
        raise FactoryError(f"{url}: belongs to run {attributes.get('run_id')} with another configuration; "
                           "choose another output location or the same settings")
    if deep:
        try:
            intact = voxel_sha256(array[...]) == attributes["sha256"]
        except Exception as err:  # a damaged chunk: zarr and its codecs raise their own types
            log.warning("rewriting volume %s: %s", url, err)
            return None
        if not intact:
            log.warning("rewriting volume %s: its voxels do not match its sha256", url)
            return None
    return {"name": job["study_id"], "first_index": attributes["first_index"], "slices": attributes["slices"],
            "shape": list(array.shape), "sha256": attributes["sha256"]}


def ensure_volume(out: str, job: dict[str, Any]) -> dict[str, Any]:
    """The volume's record: kept when this run already wrote it intact, else (re)assembled. Runs in
    a Ray task, so a resumed run checks its volumes in parallel and never through the driver."""
    return committed_volume(out, job) or assemble_volume(out, job)


def write_volumes(out: str, spec: RunSpec, studies: Iterable[PlannedStudy], records: dict[int, dict[str, Any]],
                  bundle: dict[str, str], cpus_per_task: float = 1.0,
                  progress: bool = True) -> dict[str, Any] | None:
    """Make sure every planned volume is written (one Ray task each), then write the group's
    zarr.json; return the manifest's `volumes` entry, or None when the run has no volumes."""
    import zarr
    from tqdm import tqdm

    jobs = volume_jobs(spec, studies, records)
    if not jobs:
        return None
    ray = connect_ray()
    # Retried where a worker dies: a retry rewrites the same objects, zarr.json last.
    task = ray.remote(num_cpus=cpus_per_task, max_retries=3)(ensure_volume)
    written: dict[str, dict[str, Any]] = {}
    with tqdm(total=len(jobs), desc=f"volumes {spec.run_id}", unit="volume", disable=not progress) as bar:
        def done(job: dict[str, Any], record: dict[str, Any]) -> None:
            written[record["name"]] = record
            bar.update(1)

        dispatch_bounded(ray, jobs, [task], MAX_TASKS_IN_FLIGHT,
                         lambda remote, job: remote.remote(out, job), done)
    arrays = [written[job["study_id"]] for job in jobs]
    _remove_stale_partials(group_url(out))
    group_attributes = {"run_id": spec.run_id, "config_sha256": spec.config_sha256, **bundle, "count": len(arrays)}
    _publish(group_url(out), lambda path: zarr.create_group(path, attributes=group_attributes))
    return {"group": GROUP_NAME, "format": "zarr-v3", "count": len(arrays),
            "slices": sum(a["slices"] for a in arrays), "arrays": arrays}


def _remove_stale_partials(url: str) -> None:
    """Temporary files of tasks killed mid-object (local and memory stores: an object store's upload
    leaves nothing behind). Zarr ignores them, with a warning; run only once every task has ended."""
    fs, path = storage.filesystem(url)
    if storage.is_object_store(fs):
        return
    for found in fs.find(path):
        name = found.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(".") and name.endswith(".partial"):
            fs.rm(found)


def verify_volumes(out: str, volumes: dict[str, Any], deep: bool = True) -> None:
    """Check every array a manifest lists: present with this shape, and (deep) the same voxels."""
    for array in volumes["arrays"]:
        url = storage.join(out, volumes["group"], array["name"])
        if not storage.exists(storage.join(url, METADATA_NAME)):
            raise IntegrityError(url, "listed in the manifest but missing")
        opened = open_array(url)
        if list(opened.shape) != array["shape"]:
            raise IntegrityError(url, f"has shape {list(opened.shape)}, the manifest says {array['shape']}")
        if deep and voxel_sha256(opened[...]) != array["sha256"]:
            raise IntegrityError(url, "its voxels do not match the manifest's sha256")
