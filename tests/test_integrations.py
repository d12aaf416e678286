"""
The Mixer under the tools that wrap, replace, hook or trace its modules: peft's LoRA, PyTorch's dynamic int8
quantization, accelerate's disk offload, torch.export, ONNX (run in ONNX Runtime), and transformers' own exporters
(the tests of transformers' `ExportTesterMixin`, which its source distribution lacks: see
tests/transformers_common.py).
"""

import copy

import numpy as np
import onnxruntime
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from torch.ao.nn.quantized import dynamic as quantized_dynamic
from torch.export import Dim
from transformers import AutoImageProcessor

from helpers import FASHION_MNIST_SAMPLE, TINY_IMAGE, TINY_TEXT, TRAINED_MIXER, image_model, text_model, with_head
from mixer_scripts.common import fashion_mnist
from modeling_mixer import MixerForImageClassification, MixerForMaskedLM, MixerModel

MAX_LENGTH = TINY_TEXT["max_position_embeddings"]


def texts(batch, length, seed=0):
    """Token ids and an attention mask, with right padding in the first row (none at one token)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY_TEXT["vocab_size"], (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2 + 1 :] = 0
    return ids, mask


def pixels(batch, seed=0):
    return torch.randn(
        batch,
        TINY_IMAGE["num_channels"],
        TINY_IMAGE["image_size"],
        TINY_IMAGE["image_size"],
        generator=torch.Generator().manual_seed(seed),
    )


# ------------------------------------------------------------------------------------------------ peft LoRA


def lora_case(modality):
    """(a fresh tiny model, its inputs with labels, its inputs without)."""
    if modality == "image":
        model = with_head(image_model())
        inputs = {"pixel_values": pixels(8)}
        labels = torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(2))
    else:
        model = text_model()
        ids, mask = texts(8, 9)
        inputs = {"input_ids": ids, "attention_mask": mask}
        labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.3, ids, -100)
        labels[:, 0] = ids[:, 0]  # at least one label a row
    return model, {**inputs, "labels": labels}, inputs


@pytest.mark.parametrize("modality", ["image", "text"])
def test_lora_trains_every_mlp_saves_reloads_and_merges(modality, tmp_path):
    model, batch, inputs = lora_case(modality)
    base_state = copy.deepcopy(model.state_dict())
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["fc1", "fc2"]))

    # One backward: every adapter gets a gradient, the token-mixing ones (fc1/fc2 called on the transpose) too.
    peft_model.train()
    peft_model(**batch).loss.backward()
    lora_b = {name: param for name, param in peft_model.named_parameters() if "lora_B" in name}
    layers = TINY_TEXT["num_hidden_layers"]
    assert len(lora_b) == 4 * layers, sorted(lora_b)  # fc1 and fc2 of both MLPs of every layer
    assert sum(".token_mixing." in name for name in lora_b) == 2 * layers
    no_gradient = [name for name, param in lora_b.items() if param.grad is None or not param.grad.abs().sum() > 0]
    assert not no_gradient, no_gradient
    assert all(not param.requires_grad for name, param in peft_model.named_parameters() if "lora_" not in name)

    # A few steps: the loss falls, the base weights stay as they were.
    frozen = {name: param.detach().clone() for name, param in peft_model.named_parameters() if not param.requires_grad}
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = peft_model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert all(param.abs().sum() > 0 for param in lora_b.values())
    for name, param in peft_model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(**inputs).logits
        with peft_model.disable_adapter():
            original = peft_model(**inputs).logits
    assert (adapted - original).abs().max() > 1e-3  # the adapter changes the outputs

    # Saved, reloaded onto a fresh base: the same outputs.
    peft_model.save_pretrained(tmp_path / "adapter")
    saved = {path.name for path in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= saved, saved
    fresh = lora_case(modality)[0]
    fresh.load_state_dict(base_state)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, adapted, rtol=1e-5, atol=1e-6)

    # Merged into the base weights: a plain Mixer again, with the adapted outputs.
    merged = reloaded.merge_and_unload()
    assert type(merged) is type(model)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    assert all(type(module) is nn.Linear for name, module in merged.named_modules() if name.endswith((".fc1", ".fc2")))
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, adapted, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ int8 quantization


def quantize(model):
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)  # a copy


@pytest.mark.parametrize("modality", ["image", "text"])
def test_dynamic_quantization_replaces_every_linear(modality):
    model = with_head(image_model()) if modality == "image" else text_model()
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    assert sum(".token_mixing." in name for name in linears) == 2 * TINY_TEXT["num_hidden_layers"]
    quantized = quantize(model)
    assert not any(isinstance(module, nn.Linear) for module in quantized.modules())
    for name in linears:
        assert isinstance(quantized.get_submodule(name), quantized_dynamic.Linear), name
    batches = (
        [{"pixel_values": pixels(4)}]
        if modality == "image"
        else [dict(zip(["input_ids", "attention_mask"], texts(4, length), strict=True)) for length in (3, MAX_LENGTH)]
    )
    with torch.no_grad():
        for inputs in batches:
            expected, ours = model(**inputs).logits, quantized(**inputs).logits
            assert ours.shape == expected.shape
            # int8 weights and activations: close to the float model, not equal to it.
            error = ((ours - expected).norm() / expected.norm()).item()
            print(f"{modality}, {tuple(ours.shape)}: relative error {error:.4f}")
            assert 0 < error < 0.1, error


def test_quantized_trained_model_keeps_its_accuracy():
    """The trained Fashion-MNIST Mixer, int8: within a point of its float accuracy on the sample's 500 test images."""
    model = MixerForImageClassification.from_pretrained(TRAINED_MIXER).eval()
    processor = AutoImageProcessor.from_pretrained(TRAINED_MIXER)
    test = fashion_mnist(FASHION_MNIST_SAMPLE)["test"]
    images = processor([image.convert("RGB") for image in test["image"]], return_tensors="pt").pixel_values
    labels = torch.tensor(test["label"])
    quantized = quantize(model)
    with torch.no_grad():
        float_accuracy = (model(images).logits.argmax(-1) == labels).float().mean().item()
        int8_accuracy = (quantized(images).logits.argmax(-1) == labels).float().mean().item()
    print(f"float32 {float_accuracy:.1%}, int8 {int8_accuracy:.1%} on {len(labels)} test images")
    assert float_accuracy > 0.85, float_accuracy
    assert abs(int8_accuracy - float_accuracy) <= 0.01, (float_accuracy, int8_accuracy)


# ------------------------------------------------------------------------------------------------ disk offload


def test_disk_offload_with_accelerate(tmp_path):
    model = text_model(num_hidden_layers=4)
    model.save_pretrained(tmp_path / "model")
    size = sum(param.numel() * param.element_size() for param in model.parameters())  # the tied weight once
    # 60% of the weights in memory: the embeddings, the head and a layer; the other layers stay on disk.
    offloaded = MixerForMaskedLM.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory={"cpu": int(0.6 * size)}, offload_folder=tmp_path / "disk"
    )
    placements = offloaded.hf_device_map
    assert "disk" in placements.values() and "cpu" in placements.values(), placements
    on_disk = [name for name, where in placements.items() if where == "disk" and name.startswith("mixer.layers")]
    assert on_disk, placements
    for name in on_disk:  # no weights in memory: accelerate's hooks load them for each forward
        assert all(param.device.type == "meta" for param in offloaded.get_submodule(name).parameters()), name
    with torch.no_grad():
        for length in (5, MAX_LENGTH):
            ids, mask = texts(3, length)
            torch.testing.assert_close(
                offloaded(ids, attention_mask=mask).logits,
                model(ids, attention_mask=mask).logits,
                rtol=1e-5,
                atol=1e-6,
            )


# ------------------------------------------------------------------------------------------------ torch.export


@pytest.mark.parametrize("model_class", [MixerForMaskedLM, MixerModel])
def test_torch_export_text_with_dynamic_batch_and_length(model_class):
    model = text_model() if model_class is MixerForMaskedLM else MixerModel(text_model().config).eval()
    batch, length = Dim("batch"), Dim("seq", max=MAX_LENGTH)
    ids, mask = texts(2, 5)
    program = torch.export.export(
        model,
        (),
        {"input_ids": ids, "attention_mask": mask},
        dynamic_shapes={"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}},
    )
    exported = program.module()
    for size, length in [(1, 1), (3, MAX_LENGTH), (4, 7)]:  # one token, the maximum, the example's size
        ids, mask = texts(size, length, seed=size)
        with torch.no_grad():
            ours, expected = exported(input_ids=ids, attention_mask=mask), model(ids, attention_mask=mask)
        for key in ["logits"] if model_class is MixerForMaskedLM else ["last_hidden_state", "pooler_output"]:
            assert ours[key].shape == expected[key].shape
            torch.testing.assert_close(ours[key], expected[key], rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match=f"<= {MAX_LENGTH}"):  # the range that the exported program checks
        exported(
            input_ids=torch.ones(1, MAX_LENGTH + 1, dtype=torch.long),
            attention_mask=torch.ones(1, MAX_LENGTH + 1, dtype=torch.long),
        )


def test_torch_export_image_with_dynamic_batch():
    model = with_head(image_model())
    program = torch.export.export(model, (pixels(2),), dynamic_shapes=({0: Dim("batch")},))
    for size in (1, 5):
        with torch.no_grad():
            torch.testing.assert_close(
                program.module()(pixels(size, seed=size)).logits,
                model(pixels(size, seed=size)).logits,
                rtol=1e-5,
                atol=1e-6,
            )


# ------------------------------------------------------------------------------------------------ ONNX


def onnx_session(model, path, kwargs, dynamic_shapes, output_names):
    torch.onnx.export(
        model,
        (),
        path,
        kwargs=kwargs,
        dynamo=True,
        dynamic_shapes=dynamic_shapes,
        input_names=list(kwargs),
        output_names=output_names,
        verbose=False,
    )
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnx_image_classifier(tmp_path):
    model = with_head(image_model())
    session = onnx_session(
        model, tmp_path / "image.onnx", {"pixel_values": pixels(2)}, {"pixel_values": {0: Dim("batch")}}, ["logits"]
    )
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("pixel_values", ["batch", 3, 32, 32])]
    for size in (1, 4):
        (logits,) = session.run(["logits"], {"pixel_values": pixels(size, seed=size).numpy()})
        with torch.no_grad():
            expected = model(pixels(size, seed=size)).logits.numpy()
        assert logits.shape == expected.shape and np.abs(logits - expected).max() <= 1e-4


@pytest.mark.filterwarnings("ignore:# The axis name")  # input_ids and attention_mask share their dims' names
def test_onnx_masked_lm(tmp_path):
    model = text_model()
    batch, length = Dim("batch"), Dim("seq", max=MAX_LENGTH)
    ids, mask = texts(2, 5)
    session = onnx_session(
        model,
        tmp_path / "mlm.onnx",
        {"input_ids": ids, "attention_mask": mask},
        {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}},
        ["logits"],
    )
    assert [i.shape for i in session.get_inputs()] == [["batch", "seq"]] * 2
    for size in (1, 4):
        for length in (3, MAX_LENGTH):
            ids, mask = texts(size, length, seed=size)
            (logits,) = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
            with torch.no_grad():
                expected = model(ids, attention_mask=mask).logits.numpy()
            assert logits.shape == (size, length, TINY_TEXT["vocab_size"])
            assert np.abs(logits - expected).max() <= 1e-4, (size, length)
