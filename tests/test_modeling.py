import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedLM,
    Trainer,
    TrainingArguments,
)
from transformers.utils import logging

from configuration_mixer import MIXER_VARIANTS, MixerConfig
from helpers import TINY_IMAGE, TINY_TEXT, image_model, pad, run_without_package, text_model
from modeling_mixer import MixerForImageClassification, MixerForMaskedLM, MixerModel, MixerTokenMixingMLP

# ------------------------------------------------------------------------------------------------ shapes and init


@pytest.mark.parametrize("variant", MIXER_VARIANTS)
def test_every_variant_runs_with_its_shapes(variant):
    config = MixerConfig.from_variant(variant, num_hidden_layers=1, num_labels=3)
    model = MixerForImageClassification(config).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224), output_hidden_states=True)
    assert out.logits.shape == (1, 3)
    assert [h.shape for h in out.hidden_states] == [(1, config.num_tokens, config.hidden_size)] * 2
    fc1 = model.mixer.layers[0].token_mixing.fc1
    assert fc1.weight.shape == (config.tokens_mlp_dim, (224 // config.patch_size) ** 2)


def test_init_follows_timm():
    torch.manual_seed(0)
    model = MixerForImageClassification(MixerConfig.from_variant("S/32", num_hidden_layers=2, num_labels=10))
    assert not model.classifier.weight.any() and not model.classifier.bias.any()
    stem = model.mixer.embeddings.projection.weight
    fan_in = 3 * 32 * 32  # LeCun normal truncated at two std: std 1/sqrt(fan_in), nothing beyond 2.28 of it
    assert stem.std().item() == pytest.approx(fan_in**-0.5, rel=0.03)
    assert stem.abs().max().item() <= 2 / 0.87962566103423978 * fan_in**-0.5
    for mlp in (model.mixer.layers[1].token_mixing, model.mixer.layers[1].channel_mixing):
        for linear in (mlp.fc1, mlp.fc2):
            bound = math.sqrt(6 / sum(linear.weight.shape))  # xavier uniform
            assert linear.weight.abs().max().item() <= bound * (1 + 1e-6)  # float32 rounding of the bound
            assert linear.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
            assert 0 < linear.bias.std().item() < 2e-6
    norm = model.mixer.layers[0].token_norm
    assert norm.weight.eq(1).all() and not norm.bias.any() and norm.eps == 1e-6


def test_drop_path_rises_linearly_over_depth():
    config = MixerConfig(**{**TINY_IMAGE, "num_hidden_layers": 5, "drop_path_rate": 0.2})
    rates = [layer.drop_path.drop_prob for layer in MixerModel(config).layers]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


def test_token_mixing_equals_the_papers_transposed_mlp():
    model = image_model()
    layer = model.mixer.layers[0]
    x = torch.randn(2, 16, 32)
    mlp = layer.token_mixing
    transposed = mlp.fc2(F.gelu(mlp.fc1(x.transpose(1, 2)))).transpose(1, 2)  # MLP(X^T)^T
    torch.testing.assert_close(mlp(x), transposed, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ outputs


def test_hidden_states_and_tuple_outputs():
    model = image_model()
    pixels = torch.randn(2, 3, 32, 32)
    out = model(pixels, output_hidden_states=True)
    assert len(out.hidden_states) == 3  # embeddings + one per layer, before the final LayerNorm
    base = model.mixer(pixel_values=pixels)
    torch.testing.assert_close(base.pooler_output, base.last_hidden_state.mean(1))
    torch.testing.assert_close(model.mixer.layernorm(out.hidden_states[-1]).mean(1), base.pooler_output)
    logits, hidden_states = model(pixels, output_hidden_states=True, return_dict=False)
    torch.testing.assert_close(logits, out.logits)
    assert len(hidden_states) == 3
    assert len(model(pixels, return_dict=False)) == 1


@pytest.mark.parametrize(
    "num_labels, labels, problem_type, reference",
    [
        (3, torch.tensor([0, 2]), "single_label_classification", lambda logits, y: F.cross_entropy(logits, y)),
        (
            3,
            torch.tensor([[1.0, 0, 1], [0, 1, 0]]),
            "multi_label_classification",
            lambda logits, y: F.binary_cross_entropy_with_logits(logits, y),
        ),
        (1, torch.tensor([0.5, -1.0]), "regression", lambda logits, y: F.mse_loss(logits.squeeze(), y)),
    ],
)
def test_problem_types(num_labels, labels, problem_type, reference):
    model = image_model(num_labels=num_labels)
    torch.nn.init.normal_(model.classifier.weight)  # a zero head would give trivial losses
    out = model(torch.randn(2, 3, 32, 32), labels=labels)
    assert model.config.problem_type == problem_type
    torch.testing.assert_close(out.loss, reference(out.logits, labels))


def test_masked_lm_loss_ignores_minus_100():
    model = text_model()
    ids = torch.randint(1, 50, (2, 12))
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 7] = 5, 9
    out = model(ids, labels=labels)
    reference = F.cross_entropy(model(ids).logits[[0, 1], [3, 7]], torch.tensor([5, 9]))
    torch.testing.assert_close(out.loss, reference)
    torch.testing.assert_close(out.logits, model(ids).logits)  # MaskedLMOutput's (batch, length, vocab)


def test_inputs_embeds_equal_input_ids():
    model = text_model()
    ids = torch.randint(1, 50, (2, 9))
    embeds = model.get_input_embeddings()(ids)
    torch.testing.assert_close(model(inputs_embeds=embeds).logits, model(ids).logits)


def test_decoder_is_tied_to_the_embeddings():
    model = text_model()
    assert model.lm_head.decoder.weight is model.mixer.embeddings.word_embeddings.weight
    untied = text_model(tie_word_embeddings=False)
    assert untied.lm_head.decoder.weight is not untied.mixer.embeddings.word_embeddings.weight


# ------------------------------------------------------------------------------------------------ padding


def test_real_tokens_ignore_the_amount_of_padding_and_the_pad_ids():
    model = text_model()
    torch.manual_seed(1)
    sequences = [torch.randint(1, 50, (n,)).tolist() for n in (4, 9, 6)]
    results = []
    for length, pad_id in [(9, 0), (12, 0), (12, 17), (10, 3)]:  # pad to longest, to the maximum, other pad ids
        ids, mask = pad(sequences, length, pad_id)
        out = model(ids, attention_mask=mask, output_hidden_states=True)
        pooled = model.mixer(input_ids=ids, attention_mask=mask).pooler_output
        results.append((out, pooled))
    (ref, ref_pooled) = results[0]
    for out, pooled in results[1:]:
        torch.testing.assert_close(pooled, ref_pooled, rtol=1e-5, atol=1e-6)
        for row, seq in enumerate(sequences):
            n = len(seq)
            torch.testing.assert_close(out.logits[row, :n], ref.logits[row, :n], rtol=1e-5, atol=1e-6)
            for h, h_ref in zip(out.hidden_states, ref.hidden_states):
                torch.testing.assert_close(h[row, :n], h_ref[row, :n], rtol=1e-6, atol=1e-6)
    # A sequence alone, unpadded, computes the same as in the padded batch.
    alone = model(torch.tensor([sequences[0]])).logits
    torch.testing.assert_close(alone[0], ref.logits[0, :4], rtol=1e-5, atol=1e-6)


def test_pooled_output_is_the_mean_over_real_tokens():
    model = text_model()
    ids, mask = pad([[5, 6, 7], [8, 9, 10, 11, 12]], 12, 0)
    out = model.mixer(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(out.pooler_output[0], out.last_hidden_state[0, :3].mean(0))


def test_masked_positions_anywhere_add_nothing_and_left_padding_warns_once(caplog):
    model = text_model()
    torch.manual_seed(2)
    ids = torch.randint(1, 50, (2, 10))
    mask = torch.tensor([[1, 1, 0, 1, 1, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]])  # holes; left padding
    other_ids = torch.where(mask.bool(), ids, torch.randint(1, 50, ids.shape))  # other tokens where masked
    logging.warning_once.cache_clear()  # transformers warns once per process
    with caplog.at_level("WARNING", logger="modeling_mixer"):
        out, other = (
            model.mixer(input_ids=i, attention_mask=mask, output_hidden_states=True) for i in (ids, other_ids)
        )
    real = mask.bool()
    for h, h_other in zip(
        out.hidden_states[1:] + (out.last_hidden_state,), other.hidden_states[1:] + (other.last_hidden_state,)
    ):
        torch.testing.assert_close(h[real], h_other[real], rtol=0, atol=0)
    torch.testing.assert_close(out.pooler_output, other.pooler_output, rtol=0, atol=0)
    # Left padding moves the real tokens to other positions: the same tokens, padded on the right, differ.
    right = model.mixer(input_ids=ids[1:, 2:], attention_mask=torch.ones(1, 8, dtype=torch.long)).last_hidden_state
    assert not torch.allclose(right[0], out.last_hidden_state[1, 2:], atol=1e-3)
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "left padding" in caplog.records[0].message and "padding_side='right'" in caplog.records[0].message


# ------------------------------------------------------------------------------------------------ errors


def test_wrong_inputs_raise_clear_errors():
    images, texts = image_model(), text_model()
    with pytest.raises(
        ValueError, match=r"pixel_values must have shape \(batch_size, 3, 32, 32\).*got \(1, 3, 64, 64\)"
    ):
        images(torch.randn(1, 3, 64, 64))
    with pytest.raises(
        ValueError, match=r"pixel_values must have shape \(batch_size, 3, 32, 32\).*got \(1, 1, 32, 32\)"
    ):
        images(torch.randn(1, 1, 32, 32))
    with pytest.raises(
        ValueError, match=r"image model \(modality='image'\): pass pixel_values only, got \['input_ids'\]"
    ):
        images.mixer(input_ids=torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"text model \(modality='text'\).*got \['pixel_values'\]"):
        texts.mixer(pixel_values=torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"got \['input_ids', 'inputs_embeds'\]"):
        texts(torch.ones(1, 4, dtype=torch.long), inputs_embeds=torch.randn(1, 4, 32))
    with pytest.raises(ValueError, match=r"13 tokens, more than this Mixer's max_position_embeddings \(12\)"):
        texts(torch.ones(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attention_mask must have shape .* = \(2, 5\), got \(2, 6\)"):
        texts(torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 6))
    with pytest.raises(
        ValueError,
        match=r"inputs_embeds must be .* \(batch_size, sequence_length, 32\), got torch.float32 of shape \(1, 4, 31\)",
    ):
        texts(inputs_embeds=torch.randn(1, 4, 31))
    with pytest.raises(
        TypeError, match=r"input_ids must be int64 or int32 token ids .* got torch.float32 of shape \(1, 4\)"
    ):
        texts(torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=50\), got values from 0 to 50"):
        texts(torch.tensor([[0, 50]]))
    with pytest.raises(ValueError, match="attention_mask must hold only 0 \\(padding\\) and 1"):
        texts(torch.ones(1, 4, dtype=torch.long), attention_mask=torch.tensor([[1, 1, 0.5, 0]]))
    with pytest.raises(ValueError, match="pixel_values holds NaN or infinite values"):
        images(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(TypeError, match="pixel_values must be floating point .* got torch.uint8"):
        images(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="pixel_values must be a torch.Tensor, got ndarray"):
        images(torch.zeros(1, 3, 32, 32).numpy())
    with pytest.raises(
        ValueError,
        match=r"image model \(modality='image'\): pass pixel_values only, got \['pixel_values', 'attention_mask'\]",
    ):
        images.mixer(pixel_values=torch.zeros(1, 3, 32, 32), attention_mask=torch.ones(1, 16))
    with pytest.raises(ValueError, match="MixerForMaskedLM needs modality='text', got 'image'"):
        MixerForMaskedLM(MixerConfig(**TINY_IMAGE))
    with pytest.raises(ValueError, match="MixerForImageClassification needs modality='image', got 'text'"):
        MixerForImageClassification(MixerConfig(**TINY_TEXT))


# ------------------------------------------------------------------------------------------------ save and load


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_round_trip(tmp_path, dtype):
    model = text_model().to(dtype)
    ids = torch.randint(1, 50, (2, 12))
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["config.json", "configuration_mixer.py", "model.safetensors", "modeling_mixer.py"]
    weights = load_file(tmp_path / "model.safetensors")
    assert all(t.dtype == dtype for t in weights.values())
    assert "lm_head.decoder.weight" not in weights  # tied: stored once
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path, dtype=dtype).eval()
    assert type(loaded) is MixerForMaskedLM and loaded.dtype == dtype
    assert loaded.lm_head.decoder.weight is loaded.mixer.embeddings.word_embeddings.weight
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_image_model_round_trip_through_auto_classes(tmp_path):
    model = image_model()
    torch.nn.init.normal_(model.classifier.weight)
    pixels = torch.randn(2, 3, 32, 32)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded(pixels).logits, model(pixels).logits)
    trunk = AutoModel.from_pretrained(tmp_path).eval()
    assert type(trunk) is MixerModel
    assert torch.equal(trunk(pixels).pooler_output, model.mixer(pixels).pooler_output)


@pytest.mark.parametrize(
    "auto_class, build, inputs",
    [
        ("AutoModel", lambda: image_model().mixer, "pixel_values=torch.randn(2, 3, 32, 32)"),
        ("AutoModelForImageClassification", image_model, "pixel_values=torch.randn(2, 3, 32, 32)"),
        ("AutoModelForMaskedLM", text_model, "input_ids=torch.randint(1, 50, (2, 12))"),
    ],
)
def test_remote_code_loads_in_a_fresh_process(tmp_path, auto_class, build, inputs):
    model = build()
    for parameter in model.parameters():  # no zero head: every output must depend on the weights
        torch.nn.init.normal_(parameter, std=0.1)
    model.save_pretrained(tmp_path)
    code = f"""
        import torch, transformers
        model = transformers.{auto_class}.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert model.__class__.__module__.startswith("transformers_modules."), model.__class__.__module__
        torch.manual_seed(0)
        with torch.no_grad():
            print(model({inputs})[0].double().sum().item())
    """
    remote = float(run_without_package(code).strip().splitlines()[-1])
    torch.manual_seed(0)
    inputs_here = eval(inputs.split("=", 1)[1])
    with torch.no_grad():
        local = model(inputs_here)[0].double().sum().item()
    assert remote == local


# ------------------------------------------------------------------------------------------------ training


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = text_model(hidden_dropout_prob=0.0).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.mixer.layers)
        ids, mask = pad([[3, 4, 5, 6], [7, 8, 9, 10, 11, 12, 13]], 7, 0)
        model(ids, attention_mask=mask, labels=ids).loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_trainer_reduces_the_loss(tmp_path):
    torch.manual_seed(0)
    prototypes = torch.randn(4, 3, 32, 32)  # four classes: a fixed image each, seen through noise
    labels = torch.randint(0, 4, (256,))
    pixels = prototypes[labels] + 0.5 * torch.randn(256, 3, 32, 32)
    dataset = [{"pixel_values": x, "labels": y} for x, y in zip(pixels, labels)]
    model = image_model(num_labels=4).train()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=40,
        per_device_train_batch_size=32,
        learning_rate=3e-3,
        logging_steps=10,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[0] > 1.0 and losses[-1] < 0.3 * losses[0], losses


def test_compiles_without_graph_breaks_and_trains_in_bf16_autocast():
    model = text_model().train()
    ids, mask = pad([[3, 4, 5, 6], [7, 8, 9, 10, 11, 12, 13]], 12, 0)
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: a graph break raises
    out = compiled(ids, attention_mask=mask, labels=ids)
    out.loss.backward()
    torch.testing.assert_close(out.logits, model(ids, attention_mask=mask).logits, rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compiled(ids, attention_mask=mask, labels=ids)  # reads the autocast state without a graph break
        assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
        out = image_model()(torch.randn(2, 3, 32, 32), labels=torch.tensor([1, 2]))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)


def test_token_mixing_under_autocast_casts_its_weights_once_not_once_per_sample():
    """Autocast casts each Linear's weights once and the (padded, transposed) activations: no copy per sample."""
    from torch.utils._python_dispatch import TorchDispatchMode

    casts = []

    class RecordCasts(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default:
                casts.append(tuple(args[0].shape))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    mlp = MixerTokenMixingMLP(MixerConfig(hidden_size=32), in_features=16, hidden_features=8)
    hidden_states = torch.randn(4, 16, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16), RecordCasts():
        out = mlp(hidden_states)
    # the four parameters and the activations (channels first), nothing of shape (4, ...) beside them
    assert sorted(casts) == [(4, 32, 16), (8,), (8, 16), (16,), (16, 8)]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), mlp(hidden_states), rtol=0.05, atol=0.05)


def test_trains_in_fp16_autocast_with_loss_scaling():
    """fp16 mixed precision as on CUDA (autocast + GradScaler), here on the CPU: finite losses that go down."""
    torch.manual_seed(0)
    model = text_model().train()
    ids, mask = pad([[3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16]], 12, 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    losses = []
    for _ in range(30):
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(ids, attention_mask=mask, labels=ids)
        assert out.logits.dtype == torch.float16
        scaler.scale(out.loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        losses.append(out.loss.item())
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < 0.5 * losses[0], losses
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_training_off_the_cpu_never_reads_the_data_back():
    """
    On an accelerator, reading the data checks' flags would wait for the device once per step. Meta tensors stand in
    for a device here: any read of their values raises, so a training forward must not read them, while inference
    still runs the checks.
    """
    model = text_model().to("meta").train()
    ids = torch.zeros(2, 12, dtype=torch.long, device="meta")
    out = model(ids, attention_mask=torch.ones_like(ids), labels=ids)
    assert out.loss.device.type == "meta"
    with torch.no_grad(), pytest.raises((NotImplementedError, RuntimeError), match="meta"):
        model(ids)
