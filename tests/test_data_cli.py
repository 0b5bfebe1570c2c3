"""`medsynth data`: phantom writing and caching a user's dataset, with bad studies stopped or skipped."""

import pytest

from factory.cli import main
from factory.data.cache import CachedDataset
from factory.errors import BadInputError


def test_cache_a_dataset_with_a_bad_image(tmp_path, capsys):
    root = tmp_path / "nih"
    assert main(["data", "cxr", "--out", str(root), "--count", "6", "--size", "40", "--layout", "nih", "--seed", "2"]) == 0
    broken = sorted((root).rglob("*.png"))[2]
    broken.write_bytes(b"not a png")
    capsys.readouterr()
    assert main(["data", "cache", str(root), "--layout", "nih", "--out", str(tmp_path / "c1.zarr"), "--size", "32"]) == 2
    assert broken.name in capsys.readouterr().err
    with pytest.raises(BadInputError, match="no Zarr cache|incomplete"):
        CachedDataset(str(tmp_path / "c1.zarr"))  # a failed cache is never read as a short one
    assert main(["data", "cache", str(root), "--layout", "nih", "--out", str(tmp_path / "c2.zarr"), "--size", "32",
                 "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "5 studies cached" in out and "1 skipped" in out and broken.name in out
