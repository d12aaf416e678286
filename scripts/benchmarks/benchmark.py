"""Throughput and memory of this project's Mixer against its peers, side by side on one machine.

For each case it builds every model of the case with the same configuration (timm's `MlpMixer` gets our weights),
then times inference (forward under no_grad) and a training step (forward + backward + AdamW step). Warm-up first
(that is where `torch.compile` compiles), then rounds in which every model runs in turn, so that drift on a shared
machine hits all alike; the median over rounds is reported. Each run also times a large GEMM in the same dtype
(before and after the models; the faster counts), and every model's achieved FLOP/s (from an analytic count: 2 FLOPs
per multiply-add, backward = 2 × forward) is given as a fraction of it. Peak memory: `torch.cuda.max_memory_allocated`
on CUDA; on the CPU, the rise of the peak resident set size of a fresh process over the loaded model, measured in a
subprocess per model.

    python scripts/benchmarks/benchmark.py                              # the default cases on the CPU, fp32
    python scripts/benchmarks/benchmark.py --device cuda --dtype bfloat16 --batch_size 64
    python scripts/benchmarks/benchmark.py --cases text-128 --models mixer,bert --rounds 3

Writes `<output_dir>/benchmark.json`, `benchmark.md` (the table printed at the end) and `benchmark.png`.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from mixer_scripts.benchmark_cases import (
    CASES,
    TUNING,
    forward_flops,
    matmul_peak,
    prepare,
    synchronize,
    with_overrides,
)

DEFAULT_CASES = ["S/16", "B/16", "text-128", "text-512"]


def time_case(case, names, mode, batch_size, device, dtype, rounds, warmup) -> dict:
    """Median seconds per step of each model, measured in interleaved rounds."""
    # Each case and mode compiles afresh: otherwise new shapes would make dynamo recompile with dynamic shapes.
    torch._dynamo.reset()
    runs = {name: prepare(case, name, mode, batch_size, device, dtype) for name in names}
    for run in runs.values():
        for _ in range(warmup):
            run()
    times = {name: [] for name in names}
    for _ in range(rounds):
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_memory(case, name, mode, batch_size, device, dtype, checkpointing=False, overrides="") -> float:
    """Bytes that one step needs beyond the loaded model (and, for training, its optimizer state)."""
    if device.type == "cuda":
        run = prepare(case, name, mode, batch_size, device, dtype, checkpointing)
        run()  # creates the optimizer state
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # On the CPU: in a fresh process whose malloc hands every large block back to the system when it is freed, so
    # that the resident set follows the live tensors.
    probe = [
        sys.executable,
        __file__,
        "--_memory_probe",
        json.dumps([case.name, overrides, name, mode, batch_size, str(dtype).removeprefix("torch."), checkpointing]),
    ]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    return float(subprocess.run(probe, capture_output=True, text=True, check=True, env=env).stdout.split()[-1])


def memory_probe(case_name, overrides, name, mode, batch_size, dtype, checkpointing):
    """Prints the rise of the peak resident set over the resident set before a second step (Linux)."""

    def kib(field):
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

    case = with_overrides(CASES[case_name], overrides)
    run = prepare(case, name, mode, batch_size, torch.device("cpu"), getattr(torch, dtype), checkpointing)
    run()  # the first step creates the optimizer state
    before = kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current resident set
    run()
    print((kib("VmHWM") - before) * 1024)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["case"], r["mode"]) for r in results})
    ncols = min(len(panels), 4)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (case, mode) in zip(axes.flat, panels):
        rows = [r for r in results if r["case"] == case and r["mode"] == mode]
        ax.barh([r["model"] for r in rows], [r["throughput"] for r in rows], color="tab:blue")
        ax.set_title(f"{case} {mode}", fontsize=9)
        ax.set_xlabel(rows[0]["unit"], fontsize=8)
        ax.tick_params(labelsize=8)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--models", default=None, help="comma-separated subset of each case's models")
    parser.add_argument("--modes", default="inference,train")
    parser.add_argument("--batch_size", type=int, default=None, help="default: 8 on the CPU, 64 on CUDA")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", default=None, help="float32 or bfloat16 (autocast); default: fp32 on the CPU, bf16 on CUDA"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no_memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument(
        "--checkpointing_case",
        default="B/16",
        help="case whose training memory is measured with and without gradient checkpointing ('' to skip)",
    )
    parser.add_argument("--checkpointing_batch_size", type=int, default=32)
    parser.add_argument(
        "--compile_mode",
        default=None,
        help="torch.compile mode of the -compiled models: "
        "default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs",
    )
    parser.add_argument(
        "--fused_adamw",
        action="store_true",
        help="AdamW's fused kernel in the training steps (the CPU memory probes keep the default)",
    )
    parser.add_argument(
        "--config_overrides",
        default="",
        help='fields of every case\'s config to change, e.g. "hidden_size=256,num_hidden_layers=2" (peers alike)',
    )
    parser.add_argument("--output_dir", default="benchmark_results")
    parser.add_argument("--_memory_probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    TUNING.update(compile_mode=args.compile_mode, fused_adamw=args.fused_adamw)
    if args._memory_probe:
        return memory_probe(*json.loads(args._memory_probe))

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    batch_size = args.batch_size or (64 if device.type == "cuda" else 8)
    unknown = [c for c in args.cases.split(",") if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; expected some of {', '.join(CASES)}")
    peak = matmul_peak(device, dtype)
    machine = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(f"{machine}; {dtype}; batch {batch_size}; GEMM {peak / 1e9:.0f} GFLOP/s", flush=True)

    results = []
    for case in (with_overrides(CASES[c], args.config_overrides) for c in args.cases.split(",")):
        names = [m for m in case.models if args.models is None or m in args.models.split(",")]
        for mode in args.modes.split(","):
            seconds = time_case(case, names, mode, batch_size, device, dtype, args.rounds, args.warmup)
            for name in names:
                per_sample = forward_flops(case, name, mode) * (3 if mode == "train" else 1)
                samples_per_s = batch_size / seconds[name]
                tokens = case.config.max_position_embeddings if case.modality == "text" else 1
                row = dict(
                    case=case.name,
                    mode=mode,
                    model=name,
                    batch_size=batch_size,
                    seconds_per_step=seconds[name],
                    throughput=samples_per_s * tokens,
                    unit="tokens/s" if tokens > 1 else "images/s",
                    tflops=samples_per_s * per_sample / 1e12,
                )
                if not args.no_memory and not name.endswith("-compiled"):
                    memory = peak_memory(case, name, mode, batch_size, device, dtype, overrides=args.config_overrides)
                    row["peak_memory_mib"] = memory / 2**20
                results.append(row)
                print(
                    f"{case.name:>10} {mode:>9} {name:>14}: {row['throughput']:10.1f} {row['unit']}, "
                    f"{row['tflops'] * 1e3:6.1f} GFLOP/s",
                    flush=True,
                )
    # The peak is timed again at the end and the faster of the two is kept: a GEMM slowed by a passing load would
    # make every model look closer to the limit than it is.
    peak = max(peak, matmul_peak(device, dtype))
    for row in results:
        row["fraction_of_peak"] = row["tflops"] * 1e12 / peak

    checkpointing = {}
    if args.checkpointing_case and not args.no_memory:
        case = with_overrides(CASES[args.checkpointing_case], args.config_overrides)
        for enabled in (False, True):
            memory = peak_memory(
                case, "mixer", "train", args.checkpointing_batch_size, device, dtype, enabled, args.config_overrides
            )
            checkpointing[str(enabled)] = memory / 2**20
        print(
            f"{case.name} training, batch {args.checkpointing_batch_size}: {checkpointing['False']:.0f} MiB without "
            f"gradient checkpointing, {checkpointing['True']:.0f} MiB with it",
            flush=True,
        )

    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    report = dict(
        machine=machine,
        device=device.type,
        dtype=str(dtype),
        batch_size=batch_size,
        torch=torch.__version__,
        gemm_peak_flops=peak,
        results=results,
        checkpointing_memory_mib=checkpointing,
        checkpointing_case=f"{args.checkpointing_case}, batch {args.checkpointing_batch_size}",
        tuning=TUNING,
        config_overrides=args.config_overrides,
    )
    (output / "benchmark.json").write_text(json.dumps(report, indent=2))
    table = markdown_table(report)
    (output / "benchmark.md").write_text(table)
    plot(results, output / "benchmark.png")
    print("\n" + table)


def markdown_table(report) -> str:
    lines = [
        f"{report['machine']}, {report['dtype']}, batch {report['batch_size']}, torch {report['torch']}; "
        f"GEMM peak {report['gemm_peak_flops'] / 1e9:.0f} GFLOP/s; torch.compile mode "
        f"{report['tuning']['compile_mode'] or 'default'}, {'fused' if report['tuning']['fused_adamw'] else 'default'}"
        " AdamW"
        + (f"; config overrides {report['config_overrides']}" if report.get("config_overrides") else "")
        + "\n",
        "| case | mode | model | throughput | vs. ours | % of GEMM peak | peak memory (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        peers = [o for o in report["results"] if (o["case"], o["mode"]) == (r["case"], r["mode"])]
        ours = next((o for o in peers if o["model"] == "mixer"), peers[0])  # the first model when eager is not run
        memory = f"{r['peak_memory_mib']:.0f}" if "peak_memory_mib" in r else ""
        lines.append(
            f"| {r['case']} | {r['mode']} | {r['model']} | {r['throughput']:.1f} {r['unit']} | "
            f"{r['throughput'] / ours['throughput']:.2f} | {100 * r['fraction_of_peak']:.1f} | {memory} |"
        )
    if report["checkpointing_memory_mib"]:
        m = report["checkpointing_memory_mib"]
        lines.append(
            f"\nGradient checkpointing, training memory of {report['checkpointing_case']}: {m['False']:.0f} MiB "
            f"→ {m['True']:.0f} MiB ({m['True'] / m['False']:.0%})."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
