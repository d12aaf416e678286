import pytest
import torch
from huggingface_hub.errors import StrictDataclassError

from configuration_mixer import MIXER_VARIANTS, MixerConfig
from modeling_mixer import MixerForImageClassification

# Parameter counts with a 1000-class head at 224×224 (timm's models; the paper gives ~431M for H/14 without head).
PARAMS_WITH_HEAD = {"S/32": 19.10, "S/16": 18.53, "B/32": 60.29, "B/16": 59.88, "L/32": 206.94, "L/16": 208.20}


@pytest.mark.parametrize("variant", MIXER_VARIANTS)
def test_variant_parameter_counts(variant):
    config = MixerConfig.from_variant(variant, num_labels=1000)
    with torch.device("meta"):  # shapes only: no memory, no time
        model = MixerForImageClassification(config)
    params = sum(p.numel() for p in model.parameters())
    if variant == "H/14":
        assert config.num_tokens == 256
        assert round((params - model.classifier.weight.numel() - 1000) / 1e6) == 431
    else:
        assert round(params / 1e6, 2) == PARAMS_WITH_HEAD[variant]


def test_from_variant_overrides_and_unknown_variant():
    config = MixerConfig.from_variant("B/16", image_size=448, num_labels=10)
    assert (config.hidden_size, config.patch_size, config.image_size, config.num_tokens) == (768, 16, 448, 784)
    assert config.num_labels == 10
    with pytest.raises(ValueError, match="Unknown Mixer variant 'B/8'.*S/32"):
        MixerConfig.from_variant("B/8")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(image_size=225), "image_size"),
        (dict(image_size=[224, 230]), "image_size"),
        (dict(image_size=[224]), "image_size"),
        (dict(image_size=[0, 224]), "image_size"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(tokens_mlp_dim=-4), "tokens_mlp_dim"),
        (dict(num_hidden_layers=2.5), "num_hidden_layers"),
        (dict(patch_size=True), "patch_size"),
        (dict(modality="audio"), "modality"),
        (dict(hidden_act="swishy"), "hidden_act"),
        (dict(hidden_dropout_prob=1.0), "hidden_dropout_prob"),
        (dict(drop_path_rate=-0.1), "drop_path_rate"),
        (dict(layer_norm_eps=0), "layer_norm_eps"),
        (dict(modality="text", max_position_embeddings=0), "max_position_embeddings"),
        (dict(modality="text", vocab_size=100, pad_token_id=100), "pad_token_id"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    # transformers' @strict configs: a wrong type is named by the dataclass check, a wrong value by our validators.
    with pytest.raises(StrictDataclassError, match=rf"MixerConfig\.{field}|field '{field}'"):
        MixerConfig(**kwargs)
    config = MixerConfig()
    with pytest.raises(StrictDataclassError, match="(?s)field 'hidden_size'.*expected int, got str"):
        config.hidden_size = "768"  # also on assignment


def test_non_square_images(tmp_path):
    config = MixerConfig(image_size=[224, 448], patch_size=16)
    assert (config.image_height_width, config.patch_grid, config.num_tokens) == ((224, 448), (14, 28), 392)
    assert MixerConfig(image_size=224).image_height_width == (224, 224)
    config.save_pretrained(tmp_path)
    assert MixerConfig.from_pretrained(tmp_path).image_size == [224, 448]  # JSON has lists


def test_text_config_ignores_image_fields_and_vice_versa():
    assert MixerConfig(modality="text", max_position_embeddings=128, image_size=225).num_tokens == 128
    assert MixerConfig(vocab_size=0).num_tokens == 196


def test_config_round_trip(tmp_path):
    config = MixerConfig.from_variant("S/32", hidden_act="gelu_pytorch_tanh", drop_path_rate=0.1, num_labels=3)
    config.save_pretrained(tmp_path)
    loaded = MixerConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.auto_map["AutoModelForMaskedLM"] == "modeling_mixer.MixerForMaskedLM"
