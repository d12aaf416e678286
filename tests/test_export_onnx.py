"""scripts/conversion/export_onnx.py end to end: a tiny saved image classifier and a tiny saved text MLM, exported, checked in
onnxruntime and quantized."""

import json

import numpy as np
import pytest
import torch

from configuration_mixer import MixerConfig
from mixer_scripts import onnx_utils
from mixer_scripts.conversion import export_onnx
from modeling_mixer import MixerForImageClassification, MixerForMaskedLM

TINY = dict(hidden_size=32, num_hidden_layers=2, tokens_mlp_dim=16, channels_mlp_dim=64)


@pytest.fixture
def saved_models(tmp_path):
    torch.manual_seed(0)
    image = MixerForImageClassification(MixerConfig(**TINY, image_size=32, patch_size=8, num_labels=10))
    torch.nn.init.normal_(image.classifier.weight)  # initialised to zero: every logit would be 0 on either side
    image.save_pretrained(tmp_path / "image")
    MixerForMaskedLM(MixerConfig(**TINY, modality="text", vocab_size=100, max_position_embeddings=16)).save_pretrained(
        tmp_path / "mlm"
    )
    return tmp_path


def export(folder, *extra):
    return export_onnx.main(
        ["--model_name_or_path", str(folder), "--output_dir", str(folder / "onnx"), "--quantize", *extra]
    )


def test_export_image_classifier(saved_models):
    report = export(saved_models / "image")
    output = saved_models / "image/onnx"
    assert json.loads((output / "export.json").read_text()) == report
    assert (output / "model.onnx").is_file() and (output / "model.int8.onnx").is_file()
    assert report["architecture"] == "MixerForImageClassification" and report["inputs"] == ["pixel_values"]
    assert [row["batch_size"] for row in report["checks"]] == [1, 4]
    for row in report["checks"]:
        assert row["fp32"]["max_abs_diff"]["logits"] < 1e-5 and row["fp32"]["argmax_agreement"] == 1.0, row
        # Quantized, and without int16 saturation on CPUs without VNNI (full 8-bit weights gave 0.63 there, and
        # the other argmax; 7-bit weights 0.05-0.09 on the same CPU)
        assert 0 < row["int8"]["max_abs_diff"]["logits"] < 0.25, row

    # A deployment needs only the file: a batch size that was never checked, against PyTorch.
    model = MixerForImageClassification.from_pretrained(saved_models / "image").eval()
    pixels = torch.randn(7, 3, 32, 32)
    logits = onnx_utils.run(onnx_utils.session(output / "model.onnx"), pixel_values=pixels)["logits"]
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(pixels).logits.numpy(), atol=1e-5)

    with pytest.raises(onnx_utils.ExportMismatchError, match=r"differ from PyTorch's by up to .*more than --atol"):
        export(saved_models / "image", "--atol", "1e-12")


def test_export_masked_lm(saved_models):
    report = export(saved_models / "mlm")
    output = saved_models / "mlm/onnx"
    assert report["inputs"] == ["input_ids", "attention_mask"] and report["dynamic_axes"]["sequence"] == [1, 16]
    assert [(row["batch_size"], row["sequence_length"]) for row in report["checks"]] == [
        (1, 1),
        (1, 16),
        (4, 1),
        (4, 16),
    ]
    for row in report["checks"]:
        assert row["fp32"]["max_abs_diff"]["logits"] < 1e-5 and row["fp32"]["argmax_agreement"] == 1.0, row
        # Quantized, and not saturated (full 8-bit weights without VNNI: up to 0.21; 7-bit weights: 0.01)
        assert 0 < row["int8"]["max_abs_diff"]["logits"] < 0.1 and row["int8"]["argmax_agreement"] > 0.8, row

    # A length in between, right-padded, with the mask defaulting to ones for the unpadded sample.
    model = MixerForMaskedLM.from_pretrained(saved_models / "mlm").eval()
    session = onnx_utils.session(output / "model.onnx")
    ids = torch.randint(0, 100, (2, 9))
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
    with torch.no_grad():
        np.testing.assert_allclose(
            onnx_utils.run(session, input_ids=ids, attention_mask=mask)["logits"],
            model(input_ids=ids, attention_mask=mask).logits.numpy(),
            atol=1e-5,
        )
        np.testing.assert_allclose(
            onnx_utils.run(session, input_ids=ids[:1])["logits"], model(input_ids=ids[:1]).logits.numpy(), atol=1e-5
        )

    # Too long: onnxruntime fails with a shape error; `run` says what is wrong before it.
    too_long = np.zeros((1, 17), dtype=np.int64)
    with pytest.raises(Exception, match="broadcast"):
        session.run(None, {"input_ids": too_long, "attention_mask": np.ones_like(too_long)})
    with pytest.raises(
        ValueError,
        match=r"The sequence has 17 tokens, more than this Mixer's max_position_embeddings "
        r"\(16\)",
    ):
        onnx_utils.run(session, input_ids=too_long)
