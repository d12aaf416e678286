"""Checks that an eager training step of the Mixer never waits for the GPU, and times what the data checks would cost.

A training step on an accelerator skips the input checks that read the data (NaN, token ids out of range): reading
them back is a host sync, which stalls the queue of kernels once per step. Here each step's forward and backward run
under `torch.cuda.set_sync_debug_mode("error")`, which raises at any synchronising call; then eager training steps
are timed as they run and with the data checks forced in (the cost of that sync). Text runs with the dense MLM head
and with `sparse_prediction`, whose selection of the labelled positions has a data-dependent size: one sync.

    python scripts/benchmarks/check_host_sync.py --output_dir gpu_results/host-sync      # needs CUDA
"""

import argparse
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from mixer_scripts.benchmark_cases import CASES, build, make_inputs


def measure(case, sparse, batch_size: int, steps: int) -> dict:
    """Whether a training step's forward and backward synchronise, and its time with and without the data checks."""
    device = torch.device("cuda")
    if sparse is not None:
        case = dataclasses.replace(case, config=copy.deepcopy(case.config))
        case.config.sparse_prediction = sparse
    model = build(case, "mixer").to(device).train()
    inputs, labels = make_inputs(case, batch_size, device)
    labels = labels.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    base = model.base_model
    unchecked = base.forward

    def forward_backward():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**inputs, labels=labels).loss
        loss.backward()

    def step():
        forward_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def checked_forward(*args, **kwargs):  # what a step cost when every forward read its data back
        base._check_values(
            *(kwargs.get(name) for name in ("pixel_values", "input_ids", "attention_mask", "inputs_embeds"))
        )
        return unchecked(*args, **kwargs)

    step()  # the optimizer's state, cuBLAS handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        forward_backward()
        synchronising = None
    except RuntimeError as error:
        synchronising = str(error).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    optimizer.zero_grad(set_to_none=True)
    times = {}
    for name, forward in [("as shipped", unchecked), ("data checks forced", checked_forward)]:
        base.forward = forward
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        seconds = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        times[name] = 1e3 * statistics.median(seconds)
    base.forward = unchecked
    return dict(
        case=case.name,
        sparse_prediction=sparse,
        batch_size=batch_size,
        synchronising_call=synchronising,
        ms_per_step=times,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="S/16,text-128")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--output_dir", default="host_sync_results")
    args = parser.parse_args()
    results = []
    for case in (CASES[name] for name in args.cases.split(",")):
        for sparse in [None] if case.modality == "image" else [False, True]:
            results.append(measure(case, sparse, args.batch_size, args.steps))
            print(json.dumps(results[-1]), flush=True)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    report = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, results=results)
    (output / "host_sync.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
