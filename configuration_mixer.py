"""MLP-Mixer configuration (Tolstikhin et al., 2021, arXiv 2105.01601), for images and for text."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

# The paper's Table 1. `tokens_mlp_dim` is D_S, `channels_mlp_dim` is D_C.
MIXER_VARIANTS = {
    "S/32": dict(patch_size=32, hidden_size=512, tokens_mlp_dim=256, channels_mlp_dim=2048, num_hidden_layers=8),
    "S/16": dict(patch_size=16, hidden_size=512, tokens_mlp_dim=256, channels_mlp_dim=2048, num_hidden_layers=8),
    "B/32": dict(patch_size=32, hidden_size=768, tokens_mlp_dim=384, channels_mlp_dim=3072, num_hidden_layers=12),
    "B/16": dict(patch_size=16, hidden_size=768, tokens_mlp_dim=384, channels_mlp_dim=3072, num_hidden_layers=12),
    "L/32": dict(patch_size=32, hidden_size=1024, tokens_mlp_dim=512, channels_mlp_dim=4096, num_hidden_layers=24),
    "L/16": dict(patch_size=16, hidden_size=1024, tokens_mlp_dim=512, channels_mlp_dim=4096, num_hidden_layers=24),
    "H/14": dict(patch_size=14, hidden_size=1280, tokens_mlp_dim=640, channels_mlp_dim=5120, num_hidden_layers=32),
}

FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32

# Written into every saved config.json, so that each Auto class finds its class in the two source files that
# `save_pretrained` copies next to the weights (`trust_remote_code=True` on a machine without this package).
MIXER_AUTO_MAP = {
    "AutoConfig": "configuration_mixer.MixerConfig",
    "AutoModel": "modeling_mixer.MixerModel",
    "AutoModelForImageClassification": "modeling_mixer.MixerForImageClassification",
    "AutoModelForMaskedLM": "modeling_mixer.MixerForMaskedLM",
    "AutoModelForSequenceClassification": "modeling_mixer.MixerForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_mixer.MixerForTokenClassification",
}


@strict
class MixerConfig(PreTrainedConfig):
    r"""
    Configuration of an MLP-Mixer. The defaults build Mixer-B/16 for 224×224 images.

    Args:
        hidden_size (`int`, defaults to 768): channels C of every token.
        num_hidden_layers (`int`, defaults to 12): number of Mixer layers.
        tokens_mlp_dim (`int`, defaults to 384): hidden width D_S of the token-mixing MLP.
        channels_mlp_dim (`int`, defaults to 3072): hidden width D_C of the channel-mixing MLP.
        hidden_act (`str`, defaults to `"gelu"`): activation of both MLPs. `"gelu"` is the exact GELU of timm;
            `"gelu_pytorch_tanh"` is the tanh approximation of the official JAX code.
        layer_norm_eps (`float`, defaults to 1e-6): epsilon of every LayerNorm.
        hidden_dropout_prob (`float`, defaults to 0.0): dropout after each MLP's activation and output.
        drop_path_rate (`float`, defaults to 0.0): stochastic depth of the last layer; it rises linearly from 0 over
            depth, as in the paper.
        initializer_range (`float`, defaults to 0.02): std of the token embeddings and of the MLM head's dense layer.
        modality (`str`, defaults to `"image"`): `"image"` (patch embeddings, mean over patches) or `"text"`
            (token embeddings, mean over real tokens).
        image_size (`int` or `[height, width]`, defaults to 224): the input images' side, or their height and width.
        patch_size, num_channels (`int`): images of `num_channels` channels are cut into non-overlapping
            `patch_size`×`patch_size` patches.
        vocab_size (`int`, defaults to 30522): size of the token vocabulary (text).
        max_position_embeddings (`int`, defaults to 512): the longest sequence (text). It is the width of the
            token-mixing MLP, whose weights are position-specific: there are no position embeddings.
        pad_token_id (`int`, *optional*, defaults to 0): id of the padding token (text).
        tie_word_embeddings (`bool`, defaults to `True`): tie the MLM decoder to the token embeddings.
        sparse_prediction (`bool`, defaults to `False`): in training with labels, run the MLM head on the labelled
            positions only (as ModernBERT's flag): the same loss for a fraction of the head's cost, and `logits` of
            shape `(number of labels != -100, vocab_size)`. Evaluation and inference always return
            `(batch_size, sequence_length, vocab_size)`.

    Example:

    ```python
    >>> from configuration_mixer import MixerConfig
    >>> config = MixerConfig.from_variant("S/16", num_labels=10)
    >>> config.num_tokens
    196
    ```
    """

    model_type = "mlp-mixer"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    tokens_mlp_dim: int = 384
    channels_mlp_dim: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float | int = 1e-6
    hidden_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.0
    initializer_range: float | int = 0.02
    modality: str = "image"
    image_size: int | list[int] | tuple[int, int] = 224
    patch_size: int = 16
    num_channels: int = 3
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = True
    sparse_prediction: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.auto_map = {**MIXER_AUTO_MAP, **(getattr(self, "auto_map", None) or {})}

    # `@strict` checks each field's type (on creation and on every assignment) and runs the `validate_*` methods
    # (on creation, and on `config.validate()`), as transformers' own configs do.
    def validate_architecture(self):
        super().validate_architecture()
        if self.modality not in ("image", "text"):
            raise ValueError(f"MixerConfig.modality must be 'image' or 'text', got {self.modality!r}.")
        positive = ["hidden_size", "num_hidden_layers", "tokens_mlp_dim", "channels_mlp_dim"]
        positive += ["patch_size", "num_channels"] if self.modality == "image" else []
        positive += ["vocab_size", "max_position_embeddings"] if self.modality == "text" else []
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"MixerConfig.{name} must be a positive integer, got {getattr(self, name)!r}.")
        if self.hidden_act not in ACT2FN:
            raise ValueError(
                f"MixerConfig.hidden_act must be an activation of transformers.activations.ACT2FN "
                f"(for example 'gelu' or 'gelu_pytorch_tanh'), got {self.hidden_act!r}."
            )
        for name in ("hidden_dropout_prob", "drop_path_rate"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"MixerConfig.{name} must be a probability in [0, 1), got {getattr(self, name)!r}.")
        # Below float32's smallest normal number, eps rounds to 0, and 0 / 0 is NaN.
        if not FLOAT32_TINY <= self.layer_norm_eps < float("inf"):
            raise ValueError(
                f"MixerConfig.layer_norm_eps must be a positive number that float32 holds (≥ {FLOAT32_TINY:.2g}), "
                f"got {self.layer_norm_eps!r}."
            )
        if self.modality != "image":
            return
        square = isinstance(self.image_size, int)
        sides = [self.image_size] if square else list(self.image_size)
        if not (square or len(sides) == 2) or not all(isinstance(side, int) and side > 0 for side in sides):
            raise ValueError(
                f"MixerConfig.image_size must be a positive integer or a [height, width] pair of them, "
                f"got {self.image_size!r}."
            )
        if any(side % self.patch_size for side in sides):
            raise ValueError(
                f"MixerConfig.image_size ({self.image_size}) must be a multiple of MixerConfig.patch_size "
                f"({self.patch_size}): the image is cut into non-overlapping patches."
            )

    def validate_token_ids(self):
        super().validate_token_ids()  # a warning only, for configs of any kind on the Hub
        if self.modality == "text" and self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"MixerConfig.pad_token_id must be None or an id in [0, vocab_size={self.vocab_size}), "
                f"got {self.pad_token_id!r}."
            )

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        # transformers only logs a warning for a config of another model type, then builds a Mixer from its fields.
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type", cls.model_type) != cls.model_type:
            raise ValueError(
                f"{pretrained_model_name_or_path} holds a config of model type {config_dict['model_type']!r}, not "
                f"{cls.model_type!r}: it belongs to another architecture."
            )
        return config_dict, kwargs

    @property
    def image_height_width(self) -> tuple[int, int]:
        """The input images' (height, width)."""
        size = self.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def patch_grid(self) -> tuple[int, int]:
        """Rows and columns of patches over an image; the tokens are the patches in row-major order."""
        height, width = self.image_height_width
        return height // self.patch_size, width // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Width of the token-mixing MLP: patches per image, or the longest text sequence."""
        if self.modality == "image":
            rows, cols = self.patch_grid
            return rows * cols
        return self.max_position_embeddings

    @classmethod
    def from_variant(cls, variant: str, **kwargs) -> "MixerConfig":
        """A paper variant ("S/32", "S/16", "B/32", "B/16", "L/32", "L/16", "H/14"); `kwargs` override any field."""
        if variant not in MIXER_VARIANTS:
            raise ValueError(f"Unknown Mixer variant {variant!r}; expected one of {', '.join(MIXER_VARIANTS)}.")
        return cls(**{**MIXER_VARIANTS[variant], **kwargs})


__all__ = ["MIXER_VARIANTS", "MixerConfig"]
