"""Exports a saved Mixer (image classifier, MLM, text classifier or base model) to ONNX and checks it in onnxruntime.

    python scripts/conversion/export_onnx.py --model_name_or_path tests/data/mixer-fashion-mnist-28 --output_dir onnx/fashion \
        --quantize
    python scripts/conversion/export_onnx.py --model_name_or_path outputs/mixer-mlm-shakespeare --output_dir onnx/mlm --atol 1e-3

The model class comes from the folder's config (`architectures`), loaded with the Auto classes. The graph is exported
with `torch.onnx.export(dynamo=True)`; its batch axis is dynamic, and for text so is the sequence axis, from 1 to
`max_position_embeddings` (the width of the token-mixing MLPs: a shorter sequence is zero-padded to it inside the
graph). Text models take `input_ids` and `attention_mask` (int64, batch × sequence), image models `pixel_values`
(float32, batch × channels × height × width, as the image processor makes them); the outputs are the model's
(`logits`, or `last_hidden_state` and `pooler_output` for the base model).

The check runs PyTorch and onnxruntime on the same random inputs, at batch sizes 1 and 4 (for text at lengths 1 and
`max_position_embeddings`, the last sample right-padded), and fails when the largest |difference| of fp32 exceeds
`--atol`. `--quantize` also writes an int8 model (`quantize_dynamic` of the MatMuls and the classifier: int8
weights in 7 bits, which no CPU's int8 products saturate, activations quantized on the fly) and reports its
difference and how often its argmax agrees, without a threshold.

A longer sequence than `max_position_embeddings` cannot raise the model's clear error inside the graph: onnxruntime
fails with a shape error (a broadcast in an Add node). `run` below checks the length first and raises a ValueError.

Writes `<output_dir>/model.onnx` (and `model.int8.onnx`) and `export.json`, what was checked and the differences.
"""

import argparse
import json
from pathlib import Path

import onnxruntime
import torch

from mixer_scripts.onnx_utils import (
    ExportMismatchError,
    compare,
    export,
    input_names,
    load,
    output_names,
    quantize,
    session,
)


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
