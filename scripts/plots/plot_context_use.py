"""
How far masked language models look: masks the middle word of held-out blocks and draws, for each offset from it,
the share of the gradient of that word's loss (with respect to the input word embeddings) that reaches the position
at that offset. A model that reads its neighbours puts most of it at ±1 and ±2; one that does not spreads it evenly,
1/length per position. The text is the validation split of `run_mlm.py`'s default data (Shakespeare); each model
reads it with its own tokenizer, in blocks of its own length.

    python scripts/plots/plot_context_use.py --models Mixer=MIXER_DIR BERT=BERT_DIR --output context_use.png
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForMaskedLM, AutoTokenizer  # noqa: E402

import modeling_mixer  # noqa: E402, F401  (registers the Mixer with the Auto classes: no remote code is run)
from mixer_scripts.training.run_mlm import group_texts, shakespeare  # noqa: E402


def middle_masked_blocks(tokenizer, texts, length: int, count: int):
    """Up to `count` blocks of `length` tokens cut from the texts by `run_mlm.group_texts` ([CLS] text [SEP]); returns
    the blocks with their middle token replaced by [MASK], and the true middle tokens."""
    tokenized = {"input_ids": tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]}
    blocks = group_texts(tokenized, [0], tokenizer, length, short_seq_probability=0.0, seed=0)["input_ids"][:count]
    if not blocks:
        raise ValueError(f"The texts are shorter than one block of {length} tokens.")
    blocks = torch.tensor(blocks)
    middle = length // 2
    true_ids = blocks[:, middle].clone()
    blocks[:, middle] = tokenizer.mask_token_id
    return blocks, true_ids


def gradient_share_by_offset(model, blocks, true_ids, max_offset: int, batch_size: int = 32):
    """
    The mean over blocks of |g_j| / sum_k |g_k| at offsets j - middle in [-max_offset, max_offset], where g_j is the
    gradient of the masked middle word's cross-entropy with respect to the word embedding at position j.
    """
    middle = blocks.shape[1] // 2
    if not 0 <= max_offset <= min(middle, blocks.shape[1] - 1 - middle):
        raise ValueError(f"max_offset must be within the block's {blocks.shape[1]} positions, got {max_offset}.")
    embedded = {}

    def as_leaf(module, inputs, output):  # the word embeddings, as a tensor that the gradient is taken with respect to
        embedded["words"] = output.detach().requires_grad_()
        return embedded["words"]

    hook = model.get_input_embeddings().register_forward_hook(as_leaf)
    shares = []
    try:
        for batch, truth in zip(blocks.split(batch_size), true_ids.split(batch_size)):
            logits = model(input_ids=batch).logits[:, middle]
            # Summed over the batch: a block's gradient depends on its own loss only (nothing mixes across blocks).
            loss = torch.nn.functional.cross_entropy(logits.float(), truth, reduction="sum")
            (grad,) = torch.autograd.grad(loss, embedded["words"])
            norms = grad.float().norm(dim=-1)
            shares.append(norms / norms.sum(dim=1, keepdim=True))
    finally:
        hook.remove()
    return torch.cat(shares)[:, middle - max_offset : middle + max_offset + 1].mean(dim=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="NAME=FOLDER of each masked language model")
    parser.add_argument("--output", default="context_use.png", help="the plot; its figures go beside it as .json")
    parser.add_argument("--max_offset", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=256, help="the number of held-out blocks, a masked word each")
    args = parser.parse_args(argv)
    texts = list(shakespeare()["validation"]["text"])
    results = {}
    for name, folder in (entry.split("=", 1) for entry in args.models):
        model = AutoModelForMaskedLM.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        length = model.config.max_position_embeddings
        blocks, true_ids = middle_masked_blocks(tokenizer, texts, length, args.blocks)
        share = gradient_share_by_offset(model, blocks, true_ids, args.max_offset)
        results[name] = {"folder": folder, "length": length, "blocks": len(blocks), "share": share.tolist()}
        at = dict(zip(range(-args.max_offset, args.max_offset + 1), share.tolist()))
        print(
            f"{name}: itself {at[0]:.3f}, ±1 {at[-1] + at[1]:.3f}, ±2..4 "
            f"{sum(at[d] + at[-d] for d in range(2, 5)):.3f}, beyond ±{args.max_offset} {1 - share.sum():.3f} "
            f"(evenly spread: {1 / length:.4f} a position)"
        )
    offsets = list(range(-args.max_offset, args.max_offset + 1))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, result in results.items():
        ax.plot(offsets, result["share"], marker=".", label=name)
    for length in sorted({result["length"] for result in results.values()}):
        ax.axhline(1 / length, color="grey", linestyle=":", label=f"evenly spread over {length} tokens")
    ax.set(xlabel="offset from the masked word", ylabel="share of the gradient", yscale="log")
    ax.legend(fontsize=8)
    fig.savefig(args.output, dpi=100, bbox_inches="tight")
    plt.close(fig)
    json_path = args.output.rsplit(".", 1)[0] + ".json"
    with open(json_path, "w") as f:
        json.dump({"offsets": offsets, "models": results}, f, indent=1)
    print(f"Wrote {args.output} and {json_path}")


if __name__ == "__main__":
    main()
