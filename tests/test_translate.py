"""`medsynth translate`: source MRI/PET slices and volumes through an untrained duiit bundle into CT
shards and a Zarr group, read back with plain webdataset and zarr; deterministic across actor counts
and shard layouts, exactly once with a killed actor, resumable volumes, clear errors on bad input."""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from factory.cli import main
from factory.config import TranslateConfig
from factory.errors import BadInputError, FactoryError
from factory.run_manifest import read_manifest
from factory.produce.runs import run_translation
from factory.produce.translate_plan import build_plan
from factory.produce.verify import verify_run

SIZE = 32  # phantom slices and bundle; a 3-D phantom of side 32 has 16 slices
VOLUMES = ("brain-mri-2-00000000", "brain-mri-3-00000000")  # NIfTI and DICOM
HU_OFFSET = 1024  # ct.png holds HU + 1024, as documented (factory.stream.format): users' readers rely on it


def phantoms(root: str, count: int, modality: str, fmt: str, dims: int, seed: int) -> None:
    # Different seeds per call: study ids are brain-{modality}-{seed}-{index}.
    assert main(["data", "brain", "--out", root, "--count", str(count), "--modality", modality, "--format", fmt,
                 "--dims", str(dims), "--size", str(SIZE), "--seed", str(seed)]) == 0


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    """4 MRI slices (NIfTI), an MRI volume in NIfTI and one in DICOM, a PET slice (Zarr), a CT slice."""
    root = str(tmp_path_factory.mktemp("translate") / "source")
    phantoms(root, 4, "mri", "nifti", 2, seed=1)
    phantoms(root, 1, "mri", "nifti", 3, seed=2)
    phantoms(root, 1, "mri", "dicom", 3, seed=3)
    phantoms(root, 1, "pet", "zarr", 2, seed=4)
    phantoms(root, 1, "ct", "nifti", 2, seed=5)
    return root


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("translate") / "duiit")
    assert main(["bundle", "init", "duiit", "--out", url, "--size", str(SIZE), "--width", "8", "--seed", "1"]) == 0
    return url


def config(bundle, source, out, **settings) -> TranslateConfig:
    # batch_size 2 in every run: batches then hold the same slices whatever the shard size.
    return TranslateConfig(bundle=bundle, source=source, out=str(out), **{"shard_size": 8, "batch_size": 2, **settings})


@pytest.fixture(scope="module")
def one_actor_run(ray_local, bundle, source, tmp_path_factory):
    """Translated through the command's own argument handling, with one actor."""
    from factory.produce import translate_cli

    out = str(tmp_path_factory.mktemp("translate") / "one")
    parser = argparse.ArgumentParser()
    translate_cli.configure(parser)
    args = parser.parse_args(["--bundle", bundle, "--source", source, "--out", out, "--shard-size", "8",
                              "--batch-size", "2", "--actors", "1"])
    assert translate_cli.run(args) == 0
    return out, read_manifest(out)


def test_plan_orders_studies_by_id_then_slices_and_leaves_out_ct(source):
    plan = build_plan(source, ["mri", "pet"], progress=False)
    assert [(s.study_id, s.slices, s.first_index) for s in plan.studies] == [
        ("brain-mri-1-00000000", 1, 0), ("brain-mri-1-00000001", 1, 1), ("brain-mri-1-00000002", 1, 2),
        ("brain-mri-1-00000003", 1, 3), ("brain-mri-2-00000000", 16, 4), ("brain-mri-3-00000000", 16, 20),
        ("brain-pet-4-00000000", 1, 36)]
    assert plan.count == 37 and plan.locate(21)[0].study_id == VOLUMES[1] and plan.locate(21)[1] == 1
    only_pet = build_plan(source, ["mri", "pet"], modality="pet", progress=False)
    assert [s.study_id for s in only_pet.studies] == ["brain-pet-4-00000000"]
    with pytest.raises(FactoryError, match=r"translates \['mri'\] into CT, not 'pet'"):
        build_plan(source, ["mri"], modality="pet", progress=False)


def read_plainly(out: str):
    """Every sample of a run's shards with webdataset alone (no factory), decoded by hand."""
    import webdataset as wds

    shards = sorted(glob.glob(os.path.join(out, "shard-*.tar")))
    samples = []
    for raw in wds.WebDataset(shards, shardshuffle=False):
        samples.append({"key": raw["__key__"], "json": json.loads(raw["json"]),
                        **{name: np.asarray(Image.open(io.BytesIO(raw[name]))) for name in ("ct.png", "src.png")},
                        "mode": Image.open(io.BytesIO(raw["ct.png"])).mode})
    return samples


def test_translation_reads_back_with_plain_webdataset_and_zarr(one_actor_run, bundle, capsys):
    import zarr

    out, manifest = one_actor_run
    assert manifest["sample_kind"] == "translation" and manifest["count"] == 37 and len(manifest["shards"]) == 5
    samples = read_plainly(out)
    assert [s["key"] for s in samples] == [f"{manifest['run_id']}-{i:010d}" for i in range(37)]
    bundle_id = json.loads(open(os.path.join(bundle, "bundle.json")).read())["bundle_id"]
    for sample in samples:
        meta = sample["json"]
        assert sample["mode"].startswith("I;16") and sample["ct.png"].shape == sample["src.png"].shape == (SIZE, SIZE)
        hounsfield = sample["ct.png"].astype(int) - HU_OFFSET
        assert -20 <= hounsfield.min() and hounsfield.max() <= 120  # the model's CT window
        assert meta["source"]["bundle_id"] == bundle_id and meta["kind"] == "translation"
        assert set(meta["labels"]) == {"age"} and meta["encoding"]["ct.png"]["offset"] == -HU_OFFSET
    by_study = {}
    for sample in samples:
        by_study.setdefault(sample["json"]["source_study_id"], []).append(sample)
    assert {m for m in (s["json"]["source_modality"] for s in samples)} == {"mri", "pet"}
    assert [len(by_study[v]) for v in VOLUMES] == [16, 16]

    group = zarr.open_group(os.path.join(out, "volumes.zarr"), mode="r")
    assert sorted(name for name, _ in group.arrays()) == list(VOLUMES)
    assert manifest["extra"]["volumes"]["group"] == "volumes.zarr"
    assert [a["name"] for a in manifest["extra"]["volumes"]["arrays"]] == list(VOLUMES)
    for study_id in VOLUMES:
        array = group[study_id]
        slices = sorted(by_study[study_id], key=lambda s: s["json"]["slice_index"])
        expected = np.stack([s["ct.png"] for s in slices]).astype(np.int32) - HU_OFFSET
        assert array.dtype == np.int16 and np.array_equal(array[...], expected)
        first = slices[0]["json"]
        assert array.attrs["age"] == first["labels"]["age"] and array.attrs["source_modality"] == "mri"
        assert array.attrs["bundle_id"] == bundle_id and array.attrs["modality"] == "ct"
        assert len(array.attrs["spacing"]) == 3 and array.attrs["spacing"] == first["spacing"]
    assert main(["inspect", out]) == 0  # verifies every shard and every volume's voxels, the card beside them
    assert "volumes        2 Zarr arrays (32 slices)" in capsys.readouterr().out
    card = open(os.path.join(out, "dataset_card.md")).read()
    assert card.startswith(f'---\nrun_id: "{manifest["run_id"]}"\nsample_kind: "translation"\ncount: 37\n')
    assert "trained: no (random weights)" in card and "2 whole volumes (32 slices)" in card
    assert "`ct.png` the translated CT" in card and "not for diagnosis" in card


def test_volumes_export_as_nifti_that_the_volume_adapter_reads_back_exactly(one_actor_run, tmp_path, capsys):
    import zarr

    from factory.data.adapters.volumes import open_volumes

    out, manifest = one_actor_run
    exported = str(tmp_path / "nifti")
    assert main(["export-nifti", out, exported]) == 0
    assert sorted(os.listdir(exported)) == sorted([f"{v}.nii.gz" for v in VOLUMES] + ["labels.csv"])
    group = zarr.open_group(os.path.join(out, "volumes.zarr"), mode="r")
    dataset = open_volumes(exported)
    assert [row["study_id"] for row in dataset.rows] == list(VOLUMES)
    for i, study_id in enumerate(VOLUMES):
        study, array = dataset[i], group[study_id]
        assert np.array_equal(study.image[0].numpy(), array[...].astype(np.float32))
        assert study.meta["spacing"] == pytest.approx(array.attrs["spacing"], rel=1e-6)
        assert study.labels.item() == pytest.approx(array.attrs["age"], abs=1e-4) and study.meta["modality"] == "ct"
    again = open(os.path.join(exported, f"{VOLUMES[0]}.nii.gz"), "rb").read()
    assert main(["export-nifti", out, exported, "--study", VOLUMES[0]]) == 0  # same bytes: nothing to refuse
    assert open(os.path.join(exported, f"{VOLUMES[0]}.nii.gz"), "rb").read() == again
    assert main(["export-nifti", out, str(tmp_path / "x"), "--study", "brain-mri-9"]) == 2
    assert "no volume 'brain-mri-9' in this run" in capsys.readouterr().err


def test_factory_stream_takes_ct_png_as_the_main_image(one_actor_run):
    from factory.stream.run import open_run

    out, _ = one_actor_run
    first = next(iter(open_run(out, label_names=["age"], scale="raw")))
    assert list(first["images"]) == ["ct.png", "src.png"] and first["image"].equal(first["images"]["ct.png"])
    assert first["labels"].tolist() == [pytest.approx(first["meta"]["labels"]["age"])]


def test_two_actors_write_byte_identical_shards_and_volumes(one_actor_run, bundle, source, tmp_path):
    out_one, one = one_actor_run
    two = run_translation(config(bundle, source, tmp_path / "two", actors=2), progress=False)
    assert two["run_id"] == one["run_id"]
    for record in one["shards"]:
        with open(os.path.join(out_one, record["name"]), "rb") as a, open(tmp_path / "two" / record["name"], "rb") as b:
            assert a.read() == b.read()
    assert two["extra"] == one["extra"]


def test_killed_actor_ends_exactly_once_with_the_same_volumes(ray_local, one_actor_run, bundle, source, tmp_path):
    _, one = one_actor_run
    out = str(tmp_path / "killed")
    killed = []

    def kill_first_actor(shard_index, record):
        # On the driver at the first commit: the actor still holds a shard in flight (two per actor).
        if not killed:
            ray_local.kill(ray_local.get_actor("translate-kill-0"))
            killed.append(shard_index)

    manifest = run_translation(config(bundle, source, out, shard_size=2, actors=1), progress=False,
                               on_commit=kill_first_actor, actor_name_prefix="translate-kill")
    assert killed and manifest["count"] == 37 and len(manifest["shards"]) == 19
    keys = [s["key"] for s in read_plainly(out)]
    assert keys == [f"{manifest['run_id']}-{i:010d}" for i in range(37)]
    assert not [n for n in os.listdir(out) if n.endswith(".partial")]
    # Another shard layout, the same translations: the volumes match the one-actor run voxel for voxel.
    assert manifest["extra"]["volumes"]["arrays"] == one["extra"]["volumes"]["arrays"]
    verify_run(out, manifest)


def test_interrupted_volume_writing_resumes(ray_local, one_actor_run, tmp_path, bundle, source):
    """All shards committed, the driver stopped while writing volumes: one array never got its
    metadata, another lost a chunk. Running again rewrites exactly those and writes the manifest."""
    from factory.produce.volumes import GROUP_NAME

    out_one, one = one_actor_run
    out = tmp_path / "resumed"
    shutil.copytree(out_one, out)
    os.remove(out / "manifest.json")
    os.remove(out / GROUP_NAME / "zarr.json")
    os.remove(out / GROUP_NAME / VOLUMES[0] / "zarr.json")
    chunk = next(p for p in (out / GROUP_NAME / VOLUMES[1]).rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"damaged")
    stray = out / GROUP_NAME / VOLUMES[0] / ".zarr.json.0123.partial"  # a task killed mid-object
    stray.write_bytes(b"{")
    resumed = run_translation(config(bundle, source, out), progress=False)
    assert resumed["extra"] == one["extra"] and resumed["shards"] == one["shards"]
    assert chunk.read_bytes() != b"damaged" and (out / GROUP_NAME / VOLUMES[0] / "zarr.json").is_file()
    assert not stray.exists()
    verify_run(str(out), resumed)


def test_unreadable_source_file_is_named_before_any_work(bundle, source, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    (broken / "brain-mri-2-00000000.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(BadInputError, match=r"brain-mri-2-00000000\.nii\.gz: unreadable NIfTI header"):
        run_translation(config(bundle, str(broken), tmp_path / "out"), progress=False)
    with pytest.raises(BadInputError, match=r"labels\.csv: not found: the source must be a dataset in the volumes"):
        run_translation(config(bundle, str(tmp_path / "nowhere"), tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()


def test_damaged_slice_found_by_an_actor_is_named(ray_local, bundle, source, tmp_path):
    """A DICOM series whose file count is right but one slice is damaged: the actor that decodes it
    stops the run with the file's name, as a BadInputError rather than a Ray traceback."""
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    damaged = broken / "brain-mri-3-00000000" / "0005.dcm"
    damaged.write_bytes(damaged.read_bytes()[:200])
    with pytest.raises(BadInputError) as raised:
        run_translation(config(bundle, str(broken), tmp_path / "out", modality="mri"), progress=False)
    assert raised.value.source == str(damaged) and "unreadable DICOM" in raised.value.problem
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_volumes_are_written_to_s3_and_read_with_plain_zarr(ray_local, one_actor_run, bundle, source, s3_root):
    """The shards of a run copied to S3 (all committed), the run resumed there: the volumes go to the
    object store as Zarr objects, metadata last, and plain zarr reads them with S3 options."""
    import zarr

    from factory import storage

    out_one, one = one_actor_run
    for name in sorted(os.listdir(out_one)):
        if name.startswith("shard-"):
            with open(os.path.join(out_one, name), "rb") as f:
                storage.atomic_put(storage.join(s3_root, name), f.read())
    manifest = run_translation(config(bundle, source, s3_root), progress=False)
    assert manifest["extra"] == one["extra"] and manifest["shards"] == one["shards"]
    verify_run(s3_root, manifest)
    options = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"], "key": os.environ["AWS_ACCESS_KEY_ID"],
               "secret": os.environ["AWS_SECRET_ACCESS_KEY"]}
    remote = zarr.open_group(f"{s3_root}/volumes.zarr", mode="r", storage_options=options)
    local = zarr.open_group(os.path.join(out_one, "volumes.zarr"), mode="r")
    for study_id in VOLUMES:
        assert np.array_equal(remote[study_id][...], local[study_id][...])
        assert dict(remote[study_id].attrs) == dict(local[study_id].attrs)


def test_a_dataset_changed_after_planning_stops_the_actor_naming_labels_csv(bundle, source, tmp_path):
    """An actor that finds labels.csv changed since the driver planned the run refuses to translate;
    the error comes from its first shard (so the driver sees it as itself, one line), not its start."""
    from factory.produce.pool import ShardWorker
    from factory.produce.runs import translation_spec

    producer, spec, _, _ = translation_spec(config(bundle, source, tmp_path / "out"), progress=False)
    producer.plan["labels_sha256"] = "0" * 64
    worker = ShardWorker(producer, str(tmp_path / "out"), spec)
    with pytest.raises(BadInputError, match=r"labels\.csv: changed since this run was planned"):
        worker.write(0)


def test_evaluate_reports_hounsfield_units_paired_ssim_and_age_error_of_a_translation_run(one_actor_run, tmp_path,
                                                                                         capsys):
    out, manifest = one_actor_run
    report = str(tmp_path / "report.html")
    assert main(["evaluate", out, "--out", report, "--real-count", "40", "--age-epochs", "2"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(open(tmp_path / "report.json").read())
    metrics, settings = result["metrics"], result["settings"]
    assert settings["window"] == [-20.0, 120.0] and settings["window_from"] == "the range the bundle's model represents"
    assert metrics["counts"] == {"translated": 37, "real": 40, "paired": 37}  # every phantom source has its CT
    translated = metrics["hounsfield"]["translated"]
    assert -20 <= translated["min"] <= translated["p50"] <= translated["max"] <= 120
    real = metrics["hounsfield"]["real"]
    assert real["min"] < -500 and real["share_below_window"] > 0.2  # air around the head: real CT is not windowed
    assert sum(metrics["histogram"]["translated"]) == pytest.approx(1) and len(metrics["histogram"]["real"]) == 56
    paired = metrics["paired"]
    # An untrained generator's CT is far from the subject's: SSIM well below a copy's 1, errors of tens of HU.
    assert paired["count"] == 37 and -1 < paired["ssim"] < 0.9 and paired["mae_hu"] > 5 and paired["psnr_db"] < 30
    assert set(metrics["by_source_modality"]) == {"mri", "pet"}
    age = metrics["age"]
    assert age["translated"]["count"] == 37 and age["real_held_out"]["count"] == 8 and age["train_slices"] == 32
    assert age["paired_reference"]["count"] == 37 and age["translated"]["mae_years"] > 0
    page = open(report).read()
    assert "MedSynth translation report" in page and "Against the paired reference" in page and "<script" not in page
    assert "SSIM" in printed and "age regressor MAE" in printed
    assert main(["evaluate", out, "--out", report, "--judge", "x"]) == 2
    assert "a translation run's report takes no judge" in capsys.readouterr().err
