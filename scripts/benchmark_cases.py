"""
The workloads that the benchmarking scripts share (benchmark.py, profile_step.py, check_host_sync.py): each case's
models, built alike, their inputs, one training or inference step, and the analytic FLOP count.
"""

import copy
import dataclasses
import math
import statistics
import time
from dataclasses import dataclass

import torch

from configuration_mixer import MixerConfig
from convert_mixer_checkpoint import to_timm_state_dict
from mixer_scripts.common import TEXT_MODEL_DEFAULTS
from modeling_mixer import MixerForImageClassification, MixerForMaskedLM


@dataclass
class Case:
    """One workload: an image Mixer at its image size, or a text Mixer MLM at its full sequence length."""

    name: str
    config: MixerConfig
    models: tuple  # which peers run in this case

    @property
    def modality(self) -> str:
        return self.config.modality


IMAGE_MODELS = ("mixer", "mixer-compiled", "timm", "timm-compiled", "vit", "vit-compiled")
TEXT_MODELS = (
    "mixer",
    "mixer-compiled",
    "bert",
    "bert-compiled",
    "roformer",
    "roformer-compiled",
    "fnet",
    "fnet-compiled",
)
# The MLMs train with the sparse decoder, as scripts/training/run_mlm.py's do (the Mixer's `sparse_prediction`, the
# peers' from mixer_scripts.peers).
TEXT = dict(
    modality="text",
    hidden_size=512,
    num_hidden_layers=8,
    tokens_mlp_dim=256,
    channels_mlp_dim=2048,
    vocab_size=30522,
    sparse_prediction=True,
)
LABELLED = 0.15  # the share of text tokens that carry an MLM label: in training, the decoders run on those only
TINY = dict(hidden_size=32, num_hidden_layers=2, tokens_mlp_dim=16, channels_mlp_dim=64)
CASES = {
    case.name: case
    for case in [
        Case("S/16", MixerConfig.from_variant("S/16", num_labels=1000), IMAGE_MODELS),
        Case("B/16", MixerConfig.from_variant("B/16", num_labels=1000), IMAGE_MODELS),
        Case("text-128", MixerConfig(**TEXT, max_position_embeddings=128), TEXT_MODELS),
        Case("text-512", MixerConfig(**TEXT, max_position_embeddings=512), TEXT_MODELS),
        Case("text-2048", MixerConfig(**TEXT, max_position_embeddings=2048), TEXT_MODELS),
        # The main job's models (scripts/training/run_mlm.py's new Mixer, WordPiece 8,192, blocks of 128); time it
        # with batch 64.
        Case(
            "mlm-job",
            MixerConfig(**TEXT_MODEL_DEFAULTS["mlp-mixer"][2], vocab_size=8192, max_position_embeddings=128),
            TEXT_MODELS,
        ),
        # Small enough for the test suite's smoke run.
        Case("tiny-image", MixerConfig(**TINY, image_size=32, patch_size=8, num_labels=10), IMAGE_MODELS),
        Case(
            "tiny-text",
            MixerConfig(**TINY, modality="text", vocab_size=100, max_position_embeddings=16, sparse_prediction=True),
            TEXT_MODELS,
        ),
    ]
}
# Knobs of a whole run, the same for every model in it (set from the command line): torch.compile's mode
# ("max-autotune" lets inductor tune its GEMMs and fuse bias and GELU into their epilogues, "reduce-overhead" adds
# CUDA graphs) and AdamW's fused kernel.
TUNING = {"compile_mode": None, "fused_adamw": False}


def with_overrides(case: Case, overrides: str) -> Case:
    """The case with some fields of its config changed ("hidden_size=256,num_hidden_layers=2"), for every model."""
    if not overrides:
        return case
    config = copy.deepcopy(case.config)
    config.update_from_string(overrides)  # typed like the existing fields; unknown keys are an error
    return dataclasses.replace(case, config=config)


def transformer_size(config: MixerConfig) -> dict:
    """A transformer peer's size for a Mixer of `config`: its width and depth, its channel MLP as the feed-forward
    width, and 64-wide attention heads."""
    return dict(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        intermediate_size=config.channels_mlp_dim,
        num_attention_heads=max(config.hidden_size // 64, 1),
    )


def build(case: Case, name: str) -> torch.nn.Module:
    """The model `name` of `case`, in fp32 on the CPU, in train mode. Peers match width, depth and length."""
    torch.manual_seed(0)
    config = case.config
    base = name.removesuffix("-compiled")
    if base == "mixer":
        return (MixerForImageClassification if case.modality == "image" else MixerForMaskedLM)(config)
    if base == "timm":
        from timm.models.mlp_mixer import MlpMixer

        model = MlpMixer(
            num_classes=config.num_labels,
            img_size=config.image_size,
            patch_size=config.patch_size,
            num_blocks=config.num_hidden_layers,
            embed_dim=config.hidden_size,
            mlp_ratio=(config.tokens_mlp_dim / config.hidden_size, config.channels_mlp_dim / config.hidden_size),
        )
        model.load_state_dict(to_timm_state_dict(MixerForImageClassification(config)))  # the same weights as ours
        return model
    if base == "vit":
        from transformers import ViTConfig, ViTForImageClassification

        return ViTForImageClassification(
            ViTConfig(
                **transformer_size(config),
                image_size=config.image_size,
                patch_size=config.patch_size,
                num_labels=config.num_labels,
            )
        )
    if base in ("bert", "roformer", "fnet"):
        # run_mlm.py's peer (its classes, with the sparse decoder, and its dropout-free defaults) at this case's size
        config_class, model_class, defaults = TEXT_MODEL_DEFAULTS[base]
        size = transformer_size(config) | dict(
            vocab_size=config.vocab_size, max_position_embeddings=config.max_position_embeddings
        )
        if "num_attention_heads" not in defaults:  # FNet mixes tokens by a Fourier transform: no attention heads
            del size["num_attention_heads"]
        return model_class(config_class(**{**defaults, **size}))
    raise ValueError(f"Unknown model {name!r}; expected one of {', '.join(IMAGE_MODELS + TEXT_MODELS)}.")


def forward_flops(case: Case, name: str, mode: str = "inference") -> float:
    """Multiply-adds × 2 of one forward pass over one sample (image or sequence), in `mode`."""
    c = case.config
    C, layers = c.hidden_size, c.num_hidden_layers
    if case.modality == "image":
        S, stem = c.num_tokens, c.num_tokens * C * c.num_channels * c.patch_size**2
        head = C * c.num_labels
    else:
        S, stem, head = c.max_position_embeddings, 0, c.max_position_embeddings * (C * C + C * c.vocab_size)
        sparse = c.sparse_prediction or not name.startswith("mixer")  # the peers' decoders are sparse in training
        head *= LABELLED if mode == "train" and sparse else 1
    if name.startswith(("mixer", "timm")):
        layer = S * C * c.tokens_mlp_dim * 2 + S * C * c.channels_mlp_dim * 2
    elif name.startswith("fnet"):  # a 2-D FFT over tokens and channels (~5 N log2 N real FLOPs), then the MLP
        layer = 2.5 * S * C * math.log2(S * C) + S * C * c.channels_mlp_dim * 2
    else:  # attention: q, k, v, o projections, scores and weighted sum, then the MLP
        S += name.startswith("vit")  # ViT's class token
        layer = 4 * S * C * C + 2 * S * S * C + 2 * S * C * c.channels_mlp_dim
    return 2.0 * (stem + layers * layer + head)


def make_inputs(case: Case, batch_size: int, device):
    c = case.config
    generator = torch.Generator().manual_seed(0)
    if case.modality == "image":
        pixels = torch.randn(batch_size, c.num_channels, c.image_size, c.image_size, generator=generator)
        return {"pixel_values": pixels.to(device)}, torch.randint(0, c.num_labels, (batch_size,), generator=generator)
    ids = torch.randint(5, c.vocab_size, (batch_size, c.max_position_embeddings), generator=generator)
    labels = torch.where(torch.rand(ids.shape, generator=generator) < LABELLED, ids, -100)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}, labels


def step_fn(model, name, inputs, labels, mode, device, dtype):
    """A callable that runs one inference or training step of `model`."""
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    labels = labels.to(device)
    if name.startswith("timm"):

        def loss_of(out):
            return torch.nn.functional.cross_entropy(out.float(), labels)

        call = lambda: model(inputs["pixel_values"])
    else:

        def loss_of(out):
            return out.loss

        call = lambda: model(**inputs, labels=labels)
    if mode == "inference":

        def run():
            with torch.no_grad(), autocast:
                call()

        return run
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=TUNING["fused_adamw"] or None)

    def run():
        with autocast:
            loss = loss_of(call())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype, repeats=10) -> float:
    size = 8192 if device.type == "cuda" else 2048  # large enough to fill the device
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    times = []
    for _ in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times[1:])


def prepare(case, name, mode, batch_size, device, dtype, checkpointing=False):
    model = build(case, name).to(device)
    model.train(mode == "train")
    if checkpointing:
        model.activation_checkpointing_enable()
    if name.endswith("-compiled"):
        # Ours must compile without graph breaks.
        model = torch.compile(model, fullgraph=name.startswith("mixer"), mode=TUNING["compile_mode"])
    inputs, labels = make_inputs(case, batch_size, device)
    return step_fn(model, name, inputs, labels, mode, device, dtype)
