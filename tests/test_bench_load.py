"""`medsynth bench load` at its smallest setting, without Ray: 300 shards committed (its settings are 1k, 10k and 100k) into a local folder,
then the resume scan and the manifest, each in its own process, as the benchmark runs them."""

import json

from factory.bench.load import main


def test_bench_load_commits_scans_and_writes_the_manifest_of_300_shards(tmp_path):
    out = tmp_path / "load.json"
    assert main(["--shards", "300", "--stores", "local", "--pool-max", "0", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["benchmark"] == "load" and results["machine"]["cpus"] >= 1
    (result,) = results["results"]
    assert result["store"] == "local" and result["shards"] == 300 and "commit" in result
    assert result["scan"]["records"] == 300  # the stage also checks the manifest lists every shard
    # One record per shard, each with the full 14-label histogram: its JSON is some 600 bytes.
    assert 400 < result["manifest"]["bytes_per_shard"] < 1000
    resume = result["resume"]
    assert resume["peak_rss_mb"] >= resume["baseline_rss_mb"] > 0
