"""
Higher (or lower) resolutions: `resize_token_mixing` tiles or resamples the token-mixing weights, checked against the
model at its own resolution; the trained Fashion-MNIST Mixer of tests/data keeps its accuracy; the processor follows.
"""

import copy

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoImageProcessor, ViTImageProcessor

import convert_mixer_checkpoint as convert
from configuration_mixer import MixerConfig
from helpers import FASHION_MNIST_SAMPLE, TRAINED_MIXER, image_pixels, randomize_, sample_image
from mixer_scripts.common import fashion_mnist
from mixer_scripts.conversion import evaluate_resize
from modeling_mixer import MixerForImageClassification, MixerModel


def test_resize_token_mixing_tiles_the_image(tmp_path):
    config = MixerConfig(
        hidden_size=64, num_hidden_layers=3, tokens_mlp_dim=32, channels_mlp_dim=128, patch_size=16, num_labels=5
    )
    model = randomize_(MixerForImageClassification(config))
    resized = copy.deepcopy(model).resize_token_mixing(448)
    assert (resized.config.image_size, resized.config.tokens_mlp_dim, resized.config.num_tokens) == (448, 128, 784)
    resized(torch.randn(1, 3, 448, 448))  # the model takes the new size
    with pytest.raises(ValueError, match=r"got \(1, 3, 224, 224\)"):
        resized(torch.randn(1, 3, 224, 224))
    image = image_pixels()
    with torch.no_grad():
        small = model(image, output_hidden_states=True)
        big = resized(image.repeat(1, 1, 2, 2), output_hidden_states=True)  # 2×2 copies of the image
    # Every 14×14 quarter of the 28×28 patch grid holds the original model's hidden states, in every layer.
    for ours, theirs in zip(big.hidden_states, small.hidden_states, strict=True):
        quarters = ours.reshape(2, 14, 2, 14, 64).permute(0, 2, 1, 3, 4).reshape(4, 196, 64)
        torch.testing.assert_close(quarters, theirs.expand(4, -1, -1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(big.logits, small.logits, rtol=1e-5, atol=1e-5)

    resized.save_pretrained(tmp_path)  # the updated config rebuilds the same shapes
    reloaded = MixerForImageClassification.from_pretrained(tmp_path)
    for key, value in resized.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key

    # The new size goes through the config's own checks (StrictDataclassError, as for MixerConfig(image_size=...)).
    with pytest.raises(
        StrictDataclassError,
        match=r"MixerConfig\.image_size \(230\) must be a multiple of "
        r"MixerConfig\.patch_size \(16\)",
    ):
        model.resize_token_mixing(230)
    for bad in (0, (224, 230), (224,), (224, True)):
        with pytest.raises(StrictDataclassError, match="image_size"):
            model.resize_token_mixing(bad)
    assert model.config.image_size == 224 and model.config.tokens_mlp_dim == 32  # unchanged by the refusals
    text = MixerModel(
        MixerConfig(
            modality="text",
            hidden_size=32,
            num_hidden_layers=1,
            tokens_mlp_dim=8,
            channels_mlp_dim=32,
            max_position_embeddings=16,
        )
    )
    with pytest.raises(ValueError, match="resize_token_mixing is for image Mixers, this one has modality='text'"):
        text.resize_token_mixing(448)


def test_resize_token_mixing_tiles_a_non_square_grid(tmp_path):
    """224 → 448 × 224 (K_h = 2, K_w = 1): two parts, one above the other, each mixed as the whole image was."""
    config = MixerConfig(
        hidden_size=32, num_hidden_layers=2, tokens_mlp_dim=16, channels_mlp_dim=64, patch_size=16, num_labels=5
    )
    model = randomize_(MixerForImageClassification(config))
    resized = copy.deepcopy(model).resize_token_mixing((448, 224))
    config = resized.config
    assert (config.image_size, config.tokens_mlp_dim, config.num_tokens) == ([448, 224], 32, 392)
    image = image_pixels()
    with torch.no_grad():
        small = model(image, output_hidden_states=True)
        big = resized(image.repeat(1, 1, 2, 1), output_hidden_states=True)  # the image above itself
    for ours, theirs in zip(
        big.hidden_states, small.hidden_states, strict=True
    ):  # the grid's halves: rows 0-13, 14-27
        torch.testing.assert_close(ours.reshape(2, 196, 32), theirs.expand(2, -1, -1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(big.logits, small.logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"shape \(batch_size, 3, 448, 224\).*got \(1, 3, 224, 448\)"):
        resized(torch.randn(1, 3, 224, 448))
    resized.save_pretrained(tmp_path)
    reloaded = MixerForImageClassification.from_pretrained(tmp_path)
    assert reloaded.config.image_size == [448, 224]
    for key, value in resized.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


@pytest.fixture(scope="module")
def trained_mixer():
    """A small Mixer trained on Fashion-MNIST at 28×28 (7×7 patches of 4), and the sample's 500 test images."""
    model = MixerForImageClassification.from_pretrained(TRAINED_MIXER).eval()
    processor = AutoImageProcessor.from_pretrained(TRAINED_MIXER)
    test = fashion_mnist(FASHION_MNIST_SAMPLE)["test"]
    return model, processor, [image.convert("RGB") for image in test["image"]], torch.tensor(test["label"])


def accuracy(model, processor, images, labels):
    with torch.no_grad():
        return (model(processor(images, return_tensors="pt").pixel_values).logits.argmax(-1) == labels).float().mean()


@pytest.mark.parametrize("size, kept", [(36, 0.8), (40, 0.8), (20, 0.7), ((28, 36), 0.8), ((36, 28), 0.8)])
def test_resize_token_mixing_resamples_a_trained_model(trained_mixer, tmp_path, size, kept):
    """
    At a size that is no whole multiple (36 and 40: 9×9 and 10×10 patches; 20: 5×5; 28×36 and 36×28: 7×9 and
    9×7), the resampled model classifies the test images, resized to the new size, before any fine-tuning: it keeps
    most of the model's accuracy at 28 (chance is 10%), with D_S unchanged. (On these 500 images: 89.8% at 28; 78.8%
    at 36, 68.4% at 20, 80.4% at 28×36, 88.2% at 36×28.)
    """
    model, processor, images, labels = trained_mixer
    resized = copy.deepcopy(model).resize_token_mixing(size)
    config = resized.config
    height, width = (size, size) if isinstance(size, int) else size
    assert (config.image_height_width, config.num_tokens, config.tokens_mlp_dim) == (
        (height, width),
        height * width // 16,
        32,
    )
    new_processor = convert.resize_image_processor(copy.deepcopy(processor), size)
    assert new_processor.size == {"height": height, "width": width}
    original, ours = accuracy(model, processor, images, labels), accuracy(resized, new_processor, images, labels)
    assert original > 0.8 and ours > kept * original, (original, ours)

    # The filters' scale: the first token-mixing layer's pre-activations keep their size on the resized images.
    def pre_activations(mixer, processor):
        with torch.no_grad():
            embeddings = mixer.mixer.embeddings(processor(images[:100], return_tensors="pt").pixel_values)
            token_mixing = mixer.mixer.layers[0].token_mixing
            return token_mixing.fc1(mixer.mixer.layers[0].token_norm(embeddings).transpose(1, 2))

    ratio = pre_activations(resized, new_processor).std() / pre_activations(model, processor).std()
    assert 0.8 < ratio < 1.25, ratio

    resized.save_pretrained(tmp_path)  # the updated config rebuilds the same shapes
    reloaded = MixerForImageClassification.from_pretrained(tmp_path)
    for key, value in resized.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_evaluate_resize_script(tmp_path, capsys):
    evaluate_resize.main(
        [
            "--model",
            str(TRAINED_MIXER),
            "--sizes",
            "36",
            "--fashion_mnist_dir",
            str(FASHION_MNIST_SAMPLE),
            "--save_dir",
            str(tmp_path),
        ]
    )
    printed = capsys.readouterr().out
    assert "500 test images: " in printed and "resized to 36 (tokens 81, D_S 32): " in printed, printed
    assert "; the input resized back to 28: " in printed, printed
    resized = MixerForImageClassification.from_pretrained(tmp_path / "resized-36")
    reinit = MixerForImageClassification.from_pretrained(tmp_path / "reinit-36")
    assert AutoImageProcessor.from_pretrained(tmp_path / "reinit-36").size == {"height": 36, "width": 36}
    for key, value in resized.state_dict().items():  # only the token-mixing weights differ
        assert torch.equal(reinit.state_dict()[key], value) != (".token_mixing." in key), key


def test_resize_image_processor():
    processor = convert.resize_image_processor(convert.image_processor(224), 448)
    assert processor.size == {"shortest_edge": 512} and processor.crop_size == {"height": 448, "width": 448}
    assert processor(sample_image(), return_tensors="pt").pixel_values.shape == (1, 3, 448, 448)
    processor = convert.resize_image_processor(ViTImageProcessor(size={"height": 28, "width": 28}), 36)
    assert processor.size == {"height": 36, "width": 36}
    assert processor(sample_image(), return_tensors="pt").pixel_values.shape == (1, 3, 36, 36)
    processor = convert.resize_image_processor(convert.image_processor(224), (448, 224))
    assert processor.size == {"shortest_edge": 512} and processor.crop_size == {"height": 448, "width": 224}
    assert processor(sample_image(), return_tensors="pt").pixel_values.shape == (1, 3, 448, 224)
