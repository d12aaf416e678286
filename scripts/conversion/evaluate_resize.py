#!/usr/bin/env python
"""
Accuracy of an image Mixer at other input sizes, before any fine-tuning: `model.resize_token_mixing(size)` with its
image processor resized alike, on Fashion-MNIST's test images resized to each size, against the model at its own
size on the same images resized back. `--save_dir` also writes, for each size, the two starts of the fine-tune
comparison in docs/vision.md: the resized model (`resized-SIZE`) and the same with freshly initialised token-mixing
weights (`reinit-SIZE`).

    python scripts/conversion/evaluate_resize.py --model tests/data/mixer-fashion-mnist-28 --sizes 20 36 40 56 28x36 \
        --save_dir outputs/resize
"""

import argparse
import copy
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from transformers import AutoImageProcessor

from convert_mixer_checkpoint import resize_image_processor
from mixer_scripts.common import FASHION_MNIST, fashion_mnist
from modeling_mixer import MixerForImageClassification


@torch.no_grad()
def accuracy(model, processor, images, labels, batch_size=500) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        batch = [PIL.Image.fromarray(image).convert("RGB") for image in images[start : start + batch_size]]
        logits = model(processor(batch, return_tensors="pt")["pixel_values"]).logits
        correct += (logits.argmax(-1) == torch.as_tensor(labels[start : start + batch_size])).sum().item()
    return correct / len(images)


def image_size(text: str) -> int | tuple[int, int]:
    """A side ("36") or HEIGHTxWIDTH ("28x36")."""
    height, _, width = text.partition("x")
    return (int(height), int(width)) if width else int(height)


def reinit_token_mixing(model):
    """The same model with the token-mixing MLPs initialised afresh (every other weight kept)."""
    fresh = MixerForImageClassification(model.config)
    kept = {key: value for key, value in model.state_dict().items() if ".token_mixing." not in key}
    missing = fresh.load_state_dict(kept, strict=False).missing_keys
    assert missing and all(".token_mixing." in key for key in missing), missing
    return fresh


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a saved image Mixer with its image processor")
    parser.add_argument(
        "--sizes",
        type=image_size,
        nargs="+",
        required=True,
        help="input sizes, multiples of the patch: a side (36) or HEIGHTxWIDTH (28x36)",
    )
    parser.add_argument("--fashion_mnist_dir", default=str(FASHION_MNIST))
    parser.add_argument("--save_dir", type=Path, help="write resized-SIZE and reinit-SIZE folders here")
    args = parser.parse_args(argv)
    test = fashion_mnist(args.fashion_mnist_dir)["test"].with_format("numpy")
    images, labels = np.stack(test["image"]), test["label"]
    model = MixerForImageClassification.from_pretrained(args.model)
    processor = AutoImageProcessor.from_pretrained(args.model)
    size = model.config.image_size
    print(f"{args.model}, {len(labels)} test images: {accuracy(model, processor, images, labels):.2%} at {size}")
    for new_size in args.sizes:
        resized = copy.deepcopy(model).resize_token_mixing(new_size)
        new_processor = resize_image_processor(copy.deepcopy(processor), new_size)
        # The images at the new size (bilinear, as the processor resizes), then back to the model's size.
        height, width = (new_size, new_size) if isinstance(new_size, int) else new_size
        label = str(height) if height == width else f"{height}x{width}"
        there = np.stack(
            [np.asarray(PIL.Image.fromarray(image).resize((width, height), PIL.Image.BILINEAR)) for image in images]
        )
        print(
            f"  resized to {label} (tokens {resized.config.num_tokens}, D_S {resized.config.tokens_mlp_dim}): "
            f"{accuracy(resized, new_processor, images, labels):.2%}; the input resized back to {size}: "
            f"{accuracy(model, processor, there, labels):.2%}"
        )
        if args.save_dir:
            for name, start in [("resized", resized), ("reinit", reinit_token_mixing(resized))]:
                start.save_pretrained(args.save_dir / f"{name}-{label}")
                new_processor.save_pretrained(args.save_dir / f"{name}-{label}")


if __name__ == "__main__":
    main()
