"""MLP-Mixer (Tolstikhin et al., 2021, arXiv 2105.01601) as a 🤗 transformers model, for images and for text.

One trunk of Mixer layers serves both modalities; only the embeddings, the pooling and the heads differ:

    image → non-overlapping patches → linear projection ─┐
                                                         ├→ N × MixerLayer → LayerNorm → mean over tokens → head
    text  → token embeddings (no position embeddings) ───┘

The image path computes exactly what timm's `MlpMixer` computes, with the same initialisation, so that its weights
(and those of the official JAX code) convert one to one.
"""

import copy
import math

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, PreTrainedModel, ViTImageProcessor, ViTImageProcessorPil
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndNoAttention,
    ImageClassifierOutputWithNoAttention,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, auto_docstring, logging
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

try:
    from .configuration_mixer import MIXER_AUTO_MAP, MixerConfig
except ImportError:  # installed as top-level modules, or run from the repository root
    from configuration_mixer import MIXER_AUTO_MAP, MixerConfig

logger = logging.get_logger(__name__)


# ---------------------------------------------------------------------------------------------------- embeddings


class MixerPatchEmbeddings(nn.Module):
    """Cuts an image into non-overlapping P×P patches and projects each to C channels (a Conv2d, kernel = stride = P)."""

    def __init__(self, config: MixerConfig):
        super().__init__()
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(self.projection.weight.dtype)
        return self.projection(pixel_values).flatten(2).transpose(1, 2)  # (batch, patches, channels), row-major


class MixerTextEmbeddings(nn.Module):
    """
    Token embeddings, then a LayerNorm (as in BERT). The embeddings start small, N(0, 0.02), as the decoder tied to
    them must (larger ones make the first logits huge); the LayerNorm gives them unit scale in the residual stream,
    where they would otherwise be drowned by the first token-mixing MLP's output and the MLM would sit longer on
    the unigram plateau (docs/text.md). No position embeddings: the token-mixing weights are position-specific.
    """

    def __init__(self, config: MixerConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        return self.layer_norm(inputs_embeds.to(self.layer_norm.weight.dtype))


# ---------------------------------------------------------------------------------------------------- Mixer layer


class MixerMLP(nn.Module):
    """Linear → activation → dropout → Linear → dropout, over the last dimension (timm's `Mlp`)."""

    def __init__(self, config: MixerConfig, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(self.act(self.fc1(hidden_states)))))


class MixerTokenMixingMLP(MixerMLP):
    """
    The MLP across tokens, one for all channels: MLP(X^T)^T for X of shape (tokens, channels). It runs on the
    transpose, as timm's does, so that fc1 and fc2 are called as the `nn.Linear` modules they are: LoRA, quantization
    and offload hooks, which wrap or replace modules, see them. A sequence of L < S tokens is zero-padded to the S
    inputs of fc1: the padded columns of W1 meet zeros, so the L outputs that are kept are exactly those of
    W1[:, :L] (the padding copy is the one that the transpose needs anyway).
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        length = hidden_states.shape[1]
        tokens = nn.functional.pad(hidden_states.transpose(1, 2), (0, self.fc1.in_features - length))
        # Transposed back, then cut to the L tokens: the same view as cutting first. But torch.export's contiguity
        # check of a cut [..., :L] of the last dimension guards L != S (or L == S), which pins a dynamic sequence
        # length below max_position_embeddings (or to it); on the transposed view the check stops at the channel
        # dimension (stride S, not 1) before it reaches L.
        return super().forward(tokens).transpose(1, 2)[:, :length]  # (batch, tokens, channels) again


class MixerDropPath(nn.Module):
    """Stochastic depth: drops the residual branch of whole samples, scaling the kept ones by 1 / (1 - p)."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        mask = hidden_states.new_empty((hidden_states.shape[0],) + (1,) * (hidden_states.dim() - 1))
        return hidden_states * mask.bernoulli_(keep_prob).div_(keep_prob)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class MixerLayer(GradientCheckpointingLayer):
    """
    x = x + TokenMLP(LayerNorm(x))      mixes the S tokens, per channel
    x = x + ChannelMLP(LayerNorm(x))    mixes the C channels, per token
    """

    def __init__(self, config: MixerConfig, drop_path: float = 0.0):
        super().__init__()
        self.token_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.token_mixing = MixerTokenMixingMLP(config, config.num_tokens, config.tokens_mlp_dim)
        self.channel_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.channel_mixing = MixerMLP(config, config.hidden_size, config.channels_mlp_dim)
        self.drop_path = MixerDropPath(drop_path)

    def forward(self, hidden_states: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.token_norm(hidden_states)
        if padding_mask is not None:
            # Zero the padded tokens, so that they add nothing to the real ones whatever their ids or their number.
            tokens = tokens * padding_mask
        hidden_states = hidden_states + self.drop_path(self.token_mixing(tokens))
        return hidden_states + self.drop_path(self.channel_mixing(self.channel_norm(hidden_states)))


# ---------------------------------------------------------------------------------------------------- trunk


class MixerPreTrainedModel(PreTrainedModel):
    config: MixerConfig
    config_class = MixerConfig
    base_model_prefix = "mixer"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["MixerLayer"]
    _can_compile_fullgraph = True
    _can_record_outputs = {"hidden_states": MixerLayer}

    def __init__(self, config: MixerConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        self.add_model_tags("mlp-mixer")  # in the model card that `push_to_hub` and `Trainer.push_to_hub` write

    def save_pretrained(self, save_directory, *args, **kwargs):
        # FSDP2's fully_shard swaps the model's class for FSDP<Name>(FSDPModule, <Name>), which torch creates in its
        # own module: transformers would save torch's files as this model's remote code and name FSDP<Name> in
        # auto_map. The folder is saved as by <Name>, the class that it wraps.
        model_class = type(self)
        if model_class.__name__ == f"FSDP{model_class.__bases__[-1].__name__}":
            self.__class__ = model_class.__bases__[-1]
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.__class__ = model_class

    def _init_weights(self, module):
        """
        timm's scheme: xavier-uniform linears with 1e-6 normal biases, a LeCun-normal stem, a zero classifier. It
        decides leaf by leaf, as transformers skips the modules that own no parameters themselves in remote code.
        """
        super()._init_weights(module)  # LayerNorm ones/zeros, embeddings normal(initializer_range)
        if isinstance(module, nn.Conv2d):
            # LeCun normal as timm and Flax draw it: truncated at two of its std, rescaled to variance 1 / fan_in.
            # (transformers' `init.lecun_normal_` truncates at ±2 absolute, which leaves a std 14% too large.)
            std = math.sqrt(1 / module.weight[0].numel()) / 0.87962566103423978
            init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if module is getattr(self, "classifier", None):
                init.zeros_(module.weight)
                init.zeros_(module.bias)
            elif module is not self.get_output_embeddings():  # the MLM decoder: tied weight, zero bias
                init.xavier_uniform_(module.weight)
                init.normal_(module.bias, std=1e-6)

    @torch.no_grad()
    def resize_token_mixing(self, image_size: int | tuple[int, int]):
        """
        Prepares fine-tuning at another resolution: rebuilds the token-mixing MLPs for the patch grid of
        `image_size` (a side, or a (height, width) pair). Updates the config; returns the model. Resize the image
        processor as well.

        - each side a whole multiple of the current one, K_h × and K_w × (the paper's Appendix C, exact):
          S' = K_h·K_w·S tokens, and each token-mixing MLP grows to K_h·K_w·D_S hidden units, initialised so that
          each of the K_h×K_w parts of the image is mixed exactly as the pretrained model mixes a whole image: a
          tiling of an image gives the original logits.
        - any other multiple of patch_size (approximate): D_S stays, and the weights are resampled over the patch
          grid (bicubic, as ViT's `interpolate_pos_encoding` resamples position embeddings): each hidden unit's
          filter (a row of W1), each hidden unit's output map (a column of W2), and b2. The patch projection is
          unchanged, so the patches see the objects at another scale: fine-tune at the new size.
        """
        mixer, config = self.base_model, self.config
        if config.modality != "image":
            raise ValueError(f"resize_token_mixing is for image Mixers, this one has modality={config.modality!r}.")
        new_config = copy.deepcopy(config)
        new_config.image_size = list(image_size) if isinstance(image_size, tuple) else image_size  # JSON's form
        new_config.validate()  # the config's own checks: a positive multiple of patch_size, or a pair of them
        (rows, cols), (new_rows, new_cols) = config.patch_grid, new_config.patch_grid
        k_rows, k_cols = new_rows // rows, new_cols // cols
        parts = k_rows * k_cols
        tiled = parts > 0 and (k_rows * rows, k_cols * cols) == (new_rows, new_cols)
        if tiled:
            # Grouped part by part (token q = part · S + index in the part), the parts never mix: the new weights are
            # block-diagonal, W1' = diag(W1, ..., W1) of shape (K_h·K_w·D_S, K_h·K_w·S), W2' = diag(W2, ..., W2),
            # b' = (b, ...). The patches come in row-major order over the new grid: patch (r, c) lies in part
            # (r // rows, c // cols) at (r % rows, c % cols), so its grouped index is perm[r · new_cols + c] below.
            # Token t reads column perm[t] of W1' and writes row perm[t] of W2' and b2'.
            r, c = torch.meshgrid(torch.arange(new_rows), torch.arange(new_cols), indexing="ij")
            perm = (((r // rows) * k_cols + c // cols) * rows * cols + (r % rows) * cols + c % cols).flatten()

        def resample(maps):  # (n, rows·cols) → (n, new_rows·new_cols), each row a map over the row-major patch grid
            resized = nn.functional.interpolate(
                maps.reshape(-1, 1, rows, cols).float(),
                size=(new_rows, new_cols),
                mode="bicubic",
                align_corners=False,
                antialias=new_rows < rows or new_cols < cols,  # shrinking averages neighbours
            )
            return resized.reshape(-1, new_rows * new_cols).to(maps.dtype)

        for layer in mixer.layers:
            fc1, fc2 = layer.token_mixing.fc1, layer.token_mixing.fc2
            if tiled:
                w1, b1 = torch.block_diag(*[fc1.weight] * parts)[:, perm], fc1.bias.repeat(parts)
                w2, b2 = torch.block_diag(*[fc2.weight] * parts)[perm], fc2.bias.repeat(parts)[perm]
            else:
                # A hidden unit sums its filter times the tokens: on a smooth image, S' / S times as many terms of
                # about the same size, so the filter is scaled by S / S'. The outputs (rows of W2, b2) are values
                # per token, which keep their size.
                w1, b1 = resample(fc1.weight) * (rows * cols) / (new_rows * new_cols), fc1.bias
                w2, b2 = resample(fc2.weight.T).T, resample(fc2.bias[None])[0]
            fc1.weight, fc1.bias, fc2.weight, fc2.bias = (nn.Parameter(p.contiguous()) for p in (w1, b1, w2, b2))
            fc1.out_features, fc1.in_features = fc1.weight.shape
            fc2.out_features, fc2.in_features = fc2.weight.shape
        tokens_mlp_dim = config.tokens_mlp_dim * parts if tiled else config.tokens_mlp_dim
        for cfg in (config, mixer.config):  # one object, unless a caller split them
            cfg.image_size, cfg.tokens_mlp_dim = new_config.image_size, tokens_mlp_dim
        return self


class MixerModel(MixerPreTrainedModel):
    """Embeddings → Mixer layers → LayerNorm; the pooled output is the mean over the (real) tokens."""

    def __init__(self, config: MixerConfig):
        super().__init__(config)
        self.main_input_name = "pixel_values" if config.modality == "image" else "input_ids"
        self.embeddings = (MixerPatchEmbeddings if config.modality == "image" else MixerTextEmbeddings)(config)
        depth = config.num_hidden_layers
        # Stochastic depth rises linearly from 0 at the first layer to drop_path_rate at the last, as in the paper.
        self.layers = nn.ModuleList(
            MixerLayer(config, config.drop_path_rate * i / max(depth - 1, 1)) for i in range(depth)
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        if self.config.modality == "image":
            return self.embeddings.projection
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module):
        if self.config.modality == "image":
            self.embeddings.projection = value
        else:
            self.embeddings.word_embeddings = value

    def _check_inputs(self, pixel_values, input_ids, attention_mask, inputs_embeds):
        """Raises a ValueError or TypeError that says what was expected and what came, before torch would fail."""
        config = self.config
        given = {
            name: value
            for name, value in [
                ("pixel_values", pixel_values),
                ("input_ids", input_ids),
                ("attention_mask", attention_mask),
                ("inputs_embeds", inputs_embeds),
            ]
            if value is not None
        }
        for name, value in given.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")
        inputs = [name for name in given if name != "attention_mask"]
        if config.modality == "image":
            if inputs != ["pixel_values"] or attention_mask is not None:
                raise ValueError(
                    f"This Mixer is an image model (modality='image'): pass pixel_values only, got {list(given)}."
                )
            expected = (config.num_channels, *config.image_height_width)
            if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
                raise ValueError(
                    f"pixel_values must have shape (batch_size, {', '.join(map(str, expected))}) for this Mixer "
                    f"(num_channels={expected[0]}, image_size={config.image_size}), got {tuple(pixel_values.shape)}. "
                    "The token-mixing MLPs are sized for a fixed number of patches: resize the images with the model's "
                    "image processor."
                )
            if not pixel_values.is_floating_point():
                raise TypeError(f"pixel_values must be floating point (normalised images), got {pixel_values.dtype}.")
            return
        if inputs not in (["input_ids"], ["inputs_embeds"]):
            raise ValueError(
                f"This Mixer is a text model (modality='text'): pass input_ids or inputs_embeds (one of them), "
                f"got {inputs}."
            )
        if input_ids is not None and (input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32)):
            raise TypeError(
                f"input_ids must be int64 or int32 token ids of shape (batch_size, sequence_length), got "
                f"{input_ids.dtype} of shape {tuple(input_ids.shape)}."
            )
        if inputs_embeds is not None and (
            inputs_embeds.dim() != 3
            or inputs_embeds.shape[-1] != config.hidden_size
            or not inputs_embeds.is_floating_point()
        ):
            raise ValueError(
                f"inputs_embeds must be floating point of shape (batch_size, sequence_length, {config.hidden_size}), "
                f"got {inputs_embeds.dtype} of shape {tuple(inputs_embeds.shape)}."
            )
        shape = tuple((input_ids if input_ids is not None else inputs_embeds).shape[:2])
        if shape[1] == 0:
            raise ValueError("The sequences are empty (0 tokens): a Mixer needs at least one token.")
        if shape[1] > config.max_position_embeddings:
            raise ValueError(
                f"The sequence has {shape[1]} tokens, more than this Mixer's max_position_embeddings "
                f"({config.max_position_embeddings}), the width of its token-mixing MLPs. Truncate the input "
                "(for example with the tokenizer's truncation=True and max_length)."
            )
        if attention_mask is not None and tuple(attention_mask.shape) != shape:
            raise ValueError(
                f"attention_mask must have shape (batch_size, sequence_length) = {shape}, got "
                f"{tuple(attention_mask.shape)}."
            )

    def _check_values(self, pixel_values, input_ids, attention_mask, inputs_embeds):
        """
        The checks that read the data, in eager mode only (a compiled graph keeps no data-dependent branches), on CPU
        tensors and in inference. They are reduced to one tensor of flags and read with one host sync; the messages
        are built only on failure.
        """
        flags = []  # (flag, what it means): one 0-d bool tensor each
        for name, value in [("pixel_values", pixel_values), ("inputs_embeds", inputs_embeds)]:
            if value is not None:
                flags.append((~torch.isfinite(value).all(), f"{name} holds NaN or infinite values."))
        if input_ids is not None:
            flags.append(
                (
                    ((input_ids < 0) | (input_ids >= self.config.vocab_size)).any(),
                    lambda: (
                        f"input_ids must lie in [0, vocab_size={self.config.vocab_size}), got values from "
                        f"{input_ids.min().item()} to {input_ids.max().item()}."
                    ),
                )
            )
        if attention_mask is not None:
            flags.append(
                (
                    ((attention_mask != 0) & (attention_mask != 1)).any(),
                    "attention_mask must hold only 0 (padding) and 1 (real tokens).",
                )
            )
            flags.append(((attention_mask[:, 0] == 0).any(), None))  # left padding: a warning, not an error
        if not flags:
            return
        raised = torch.stack([flag for flag, _ in flags]).tolist()
        errors = [
            message() if callable(message) else message for (_, message), bad in zip(flags, raised) if bad and message
        ]
        if errors:
            raise ValueError(" ".join(errors))
        if raised[-1] and attention_mask is not None:
            # The token-mixing weights are position-specific: with padding first, the real tokens sit at other
            # positions than the model was trained on. Correct, but not what the weights were fitted to.
            logger.warning_once(
                "attention_mask has padding before the first real token (left padding). A Mixer's token mixing is "
                "position-specific, so the real tokens then sit at other positions than in training: pad on the "
                "right (tokenizer padding_side='right')."
            )

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)  # hidden_states: each layer's output, before the final LayerNorm
    @auto_docstring
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPoolingAndNoAttention:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            images, for `modality="image"`. A text Mixer takes its token ids here too when they come first,
            `model(input_ids)`.
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            token ids, for `modality="text"`, best padded on the right; `sequence_length` is at most
            `max_position_embeddings`.
        attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`):
            1 for real tokens, 0 for the masked ones (padding), anywhere: they are zeroed before every token mixing
            and left out of the mean.
        inputs_embeds (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            instead of `input_ids`.
        """
        # One MixerModel serves both modalities, and its first positional parameter has one name: `pixel_values`,
        # as the paper's model. A text model called as model(input_ids), as transformers' pipelines, tests and users
        # of BERT-like models do, gets its token ids there; integer tensors are never images, so they are read as ids.
        if (
            self.config.modality == "text"
            and input_ids is None
            and inputs_embeds is None
            and isinstance(pixel_values, torch.Tensor)
            and not pixel_values.is_floating_point()
        ):
            input_ids, pixel_values = pixel_values, None
        self._check_inputs(pixel_values, input_ids, attention_mask, inputs_embeds)
        on_cpu = (
            pixel_values if pixel_values is not None else input_ids if input_ids is not None else inputs_embeds
        ).device.type == "cpu"
        if not torch.compiler.is_compiling() and (on_cpu or not torch.is_grad_enabled()):
            # Reading the data waits for the device: on an accelerator, only where no training step would stall.
            self._check_values(pixel_values, input_ids, attention_mask, inputs_embeds)
        if pixel_values is not None:
            hidden_states = self.embeddings(pixel_values)
        else:
            hidden_states = self.embeddings(input_ids, inputs_embeds)
        padding_mask = None if attention_mask is None else attention_mask[..., None].to(hidden_states.dtype)

        for layer in self.layers:
            hidden_states = layer(hidden_states, padding_mask)
        sequence_output = self.layernorm(hidden_states)

        if padding_mask is None:
            pooled_output = sequence_output.mean(dim=1)
        else:  # the mean over real tokens only
            pooled_output = (sequence_output * padding_mask).sum(1) / padding_mask.sum(1).clamp(min=1)

        return BaseModelOutputWithPoolingAndNoAttention(last_hidden_state=sequence_output, pooler_output=pooled_output)


# ---------------------------------------------------------------------------------------------------- heads


class MixerForImageClassification(MixerPreTrainedModel):
    """The paper's model: the trunk, the mean over patches, a linear classifier."""

    main_input_name = "pixel_values"

    def __init__(self, config: MixerConfig):
        super().__init__(config)
        if config.modality != "image":
            raise ValueError(f"MixerForImageClassification needs modality='image', got {config.modality!r}.")
        self.num_labels = config.num_labels
        self.mixer = MixerModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ImageClassifierOutputWithNoAttention:
        r"""
        labels (`torch.Tensor` of shape `(batch_size,)` or `(batch_size, num_labels)`):
            class indices (single-label), multi-hot floats (multi-label) or targets (regression);
            `config.problem_type` says which, and is inferred from the labels when unset.
        """
        outputs = self.mixer(pixel_values=pixel_values, **kwargs)
        logits = self.classifier(outputs.pooler_output)
        loss = self.loss_function(labels, logits, self.config, **kwargs) if labels is not None else None
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class MixerLMHead(nn.Module):
    """Dense → activation → LayerNorm → decoder to the vocabulary (tied to the token embeddings, as in BERT)."""

    def __init__(self, config: MixerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(self.act(self.dense(hidden_states))))


class MixerForMaskedLM(MixerPreTrainedModel):
    """The token-mixing MLP in place of self-attention, trained to fill in masked tokens."""

    main_input_name = "input_ids"
    _tied_weights_keys = {"lm_head.decoder.weight": "mixer.embeddings.word_embeddings.weight"}

    def __init__(self, config: MixerConfig):
        super().__init__(config)
        if config.modality != "text":
            raise ValueError(f"MixerForMaskedLM needs modality='text', got {config.modality!r}.")
        self.mixer = MixerModel(config)
        self.lm_head = MixerLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.lm_head.decoder = new_embeddings

    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MaskedLMOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            the original ids at the masked positions, -100 elsewhere (ignored by the loss). `logits` has shape
            `(batch_size, sequence_length, vocab_size)`, except in training with `config.sparse_prediction`.
        """
        outputs = self.mixer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if labels is not None and self.training and self.config.sparse_prediction:
            # Sparse decoder: only the ~15% labelled positions are scored, so only they go through the head, whose
            # vocabulary projection costs as much as the trunk at a BERT-sized vocabulary. The loss is the same as
            # the dense one (the others have weight 0 in it). Under torch.compile the number of labelled positions
            # is a data-dependent size that dynamo keeps symbolic: one graph serves every batch, whatever its masks.
            keep = labels != -100
            hidden_states, labels = hidden_states[keep], labels[keep]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class MixerTextClassifier(MixerPreTrainedModel):
    """What the text classification heads share: a text trunk, dropout and a linear classifier."""

    main_input_name = "input_ids"

    def __init__(self, config: MixerConfig):
        super().__init__(config)
        if config.modality != "text":
            raise ValueError(f"{type(self).__name__} needs modality='text', got {config.modality!r}.")
        self.num_labels = config.num_labels
        self.mixer = MixerModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()


class MixerForSequenceClassification(MixerTextClassifier):
    """Classifies a whole text from the mean over its real tokens (fine-tuning a Mixer MLM, as one does BERT)."""

    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutput:
        r"""
        labels (`torch.Tensor` of shape `(batch_size,)` or `(batch_size, num_labels)`):
            read according to `config.problem_type`, as for `MixerForImageClassification`.
        """
        outputs = self.mixer(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = self.loss_function(labels, logits, self.config, **kwargs) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class MixerForTokenClassification(MixerTextClassifier):
    """Classifies every token (tagging, named entities)."""

    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            a class per token, -100 where there is none (padding, continuation pieces of a word), which the loss
            ignores.
        """
        outputs = self.mixer(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = self.loss_function(logits, labels, self.config, **kwargs) if labels is not None else None
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


# ---------------------------------------------------------------------------------------------------- registration


# One list of the Auto classes, configuration_mixer.MIXER_AUTO_MAP (it is also every saved config's auto_map): each
# model class is registered with its Auto class here, and marked so that `save_pretrained` copies this file and
# configuration_mixer.py next to the weights.
def _register_auto_classes():
    AutoConfig.register(MixerConfig.model_type, MixerConfig, exist_ok=True)
    MixerConfig.register_for_auto_class()
    for auto_name, reference in MIXER_AUTO_MAP.items():
        if auto_name != "AutoConfig":
            model_class = globals()[reference.removeprefix("modeling_mixer.")]
            getattr(transformers, auto_name).register(MixerConfig, model_class, exist_ok=True)
            model_class.register_for_auto_class(auto_name)
    AutoImageProcessor.register(
        MixerConfig,
        exist_ok=True,
        image_processor_classes={"torchvision": ViTImageProcessor, "pil": ViTImageProcessorPil},
    )


_register_auto_classes()

__all__ = [
    "MixerForImageClassification",
    "MixerForMaskedLM",
    "MixerForSequenceClassification",
    "MixerForTokenClassification",
    "MixerModel",
    "MixerPreTrainedModel",
]
