"""
Export of a saved Mixer to ONNX and its onnxruntime side: loading by the config's architecture, the dynamic-axes
export, int8 quantization, sessions, a run that checks the sequence length first, and the comparison with PyTorch.
Used by scripts/conversion/export_onnx.py (which documents the graph's inputs and outputs) and
scripts/benchmarks/benchmark_onnx.py.
"""

import logging
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

import modeling_mixer  # noqa: F401  (registers the Mixer with the Auto classes)

AUTO_CLASSES = {
    "MixerModel": AutoModel,
    "MixerForImageClassification": AutoModelForImageClassification,
    "MixerForMaskedLM": AutoModelForMaskedLM,
    "MixerForSequenceClassification": AutoModelForSequenceClassification,
    "MixerForTokenClassification": AutoModelForTokenClassification,
}
BATCH_SIZES = (1, 4)


class ExportMismatchError(RuntimeError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance."""


def load(path) -> torch.nn.Module:
    """The saved Mixer in `path`, of the class its config names, in eval mode."""
    config = AutoConfig.from_pretrained(path)
    name = (config.architectures or ["MixerModel"])[0]
    if name not in AUTO_CLASSES:
        raise ValueError(f"{path} holds a {name}; expected one of {', '.join(AUTO_CLASSES)}.")
    return AUTO_CLASSES[name].from_pretrained(path).eval()


def input_names(config) -> list[str]:
    return ["pixel_values"] if config.modality == "image" else ["input_ids", "attention_mask"]


def output_names(model) -> list[str]:
    return ["last_hidden_state", "pooler_output"] if type(model).__name__ == "MixerModel" else ["logits"]


class Exportable(torch.nn.Module):
    """The model with positional inputs and a tuple of output tensors (`output_names`), as the exporter wants."""

    def __init__(self, model):
        super().__init__()
        self.model, self.outputs = model, output_names(model)

    def forward(self, *inputs):
        outputs = self.model(**dict(zip(input_names(self.model.config), inputs, strict=True)))
        return tuple(outputs[name] for name in self.outputs)


def random_inputs(config, batch_size: int, length: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Images from N(0, 1), or token ids at `length` (default: the maximum) whose last sample is right-padded."""
    rng = np.random.default_rng(seed)
    if config.modality == "image":
        return {
            "pixel_values": rng.standard_normal(
                (batch_size, config.num_channels, *config.image_height_width), dtype=np.float32
            )
        }
    length = length or config.max_position_embeddings
    mask = np.ones((batch_size, length), dtype=np.int64)
    if batch_size > 1:
        mask[-1, (length + 1) // 2 :] = 0
    return {"input_ids": rng.integers(0, config.vocab_size, (batch_size, length)), "attention_mask": mask}


def export(model, path) -> Path:
    """Writes `model` as one ONNX file (the weights inside), with `max_position_embeddings` in its metadata."""
    config = model.config
    batch = torch.export.Dim("batch")
    if config.modality == "image":
        dynamic_shapes = {"inputs": ({0: batch},)}  # Exportable.forward(*inputs)
    else:
        sequence = torch.export.Dim("sequence", min=1, max=config.max_position_embeddings)
        dynamic_shapes = {"inputs": ({0: batch, 1: sequence},) * 2}
    example = tuple(torch.from_numpy(value) for value in random_inputs(config, 2).values())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="# The axis name")  # each name "shares constraints" with itself
        program = torch.onnx.export(
            Exportable(model).eval(),
            example,
            dynamo=True,
            input_names=input_names(config),
            output_names=output_names(model),
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    program.model.metadata_props.update(
        modality=config.modality, max_position_embeddings=str(config.max_position_embeddings)
    )
    program.save(path)
    return Path(path)


def quantize(path, int8_path) -> Path:
    """
    Int8 weights, activations quantized per batch. The patch stem stays fp32: onnxruntime's ConvInteger is slower
    than its fp32 Conv (S/16 on 2 cores, batch 1 and 8: quantizing it too made the int8 model 20-25% slower, at the
    same Fashion-MNIST accuracy).

    The weights use 7 of their 8 bits (`reduce_range`). On x86 CPUs without VNNI, onnxruntime multiplies uint8
    activations by int8 weights with VPMADDUBSW, which saturates when the sum of two full-range products exceeds int16;
    with 7-bit weights it cannot. (Full-range weights on an AVX2-only AMD EPYC: the tiny models of
    tests/test_export_onnx.py differed from PyTorch by up to 14x more than with 7-bit weights, and flipped argmaxes.)
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # its advice to pre-process (shape inference) first: no change to this graph
    try:
        quantize_dynamic(
            path, int8_path, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8, reduce_range=True
        )
    finally:
        logging.disable(logging.NOTSET)
    return Path(int8_path)


def session(path, threads: int = 0, spinning: bool = True) -> onnxruntime.InferenceSession:
    """
    A CPU session; `threads` 0 is onnxruntime's default, one per physical core. Without `spinning`, its idle threads
    sleep at once rather than spin, leaving the cores to whatever runs next (as in an interleaved benchmark).
    """
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(session, **inputs) -> dict[str, np.ndarray]:
    """
    The exported model on `inputs` (NumPy arrays or tensors, named as in `input_names`): a dict of its outputs. A
    text model's attention_mask defaults to all ones; a longer sequence than the graph takes raises a ValueError.
    """
    meta = session.get_modelmeta().custom_metadata_map
    inputs = {
        name: value.numpy(force=True) if isinstance(value, torch.Tensor) else np.asarray(value)
        for name, value in inputs.items()
    }
    if meta.get("modality") == "text":
        length, limit = inputs["input_ids"].shape[-1], int(meta["max_position_embeddings"])
        if length > limit:
            raise ValueError(
                f"The sequence has {length} tokens, more than this Mixer's max_position_embeddings "
                f"({limit}). Truncate the input (for example with the tokenizer's truncation=True)."
            )
        inputs = {"attention_mask": np.ones_like(inputs["input_ids"]), **inputs}
        inputs = {name: value.astype(np.int64) for name, value in inputs.items()}
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


@torch.no_grad()
def compare(model, sessions: dict, batch_sizes=BATCH_SIZES) -> list[dict]:
    """Max |difference| to PyTorch of each session's outputs (and argmax agreement) at each batch size and length."""
    config = model.config
    lengths = [None] if config.modality == "image" else sorted({1, config.max_position_embeddings})
    rows = []
    for batch_size in batch_sizes:
        for length in lengths:
            inputs = random_inputs(config, batch_size, length, seed=batch_size)
            expected = Exportable(model)(*map(torch.from_numpy, inputs.values()))
            expected = {name: value.numpy() for name, value in zip(output_names(model), expected, strict=True)}
            row = {"batch_size": batch_size} | ({"sequence_length": length} if length else {})
            for kind, sess in sessions.items():
                outputs = run(sess, **inputs)
                row[kind] = {
                    "max_abs_diff": {
                        name: float(np.abs(outputs[name] - value).max()) for name, value in expected.items()
                    }
                }
                if "logits" in expected:
                    row[kind]["argmax_agreement"] = float(
                        (outputs["logits"].argmax(-1) == expected["logits"].argmax(-1)).mean()
                    )
            rows.append(row)
    return rows
