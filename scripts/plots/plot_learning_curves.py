#!/usr/bin/env python
"""
Learning curves of Trainer runs, from the trainer_state.json that the training scripts save:

    python scripts/plots/plot_learning_curves.py docs/mlm_curves.png Mixer=outputs/mixer-mlm BERT=outputs/bert-mlm

`--x budget` draws each run against the share of its own steps done: for runs that were given the steps of the same
time budget, the same point on the axis is the same time.
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="the PNG file to write")
    parser.add_argument("runs", nargs="+", help="LABEL=OUTPUT_DIR of a run")
    parser.add_argument("--title", default="")
    parser.add_argument("--x", choices=["step", "budget"], default="step")
    args = parser.parse_args(argv)

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for run in args.runs:
        label, directory = run.split("=", 1)
        state = json.loads((Path(directory) / "trainer_state.json").read_text())
        history = state["log_history"]
        scale = 100 / state["max_steps"] if args.x == "budget" else 1
        train = [(e["step"] * scale, e["loss"]) for e in history if "loss" in e]
        evals = [(e["step"] * scale, e["eval_loss"], e.get("eval_accuracy")) for e in history if "eval_loss" in e]
        (line,) = loss_ax.plot(*zip(*train), alpha=0.6, label=f"{label} train")
        if evals:
            steps, eval_losses, accuracies = zip(*evals)
            loss_ax.plot(steps, eval_losses, "o-", color=line.get_color(), label=f"{label} eval")
            if accuracies[0] is not None:
                acc_ax.plot(steps, accuracies, "o-", color=line.get_color(), label=label)
    xlabel = "step" if args.x == "step" else "% of the run's steps (the same time for runs of equal budget)"
    loss_ax.set(xlabel=xlabel, ylabel="loss", title="loss")
    acc_ax.set(xlabel=xlabel, ylabel="accuracy", title="evaluation accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(args.title)
    fig.tight_layout()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
