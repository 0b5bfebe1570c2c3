"""Zarr cache of decoded, resized tensors: round trip on a local folder and on S3, skipping, refusal of
half-written caches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from factory.data.adapters import open_dataset
from factory.data.cache import CachedDataset, write_cache
from factory.data.phantoms.cxr import write_dataset
from factory.errors import BadInputError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache-src")
    write_dataset(str(root), 7, size=40, layout="folder", seed=2)
    return root


def test_round_trip(folder, storage_root):
    source = open_dataset(str(folder), "folder", size=24)
    url = storage_root + "/cxr.zarr"
    cache = write_cache(source, url, chunk=3, progress=False)
    again = CachedDataset(url)
    assert len(cache) == len(again) == 7 and again.label_names == source.label_names
    for i in range(7):
        original, cached = source[i], again[i]
        assert cached.study_id == original.study_id and cached.report == original.report
        assert torch.equal(cached.image, original.image)
        assert torch.equal(torch.nan_to_num(cached.labels, 9.0), torch.nan_to_num(original.labels, 9.0))
    images, labels = again.arrays()
    assert images.shape == (7, 1, 24, 24) and labels.shape == (7, 9)


def test_bad_studies_are_skipped_and_recorded(folder, tmp_path):
    import shutil

    root = tmp_path / "src"
    shutil.copytree(folder, root)
    broken = root / "images" / "cxr-2-00000003.png"
    broken.write_bytes(b"\x89PNG truncated")
    with pytest.raises(BadInputError, match="cxr-2-00000003.png"):
        write_cache(open_dataset(str(root), "folder", size=16), str(tmp_path / "strict.zarr"), progress=False)
    cache = write_cache(open_dataset(str(root), "folder", size=16, skip_bad=True), str(tmp_path / "c.zarr"),
                        chunk=2, progress=False)
    assert len(cache) == 6 and "cxr-2-00000003" not in list(cache.study_ids)
    assert str(broken) in CachedDataset(str(tmp_path / "c.zarr")).skipped


def test_images_without_a_common_size_are_refused(tmp_path):
    for name, shape in (("a.png", (10, 12)), ("b.png", (14, 9))):
        Image.fromarray(np.zeros(shape, np.uint8)).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text("path\na.png\nb.png\n")
    with pytest.raises(BadInputError, match=r"^study b: image shape \(1, 14, 9\) differs .* fixed size \(--size\)"):
        write_cache(open_dataset(str(tmp_path), "folder"), str(tmp_path / "c.zarr"), progress=False)


def test_incomplete_or_missing_cache_is_refused(folder, tmp_path):
    url = str(tmp_path / "c.zarr")
    write_cache(open_dataset(str(folder), "folder", size=8), url, progress=False)
    group = zarr.open_group(url, mode="r+")
    group.attrs["complete"] = False
    with pytest.raises(BadInputError, match="incomplete"):
        CachedDataset(url)
    with pytest.raises(BadInputError, match="no Zarr cache"):
        CachedDataset(str(tmp_path / "absent.zarr"))
