"""Exports a saved Mixer (image classifier, MLM, text classifier or base model) to ONNX and checks it in onnxruntime.

    python scripts/export_onnx.py --model_name_or_path tests/data/mixer-fashion-mnist-28 --output_dir onnx/fashion \
        --quantize
    python scripts/export_onnx.py --model_name_or_path outputs/mixer-mlm-shakespeare --output_dir onnx/mlm --atol 1e-3

The model class comes from the folder's config (`architectures`), loaded with the Auto classes. The graph is exported
with `torch.onnx.export(dynamo=True)`; its batch axis is dynamic, and for text so is the sequence axis, from 1 to
`max_position_embeddings` (the width of the token-mixing MLPs: a shorter sequence is zero-padded to it inside the
graph). Text models take `input_ids` and `attention_mask` (int64, batch × sequence), image models `pixel_values`
(float32, batch × channels × height × width, as the image processor makes them); the outputs are the model's
(`logits`, or `last_hidden_state` and `pooler_output` for the base model).

The check runs PyTorch and onnxruntime on the same random inputs, at batch sizes 1 and 4 (for text at lengths 1 and
`max_position_embeddings`, the last sample right-padded), and fails when the largest |difference| of fp32 exceeds
`--atol`. `--quantize` also writes an int8 model (`quantize_dynamic` of the MatMuls and the classifier: int8
weights, activations quantized on the fly) and reports its difference and how often its argmax agrees, without a
threshold.

A longer sequence than `max_position_embeddings` cannot raise the model's clear error inside the graph: onnxruntime
fails with a shape error (a broadcast in an Add node). `run` below checks the length first and raises a ValueError.

Writes `<output_dir>/model.onnx` (and `model.int8.onnx`) and `export.json`, what was checked and the differences.
"""

import argparse
import json
import logging
import sys
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import modeling_mixer  # noqa: E402, F401  (registers the Mixer with the Auto classes)

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
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # its advice to pre-process (shape inference) first: no change to this graph
    try:
        quantize_dynamic(path, int8_path, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="a saved Mixer folder (or Hub id)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--quantize", action="store_true", help="also write model.int8.onnx (dynamic int8)")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest |difference| allowed in fp32")
    args = parser.parse_args(argv)

    model = load(args.model_name_or_path)
    config = model.config
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    paths = {"fp32": export(model, output / "model.onnx")}
    if args.quantize:
        paths["int8"] = quantize(paths["fp32"], output / "model.int8.onnx")
    checks = compare(model, {kind: session(path) for kind, path in paths.items()})
    report = dict(
        model=str(args.model_name_or_path),
        architecture=type(model).__name__,
        modality=config.modality,
        inputs=input_names(config),
        outputs=output_names(model),
        dynamic_axes={"batch": "any"}
        | ({"sequence": [1, config.max_position_embeddings]} if config.modality == "text" else {}),
        files={kind: path.name for kind, path in paths.items()},
        atol=args.atol,
        torch=torch.__version__,
        onnxruntime=onnxruntime.__version__,
        checks=checks,
    )
    (output / "export.json").write_text(json.dumps(report, indent=2))
    for row in checks:
        print(", ".join(f"{key.replace('_', ' ')} {value}" for key, value in row.items() if key not in paths), end="")
        for kind in paths:
            diffs = ", ".join(f"{name} {value:.1e}" for name, value in row[kind]["max_abs_diff"].items())
            agrees = f", argmax agrees {row[kind]['argmax_agreement']:.1%}" if "argmax_agreement" in row[kind] else ""
            print(f"; {kind} max |diff| {diffs}{agrees}", end="")
        print()
    worst = max(value for row in checks for value in row["fp32"]["max_abs_diff"].values())
    if worst > args.atol:
        raise ExportMismatchError(
            f"onnxruntime's fp32 outputs differ from PyTorch's by up to {worst:.2e}, more than "
            f"--atol {args.atol:.0e}: see {output / 'export.json'}."
        )
    print(f"Wrote {', '.join(map(str, paths.values()))}: fp32 max |diff| {worst:.1e} <= {args.atol:.0e}.")
    return report


if __name__ == "__main__":
    main()
