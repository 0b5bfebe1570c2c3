"""A webdataset pipeline over one run: shard list from its manifest, shards read through fsspec.

Stages, in order (each a webdataset piece or a small named method):

    shard list      the manifest's committed shards (never a listing), in a seeded per-epoch order;
                    or webdataset.ResampledShards, drawing shards with replacement, endlessly
    split by rank   shards i, i+W, ... to rank i of W (skipped when resampling: each rank draws its own)
    split by worker webdataset.split_by_worker, across torch DataLoader workers
    read            storage.open_file (local paths, and s3:// with factory.storage's options; never a
                    `pipe:`), webdataset's tar_file_expander; each shard closed once read
    group           webdataset's group_by_keys: members -> one raw sample per key
    label filter    on the json member alone, before any image is decoded
    shuffle         webdataset.shuffle with a buffer, rng seeded by (seed, epoch, rank, worker)
    decode          webdataset's Decoder with factory.stream.format's handlers -> the sample dict

Without resampling, every sample of the run is read exactly once per epoch across ranks x workers
(shards are the unit of splitting; with fewer shards than ranks x workers some read nothing).
"""

from __future__ import annotations

import logging
import random
import tarfile
from itertools import islice
from typing import Any, Iterator, Sequence

import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from factory import storage
from factory.data.labels import CXR_LABELS
from factory.errors import BadInputError, IntegrityError
from factory.run_manifest import manifest_url, read_manifest
from factory.storage import StorageOptions
from factory.stream.format import LabelFilter, SampleDecoder, check_arrays
from factory.stream.topology import Topology, derive_seed, resolve_topology, worker_info

log = logging.getLogger(__name__)

# How many samples the shuffle buffer holds before it starts to yield (webdataset's `initial`).
SHUFFLE_INITIAL_SHARE = 0.5


class RunStream(wds.DataPipeline, wds.FluidInterface):
    """An iterable of sample dicts (see factory.stream.format) over one run; a torch IterableDataset
    where torch is installed (webdataset's pipelines are), with webdataset's fluent methods (.batched, .map, .with_epoch ...). Build it with `open_run`."""

    def __init__(self, url: str, manifest: dict[str, Any], *, labels: Sequence[str] | None,
                 exclude: Sequence[str] | None, shuffle: int, seed: int, resample: bool, topology: Topology,
                 label_names: Sequence[str], scale: str, storage_options: StorageOptions, arrays: str = "torch"):
        super().__init__()
        self.url = url
        self.manifest = manifest
        self.seed = int(seed)
        self.epoch = 0
        self.shuffle_buffer = int(shuffle)
        self.resample = resample
        self.topology = topology
        self.label_names = tuple(label_names)
        self.storage_options = dict(storage_options or {})
        # shards that quality gates emptied entirely hold no sample: nothing to open
        self._records = {storage.join(url, record["name"]): record
                         for record in manifest["shards"] if record["count"] > 0}
        self.shard_urls = list(self._records)
        self.label_filter = LabelFilter(labels, exclude)
        if resample:
            self.append(wds.ResampledShards(self.shard_urls, seed=self.seed, worker_seed=self._resample_seed,
                                            deterministic=True))
        else:
            self.append(self._shard_list)
            self.append(self._split_by_rank)
        self.append(wds.split_by_worker)
        self.append(self._read_shards)
        self.append(wds.pipelinefilter(group_by_keys)())
        if self.label_filter.active:
            self.append(wds.select(self.label_filter))
        if self.shuffle_buffer > 0:
            self.append(self._shuffle)
        self.append(wds.map(SampleDecoder(self.label_names, scale, arrays)))

    def set_epoch(self, epoch: int) -> None:
        """Reseed shard order and shuffling for this epoch; call it before each epoch, as with a
        DistributedSampler (DataLoader workers get a fresh copy of the pipeline every epoch)."""
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        """Samples in the run (before any label filter)."""
        return int(self.manifest["count"])

    # --- stages -------------------------------------------------------------------------------
    def _shard_list(self) -> Iterator[dict[str, str]]:
        urls = list(self.shard_urls)
        if self.shuffle_buffer > 0:
            # The same order on every rank (no rank or worker in the seed), or the split would overlap.
            random.Random(derive_seed(self.seed, self.epoch)).shuffle(urls)
        for url in urls:
            yield {"url": url}

    def _split_by_rank(self, shards: Iterator[dict[str, str]]) -> Iterator[dict[str, str]]:
        rank, world = self.topology.rank, self.topology.world_size
        _, workers = worker_info()
        if len(self.shard_urls) < world * workers:
            log.warning("%s: %d shards for %d ranks x %d workers: some read nothing", self.url,
                        len(self.shard_urls), world, workers)
        return islice(shards, rank, None, world)

    def _resample_seed(self) -> int:
        worker, _ = worker_info()
        return derive_seed(self.seed, self.epoch, self.topology.rank, worker)

    def _read_shards(self, shards: Iterator[dict[str, str]]) -> Iterator[dict[str, Any]]:
        """Tar members of each shard, checked against the shard's commit record: a tar read as a
        stream ends quietly where its bytes end, so a truncated shard would otherwise just lose samples.
        Each shard is closed as soon as the next one is asked for."""
        for shard in shards:
            url = shard["url"]
            record = self._records[url]
            with storage.open_file(url, "rb", self.storage_options) as stream:
                size = getattr(stream, "size", None)
                if size is not None and size != record["bytes"]:
                    raise IntegrityError(url, f"is {size} bytes, the manifest says {record['bytes']}")
                keys = 0
                previous = None
                try:
                    for member in tar_file_expander([{**shard, "stream": stream}]):
                        key = member.get("fname", "").split(".", 1)[0] if member else None
                        if key is not None and key != previous:
                            keys, previous = keys + 1, key
                        yield member
                except (tarfile.TarError, EOFError) as err:
                    raise BadInputError(url, f"truncated or corrupt tar ({err})") from err
            if keys != record["count"]:
                raise IntegrityError(url, f"holds {keys} samples, the manifest says {record['count']}")

    def _shuffle(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        worker, _ = worker_info()
        rng = random.Random(derive_seed(self.seed, self.epoch, self.topology.rank, worker, 1))
        initial = max(1, int(self.shuffle_buffer * SHUFFLE_INITIAL_SHARE))
        return wds.shuffle(self.shuffle_buffer, initial=initial, rng=rng)(samples)


def open_run(
    url: str,
    *,
    labels: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    shuffle: int = 0,
    seed: int = 0,
    resample: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    label_names: Sequence[str] = CXR_LABELS,
    scale: str = "unit",
    storage_options: StorageOptions = None,
    arrays: str = "torch",
) -> RunStream:
    """Stream the samples of the finished run at `url` (a local folder or s3:// prefix).

    labels / exclude: keep samples with any of `labels` positive / drop those with any of `exclude` positive.
    shuffle: shuffle buffer size in samples (0 reads shards and samples in order); `seed` seeds it.
    resample: draw shards with replacement for ever (pair with .with_epoch(n) or islice).
    rank / world_size: override the rank found in Ray Train, torch.distributed or RANK/WORLD_SIZE.
    label_names: the order of the `labels` vector. scale: "unit" ([0, 1]) or "raw" (stored integers).
    arrays: "torch" (tensors) or "numpy" (arrays; what a consumer without torch asks for).
    """
    url = storage.absolute(url)
    check_arrays(arrays)
    manifest = read_manifest(url, storage_options)
    source = manifest_url(url)
    if manifest["count"] == 0:
        raise BadInputError(source, "the run holds no samples")
    known = set(manifest["label_histogram"]) | set(label_names)
    for field, names in (("labels", labels), ("exclude", exclude)):
        if isinstance(names, str):
            raise BadInputError(source, f"{field}: give a list of label names, not the string {names!r}")
        unknown = [name for name in names or () if name not in known]
        if unknown:
            raise BadInputError(source, f"{field}: unknown label(s) {unknown}; known: {sorted(known)}")
    if shuffle < 0:
        raise BadInputError(source, f"shuffle: buffer size must be >= 0, got {shuffle}")
    return RunStream(url, manifest, labels=labels, exclude=exclude, shuffle=shuffle, seed=seed, resample=resample,
                     topology=resolve_topology(rank, world_size), label_names=label_names, scale=scale,
                     storage_options=storage_options, arrays=arrays)
