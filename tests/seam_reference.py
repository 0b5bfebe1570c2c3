"""The produced bytes that the generator seam must not change, for fixed seeds.

`reference_digests(root)` makes, under `root`, an untrained bundle of each registered model (a fixed
creation time, so the metadata hashes are stable), a phantom run, an EMIXER pair run and a DUIIT
translation run (slices and a volume), and returns the sha256 of everything a user keeps: bundle
weights and metadata, each run's id and every shard's and volume's sha256. `seam_reference.json`
holds the digests recorded with the code before the seam (commit 06313f5), on this kind of machine,
except the EMIXER bundle and pair run, re-recorded when EMIXER gained config keys (f_encoder_frozen,
f_input_mean, f_input_std; then report_beam; then mle_steps): same weights, and the pair run's png/txt/cls/json
identical apart from run id and bundle hash; and again when F's sentence LSTM gained sentence_feedback and
layer norms: G's weights identical (so the pngs), F's and the discriminators' new, so the reports differ;
tests/test_generator_seam.py compares.

The digests are kept per kind of CPU (`torch.backends.cpu.get_cpu_capability()`): untrained weights pass
through spectral norm's power iteration and generated images through convolutions, whose float
rounding differs between AVX2 and AVX-512 kernels, and so do the bytes (on AVX-512 also with the number
of torch threads: networks are now built on one, and the digests are made on one). "AVX2" holds the
record above (the development machines up to 2026-12-05 had AVX2 only); "AVX512" was recorded on 2026-12-05 with the code of that day
(the fresh-clone suite had passed against the AVX2 record with the same model code earlier that day).
Run as a script to record this CPU's kind (the other kinds' entries are kept):
`python tests/seam_reference.py tests/seam_reference.json` (needs Ray; starts a local one).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SIZE = 32
CREATED_AT = "2026-01-01T00:00:00+00:00"


def _bundle(root: Path, recipe: str, **options) -> tuple[str, dict]:
    # (Recorded before init_bundle took created_at, with write_bundle's default patched to it.)
    from factory.models.cli import init_bundle

    url = str(root / f"bundle-{recipe}")
    metadata = init_bundle(url, recipe, size=SIZE, seed=4, created_at=CREATED_AT, **options)
    return url, {"sha256": metadata["sha256"], "weights": metadata["files"][0]["sha256"]}


def _run(manifest: dict, root: Path) -> dict:
    # Run ids hash the producer's settings, absolute paths included: fixed ids keep the shards'
    # bytes comparable across folders, and the echoed settings are compared with the folder cut out.
    # The translation plan's hash covers its root folder, so it is left out too.
    config = json.loads(json.dumps(manifest["config"]).replace(str(root), "ROOT"))
    config["producer"].pop("plan_sha256", None)
    echoed = json.dumps(config, sort_keys=True)
    digest = {"config": echoed, "shards": [s["sha256"] for s in manifest["shards"]]}
    volumes = (manifest.get("extra") or {}).get("volumes")
    if volumes:
        digest["volumes"] = [a["sha256"] for a in volumes["arrays"]]
    return digest


def reference_digests(root: Path) -> dict:
    """The digests, computed on one torch thread: on AVX-512 CPUs the thread count can change float
    rounding (it did change spectral norm's power iteration at init, before networks were built on one
    thread), and a test suite leaves the count where its last test set it."""
    from factory.seeding import one_torch_thread

    with one_torch_thread():
        return _digests(root)


def _digests(root: Path) -> dict:
    from factory.cli import main
    from factory.config import ProduceConfig, TranslateConfig
    from factory.produce.runs import production_spec, run_translation
    from factory.produce.writer import write_run

    def produced(config: ProduceConfig) -> dict:
        # Written in this process: the pool writes the same bytes (tests/test_pool.py), and an actor's
        # start would double this test's time.
        producer, spec = production_spec(config)
        samples = producer.build(spec.seed).make_batch(range(config.count))
        return write_run(samples, config.out, spec, progress=False)

    digests: dict = {"bundles": {}, "runs": {}}
    emixer, digests["bundles"]["emixer"] = _bundle(root, "emixer", width=4)
    duiit, digests["bundles"]["duiit"] = _bundle(root, "duiit", width=4)
    _, digests["bundles"]["judge"] = _bundle(root, "judge")

    phantom = ProduceConfig(source="phantom-cxr", count=12, size=SIZE, shard_size=5, batch_size=4, seed=3,
                            out=str(root / "phantom"), run_id="seam-phantom")
    digests["runs"]["phantom-cxr"] = _run(produced(phantom), root)
    pairs = ProduceConfig(bundle=emixer, count=12, shard_size=5, batch_size=4, seed=3, out=str(root / "pairs"),
                          run_id="seam-pairs")
    digests["runs"]["emixer-pairs"] = _run(produced(pairs), root)

    source = str(root / "brain")
    for modality, dims, seed in (("mri", 2, 1), ("pet", 2, 2), ("mri", 3, 3)):
        assert main(["data", "brain", "--out", source, "--count", "2" if dims == 2 else "1", "--modality", modality,
                     "--format", "nifti", "--dims", str(dims), "--size", str(SIZE), "--seed", str(seed)]) == 0
    translation = TranslateConfig(bundle=duiit, source=source, out=str(root / "translated"), shard_size=8,
                                  batch_size=4, run_id="seam-translation")
    digests["runs"]["duiit-translation"] = _run(run_translation(translation, progress=False), root)
    return digests


if __name__ == "__main__":
    import tempfile

    import ray

    import torch

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        result = reference_digests(Path(tmp))
    ray.shutdown()
    path = Path(sys.argv[1])
    recorded = json.loads(path.read_text()) if path.exists() else {"by_cpu_capability": {}}
    recorded["by_cpu_capability"][torch.backends.cpu.get_cpu_capability()] = result
    path.write_text(json.dumps(recorded, indent=1) + "\n")
    print(json.dumps(result, indent=1))
