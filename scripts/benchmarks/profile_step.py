"""Where the time of one training (or inference) step goes: `torch.profiler` over the benchmark's models.

Each model of a case from `scripts/benchmarks/benchmark.py` runs a few warm-up steps (compiling, if it is a `-compiled` model),
then a few profiled ones. The table groups the operators' self time on the device (CUDA time on a GPU, CPU time on
the CPU) into matrix products, normalisation, activations, other elementwise work, copies and casts, the optimizer,
and the rest, per step; the top operators follow. Writes `<output_dir>/profile.json` and `profile.md`.

    python scripts/benchmarks/profile_step.py --case B/16 --models mixer-compiled,timm-compiled --device cuda --dtype bfloat16
    python scripts/benchmarks/profile_step.py --case tiny-image --models mixer,timm --steps 2      # a quick look on the CPU
"""

import argparse
import json
import re
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from mixer_scripts.benchmark_cases import CASES, prepare, synchronize, with_overrides

# First match wins; names are those of aten operators and of the kernels that inductor and cuBLAS generate.
CATEGORIES = [
    ("matmul", r"mm|matmul|gemm|linear|conv|baddbmm|addmm|cutlass|sm90|ampere|triton_tem"),
    ("norm", r"layer_norm|native_layer_norm|welford|red_fused.*norm"),
    ("activation", r"gelu|erf|tanh"),
    ("optimizer", r"adam|foreach|multi_tensor|_fused_adamw"),
    ("copy/cast", r"copy|_to_copy|clone|contiguous|cast|transpose|permute"),
    ("elementwise", r"add|mul|div|sub|where|fill|zero|triton_poi|triton_red|elementwise|vectorized"),
]


def category(name: str) -> str:
    lowered = name.lower()
    return next((label for label, pattern in CATEGORIES if re.search(pattern, lowered)), "other")


def profile_model(case, name, mode, batch_size, device, dtype, warmup, steps) -> dict:
    step = prepare(case, name, mode, batch_size, device, dtype)
    for _ in range(warmup):
        step()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    on_device = device.type == "cuda"
    events = [e for e in prof.key_averages() if (e.self_device_time_total if on_device else e.self_cpu_time_total) > 0]
    own = {e.key: (e.self_device_time_total if on_device else e.self_cpu_time_total) / 1e3 / steps for e in events}
    groups = {}
    for key, ms in own.items():
        groups[category(key)] = groups.get(category(key), 0.0) + ms
    top = sorted(own.items(), key=lambda kv: -kv[1])[:15]
    return {"ms_per_step": sum(own.values()), "groups_ms": groups, "top_ms": top}


def models_to_profile(case, models: str | None) -> list[str]:
    """The --models asked for, each one that the case runs; by default the Mixer and the case's first peer,
    compiled."""
    if models:
        names = models.split(",")
    else:
        peer = next(name for name in case.models if not name.startswith("mixer"))
        names = ["mixer-compiled", f"{peer}-compiled"]
    if unknown := [name for name in names if name not in case.models]:
        raise ValueError(f"The case {case.name} runs {', '.join(case.models)}; not {', '.join(unknown)}.")
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="B/16", help=f"one of {', '.join(CASES)}")
    parser.add_argument(
        "--models", default=None, help="default: the Mixer and the case's first peer (timm or BERT), compiled"
    )
    parser.add_argument("--mode", default="train", choices=["train", "inference"])
    parser.add_argument("--batch_size", type=int, default=None, help="default: 8 on the CPU, 128 on CUDA")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 or bfloat16 (autocast); default: bf16 on CUDA")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--config_overrides", default="", help='fields of the case\'s config to change, e.g. "num_hidden_layers=4"'
    )
    parser.add_argument("--output_dir", default="profile_results")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    batch_size = args.batch_size or (128 if device.type == "cuda" else 8)
    case = with_overrides(CASES[args.case], args.config_overrides)
    results = {}
    for name in models_to_profile(case, args.models):
        torch._dynamo.reset()
        results[name] = profile_model(case, name, args.mode, batch_size, device, dtype, args.warmup, args.steps)
    labels = [label for label, _ in CATEGORIES] + ["other"]
    lines = [
        f"{args.mode} step, {args.case}{' with ' + args.config_overrides if args.config_overrides else ''}, "
        f"batch {batch_size}, {dtype}, {device.type}"
        f"{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}, torch {torch.__version__}",
        "",
        "| model | ms/step | " + " | ".join(labels) + " |",
        "|---" * (len(labels) + 2) + "|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['ms_per_step']:.2f} | "
            + " | ".join(f"{r['groups_ms'].get(label, 0.0):.2f}" for label in labels)
            + " |"
        )
    for name, r in results.items():
        lines += ["", f"Top operators of {name} (ms per step):"] + [
            f"- {ms:.3f} {key[:100]}" for key, ms in r["top_ms"]
        ]
    table = "\n".join(lines)
    print(table)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.md").write_text(table + "\n")
    (out / "profile.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
