"""A smoke run of the benchmark harness on tiny cases: it measures, compares and writes its reports."""

import json
import sys

from helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))  # the benchmark imports the converter as its neighbour
import benchmark  # noqa: E402


def test_benchmark_harness_writes_its_reports(tmp_path):
    benchmark.main([
        "--cases", "tiny-image,tiny-text", "--models", "mixer,timm,bert,fnet", "--modes", "inference,train",
        "--rounds", "2", "--warmup", "1", "--batch_size", "4", "--checkpointing_case", "tiny-image", "--checkpointing_batch_size", "4",
        "--output_dir", str(tmp_path),
    ])
    report = json.loads((tmp_path / "benchmark.json").read_text())
    rows = {(r["case"], r["mode"], r["model"]): r for r in report["results"]}
    assert set(rows) == {(case, mode, model) for case, model in [("tiny-image", "mixer"), ("tiny-image", "timm"),
                         ("tiny-text", "mixer"), ("tiny-text", "bert"), ("tiny-text", "fnet")]
                         for mode in ("inference", "train")}
    assert report["gemm_peak_flops"] > 1e8
    for row in rows.values():
        assert row["throughput"] > 0 and 0 < row["fraction_of_peak"] < 1
        assert row["peak_memory_mib"] >= 0
    assert rows["tiny-text", "train", "mixer"]["unit"] == "tokens/s"
    assert set(report["checkpointing_memory_mib"]) == {"False", "True"}
    table = (tmp_path / "benchmark.md").read_text()
    assert "| tiny-image | train | timm |" in table
    assert (tmp_path / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analytic_flops_of_b16_match_the_paper_scale():
    # Mixer-B/16 at 224: 12.6 GFLOPs (multiply-adds × 2) per image; timm's MlpMixer does the same work.
    flops = benchmark.forward_flops(benchmark.CASES["B/16"], "mixer")
    assert abs(flops / 1e9 - 25.2) < 0.3
    assert benchmark.forward_flops(benchmark.CASES["B/16"], "timm") == flops
