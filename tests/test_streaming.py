"""
--streaming: run_mlm.py's corpus as an IterableDataset gives the blocks, masks and losses of the in-memory path;
run_image_classification.py's training images as an IterableDataset give the images and labels of the in-memory path.
"""

import json
import logging

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Image, Value
from safetensors.torch import load_file

from configuration_mixer import MixerConfig
from helpers import FASHION_MNIST_SAMPLE, ROOT, TINY_IMAGES, TINY_MIXER_IMAGES, TINY_MLM
from mixer_scripts import common
from mixer_scripts.training import run_image_classification, run_mlm
from modeling_mixer import MixerForMaskedLM

TINY_MLM = TINY_MLM + [
    "--max_eval_samples",
    "64",
    "--logging_steps",
    "2",
    "--use_cpu",
    "--fill_mask_examples",
    "0",
]


def blocks(args):
    model_args, data_args, training_args, _ = run_mlm.parse_args(args)
    raw = run_mlm.load_raw_datasets(data_args, model_args)
    texts = (batch["text"] for batch in raw["train"].iter(batch_size=1000))
    tokenizer = common.train_tokenizer(texts, model_args, data_args.max_seq_length)
    lm_datasets = run_mlm.tokenize_and_group(raw, tokenizer, data_args, data_args.max_seq_length, training_args.seed)
    return type(lm_datasets["train"]).__name__, tokenizer, {split: list(d) for split, d in lm_datasets.items()}


def test_streamed_blocks_masks_and_loss_are_the_in_memory_ones(tmp_path, text_files):
    args = TINY_MLM + text_files + ["--output_dir", str(tmp_path)]
    kind, tokenizer, in_memory = blocks(args)
    streamed_kind, streamed_tokenizer, streamed = blocks(args + ["--streaming"])
    assert (kind, streamed_kind) == ("Dataset", "IterableDataset")
    assert streamed_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert len(in_memory["train"]) > 1000 and len(in_memory["validation"]) > 100
    assert streamed == in_memory  # every block of both splits, in order
    # The first batch: the same masks and the same loss.
    collator = run_mlm.DataCollatorForMaskedLM(tokenizer, mlm_probability=0.15, seed=42)
    batch, streamed_batch = collator(in_memory["train"][:16]), collator(streamed["train"][:16])
    assert batch.keys() == streamed_batch.keys() == {"input_ids", "attention_mask", "labels"}
    for key in batch:
        assert torch.equal(batch[key], streamed_batch[key]), key
    assert (batch["labels"] != -100).sum() > 0
    torch.manual_seed(0)
    model = MixerForMaskedLM(
        MixerConfig(
            modality="text",
            vocab_size=len(tokenizer),
            max_position_embeddings=32,
            hidden_size=32,
            num_hidden_layers=2,
            tokens_mlp_dim=32,
            channels_mlp_dim=64,
        )
    )
    assert model(**batch).loss.item() == model(**streamed_batch).loss.item()


def test_streamed_run_evaluates_as_the_in_memory_run(tmp_path, text_files):
    args = TINY_MLM + text_files + ["--do_train", "false"]
    in_memory = run_mlm.main(args + ["--output_dir", str(tmp_path / "in-memory")])
    streamed = run_mlm.main(args + ["--output_dir", str(tmp_path / "streamed"), "--streaming"])
    assert in_memory["eval_samples"] == streamed["eval_samples"] == 64
    for key in ("eval_loss", "eval_accuracy"):
        assert streamed[key] == in_memory[key], key


@pytest.mark.parametrize("script", ["mlm", "images"])
def test_streamed_run_resumed_from_its_checkpoint_ends_as_the_straight_run(tmp_path, text_files, script):
    """The Trainer skips a stream's first global_step batches by reading them (accelerate's skip_first_batches)."""
    main, data_args = (
        (run_mlm.main, TINY_MLM + text_files)
        if script == "mlm"
        else (run_image_classification.main, TINY_IMAGES + ["--config_overrides", TINY_MIXER_IMAGES])
    )
    args = data_args + [
        "--streaming",
        "--max_steps",
        "8",
        "--save_strategy",
        "steps",
        "--save_steps",
        "4",
        "--logging_steps",
        "2",
        "--seed",
        "3",
    ]
    straight = main(args + ["--output_dir", str(tmp_path / "straight")])
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("transformers.trainer").addHandler(handler)
    try:
        resumed = main(
            args
            + [
                "--output_dir",
                str(tmp_path / "resumed"),
                "--resume_from_checkpoint",
                str(tmp_path / "straight" / "checkpoint-4"),
                "--log_level",
                "info",
            ]
        )
    finally:
        logging.getLogger("transformers.trainer").removeHandler(handler)
    log = "\n".join(records)
    assert "Resuming training from checkpoint with epoch 0 and global step 4" in log
    assert "Fast-forwarding the dataloader past 0 epochs and 4 batches" in log
    weights = [load_file(tmp_path / name / "model.safetensors") for name in ("straight", "resumed")]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[1][name], weights[0][name]), name
    history = [
        json.loads((tmp_path / name / "trainer_state.json").read_text())["log_history"]
        for name in ("straight", "resumed")
    ]
    losses = [[(e["step"], e["loss"]) for e in h if "loss" in e] for h in history]
    assert [step for step, _ in losses[0]] == [2, 4, 6, 8] and losses[1] == losses[0]
    assert resumed["eval_loss"] == straight["eval_loss"]


def test_streaming_without_validation_holds_out_every_kth_text(tmp_path, text_files):
    args = TINY_MLM + text_files[:2] + ["--validation_split_percentage", "20", "--output_dir", str(tmp_path)]
    model_args, data_args, *_ = run_mlm.parse_args(args + ["--streaming"])
    raw = run_mlm.load_raw_datasets(data_args, model_args)
    texts = (ROOT / text_files[1]).read_text().splitlines(keepends=True)
    assert [row["text"] for row in raw["validation"]] == texts[4::5]
    assert [row["text"] for row in raw["train"]] == [text for i, text in enumerate(texts) if i % 5 != 4]


def test_streaming_needs_max_steps(tmp_path, text_files):
    with pytest.raises(
        ValueError,
        match=r"--streaming reads data of unknown length: give the number of training "
        r"steps with --max_steps N \(got --max_steps -1\)",
    ):
        run_mlm.main(TINY_MLM + text_files + ["--streaming", "--max_steps", "-1", "--output_dir", str(tmp_path)])


def pixels(dataset):
    """The decoded images (as arrays) and labels of a split, whether in memory or streamed."""
    return [(np.asarray(run_image_classification.open_image(row["image"])), row["label"]) for row in dataset]


def test_streamed_images_are_the_in_memory_ones(image_folders):
    args = TINY_IMAGES + [
        "--train_dir",
        str(image_folders / "train"),
        "--validation_dir",
        str(image_folders / "val"),
        "--output_dir",
        str(image_folders / "out"),
    ]
    splits = {}
    for streaming in ([], ["--streaming"]):
        model_args, data_args, *_ = run_image_classification.parse_args(args + streaming)
        splits[bool(streaming)] = run_image_classification.load_raw_datasets(data_args, model_args)
    in_memory, streamed = splits[False], splits[True]
    assert type(in_memory["train"]).__name__ == "Dataset" and type(streamed["train"]).__name__ == "IterableDataset"
    assert type(streamed["validation"]).__name__ == "Dataset"  # read into memory, to evaluate on again and again
    assert (
        streamed["train"].features["label"].names
        == in_memory["train"].features["label"].names
        == ["Sneaker", "Trouser"]
    )
    for split in ("train", "validation"):
        expected, got = pixels(in_memory[split]), pixels(streamed[split])
        assert len(got) == len(expected) > 10
        assert all(np.array_equal(a, b) and la == lb for (a, la), (b, lb) in zip(got, expected)), split
    # The same evaluation (same model, same images) on both paths; and the stream trains.
    evaluated = [
        run_image_classification.main(
            args
            + [
                "--config_overrides",
                TINY_MIXER_IMAGES,
                "--do_train",
                "false",
                "--output_dir",
                str(image_folders / name),
                *extra,
            ]
        )
        for name, extra in [("in-memory", []), ("streamed", ["--streaming"])]
    ]
    assert evaluated[0]["eval_samples"] == evaluated[1]["eval_samples"] == len(expected)
    assert evaluated[1]["eval_loss"] == evaluated[0]["eval_loss"]
    trained = run_image_classification.main(
        args
        + [
            "--config_overrides",
            TINY_MIXER_IMAGES,
            "--streaming",
            "--max_steps",
            "6",
            "--output_dir",
            str(image_folders / "trained"),
        ]
    )
    history = json.loads((image_folders / "trained" / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "loss" in entry] == [5] and trained["eval_samples"] == len(expected)


def test_streamed_images_need_labels_declared_as_classes(tmp_path):
    """A stream cannot be read ahead to encode string labels: the script says so; in memory it encodes them."""
    images = run_image_classification.fashion_mnist(FASHION_MNIST_SAMPLE)["train"].select(range(200))
    names = images.features["label"].names
    rows = Dataset.from_dict(
        {"image": images["image"], "label": [names[i] for i in images["label"]]},
        features=Features({"image": Image(), "label": Value("string")}),
    )
    rows.to_parquet(tmp_path / "data" / "train.parquet")
    args = TINY_IMAGES + [
        "--dataset_name",
        str(tmp_path / "data"),
        "--config_overrides",
        TINY_MIXER_IMAGES,
        "--max_steps",
        "2",
    ]
    with pytest.raises(
        ValueError,
        match=r"With --streaming the labels must be classes that the dataset declares "
        r"\(a ClassLabel feature.*column 'label' is Value\('string'",
    ):
        run_image_classification.main(args + ["--streaming", "--output_dir", str(tmp_path / "streamed")])
    results = run_image_classification.main(args + ["--output_dir", str(tmp_path / "in-memory")])
    assert results["eval_samples"] == 20


def test_streamed_images_need_max_steps(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"--streaming reads data of unknown length: give the number of training "
        r"steps with --max_steps N \(got --max_steps -1\)",
    ):
        run_image_classification.main(
            TINY_IMAGES + ["--streaming", "--max_steps", "-1", "--output_dir", str(tmp_path)]
        )
