"""Models moved onto the generator seam produce what they produced before it: the same bundles
and, for fixed seeds, byte-identical shards and volumes (digests recorded before the move, see
tests/seam_reference.py)."""

from __future__ import annotations

import json
from pathlib import Path

from seam_reference import reference_digests

RECORDED = json.loads((Path(__file__).parent / "seam_reference.json").read_text())


def test_bundles_and_runs_are_byte_identical_to_before_the_seam(ray_local, tmp_path):
    assert reference_digests(tmp_path) == RECORDED
