"""Downstream loading: a WebDataset pipeline over a run's manifest, and real/synthetic mixing.

    import torch
    from factory.stream import collate, mix, open_run, study_samples
    from factory.data.adapters import open_dataset

    synthetic = open_run("s3://bucket/runs/pairs",             # or a local folder; shards from its manifest
                         labels=["Cardiomegaly"],               # keep samples with any of these positive
                         exclude=["Support Devices"],           # ... and none of these
                         shuffle=1000, seed=17)                 # shuffle buffer, seeded
    real = study_samples(open_dataset("/data/mimic", "mimic-cxr", size=128), shuffle=True, seed=17)
    mixed = mix(real, synthetic, ratio=0.3, seed=17)            # 30 % synthetic, seeded
    loader = torch.utils.data.DataLoader(mixed, batch_size=64, num_workers=4, collate_fn=collate)
    for epoch in range(10):
        mixed.set_epoch(epoch)                                  # new shard order and shuffle each epoch
        for batch in loader:
            images, labels = batch["image"], batch["labels"]    # (64, 1, H, W) in [0, 1]; (64, 9)
            reports, sources = batch["report"], batch["__source__"]

Inside torch.distributed or a Ray Train worker each rank reads its own shards (found automatically,
or pass rank=/world_size=), and each DataLoader worker its own part of those: without resampling
every sample is read exactly once per epoch. `open_run(url, resample=True).with_epoch(n)` draws
shards with replacement for endless, equally long epochs on every rank (what DDP needs when shard
counts don't divide evenly). The sample dict is documented in factory.stream.format; any plain
WebDataset or tar reader still reads the shards without this package.
"""

from factory.stream.format import collate, decode_image
from factory.stream.mix import Mix, mix
from factory.stream.run import RunStream, open_run
from factory.stream.studies import StudySamples, study_samples
from factory.stream.topology import Topology, resolve_topology

__all__ = ["Mix", "RunStream", "StudySamples", "Topology", "collate", "decode_image", "mix", "open_run",
           "resolve_topology", "study_samples"]
