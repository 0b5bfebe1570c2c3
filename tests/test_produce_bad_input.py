"""`medsynth produce` refuses unusable label counts before Ray starts, as one line with exit code 2:
any for the phantom source (it draws its own findings), and for a bundle a file that cannot be read or
parsed, or that names labels the bundle does not know."""

import time

import pytest

from factory.cli import main
from factory.config import ProduceConfig

PHANTOM = ["produce", "--source", "phantom-cxr", "--count", "4", "--size", "32"]


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Every refusal here comes before the pool: connecting to Ray fails the test."""
    def refuse():
        raise AssertionError("Ray was started")

    monkeypatch.setattr("factory.produce.pool.connect_ray", refuse)


def refused(argv, capsys) -> tuple[str, float]:
    """(the one stderr line, seconds taken) of a command that must exit with code 2."""
    start = time.monotonic()
    assert main(argv) == 2
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip(), elapsed


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from factory.models.cli import init_bundle

    url = str(tmp_path_factory.mktemp("bundle") / "emixer")
    init_bundle(url, "emixer", size=32, width=8, seed=1)
    return url


LABEL_FILES = {
    "missing": (None, "cannot read label counts (No such file or directory)"),
    "not-yaml": ("{ not: [yaml", "not valid YAML/JSON (expected ',' or ']', but got '<stream end>', line 1 column 13)"),
    "binary": (b"\x89PNG\r\n\x1a\n\xff\xfe", "not valid YAML/JSON (not UTF-8 text)"),
    "not-counts": ("- Edema\n- Cardiomegaly\n", "must map label combinations"),
    "yes-no": ("Edema: yes\nNo Finding: 3\n", "must map label combinations"),
    "unknown": ("Cardiomegally: 2\nEdema+Pleural Effusion: 1\nNo Finding: 1\n", "unknown labels ['Cardiomegally']"),
}


def label_file(tmp_path, kind) -> str:
    content, _ = LABEL_FILES[kind]
    path = tmp_path / f"{kind}.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    return str(path)


@pytest.mark.parametrize("kind", [*LABEL_FILES, "prior"])
def test_phantom_runs_refuse_labels(kind, tmp_path, capsys):
    labels = "prior" if kind == "prior" else label_file(tmp_path, kind)
    line, _ = refused([*PHANTOM, "--out", str(tmp_path / "run"), "--labels", labels], capsys)
    assert line == ("medsynth produce: error: command line: labels: Value error, the phantom source draws its "
                    "own findings; labels apply to bundle runs")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", LABEL_FILES)
def test_bundle_runs_refuse_unusable_label_counts(kind, bundle, tmp_path, capsys):
    labels = label_file(tmp_path, kind)
    line, _ = refused(["produce", "--bundle", bundle, "--count", "4", "--out", str(tmp_path / "run"),
                       "--labels", labels], capsys)
    assert line.startswith(f"medsynth produce: error: {labels}: ") and LABEL_FILES[kind][1] in line, line


def test_phantom_runs_keep_the_default_label_policy():
    assert ProduceConfig(source="phantom-cxr", count=1, out="x", labels="balanced").labels == "balanced"
