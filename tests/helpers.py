"""What several test files share."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from configuration_mixer import MixerConfig
from modeling_mixer import MixerForImageClassification, MixerForMaskedLM

ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST_SAMPLE = ROOT / "tests/data/fashion-mnist"  # 1,000 train and 500 test images
# A small Mixer trained on Fashion-MNIST at 28×28, made by scripts/test_data/make_resize_test_model.py
TRAINED_MIXER = ROOT / "tests/data/mixer-fashion-mnist-28"

# ------------------------------------------------------------------------------------ tiny models, built directly

TINY_IMAGE = dict(
    hidden_size=32,
    num_hidden_layers=2,
    tokens_mlp_dim=16,
    channels_mlp_dim=64,
    image_size=32,
    patch_size=8,
    num_channels=3,
)
TINY_TEXT = dict(
    modality="text",
    vocab_size=50,
    max_position_embeddings=12,
    hidden_size=32,
    num_hidden_layers=2,
    tokens_mlp_dim=16,
    channels_mlp_dim=64,
    pad_token_id=0,
)


def image_model(**overrides):
    torch.manual_seed(0)
    return MixerForImageClassification(MixerConfig(**{**TINY_IMAGE, "num_labels": 5, **overrides})).eval()


def text_model(**overrides):
    torch.manual_seed(0)
    return MixerForMaskedLM(MixerConfig(**{**TINY_TEXT, **overrides})).eval()


def with_head(model):
    """A classifier that passes a gradient and gives logits to compare (timm's init zeroes it)."""
    if isinstance(getattr(model, "classifier", None), nn.Linear):
        with torch.no_grad():
            nn.init.normal_(model.classifier.weight, generator=torch.Generator().manual_seed(1))
    return model


def randomize_(model, seed=0):
    """Weights far from timm's init (whose head is zero): normal(0, 0.02), LayerNorm scales around 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            norm_scale = param.dim() == 1 and "norm" in name and name.endswith("weight")
            param.copy_(torch.randn(param.shape, generator=generator) * (0.1 if norm_scale else 0.02) + norm_scale)
    return model.eval()


def image_pixels(size=224, seed=0):
    """One random image, as the image processor would make it."""
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def sample_image(width=320, height=240):
    """Smooth stripes plus noise, so that the resampling filters matter."""
    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(0).integers(0, 256, (height, width))
    return Image.fromarray(
        np.stack([128 + 100 * np.sin(x / 7), 128 + 100 * np.cos(y / 11), noise], -1).clip(0, 255).astype(np.uint8)
    )


def pad(sequences, length, pad_id):
    ids = torch.full((len(sequences), length), pad_id)
    mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids, mask


# ------------------------------------------------------------------------------- tiny runs of the training scripts

TINY_MIXER_IMAGES = "patch_size=7,hidden_size=32,num_hidden_layers=2,tokens_mlp_dim=16,channels_mlp_dim=64"
TINY_MIXER_TEXT = "hidden_size=32,num_hidden_layers=2,tokens_mlp_dim=32,channels_mlp_dim=64"
# run_mlm.py on a character tokenizer and blocks of 32; each test file adds its sizes, logging and device.
TINY_MLM = [
    "--tokenizer_type",
    "char",
    "--max_seq_length",
    "32",
    "--config_overrides",
    TINY_MIXER_TEXT,
    "--per_device_train_batch_size",
    "16",
    "--per_device_eval_batch_size",
    "32",
    "--learning_rate",
    "5e-3",
    "--eval_steps",
    "1000",
    "--disable_tqdm",
    "true",
    "--report_to",
    "none",
]


def without(args: list[str], *options: str) -> list[str]:
    """`args` less each of `options` and the value that follows it."""
    dropped = {i + offset for i, arg in enumerate(args) if arg in options for offset in (0, 1)}
    return [arg for i, arg in enumerate(args) if i not in dropped]


TINY_IMAGES = [
    "--fashion_mnist_dir",
    str(FASHION_MNIST_SAMPLE),
    "--max_train_samples",
    "600",
    "--max_eval_samples",
    "100",
    "--per_device_train_batch_size",
    "32",
    "--per_device_eval_batch_size",
    "100",
    "--learning_rate",
    "5e-3",
    "--logging_steps",
    "5",
    "--eval_steps",
    "1000",
    "--use_cpu",
    "--disable_tqdm",
    "true",
]


def losses(output_dir) -> list[float]:
    """The training losses that the Trainer logged in `output_dir`."""
    history = json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


BLOCK_PACKAGE = """
import importlib.abc, sys
class BlockPackage(importlib.abc.MetaPathFinder):  # as on a machine that never installed this project
    def find_spec(self, name, path=None, target=None):
        if name in ("configuration_mixer", "modeling_mixer"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, BlockPackage())
try:
    import modeling_mixer
    sys.exit("the block does not work")
except ModuleNotFoundError:
    pass
"""


def run_without_package(code: str, env: dict | None = None) -> str:
    """
    Runs `code` in a fresh Python process that cannot import this project; returns its stdout. `env`: the process's
    whole environment (default: this one's).
    """
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_PACKAGE + textwrap.dedent(code)], capture_output=True, text=True, cwd="/", env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout
