"""The text classification heads: pooling over real tokens, losses, save/load, remote code, pipelines."""

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedTokenizerFast,
    pipeline,
)

from configuration_mixer import MixerConfig
from helpers import TINY_IMAGE, TINY_TEXT, pad, run_without_package
from modeling_mixer import MixerForMaskedLM, MixerForSequenceClassification, MixerForTokenClassification

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "the cat sat on a mat dog ran far away good bad".split()


def tiny(cls, **overrides):
    torch.manual_seed(0)
    model = cls(MixerConfig(**{**TINY_TEXT, "vocab_size": len(WORDS), "num_labels": 3, **overrides})).eval()
    if hasattr(model, "classifier"):
        torch.nn.init.normal_(model.classifier.weight)  # it starts at zero, as in timm
    return model


def word_tokenizer(max_length=12):
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )


def test_sequence_logits_ignore_padding():
    model = tiny(MixerForSequenceClassification)
    sequences = [[5, 6, 7], [8, 9, 10, 11, 12, 13]]
    logits = [model(*pad(sequences, length, pad_id)).logits for length, pad_id in [(6, 0), (12, 0), (12, 9)]]
    for other in logits[1:]:
        torch.testing.assert_close(other, logits[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(torch.tensor([sequences[0]])).logits[0], logits[0][0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "num_labels, labels, problem_type",
    [
        (3, torch.tensor([0, 2]), "single_label_classification"),
        (3, torch.tensor([[1.0, 0, 1], [0, 1, 0]]), "multi_label_classification"),
        (1, torch.tensor([0.5, -1.0]), "regression"),
    ],
)
def test_sequence_problem_types(num_labels, labels, problem_type):
    model = tiny(MixerForSequenceClassification, num_labels=num_labels)
    ids, mask = pad([[5, 6, 7], [8, 9, 10, 11]], 4, 0)
    out = model(ids, attention_mask=mask, labels=labels)
    assert model.config.problem_type == problem_type
    reference = {
        "single_label_classification": lambda: F.cross_entropy(out.logits, labels),
        "multi_label_classification": lambda: F.binary_cross_entropy_with_logits(out.logits, labels),
        "regression": lambda: F.mse_loss(out.logits.squeeze(), labels),
    }[problem_type]()
    torch.testing.assert_close(out.loss, reference)


def test_token_classification_loss_ignores_minus_100():
    model = tiny(MixerForTokenClassification)
    ids, mask = pad([[5, 6, 7], [8, 9, 10, 11]], 4, 0)
    labels = torch.tensor([[0, 1, 2, -100], [2, 2, 1, 0]])
    out = model(ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (2, 4, 3)
    keep = labels != -100
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits[keep], labels[keep]))


def test_heads_need_a_text_config():
    for cls in (MixerForSequenceClassification, MixerForTokenClassification):
        with pytest.raises(ValueError, match=f"{cls.__name__} needs modality='text', got 'image'"):
            cls(MixerConfig(**TINY_IMAGE))


def test_fine_tuning_starts_from_a_masked_lm_checkpoint(tmp_path):
    mlm = tiny(MixerForMaskedLM)
    mlm.save_pretrained(tmp_path)
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    assert type(classifier) is MixerForSequenceClassification
    trunk, loaded = mlm.mixer.state_dict(), classifier.mixer.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trunk.items())
    assert not classifier.classifier.weight.any()  # newly initialised, as timm's head: zero


@pytest.mark.parametrize(
    "cls, auto_class",
    [
        (MixerForSequenceClassification, "AutoModelForSequenceClassification"),
        (MixerForTokenClassification, "AutoModelForTokenClassification"),
    ],
)
def test_heads_load_through_auto_classes_and_remote_code(tmp_path, cls, auto_class):
    model = tiny(cls)
    model.save_pretrained(tmp_path)
    ids = torch.randint(1, len(WORDS), (2, 12))
    loaded = {
        "AutoModelForSequenceClassification": AutoModelForSequenceClassification,
        "AutoModelForTokenClassification": AutoModelForTokenClassification,
    }[auto_class].from_pretrained(tmp_path)
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    code = f"""
        import torch, transformers
        model = transformers.{auto_class}.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        print(model(torch.tensor({ids.tolist()})).logits.double().sum().item())
    """
    assert float(run_without_package(code).split()[-1]) == model(ids).logits.double().sum().item()


def test_pipelines_answer(tmp_path):
    tokenizer = word_tokenizer()
    labels = {0: "NEGATIVE", 1: "NEUTRAL", 2: "POSITIVE"}
    sequence = tiny(MixerForSequenceClassification, id2label=labels, label2id={v: k for k, v in labels.items()})
    sequence.save_pretrained(tmp_path / "seq")
    tokenizer.save_pretrained(tmp_path / "seq")
    classify = pipeline("text-classification", model=str(tmp_path / "seq"))
    answer = classify("the cat sat on a mat")[0]
    expected = sequence(**tokenizer("the cat sat on a mat", return_tensors="pt")).logits.softmax(-1)[0]
    assert answer["label"] == labels[int(expected.argmax())]
    assert answer["score"] == pytest.approx(expected.max().item(), rel=1e-5)
    # Longer text than the model takes: the tokenizer truncates it when asked, the model never does it silently.
    long_text = "the dog ran far away " * 5
    assert classify(long_text, truncation=True)[0]["label"] in labels.values()
    with pytest.raises(ValueError, match=r"25 tokens, more than this Mixer's max_position_embeddings \(12\)"):
        classify(long_text)

    tags = tiny(MixerForTokenClassification, id2label={0: "O", 1: "B-ANIMAL", 2: "I-ANIMAL"})
    tags.save_pretrained(tmp_path / "tok")
    tokenizer.save_pretrained(tmp_path / "tok")
    entities = pipeline("token-classification", model=str(tmp_path / "tok"))("the cat ran away")
    assert all(e["entity"] in {"B-ANIMAL", "I-ANIMAL"} for e in entities)
    assert {e["word"] for e in entities} <= {"the", "cat", "ran", "away"}
