"""Conversion from timm and the official JAX code and back to timm; the converted folder's processor and pipeline."""

import json
import os
from functools import partial

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.data import ImageNetInfo, create_transform, resolve_data_config
from torch import nn
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    ViTImageProcessor,
    ViTImageProcessorPil,
    pipeline,
)

import convert_mixer_checkpoint as convert  # noqa: E402
from configuration_mixer import MixerConfig
from helpers import image_pixels, randomize_, run_without_package, sample_image
from modeling_mixer import MixerForImageClassification

VARIANTS = ["mixer_s32_224", "mixer_s16_224", "mixer_b32_224", "mixer_b16_224", "mixer_l32_224", "mixer_l16_224"]
IMAGENET_LABELS = ImageNetInfo().label_descriptions()


def timm_model(name="mixer_s32_224", seed=0, **kwargs):
    return randomize_(timm.create_model(name, pretrained=False, **kwargs), seed)


@pytest.fixture(scope="module")
def s32(tmp_path_factory):
    """A random timm Mixer-S/32 (1000 classes), its state dict file, and its folder converted by the CLI."""
    root = tmp_path_factory.mktemp("s32")
    model = timm_model("mixer_s32_224")
    save_file(model.state_dict(), root / "mixer_s32.safetensors")
    convert.main(["--checkpoint", str(root / "mixer_s32.safetensors"), "--output", str(root / "hf")])
    return model, root / "mixer_s32.safetensors", root / "hf"


# ------------------------------------------------------------------------------------------------ timm → ours


@pytest.mark.parametrize("name", VARIANTS)
def test_timm_variants_convert_exactly(name):
    reference = timm_model(name)
    model = convert.convert_timm_state_dict(reference.state_dict())
    x = image_pixels()
    with torch.no_grad():
        final, intermediates = reference.forward_intermediates(x, output_fmt="NLC")
        expected = reference.forward_head(final)
        out = model(x, output_hidden_states=True)
    assert model.config.hidden_act == "gelu" and model.config.num_labels == 1000
    assert model.config.id2label[0] == "tench, Tinca tinca"
    assert expected.std() > 0.05  # the comparison is not between near-zero logits
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-5)
    assert len(out.hidden_states) == len(reference.blocks) + 1
    torch.testing.assert_close(out.hidden_states[0], reference.stem(x), atol=1e-5, rtol=1e-5)
    for ours, theirs in zip(out.hidden_states[1:], intermediates, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_variant_is_inferred_and_checked():
    state_dict = convert.convert_timm_state_dict(timm_model().state_dict()).state_dict()
    config = convert.infer_config(state_dict, "S/32")
    assert (config.hidden_size, config.patch_size, config.image_size, config.num_hidden_layers) == (512, 32, 224, 8)
    assert (config.tokens_mlp_dim, config.channels_mlp_dim, config.num_labels) == (256, 2048, 1000)
    with pytest.raises(convert.CheckpointMismatchError, match=r"not a Mixer-B/16: .*hidden_size=512 \(not 768\)"):
        convert.infer_config(state_dict, "B/16")


def test_cli_folder_loads_and_matches_timm(s32):
    reference, _, folder = s32
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "configuration_mixer.py",
        "modeling_mixer.py",
    } <= {p.name for p in folder.iterdir()}
    model = MixerForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(image_pixels()).logits, reference(image_pixels()), rtol=1e-5, atol=1e-5)


def test_headless_timm_model():
    reference = timm_model(num_classes=0)
    model = convert.convert_timm_state_dict(reference.state_dict())
    assert model.config.num_labels == 0 and isinstance(model.classifier, nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(model(image_pixels()).logits, reference(image_pixels()), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ JAX → ours


def write_flax_npz(reference, path):
    """The official checkpoint layout, written by hand from a timm model: Flax names, (in, out) and HWIO kernels."""
    sd = {k: v.numpy() for k, v in reference.state_dict().items()}
    arrays = {
        "stem/kernel": sd["stem.proj.weight"].transpose(2, 3, 1, 0),
        "stem/bias": sd["stem.proj.bias"],
        "pre_head_layer_norm/scale": sd["norm.weight"],
        "pre_head_layer_norm/bias": sd["norm.bias"],
        "head/kernel": sd["head.weight"].T,
        "head/bias": sd["head.bias"],
    }
    for i in range(len(reference.blocks)):
        for flax, ours in [("LayerNorm_0", "norm1"), ("LayerNorm_1", "norm2")]:
            arrays[f"MixerBlock_{i}/{flax}/scale"] = sd[f"blocks.{i}.{ours}.weight"]
            arrays[f"MixerBlock_{i}/{flax}/bias"] = sd[f"blocks.{i}.{ours}.bias"]
        for flax, ours in [("token_mixing", "mlp_tokens"), ("channel_mixing", "mlp_channels")]:
            for j in range(2):
                arrays[f"MixerBlock_{i}/{flax}/Dense_{j}/kernel"] = sd[f"blocks.{i}.{ours}.fc{j + 1}.weight"].T
                arrays[f"MixerBlock_{i}/{flax}/Dense_{j}/bias"] = sd[f"blocks.{i}.{ours}.fc{j + 1}.bias"]
    np.savez(path, **arrays)


def test_jax_npz_converts_with_tanh_gelu(tmp_path):
    # The official code's nn.gelu is the tanh approximation: the reference is timm with that GELU.
    reference = timm_model("mixer_s16_224", act_layer=partial(nn.GELU, approximate="tanh"))
    write_flax_npz(reference, tmp_path / "Mixer-S_16.npz")
    model = convert.convert_jax_npz(tmp_path / "Mixer-S_16.npz", variant="S/16")
    assert model.config.hidden_act == "gelu_pytorch_tanh" and model.config.num_tokens == 196
    from_timm = convert.convert_timm_state_dict(reference.state_dict())
    state_dict = model.state_dict()
    for key, value in from_timm.state_dict().items():
        assert torch.equal(state_dict[key], value), key
    convert.main(
        ["--source", "jax", "--checkpoint", str(tmp_path / "Mixer-S_16.npz"), "--output", str(tmp_path / "o")]
    )
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "o").eval()
    assert loaded.config.hidden_act == "gelu_pytorch_tanh"
    with torch.no_grad():
        expected = reference(image_pixels())
        torch.testing.assert_close(model(image_pixels()).logits, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded(image_pixels()).logits, expected, rtol=1e-5, atol=1e-5)
        assert (from_timm(image_pixels()).logits - expected).abs().max() > 1e-5  # the exact GELU would differ


# ------------------------------------------------------------------------------------------------ ours → timm


def test_round_trip_to_timm():
    model = randomize_(MixerForImageClassification(MixerConfig.from_variant("B/32", num_labels=7)))
    reference = timm.create_model("mixer_b32_224", pretrained=False, num_classes=7).eval()
    reference.load_state_dict(convert.to_timm_state_dict(model), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(reference(image_pixels()), model(image_pixels()).logits, rtol=1e-5, atol=1e-5)


def test_cli_to_timm(s32, tmp_path):
    reference, _, folder = s32
    convert.main(["--to_timm", "--checkpoint", str(folder), "--output", str(tmp_path / "back.safetensors")])
    assert os.listdir(tmp_path) == ["back.safetensors"]  # no temporary folder left
    back = timm.create_model("mixer_s32_224", pretrained=False).eval()
    back.load_state_dict(load_file(tmp_path / "back.safetensors"), strict=True)
    with torch.no_grad():
        assert torch.equal(back(image_pixels()), reference(image_pixels()))


# ------------------------------------------------------------------------------------------------ mismatches


def _missing(sd):
    del sd["blocks.3.norm2.bias"]
    return sd, r"missing keys: blocks\.3\.norm2\.bias$"


def _extra(sd):
    sd["blocks.0.mlp_tokens.fc3.weight"] = torch.zeros(3)
    return sd, r"unexpected keys: blocks\.0\.mlp_tokens\.fc3\.weight$"


def _wrong_shape(sd):
    sd["blocks.5.mlp_channels.fc2.weight"] = torch.zeros(512, 2049)
    return sd, r"wrong shapes: blocks\.5\.mlp_channels\.fc2\.weight \(512, 2049\) \(expected \(512, 2048\)\)$"


def _resmlp(sd):
    return timm.create_model("resmlp_12_224").state_dict(), (
        r"missing keys: blocks\.0\.norm1\.weight, .*blocks\.0\.mlp_tokens\.fc1\.weight.*\n"
        r"unexpected keys: .*blocks\.0\.ls1, .*blocks\.0\.norm1\.alpha.*blocks\.0\.linear_tokens\.weight"
    )


def _vit(sd):
    sd = timm.create_model("vit_tiny_patch16_224", depth=2).state_dict()
    return sd, r"missing keys: stem\.proj\.weight.*\nunexpected keys: cls_token, pos_embed, patch_embed\.proj\.weight"


@pytest.mark.parametrize("corrupt", [_missing, _extra, _wrong_shape, _resmlp, _vit])
def test_mismatch_stops_with_the_keys_and_writes_nothing(s32, tmp_path, corrupt):
    state_dict, message = corrupt(dict(s32[0].state_dict()))
    torch.save(state_dict, tmp_path / "checkpoint.pth")
    output = tmp_path / "out"
    with pytest.raises(convert.CheckpointMismatchError, match=message):
        convert.main(["--checkpoint", str(tmp_path / "checkpoint.pth"), "--output", str(output)])
    assert os.listdir(tmp_path) == ["checkpoint.pth"]


def test_jax_mismatch_is_named_in_flax_terms(tmp_path):
    write_flax_npz(timm_model(), tmp_path / "full.npz")
    with np.load(tmp_path / "full.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k != "MixerBlock_2/LayerNorm_1/scale"}
    arrays["MixerBlock_0/token_mixing/Dense_1/kernel"] = arrays["MixerBlock_0/token_mixing/Dense_1/kernel"].T
    np.savez(tmp_path / "broken.npz", **arrays)
    with pytest.raises(convert.CheckpointMismatchError) as error:
        convert.main(
            ["--source", "jax", "--checkpoint", str(tmp_path / "broken.npz"), "--output", str(tmp_path / "o")]
        )
    assert str(error.value).splitlines()[1:] == [
        "missing keys: MixerBlock_2/LayerNorm_1/scale",
        "wrong shapes: MixerBlock_0/token_mixing/Dense_1/kernel (49, 256) (expected (256, 49))",
    ]
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ loading the folder


def test_new_head_keeps_the_trunk(s32):
    _, _, folder = s32
    original = MixerForImageClassification.from_pretrained(folder)
    model = MixerForImageClassification.from_pretrained(folder, num_labels=10, ignore_mismatched_sizes=True)
    assert model.classifier.weight.shape == (10, 512) and model.config.num_labels == 10
    for key, value in original.mixer.state_dict().items():
        assert torch.equal(model.mixer.state_dict()[key], value), key


def test_auto_class_and_pipeline_in_a_fresh_process_without_the_package(s32, tmp_path):
    reference, _, folder = s32
    torch.save(image_pixels(), tmp_path / "x.pt")
    sample_image().save(tmp_path / "image.png")
    output = run_without_package(f"""
        import json
        import torch
        from transformers import AutoModelForImageClassification, pipeline
        model = AutoModelForImageClassification.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            torch.save(model(torch.load({str(tmp_path / "x.pt")!r})).logits, {str(tmp_path / "y.pt")!r})
        classify = pipeline("image-classification", model={str(folder)!r}, trust_remote_code=True)
        print(json.dumps(classify({str(tmp_path / "image.png")!r}, top_k=3)))
    """)
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), reference(image_pixels()), rtol=1e-5, atol=1e-5)
    here = pipeline("image-classification", model=str(folder))(str(tmp_path / "image.png"), top_k=3)
    there = json.loads(output)
    assert [r["label"] for r in there] == [r["label"] for r in here] and there[0]["label"] in IMAGENET_LABELS
    np.testing.assert_allclose([r["score"] for r in there], [r["score"] for r in here], rtol=1e-5)


def test_pipeline_gives_imagenet_labels(s32):
    _, _, folder = s32
    image = sample_image()
    results = pipeline("image-classification", model=str(folder), top_k=3)(image)
    model = MixerForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(**AutoImageProcessor.from_pretrained(folder)(image, return_tensors="pt")).logits[0]
    top = logits.softmax(-1).topk(3)
    assert [r["label"] for r in results] == [IMAGENET_LABELS[i] for i in top.indices]
    np.testing.assert_allclose([r["score"] for r in results], top.values.numpy(), rtol=1e-5)


@pytest.mark.parametrize("tag, preprocessing", [("goog_in21k_ft_in1k", "google"), ("miil_in21k_ft_in1k", "miil")])
@pytest.mark.parametrize("size", [(320, 240), (300, 500), (224, 224)])
def test_processor_matches_timm_eval_transform(s32, tmp_path, tag, preprocessing, size):
    """
    The PIL backend is timm's transform bit for bit. AutoImageProcessor's default, the torchvision backend, resizes
    uint8 tensors, which rounds differently from PIL: at most one 8-bit level, i.e. 1/255 / std after normalisation.
    (Sizes where (resized - 224) / 2 ends in .5 are left out: torchvision's CenterCrop rounds that offset, the
    processors floor it, a one-pixel shift.)
    """
    s32_model, checkpoint, _ = s32
    folder = tmp_path / "hf"
    convert.main(["--checkpoint", str(checkpoint), "--output", str(folder), "--preprocessing", preprocessing])
    cfg = resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(f"mixer_b16_224.{tag}").to_dict())
    image = sample_image(*size)
    expected = create_transform(**cfg)(image)
    pil = ViTImageProcessorPil.from_pretrained(folder)(image, return_tensors="pt").pixel_values[0]
    auto = AutoImageProcessor.from_pretrained(folder)
    assert type(auto) is ViTImageProcessor
    torchvision = auto(image, return_tensors="pt").pixel_values[0]
    assert (pil - expected).abs().max() <= 1e-6
    assert (torchvision - expected).abs().max() <= 1 / 255 / cfg["std"][0] + 1e-6
