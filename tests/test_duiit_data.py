"""DUIIT's training data: brain parts from phantoms and from volume datasets, unpaired, as 2-D slices."""

from __future__ import annotations

import pytest

from factory.config import TrainDataConfig
from factory.data.adapters.volumes import open_volumes
from factory.data.brain_slices import AxialSlices, slice_positions
from factory.data.phantoms.brain_formats import write_dataset
from factory.data.training import available_parts, check_parts, open_part
from factory.errors import BadInputError


def test_phantom_brain_parts_are_unpaired_age_labelled_slices():
    data = TrainDataConfig(source="phantom-brain", counts={"ct": 3, "mri": 4, "pet": 0}, size=32, seed=5)
    assert available_parts(data) == ("ct", "mri")
    studies = {}
    for part in ("ct", "mri"):
        with open_part(data, part) as dataset:
            assert dataset.label_names == ("age",)
            studies[part] = [dataset[i] for i in range(len(dataset))]
    assert [len(s) for s in studies.values()] == [3, 4]
    for study in (*studies["ct"], *studies["mri"]):
        assert study.image.shape == (1, 32, 32) and 20 <= float(study.labels[0]) <= 90
    assert studies["ct"][0].meta["modality"] == "ct" and studies["mri"][0].meta["modality"] == "mri"
    assert float(studies["ct"][0].image.min()) < -500  # CT stays in Hounsfield units (air)
    # Patient i of CT and patient i of MRI are different people: unpaired, as in DUIIT.
    ct_ages = [float(s.labels[0]) for s in studies["ct"]]
    mri_ages = [float(s.labels[0]) for s in studies["mri"][:3]]
    assert all(a != b for a, b in zip(ct_ages, mri_ages))
    assert not {s.study_id for s in studies["ct"]} & {s.study_id for s in studies["mri"]}
    with pytest.raises(BadInputError, match=r"recipe duiit needs training data parts \['ct', 'mri', 'pet'\]"):
        check_parts(data, ("ct", "mri", "pet"), "duiit")


def test_volume_dataset_gives_one_part_per_modality_with_slices_of_volumes(tmp_path):
    root = str(tmp_path / "brains")
    write_dataset(root, 2, "ct", fmt="zarr", dims=3, size=32, seed=1)
    write_dataset(root, 2, "pet", fmt="nifti", dims=2, size=32, seed=1)
    data = TrainDataConfig(source="dataset", path=root, layout="volumes", size=32, slices_per_volume=3)
    assert available_parts(data) == ("ct", "pet")
    with open_part(data, "ct") as ct:
        assert len(ct) == 6  # 3 axial slices from each of the 2 volumes
        first = [ct[i] for i in range(3)]
        assert all(s.image.shape == (1, 32, 32) for s in first)
        assert len({s.study_id for s in first}) == 3 and first[0].study_id.startswith("brain-ct-1-00000000#z")
        assert len({float(s.labels[0]) for s in first}) == 1  # one patient, one age
    with open_part(data, "pet") as pet:
        assert len(pet) == 2 and pet[0].image.shape == (1, 32, 32)  # 2-D studies count once

    middle = AxialSlices(open_volumes(root, size=32), "ct")  # default: the middle slice, nothing read to index
    assert len(middle) == 2 and middle[0].meta["slice"] == slice_positions(16, 1)[0] == 7


def test_slice_positions_spread_over_the_central_band():
    assert slice_positions(1, 5) == [0]
    assert slice_positions(100, 1) == [49]
    positions = slice_positions(100, 4)
    assert positions == sorted(set(positions)) and 34 <= positions[0] and positions[-1] <= 65


def test_counts_belong_to_the_brain_phantom():
    with pytest.raises(ValueError, match="counts is for source: phantom-brain"):
        TrainDataConfig(source="phantom-cxr", counts={"ct": 3})
    with pytest.raises(ValueError, match="Input should be 'ct', 'mri' or 'pet'"):
        TrainDataConfig(source="phantom-brain", counts={"xray": 3})
    assert TrainDataConfig(source="phantom-brain").counts == {"ct": 300, "mri": 1000, "pet": 1000}
    for source in ("phantom-cxr", "phantom-brain"):  # workers re-validate the config the driver dumped
        data = TrainDataConfig(source=source)
        assert TrainDataConfig.model_validate(data.model_dump(mode="json")) == data
