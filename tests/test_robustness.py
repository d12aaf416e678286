"""Safe loading, hostile configs and inputs (property-based), NaN handling, bf16 numerics."""

import json
import re
import traceback
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoModelForMaskedLM, BertConfig, BertForMaskedLM, Trainer, TrainingArguments

from configuration_mixer import MixerConfig
from helpers import TINY_IMAGE, TINY_TEXT, image_model, text_model
from mixer_scripts.common import StopOnDivergence
from modeling_mixer import MixerForImageClassification, MixerForMaskedLM, MixerModel

PROJECT_FILES = {"configuration_mixer.py", "modeling_mixer.py"}


def raised_here(error: BaseException) -> bool:
    """Whether `error` was raised by this project's code, not from deep inside torch or transformers."""
    return Path(traceback.extract_tb(error.__traceback__)[-1].filename).name in PROJECT_FILES


# ------------------------------------------------------------------------------------------------ safe loading


@pytest.fixture
def saved(tmp_path):
    model = text_model()
    model.save_pretrained(tmp_path)
    return model, tmp_path


class RunsCode:
    """A pickle that runs code when it is loaded, as a hostile .bin checkpoint would."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('unpickled')",))


def test_pickle_checkpoint_loads_tensors_only(saved):
    model, folder = saved
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    loaded = MixerForMaskedLM.from_pretrained(folder)  # transformers unpickles with torch.load(weights_only=True)
    ids = torch.randint(1, 50, (1, 12))
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    torch.save({**weights, "payload": RunsCode()}, folder / "pytorch_model.bin")
    with pytest.raises(Exception, match=r"Weights only load failed"):
        MixerForMaskedLM.from_pretrained(folder)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_weights_file_is_refused(saved, damage):
    _, folder = saved
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a safetensors file")
    with pytest.raises(SafetensorError, match=r"Error while deserializing header"):
        AutoModelForMaskedLM.from_pretrained(folder)


def test_config_of_another_model_type_is_refused(tmp_path):
    BertForMaskedLM(
        BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"holds a config of model type 'bert', not 'mlp-mixer'"):
        MixerForMaskedLM.from_pretrained(tmp_path)


def test_weights_of_other_shapes_stop_loading_and_missing_weights_are_reported(saved):
    model, folder = saved
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "channels_mlp_dim": 48}))
    with pytest.raises(RuntimeError, match=r"ignore_mismatched_sizes"):
        MixerForMaskedLM.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(config))
    weights = load_file(folder / "model.safetensors")
    del weights["mixer.layers.1.token_mixing.fc2.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    loaded, info = MixerForMaskedLM.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == {"mixer.layers.1.token_mixing.fc2.weight"}
    assert torch.equal(loaded.mixer.layers[0].token_mixing.fc2.weight, model.mixer.layers[0].token_mixing.fc2.weight)
    assert MixerModel.from_pretrained(folder, output_loading_info=True)[1]["missing_keys"] == {
        "layers.1.token_mixing.fc2.weight"
    }


def test_a_diverged_model_can_be_saved_and_its_training_stops(tmp_path):
    model = image_model()
    with torch.no_grad():
        model.mixer.layers[1].channel_mixing.fc1.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "out")  # kept as it is, to be inspected
    assert load_file(tmp_path / "out" / "model.safetensors")["mixer.layers.1.channel_mixing.fc1.weight"][0, 0].isnan()

    images = Dataset.from_dict({"pixel_values": torch.randn(8, 3, 32, 32).tolist(), "labels": [0, 1] * 4})
    args = TrainingArguments(
        tmp_path / "run",
        max_steps=3,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        per_device_train_batch_size=4,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=images.with_format("torch"), callbacks=[StopOnDivergence()]
    )
    # One SGD step spreads the NaN into every weight that it reaches.
    with pytest.raises(
        ValueError,
        match=r"diverged by step 1: NaN or inf in mixer\.embeddings\.projection\.weight, "
        r".* and 22 more\. .*lower --learning_rate",
    ):
        trainer.train()


# ------------------------------------------------------------------------------------------------ hostile configs

SIZES = {  # always given, small: every valid config is cheap to run
    "hidden_size": st.integers(1, 8),
    "num_hidden_layers": st.integers(1, 3),
    "tokens_mlp_dim": st.integers(1, 8),
    "channels_mlp_dim": st.integers(1, 8),
    "image_size": st.sampled_from([4, 8, 12, 16, [8, 4], [4, 12]]),
    "patch_size": st.sampled_from([1, 2, 4, 8]),
    "vocab_size": st.integers(1, 9),
    "max_position_embeddings": st.integers(1, 6),
}
OTHERS = {
    "num_channels": st.integers(1, 3),
    "pad_token_id": st.one_of(st.none(), st.integers(0, 9)),
    "hidden_act": st.sampled_from(["gelu", "gelu_pytorch_tanh", "relu", "nope"]),
    "modality": st.sampled_from(["image", "text", "audio"]),
    "layer_norm_eps": st.floats(0, 1e-3),
    "hidden_dropout_prob": st.floats(0, 1.5),
    "drop_path_rate": st.floats(0, 1.5),
}
# Now and then an odd value: zero or negative, a string, a bool, NaN, a list.
ODD_VALUES = st.one_of(
    st.integers(-2, 0),
    st.text(max_size=3),
    st.booleans(),
    st.floats(allow_nan=True),
    st.lists(st.integers(), max_size=2),
)


def mostly(values):
    return st.integers(0, 11).flatmap(lambda draw: ODD_VALUES if draw == 0 else values)  # odd one time in 12


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {name: mostly(values) for name, values in SIZES.items()},
        optional={name: mostly(values) for name, values in OTHERS.items()},
    )
)
def test_every_config_is_refused_clearly_or_runs(kwargs):
    try:
        config = MixerConfig(**kwargs)
    except StrictDataclassError as error:  # the dataclass's type check, or our validators (the cause)
        assert re.search(r"MixerConfig\.\w+ (\([^)]*\) )?must|Validation error for field '\w+'", str(error)), error
        if isinstance(error, StrictDataclassClassValidationError):  # a value: refused by our own check
            assert raised_here(error.__cause__), error
        event("refused")
        return
    event(f"valid {config.modality}")
    model = (MixerForImageClassification if config.modality == "image" else MixerForMaskedLM)(config).train()
    if config.modality == "image":
        out = model(torch.randn(2, config.num_channels, *config.image_height_width), labels=torch.tensor([0, 1]))
    else:
        ids = torch.randint(0, config.vocab_size, (2, config.max_position_embeddings))
        out = model(ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)


# ------------------------------------------------------------------------------------------------ hostile inputs

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.bool]
IMAGE = MixerModel(MixerConfig(**TINY_IMAGE)).eval()
TEXT = MixerModel(MixerConfig(**TINY_TEXT)).eval()


@st.composite
def model_inputs(draw):
    """Inputs for IMAGE or TEXT: mostly of the right kind, shape and dtype, often a step away from it."""

    def mostly(right, anything):  # the right choice three times in four
        return draw(st.sampled_from(right)) if draw(st.integers(0, 3)) else draw(st.sampled_from(anything))

    modality = draw(st.sampled_from(["image", "text"]))
    arguments = ["pixel_values", "input_ids", "inputs_embeds"]
    argument = mostly(["pixel_values"] if modality == "image" else ["input_ids", "inputs_embeds"], arguments)
    batch, length = draw(st.integers(0, 3)), draw(st.integers(0, 14))
    shape = {"pixel_values": [batch, 3, 32, 32], "input_ids": [batch, length], "inputs_embeds": [batch, length, 32]}[
        argument
    ]
    change = mostly(["none"], ["drop a dim", "add a dim", "change a dim"])
    if change == "drop a dim":
        del shape[draw(st.integers(0, len(shape) - 1))]
    elif change == "add a dim":
        shape.insert(draw(st.integers(0, len(shape))), draw(st.integers(0, 3)))
    elif change == "change a dim":
        dim = draw(st.integers(0, len(shape) - 1))
        shape[dim] = max(shape[dim] + draw(st.sampled_from([-1, 1])), 0)
    dtypes = [torch.float32, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8, torch.bool]
    dtype = mostly([torch.int64, torch.int32] if argument == "input_ids" else [torch.float32, torch.bfloat16], dtypes)
    fill = mostly([0.0, 1.0, 7.0, -3.0], [50.0, -1.0, float("nan"), float("inf")])
    kwargs = {argument: torch.full(shape, fill).to(dtype)}
    if draw(st.booleans()):  # a right-padded mask, maybe of the wrong length, maybe with odd values
        real = draw(st.integers(0, length))
        mask = [mostly([1], [1, 2])] * real + [0] * (length - real + mostly([0], [1, -1]))
        kwargs["attention_mask"] = torch.tensor(mask, dtype=torch.long).expand(batch, -1)
    return modality, kwargs


@settings(max_examples=200, deadline=None)
@given(model_inputs())
def test_every_input_is_refused_clearly_or_runs(inputs):
    modality, kwargs = inputs
    try:
        out = (IMAGE if modality == "image" else TEXT)(**kwargs)
    except (ValueError, TypeError) as error:
        assert raised_here(error), "".join(traceback.format_exception(error))
        event("refused")
        return
    event(f"ran: {modality}")
    assert torch.isfinite(out.last_hidden_state).all() and torch.isfinite(out.pooler_output).all()


# ------------------------------------------------------------------------------------------------ mixed precision


def test_bf16_loading_keeps_layer_norm_sound(tmp_path):
    model = image_model()
    torch.nn.init.normal_(model.classifier.weight, std=0.5)
    model.save_pretrained(tmp_path)
    bf16 = MixerForImageClassification.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert bf16.mixer.layernorm.weight.dtype == torch.bfloat16
    pixels = torch.randn(8, 3, 32, 32)
    reference = model(pixels).logits
    logits = bf16(pixels).logits.float()
    # bf16 keeps 8 bits of mantissa: 2^-8 relative per rounding; a few layers stay within 5% of the logits' scale.
    assert (logits - reference).abs().max() <= 0.05 * reference.abs().max()
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.75
