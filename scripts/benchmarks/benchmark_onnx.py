"""Latency and throughput of a Mixer's deployment paths on the CPU, and their accuracy on a trained model.

The paths: PyTorch eager, `torch.compile` (inductor, fullgraph), onnxruntime fp32 and onnxruntime int8 (the graphs of
scripts/conversion/export_onnx.py). Each batch size is timed on its own: warm-up first (that is where `torch.compile` compiles),
then rounds in which every path runs in turn, so that drift on a shared machine hits all alike; the median over rounds
is reported. PyTorch and onnxruntime get the same number of threads; onnxruntime's do not spin when idle (they would
hold the cores while the next path runs). Text models run at max_position_embeddings.
The accuracy part exports the trained model of tests/data (a 28×28 Mixer) and classifies the sample's 500 test images
with each path, preprocessed by the model's image processor.

    python scripts/benchmarks/benchmark_onnx.py                                # Mixer-S/16 at 224, random weights
    python scripts/benchmarks/benchmark_onnx.py --model_name_or_path outputs/mlm --batch_sizes 1,32 --rounds 20
    python scripts/benchmarks/benchmark_onnx.py --threads 1 --output_dir docs/results/onnx

Writes `<output_dir>/benchmark_onnx.json` and `benchmark_onnx.md` (the table printed at the end).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from transformers import AutoImageProcessor

from configuration_mixer import MixerConfig
from mixer_scripts import onnx_utils
from mixer_scripts.common import fashion_mnist
from modeling_mixer import MixerForImageClassification

ROOT = Path(__file__).resolve().parents[2]

PATHS = ("pytorch", "torch.compile", "onnxruntime fp32", "onnxruntime int8")
TRAINED = ROOT / "tests/data/mixer-fashion-mnist-28"
FASHION_MNIST_SAMPLE = ROOT / "tests/data/fashion-mnist"


def cpu_name() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or platform.machine()


def onnx_models(model, folder) -> dict:
    """The fp32 and int8 graphs of `model`, written to `folder`."""
    fp32 = onnx_utils.export(model, Path(folder) / "model.onnx")
    return {"fp32": fp32, "int8": onnx_utils.quantize(fp32, Path(folder) / "model.int8.onnx")}


def runners(model, files, inputs: dict, threads: int) -> dict:
    """One callable per path, each running a forward pass on `inputs` (NumPy arrays)."""
    tensors = {name: torch.from_numpy(value) for name, value in inputs.items()}
    torch._dynamo.reset()  # each batch size compiles afresh, without dynamic shapes
    compiled = torch.compile(model, fullgraph=True)
    sessions = {kind: onnx_utils.session(path, threads, spinning=False) for kind, path in files.items()}

    def eager(module):
        def run():
            with torch.no_grad():
                module(**tensors)

        return run

    return {
        "pytorch": eager(model),
        "torch.compile": eager(compiled),
        **{f"onnxruntime {kind}": (lambda s=s: s.run(None, inputs)) for kind, s in sessions.items()},
    }


def time_paths(runs: dict, rounds: int, warmup: int) -> dict:
    for run in runs.values():
        for _ in range(warmup):
            run()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def fashion_mnist_accuracy(folder, threads: int, batch_size: int = 100) -> dict:
    """Accuracy of each path (but torch.compile) on the sample's test images, and agreement with PyTorch."""
    model = onnx_utils.load(TRAINED)
    processor = AutoImageProcessor.from_pretrained(TRAINED)
    test = fashion_mnist(FASHION_MNIST_SAMPLE)["test"]
    pixels = processor([image.convert("RGB") for image in test["image"]], return_tensors="np")["pixel_values"]
    labels = np.asarray(test["label"])
    sessions = {
        f"onnxruntime {kind}": onnx_utils.session(path, threads) for kind, path in onnx_models(model, folder).items()
    }
    predictions = {name: [] for name in ("pytorch", *sessions)}
    for start in range(0, len(labels), batch_size):
        batch = pixels[start : start + batch_size].astype(np.float32)
        with torch.no_grad():
            predictions["pytorch"].append(model(torch.from_numpy(batch)).logits.argmax(-1).numpy())
        for name, session in sessions.items():
            predictions[name].append(onnx_utils.run(session, pixel_values=batch)["logits"].argmax(-1))
    predictions = {name: np.concatenate(p) for name, p in predictions.items()}
    reference = predictions["pytorch"]
    return {"model": str(TRAINED.relative_to(ROOT)), "images": len(labels)} | {
        name: dict(accuracy=float((p == labels).mean()), agrees_with_pytorch=float((p == reference).mean()))
        for name, p in predictions.items()
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model_name_or_path", help="a saved Mixer folder; default: Mixer-S/16 at 224, random weights"
    )
    parser.add_argument("--batch_sizes", default="1,8")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="for PyTorch and onnxruntime")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no_accuracy", action="store_true", help="skip the Fashion-MNIST accuracy")
    parser.add_argument("--output_dir", default="benchmark_results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model_name_or_path:
        model, name = onnx_utils.load(args.model_name_or_path), args.model_name_or_path
    else:
        torch.manual_seed(0)
        model, name = MixerForImageClassification(MixerConfig.from_variant("S/16", num_labels=1000)).eval(), "S/16"
    machine = f"{cpu_name()}, {args.threads} threads"
    load = os.getloadavg()
    print(
        f"{machine}; {name}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; load average "
        f"{load[0]:.2f}",
        flush=True,
    )

    unit = "images/s" if model.config.modality == "image" else "sequences/s"
    results, accuracy = [], {}
    with tempfile.TemporaryDirectory() as folder:
        files = onnx_models(model, folder)
        for batch_size in map(int, args.batch_sizes.split(",")):
            inputs = onnx_utils.random_inputs(model.config, batch_size)
            if "attention_mask" in inputs:
                inputs["attention_mask"][:] = 1
            seconds = time_paths(runners(model, files, inputs, args.threads), args.rounds, args.warmup)
            for path, s in seconds.items():
                results.append(
                    dict(
                        path=path,
                        batch_size=batch_size,
                        latency_ms=s * 1e3,
                        throughput=batch_size / s,
                        speedup=seconds["pytorch"] / s,
                    )
                )
                print(f"batch {batch_size:>3} {path:>17}: {s * 1e3:8.1f} ms, {batch_size / s:7.1f} {unit}", flush=True)
        if not args.no_accuracy:
            accuracy = fashion_mnist_accuracy(folder, args.threads)
    report = dict(
        machine=machine,
        model=name,
        modality=model.config.modality,
        unit=unit,
        threads=args.threads,
        rounds=args.rounds,
        torch=torch.__version__,
        onnxruntime=onnxruntime.__version__,
        load_average=[load[0], os.getloadavg()[0]],
        results=results,
        fashion_mnist=accuracy,
    )
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "benchmark_onnx.json").write_text(json.dumps(report, indent=2))
    table = markdown_table(report)
    (output / "benchmark_onnx.md").write_text(table)
    print("\n" + table)
    return report


def markdown_table(report) -> str:
    lines = [
        f"{report['model']} on {report['machine']}, torch {report['torch']}, onnxruntime "
        f"{report['onnxruntime']}; median of {report['rounds']} rounds; load average "
        f"{report['load_average'][0]:.2f} at the start, "
        f"{report['load_average'][1]:.2f} at the end\n",
        f"| path | batch | latency (ms) | throughput ({report['unit']}) | vs. PyTorch |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['path']} | {r['batch_size']} | {r['latency_ms']:.1f} | {r['throughput']:.1f} | {r['speedup']:.2f}× |"
        for r in report["results"]
    ]
    if report["fashion_mnist"]:
        acc = report["fashion_mnist"]
        lines += [
            f"\nFashion-MNIST, {acc['model']}, the sample's {acc['images']} test images:\n",
            "| path | accuracy | same prediction as PyTorch |",
            "|---|---|---|",
        ]
        lines += [
            f"| {path} | {acc[path]['accuracy']:.1%} | {acc[path]['agrees_with_pytorch']:.1%} |"
            for path in PATHS
            if path in acc
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
