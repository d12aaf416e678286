"""A smoke run of the benchmark harness on tiny cases: it measures, compares and writes its reports."""

import json

import pytest

from mixer_scripts.benchmark_cases import LABELLED
from mixer_scripts.benchmarks import benchmark


def test_benchmark_harness_writes_its_reports(tmp_path):
    benchmark.main(
        [
            "--cases",
            "tiny-image,tiny-text",
            "--models",
            "mixer,timm,bert,roformer,fnet",
            "--modes",
            "inference,train",
            "--rounds",
            "2",
            "--warmup",
            "1",
            "--batch_size",
            "4",
            "--no_memory",
            "--fused_adamw",
            "--output_dir",
            str(tmp_path),
        ]
    )
    report = json.loads((tmp_path / "benchmark.json").read_text())
    rows = {(r["case"], r["mode"], r["model"]): r for r in report["results"]}
    assert set(rows) == {
        (case, mode, model)
        for case, model in [
            ("tiny-image", "mixer"),
            ("tiny-image", "timm"),
            ("tiny-text", "mixer"),
            ("tiny-text", "bert"),
            ("tiny-text", "roformer"),
            ("tiny-text", "fnet"),
        ]
        for mode in ("inference", "train")
    }
    assert report["gemm_peak_flops"] > 1e8
    assert report["tuning"] == {"compile_mode": None, "fused_adamw": True}
    for row in rows.values():
        assert row["throughput"] > 0 and 0 < row["fraction_of_peak"] < 1
    assert rows["tiny-text", "train", "mixer"]["unit"] == "tokens/s"
    table = (tmp_path / "benchmark.md").read_text()
    assert "| tiny-image | train | timm |" in table and "fused AdamW" in table
    assert (tmp_path / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_measures_peak_memory_with_and_without_checkpointing(tmp_path):
    benchmark.main(
        [
            "--cases",
            "tiny-image",
            "--models",
            "mixer",
            "--modes",
            "train",
            "--rounds",
            "1",
            "--warmup",
            "1",
            "--batch_size",
            "4",
            "--checkpointing_case",
            "tiny-image",
            "--checkpointing_batch_size",
            "4",
            "--config_overrides",
            "num_hidden_layers=1",  # reaches the memory probes, which run in subprocesses
            "--output_dir",
            str(tmp_path),
        ]
    )
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["results"][0]["peak_memory_mib"] >= 0
    assert set(report["checkpointing_memory_mib"]) == {"False", "True"}
    assert report["config_overrides"] == "num_hidden_layers=1"
    assert "config overrides num_hidden_layers=1" in (tmp_path / "benchmark.md").read_text()


def test_config_overrides_change_a_copy_of_the_case():
    case = benchmark.CASES["tiny-text"]
    wide = benchmark.with_overrides(case, "hidden_size=64,num_hidden_layers=1")
    assert (wide.config.hidden_size, wide.config.num_hidden_layers) == (64, 1)
    assert case.config.num_hidden_layers != 1  # the shared case is untouched
    assert benchmark.forward_flops(wide, "mixer") != benchmark.forward_flops(case, "mixer")
    with pytest.raises(ValueError, match="hidden_sise"):
        benchmark.with_overrides(case, "hidden_sise=64")


def test_train_flops_count_the_decoder_at_labelled_positions_only_where_it_is_sparse():
    case = benchmark.CASES["mlm-job"]
    dense = benchmark.with_overrides(case, "sparse_prediction=False")
    c = case.config
    decoder = 2 * c.max_position_embeddings * (c.hidden_size**2 + c.hidden_size * c.vocab_size)
    unlabelled = (1 - LABELLED) * decoder  # the decoder's work at the positions that carry no label

    def train_flops(case, name):
        return benchmark.forward_flops(case, name, "train")

    assert train_flops(dense, "mixer") - train_flops(case, "mixer") == pytest.approx(unlabelled)
    # The peers (mixer_scripts.peers) decode sparsely in training whatever the Mixer's flag says.
    assert train_flops(dense, "bert") == train_flops(case, "bert")
    assert benchmark.forward_flops(case, "bert") - train_flops(case, "bert") == pytest.approx(unlabelled)


def test_analytic_flops_of_b16_match_the_paper_scale():
    # Mixer-B/16 at 224: 12.6 GFLOPs (multiply-adds × 2) per image; timm's MlpMixer does the same work.
    flops = benchmark.forward_flops(benchmark.CASES["B/16"], "mixer")
    assert abs(flops / 1e9 - 25.2) < 0.3
    assert benchmark.forward_flops(benchmark.CASES["B/16"], "timm") == flops


def test_profile_groups_every_operator_of_a_step(tmp_path):
    from mixer_scripts.benchmarks import profile_step

    profile_step.main(
        [
            "--case",
            "tiny-image",
            "--models",
            "mixer,timm",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--output_dir",
            str(tmp_path),
        ]
    )
    results = json.loads((tmp_path / "profile.json").read_text())["results"]
    for name in ("mixer", "timm"):
        groups = results[name]["groups_ms"]
        assert abs(sum(groups.values()) - results[name]["ms_per_step"]) < 1e-6 * results[name]["ms_per_step"] + 1e-9
        assert groups["matmul"] > 0  # the stem, the token- and channel-mixing GEMMs
    assert "| mixer |" in (tmp_path / "profile.md").read_text()


def test_profile_takes_the_models_of_its_case(tmp_path):
    from mixer_scripts.benchmarks import profile_step

    cases = benchmark.CASES
    assert profile_step.models_to_profile(cases["mlm-job"], None) == ["mixer-compiled", "bert-compiled"]
    assert profile_step.models_to_profile(cases["B/16"], None) == ["mixer-compiled", "timm-compiled"]
    assert profile_step.models_to_profile(cases["mlm-job"], "mixer,fnet") == ["mixer", "fnet"]
    with pytest.raises(ValueError, match=r"The case tiny-text runs mixer, .*bert.*; not timm\."):
        profile_step.main(["--case", "tiny-text", "--models", "mixer,timm", "--output_dir", str(tmp_path)])
