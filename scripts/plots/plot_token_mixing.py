"""
Draws the hidden units of token-mixing MLPs, as the paper's Figures 5-6: each unit of fc1 has one weight per input
patch, shown as a small image of the patch grid (red positive, blue negative, each unit on its own symmetric scale).
Units are sorted from low to high spatial frequency.

    python scripts/plots/plot_token_mixing.py --model mixer-b16 --layers 0 1 2 --output token_mixing.png
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModel  # noqa: E402

import modeling_mixer  # noqa: E402, F401  (registers the Mixer with the Auto classes: no remote code is run)


def plot_token_mixing(model, output, layers=(0,), max_units=None, columns=16):
    """Writes a PNG with one panel of fc1 units per layer in `layers` of an image Mixer (any of its classes)."""
    mixer, config = model.base_model, model.config
    grid = config.patch_grid  # (rows, columns) of patches
    panels = []
    for index in layers:
        units = mixer.layers[index].token_mixing.fc1.weight.detach().float().cpu().reshape(-1, *grid)
        # Sort by the mean spatial frequency of each unit, weighted by the magnitude of its 2D spectrum.
        spectrum = torch.fft.fftshift(torch.fft.fft2(units).abs(), dim=(-2, -1))
        row_freq, col_freq = (torch.fft.fftshift(torch.fft.fftfreq(n)) for n in grid)
        radius = (row_freq[:, None] ** 2 + col_freq[None, :] ** 2).sqrt()
        order = ((spectrum * radius).sum((-2, -1)) / spectrum.sum((-2, -1))).argsort()
        panels.append((index, units[order][:max_units]))
    rows = [-(-len(units) // columns) for _, units in panels]
    fig, axes = plt.subplots(
        sum(rows), columns, figsize=(columns * 0.6, sum(rows) * 0.6 + 0.4 * len(panels)), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    start = 0
    for (index, units), n_rows in zip(panels, rows):
        for i, unit in enumerate(units):
            limit = unit.abs().max().item() or 1.0
            axes[start + i // columns, i % columns].imshow(unit, cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes[start, 0].set_title(f"token-mixing MLP {index}", loc="left", fontsize=8)
        start += n_rows
    fig.savefig(output, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a folder saved by save_pretrained (or a Hub id)")
    parser.add_argument("--output", default="token_mixing.png")
    parser.add_argument("--layers", type=int, nargs="+", default=[0], help="indices of the Mixer layers to draw")
    parser.add_argument("--max_units", type=int, help="draw only the first units (by frequency) of each layer")
    parser.add_argument("--columns", type=int, default=16)
    args = parser.parse_args(argv)
    model = AutoModel.from_pretrained(args.model)
    plot_token_mixing(model, args.output, args.layers, args.max_units, args.columns)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
