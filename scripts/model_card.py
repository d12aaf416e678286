"""
The model card (README.md) of a Mixer repo on the Hub: what `Trainer.create_model_card` writes lacks the
"mlp-mixer" tag (unless the model carries it), a `pipeline_tag`, evaluation results for metrics that transformers
does not know (loss, perplexity), and any word on how to load a model whose code lives in the repo.

    trainer.push_to_hub(**card_kwargs)           # weights, config, code, processor, and Trainer's card
    card = write_model_card(trainer.args.output_dir, trainer.hub_model_id, "image-classification",
                            metrics=results, dataset="user/data")
    card.push_to_hub(trainer.hub_model_id)       # Trainer.push_to_hub rewrites README.md: push the card after it

`write_model_card` keeps the body of a card already in the folder (Trainer's hyperparameters and results) and
rewrites its metadata with `huggingface_hub.ModelCardData`.
"""

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

# task (pipeline tag) → (its name on the Hub, the Auto model class, the Auto processor class, a sample input)
TASKS = {
    "fill-mask": (
        "Masked Language Modeling",
        "AutoModelForMaskedLM",
        "AutoTokenizer",
        'f"Hello {tokenizer.mask_token}!"',
    ),
    "image-classification": ("Image Classification", "AutoModelForImageClassification", "AutoImageProcessor", "image"),
    "text-classification": (
        "Text Classification",
        "AutoModelForSequenceClassification",
        "AutoTokenizer",
        '"Hello world!"',
    ),
    "token-classification": (
        "Token Classification",
        "AutoModelForTokenClassification",
        "AutoTokenizer",
        '"Hello world!"',
    ),
}
NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "samples", "epoch")


def usage_snippet(repo_id: str, task: str) -> str:
    """Python that loads the repo on a machine without this package (`image` is a PIL image for images)."""
    _, model_class, processor_class, sample = TASKS[task]
    # AutoTokenizer reads config.json, whose class is in the repo's code; AutoImageProcessor does not
    text = processor_class == "AutoTokenizer"
    processor, trust = ("tokenizer", ", trust_remote_code=True") if text else ("processor", "")
    return (
        f"from transformers import {processor_class}, {model_class}\n\n"
        f'repo = "{repo_id}"\n'
        "# trust_remote_code=True runs configuration_mixer.py and modeling_mixer.py from the repo: read them, and\n"
        '# pin the version you read with revision="<commit id>" in each from_pretrained.\n'
        f"{processor} = {processor_class}.from_pretrained(repo{trust})\n"
        f"model = {model_class}.from_pretrained(repo, trust_remote_code=True)\n"
        f'logits = model(**{processor}({sample}, return_tensors="pt")).logits\n'
    )


def write_model_card(
    output_dir,
    repo_id: str,
    task: str,
    *,
    metrics: dict | None = None,
    dataset: str | None = None,
    dataset_name: str | None = None,
    tags=(),
    license: str | None = None,
) -> ModelCard:
    """
    Writes `output_dir/README.md` and returns the card. Metadata: `library_name: transformers`, `pipeline_tag`,
    the tags "mlp-mixer" and `task` (plus `tags` and those already there), `datasets`, `metrics`, and, given a
    `dataset`, a model-index with one result per metric; where the arguments give none, those of the card already
    there. `metrics` as `Trainer.evaluate` returns them, "{split}_{name}" (`eval_accuracy`; split "eval" is
    reported as "validation"); speed and size entries are left out. The body (the card already there, or a short
    one) gets a "Usage" section with `usage_snippet`, before its first section.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}.")
    path = Path(output_dir) / "README.md"
    old = ModelCard.load(path, ignore_metadata_errors=True) if path.exists() else None
    name = repo_id.split("/")[-1]

    results = []
    for key, value in (metrics or {}).items():
        split, _, metric = key.partition("_")
        if dataset and metric and not metric.endswith(NOT_METRICS) and isinstance(value, (int, float)):
            results.append(
                EvalResult(
                    task_type=task,
                    task_name=TASKS[task][0],
                    dataset_type=dataset,
                    dataset_name=dataset_name or dataset,
                    dataset_split="validation" if split == "eval" else split,
                    metric_type=metric,
                    metric_value=value,
                )
            )
    before = old.data if old else ModelCardData()  # kept where the arguments say nothing
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=task,
        license=license or before.license,
        tags=list(dict.fromkeys(["mlp-mixer", task, *tags, *(before.tags or [])])),
        datasets=[dataset] if dataset else before.datasets,
        metrics=sorted({r.metric_type for r in results} - {"loss"}) or (None if results else before.metrics),
        model_name=name,
        eval_results=results or before.eval_results,
    )

    usage = f"## Usage\n\n```python\n{usage_snippet(repo_id, task)}```\n"
    body = (
        old.text
        if old
        else (
            f"\n# {name}\n\nAn [MLP-Mixer](https://arxiv.org/abs/2105.01601) (Tolstikhin et al., 2021) for "
            f"{TASKS[task][0].lower()}, as a 🤗 transformers model whose code ships with the weights.\n"
        )
    )
    # Trainer's card calls a model trained from scratch (config._name_or_path "") "a fine-tuned version of []"
    body = body.replace(
        "This model is a fine-tuned version of [](https://huggingface.co/) on",
        "This model was trained from scratch on",
    )
    if "\n## Usage\n" not in body:
        head, section, tail = body.partition("\n## ")
        body = f"{head.rstrip()}\n\n{usage}" + (f"\n## {tail}" if section else "")
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    card.save(path)
    return card
