r"""
Converts MLP-Mixer weights into a folder that `from_pretrained` loads, and back to timm.

    # a timm state dict (.pth / .bin / .safetensors), or a timm model name when the Hub is reachable
    python convert_mixer_checkpoint.py --source timm --checkpoint mixer_b16_224.goog_in21k_ft_in1k \
        --output mixer-b16
    # an official JAX checkpoint (google-research/vision_transformer, gs://mixer_models/...)
    python convert_mixer_checkpoint.py --source jax --checkpoint Mixer-B_16.npz --variant B/16 \
        --output mixer-b16
    # our folder → a timm state dict that `timm.create_model("mixer_b16_224").load_state_dict(strict=True)` accepts
    python convert_mixer_checkpoint.py --to_timm --checkpoint mixer-b16 --output mixer_b16_224.safetensors

The variant is read from the weight shapes. The folder holds config.json, model.safetensors, the two model source
files (for `trust_remote_code=True`) and preprocessor_config.json: the eval transform of the source, as timm's
`resolve_data_config` + `create_transform` build it (resize the shortest edge to image_size / 0.875, center crop).
`ViTImageProcessorPil.from_pretrained(folder)` reproduces timm's transform bit for bit; `AutoImageProcessor` gives
the torchvision backend, which resizes uint8 tensors and can differ from PIL by one 8-bit level on some pixels.
"""

import argparse
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import save_file
from timm.data import ImageNetInfo, infer_imagenet_subset
from timm.models import load_state_dict
from transformers import AutoModelForImageClassification, ViTImageProcessor
from transformers.image_utils import PILImageResampling

from configuration_mixer import MIXER_VARIANTS, MixerConfig
from modeling_mixer import MixerForImageClassification

# The one key map, one row per module: (ours, timm, official JAX/Flax). "{i}" is the layer index. Parameters keep
# their names (weight, bias) except in Flax, where the weight of a Dense or Conv is its `kernel`, that of a LayerNorm
# its `scale`.
KEY_MAP = [
    ("mixer.embeddings.projection", "stem.proj", "stem"),
    ("mixer.layers.{i}.token_norm", "blocks.{i}.norm1", "MixerBlock_{i}/LayerNorm_0"),
    ("mixer.layers.{i}.token_mixing.fc1", "blocks.{i}.mlp_tokens.fc1", "MixerBlock_{i}/token_mixing/Dense_0"),
    ("mixer.layers.{i}.token_mixing.fc2", "blocks.{i}.mlp_tokens.fc2", "MixerBlock_{i}/token_mixing/Dense_1"),
    ("mixer.layers.{i}.channel_norm", "blocks.{i}.norm2", "MixerBlock_{i}/LayerNorm_1"),
    ("mixer.layers.{i}.channel_mixing.fc1", "blocks.{i}.mlp_channels.fc1", "MixerBlock_{i}/channel_mixing/Dense_0"),
    ("mixer.layers.{i}.channel_mixing.fc2", "blocks.{i}.mlp_channels.fc2", "MixerBlock_{i}/channel_mixing/Dense_1"),
    ("mixer.layernorm", "norm", "pre_head_layer_norm"),
    ("classifier", "head", "head"),
]
NAMINGS = {"ours": (0, "."), "timm": (1, "."), "jax": (2, "/")}  # column in KEY_MAP, separator

# Eval transforms of the published weights (timm's pretrained cfgs): crop 0.875 of the resized image.
PREPROCESSING = {
    "google": dict(resample=PILImageResampling.BICUBIC, image_mean=[0.5] * 3, image_std=[0.5] * 3),
    "miil": dict(resample=PILImageResampling.BILINEAR, image_mean=[0.0] * 3, image_std=[1.0] * 3),
}
CROP_PCT = 0.875


class CheckpointMismatchError(ValueError):
    """The checkpoint is not a Mixer of the expected shapes."""


def rename(key: str, src: str, dst: str) -> str | None:
    """`key` in naming `src` ("ours", "timm", "jax") → naming `dst`; None when no row of KEY_MAP matches."""
    (src_col, src_sep), (dst_col, dst_sep) = NAMINGS[src], NAMINGS[dst]
    module, _, param = key.rpartition(src_sep)
    for row in KEY_MAP:
        match = re.fullmatch(re.escape(row[src_col]).replace(r"\{i\}", r"(\d+)"), module)
        if match:
            new = row[dst_col].replace("{i}", match.group(1)) if match.groups() else row[dst_col]
            if src == "jax":
                param = {"kernel": "weight", "scale": "weight"}.get(param, param)
            elif dst == "jax" and param == "weight":
                param = "scale" if "norm" in new.lower() else "kernel"  # LayerNorm_0/1, pre_head_layer_norm
            return new + dst_sep + param
    return None


def jax_to_torch(value) -> torch.Tensor:
    """Flax layouts → PyTorch: Dense kernels (in, out) → (out, in); conv kernels HWIO → OIHW."""
    tensor = torch.as_tensor(np.asarray(value))
    tensor = {4: lambda t: t.permute(3, 2, 0, 1), 2: lambda t: t.T}.get(tensor.dim(), lambda t: t)(tensor)
    return tensor.contiguous()


def _stored_shape(shape: tuple, source: str) -> tuple:
    """Our parameter shape as it is stored in `source` (to name the expected shapes in errors)."""
    if source != "jax" or len(shape) not in (2, 4):
        return tuple(shape)
    return tuple(shape[::-1]) if len(shape) == 2 else (shape[2], shape[3], shape[1], shape[0])


def infer_config(state_dict: dict, variant: str | None = None, **kwargs) -> MixerConfig:
    """
    The Mixer that has these weights (our names). Shapes that are absent keep the defaults of `variant` (B/16 without
    one), so that the comparison with the model afterwards can list every key that does not fit. A `variant` that
    disagrees with the shapes raises.
    """
    if variant is not None and variant not in MIXER_VARIANTS:
        raise ValueError(f"Unknown Mixer variant {variant!r}; expected one of {', '.join(MIXER_VARIANTS)}.")
    defaults = MIXER_VARIANTS[variant or "B/16"]
    shape = {key: tuple(value.shape) for key, value in state_dict.items()}
    inferred = {}
    if len(stem := shape.get("mixer.embeddings.projection.weight", ())) == 4:
        inferred.update(hidden_size=stem[0], num_channels=stem[1], patch_size=stem[2])
    if len(fc1 := shape.get("mixer.layers.0.token_mixing.fc1.weight", ())) == 2:
        inferred["tokens_mlp_dim"], num_tokens = fc1
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise CheckpointMismatchError(f"The token-mixing MLP takes {num_tokens} tokens, not a square grid.")
        inferred["image_size"] = side * inferred.get("patch_size", defaults["patch_size"])
    if len(fc1 := shape.get("mixer.layers.0.channel_mixing.fc1.weight", ())) == 2:
        inferred["channels_mlp_dim"] = fc1[0]
    if layers := {int(m.group(1)) for key in shape if (m := re.match(r"mixer\.layers\.(\d+)\.", key))}:
        inferred["num_hidden_layers"] = max(layers) + 1
    head = shape.get("classifier.bias", shape.get("classifier.weight"))
    inferred["num_labels"] = head[0] if head else 0  # no head: timm's num_classes=0

    if variant is not None and (
        wrong := [f"{k}={v} (not {defaults[k]})" for k, v in inferred.items() if defaults.get(k, v) != v]
    ):
        raise CheckpointMismatchError(f"The checkpoint is not a Mixer-{variant}: it has {', '.join(wrong)}.")
    if subset := infer_imagenet_subset({"num_classes": inferred["num_labels"]}):  # ImageNet-1k, -21k...: class names
        kwargs.setdefault("id2label", dict(enumerate(ImageNetInfo(subset).label_descriptions())))
    return MixerConfig(**{**defaults, **inferred, **kwargs})


def _summary(items: list[str], limit: int = 12) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def load_mixer(state_dict: dict, source: str, variant: str | None = None, **config_kwargs):
    """A `MixerForImageClassification` (eval mode) holding `state_dict`, named as `source` ("timm", "jax") names."""
    ours = {}
    for key, value in state_dict.items():
        if (new := rename(key, source, "ours")) is not None:
            ours[new] = jax_to_torch(value) if source == "jax" else torch.as_tensor(value).clone()  # own memory
    config = infer_config(ours, variant, **config_kwargs)
    with torch.device("meta"):  # shapes only: no time spent on an initialisation that the weights replace
        model = MixerForImageClassification(config)
    expected = {rename(k, "ours", source): _stored_shape(v.shape, source) for k, v in model.state_dict().items()}
    given = {key: tuple(np.shape(value)) for key, value in state_dict.items()}
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    wrong = [
        f"{key} {given[key]} (expected {shape})"
        for key, shape in expected.items()
        if key in given and given[key] != shape
    ]
    if missing or unexpected or wrong:
        problems = [
            f"{name}: {_summary(keys)}"
            for name, keys in [("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)]
            if keys
        ]
        raise CheckpointMismatchError(
            f"The {source} checkpoint does not fit a Mixer with {config.num_hidden_layers} layers, hidden_size "
            f"{config.hidden_size}, patch_size {config.patch_size}, tokens_mlp_dim {config.tokens_mlp_dim}, "
            f"channels_mlp_dim {config.channels_mlp_dim}, {config.num_labels} labels.\n" + "\n".join(problems)
        )
    model.load_state_dict(ours, strict=True, assign=True)
    return model.eval()


def convert_timm_state_dict(state_dict: dict, variant: str | None = None, **config_kwargs):
    """timm `MlpMixer` state dict → our model (exact GELU, as timm)."""
    return load_mixer(state_dict, "timm", variant, **config_kwargs)


def convert_jax_npz(path, variant: str | None = None, **config_kwargs):
    """Official Flax `.npz` checkpoint → our model, with the tanh GELU of `flax.linen.gelu`."""
    with np.load(path) as npz:
        state_dict = {key: npz[key] for key in npz.files}
    return load_mixer(state_dict, "jax", variant, **{"hidden_act": "gelu_pytorch_tanh", **config_kwargs})


def to_timm_state_dict(model: MixerForImageClassification) -> dict:
    """Our model → the state dict of a timm `MlpMixer` of the same shapes (`timm.create_model("mixer_b16_224")`...)."""
    state_dict = {}
    for key, value in model.state_dict().items():
        if (new := rename(key, "ours", "timm")) is None:
            raise KeyError(f"{key} has no timm counterpart.")
        state_dict[new] = value.detach().clone().contiguous()
    return state_dict


def image_processor(image_size: int, preprocessing: str = "google") -> ViTImageProcessor:
    """The source's eval transform: shortest edge to floor(image_size / 0.875), center crop image_size."""
    return ViTImageProcessor(
        do_resize=True,
        size={"shortest_edge": math.floor(image_size / CROP_PCT)},
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        **PREPROCESSING[preprocessing],
    )


def resize_image_processor(processor: ViTImageProcessor, image_size: int | tuple[int, int]) -> ViTImageProcessor:
    """
    The same transform for another image_size, a side or (height, width) (after `model.resize_token_mixing`): a
    resize to a fixed size resizes to the new one, a resize of the shortest edge and center crop keeps its crop ratio
    (for the longer side of the crop).
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if "shortest_edge" in processor.size:
        crop_pct = processor.crop_size["height"] / processor.size["shortest_edge"]
        processor.size = {"shortest_edge": math.floor(max(height, width) / crop_pct)}
        processor.crop_size = {"height": height, "width": width}
    else:
        processor.size = {"height": height, "width": width}
    return processor


def _write_atomically(output, write):
    """`write(path)` writes a file or folder inside a temporary folder next to `output`, then renamed to `output`."""
    output = Path(output)
    if output.exists() and (output.is_file() or any(output.iterdir())):
        raise FileExistsError(f"{output} exists already: choose a new path or remove it.")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        write(tmp / output.name)
        os.replace(tmp / output.name, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_folder(model, processor, output):
    def write(path):
        model.save_pretrained(path)
        processor.save_pretrained(path)

    _write_atomically(output, write)


def convert(source, checkpoint, output, variant=None, preprocessing=None, push_to_hub=None):
    if source == "jax":
        model = convert_jax_npz(checkpoint, variant)
    elif os.path.isfile(checkpoint):
        model = convert_timm_state_dict(load_state_dict(checkpoint), variant)
    else:  # a timm model name, e.g. mixer_b16_224.goog_in21k_ft_in1k (downloads from the Hub)
        model = convert_timm_state_dict(timm.create_model(checkpoint, pretrained=True).state_dict(), variant)
        preprocessing = preprocessing or ("miil" if ".miil" in checkpoint else "google")
    save_folder(model, image_processor(model.config.image_size, preprocessing or "google"), output)
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(push_to_hub, exist_ok=True)
        api.upload_folder(repo_id=push_to_hub, folder_path=output)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["timm", "jax"], default="timm")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a .pth/.bin/.safetensors/.npz file, a timm model name, or (with --to_timm) a converted folder",
    )
    parser.add_argument("--output", required=True, help="the folder to write (a file with --to_timm); must not exist")
    parser.add_argument("--variant", choices=list(MIXER_VARIANTS), help="check that the weights are this variant")
    parser.add_argument("--preprocessing", choices=list(PREPROCESSING), help="eval transform (default google)")
    parser.add_argument("--push_to_hub", metavar="REPO", help="also upload the folder to this Hub repository")
    parser.add_argument("--to_timm", action="store_true", help="convert a folder back to a timm state dict")
    args = parser.parse_args(argv)
    if args.to_timm:
        model = AutoModelForImageClassification.from_pretrained(args.checkpoint)
        state_dict = to_timm_state_dict(model)
        save = save_file if args.output.endswith(".safetensors") else torch.save
        _write_atomically(args.output, lambda path: save(state_dict, str(path)))
        if model.config.hidden_act != "gelu":
            print(f"Note: this model uses {model.config.hidden_act!r}; timm's Mixer uses the exact GELU.")
    else:
        convert(args.source, args.checkpoint, args.output, args.variant, args.preprocessing, args.push_to_hub)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
