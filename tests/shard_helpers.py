"""Small deterministic samples for shard tests (independent of any model or simulator)."""

import numpy as np

from factory.produce.samples import Sample
from factory.produce.shards import RunSpec

LABELS = ("No Finding", "Cardiomegaly", "Pleural Effusion")


def spec(count=23, shard_size=5, run_id="test-run", seed=7, **config):
    return RunSpec(run_id=run_id, requested=count, shard_size=shard_size, seed=seed, sample_kind="pair",
                   config={"test": True, **config}, command="pytest")


def samples(count=23, seed=7, fail_at=None, bit_depth=8):
    for index in range(count):
        if index == fail_at:
            raise RuntimeError(f"producer failed at sample {index}")
        rng = np.random.default_rng([seed, index])
        dtype = np.uint8 if bit_depth == 8 else np.uint16
        image = rng.integers(0, np.iinfo(dtype).max, size=(16, 12), dtype=dtype)
        label = int(rng.integers(0, len(LABELS)))
        yield Sample(
            index=index,
            images={"png": image},
            report=f"FINDINGS: sample {index}. IMPRESSION: {LABELS[label]}.",
            label=label,
            metadata={
                "kind": "pair",
                "source": {"kind": "phantom", "recipe": "test"},
                "labels": {name: float(i == label) for i, name in enumerate(LABELS)},
                "primary_label": LABELS[label],
            },
        )


def one_and_two_actors(producer, spec, root):
    """Produce the run with 1 actor under root/one and 2 under root/two: byte-identical shards, the run
    verifies, and running it again writes nothing. Returns the two-actor manifest."""
    from factory.produce.pool import produce
    from factory.produce.shards import shard_name
    from factory.produce.verify import verify_run

    produce(producer, str(root / "one"), spec, actors=1, batch_size=2, progress=False)
    two = produce(producer, str(root / "two"), spec, actors=2, batch_size=2, progress=False)
    for i in range(spec.num_shards):
        assert (root / "one" / shard_name(i)).read_bytes() == (root / "two" / shard_name(i)).read_bytes()
    verify_run(str(root / "two"), two)
    again = produce(producer, str(root / "two"), spec, actors=2, batch_size=2, progress=False)
    assert again["shards"] == two["shards"]  # a finished run is not written again
    return two
