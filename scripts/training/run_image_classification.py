#!/usr/bin/env python
"""
Image classification with an MLP-Mixer (or, for comparison, a ViT of the same width, depth and patches), after
transformers' examples/pytorch/image-classification/run_image_classification.py.

With no data argument it trains on Fashion-MNIST (Debian's `dataset-fashion-mnist`: `apt-get install -y
dataset-fashion-mnist`; or the four .gz files of github.com/zalandoresearch/fashion-mnist in a folder given by
`--fashion_mnist_dir`), holds out 10% of the training images for evaluation during training, and reports the
accuracy on the 10,000 test images at the end:

    python scripts/training/run_image_classification.py                 # a small Mixer, ~10 minutes on 2 CPU cores
    python scripts/training/run_image_classification.py --model_type vit --output_dir outputs/vit-fashion-mnist
    python scripts/training/run_image_classification.py --train_dir photos/train --validation_dir photos/val \
        --model_variant S/16 --config_overrides image_size=224
    python scripts/training/run_image_classification.py --dataset_name uoft-cs/cifar10 --image_column_name img   # online

Every `TrainingArguments` flag works (`--learning_rate`, `--max_steps`, `--push_to_hub`, `--use_cpu`...).
"""

import io
import logging
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from datasets import Dataset, DatasetDict, Image, IterableDataset, IterableDatasetDict
from torchvision import transforms
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    set_seed,
)

import modeling_mixer  # noqa: F401  (registers the Mixer with the Auto classes)
from configuration_mixer import MixerConfig
from mixer_scripts.common import (
    FASHION_MNIST,
    MuonTrainer,
    check_column,
    check_streaming,
    choose_precision,
    encode_labels,
    fashion_mnist,
    hold_out_every_kth,
    load_dataset_or_explain,
    load_hub_dataset,
    load_metric,
    load_pretrained_with_labels,
    log_precision,
    parse_config_overrides,
    setup_logging,
    train_evaluate_save,
)
from modeling_mixer import MixerForImageClassification

logger = logging.getLogger(__name__)
STREAMING_SHUFFLE_BUFFER = 10_000  # images (still encoded) held to shuffle a stream
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

# The size of a new model, before --model_variant and --config_overrides: for 28×28 images, 4×4 patches (49 tokens).
# The ViT gets the Mixer's width, depth and patches; its MLP width is the Mixer's channels_mlp_dim; no dropout.
MODEL_DEFAULTS = {
    "mlp-mixer": (
        MixerConfig,
        MixerForImageClassification,
        dict(
            image_size=28, patch_size=4, hidden_size=128, num_hidden_layers=4, tokens_mlp_dim=64, channels_mlp_dim=512
        ),
    ),
    "vit": (
        ViTConfig,
        ViTForImageClassification,
        dict(
            image_size=28,
            patch_size=4,
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=512,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
    ),
}


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved model (directory or Hub id) to fine-tune. Default: a new model."}
    )
    model_type: str = field(
        default="mlp-mixer", metadata={"help": "The new model's kind.", "choices": list(MODEL_DEFAULTS)}
    )
    model_variant: str | None = field(
        default=None, metadata={"help": "A Mixer of the paper (S/32, S/16, B/32, B/16, L/32, L/16, H/14)."}
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "Fields of the new model's config, e.g. 'hidden_size=256,image_size=32'."}
    )
    image_processor_name: str | None = field(default=None, metadata={"help": "A saved image processor to use."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Replace a saved model's head that has another number of classes."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloads are cached."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models and datasets."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the Hub (models, datasets)."})


@dataclass
class DataTrainingArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the Hub (needs network)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration."})
    train_dir: str | None = field(default=None, metadata={"help": "A folder of images in one sub-folder per class."})
    validation_dir: str | None = field(default=None, metadata={"help": "The same, for evaluation."})
    fashion_mnist_dir: str = field(
        default=str(FASHION_MNIST), metadata={"help": "The Fashion-MNIST files (IDX .gz), used with no other data."}
    )
    image_column_name: str = field(default="image", metadata={"help": "The column that holds the images."})
    label_column_name: str = field(default="label", metadata={"help": "The column that holds the labels."})
    train_val_split: float = field(
        default=0.1, metadata={"help": "Share of the training images held out when there is no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training images."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many images of each evaluation split (validation, test)."}
    )
    random_crop_padding: float = field(
        default=0.0,
        metadata={"help": "Training crops: pad by this share of the size (0.125...), crop back at random."},
    )
    horizontal_flip: bool = field(default=False, metadata={"help": "Flip training images at random."})
    rand_augment_magnitude: int = field(default=0, metadata={"help": "RandAugment (2 ops) of this magnitude; 0: off."})
    mixup_alpha: float = field(default=0.0, metadata={"help": "Mixup of training pairs, Beta(alpha, alpha); 0: off."})
    flip_test_images: bool = field(
        default=False, metadata={"help": "Evaluate each image and its mirror image, averaging the logits."}
    )
    muon: bool = field(
        default=False,
        metadata={"help": "Train the 2-D weights of the model's layers with Muon (AdamW for the rest, one schedule)."},
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the training images while training (a datasets IterableDataset, nothing cached): for "
            "image sets larger than memory or disk. Needs --max_steps and labels that the dataset declares as "
            "classes. The evaluation images (at most --max_eval_samples a split) are read into memory."
        },
    )


# ---------------------------------------------------------------------------------------------------- data


def image_folder(directory: str) -> str:
    """Checks that `directory` holds images (in one sub-folder per class) and returns the glob for "imagefolder"."""
    path = Path(directory)
    if not path.is_dir():
        raise ValueError(f"No such folder: {directory}.")
    if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.rglob("*") if p.is_file()):
        raise ValueError(
            f"No images in {directory}: expected one sub-folder per class holding image files "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))})."
        )
    return str(path / "**")


def load_raw_datasets(data_args, model_args) -> DatasetDict:
    """
    The splits (train, validation, perhaps test), images not yet decoded. With --streaming the training split is
    an IterableDataset, read as it is used; the evaluation splits are read into memory.
    """
    hint = "Pass --dataset_name (a Hub dataset), --train_dir/--validation_dir, or nothing for Fashion-MNIST."
    streaming = data_args.streaming
    if data_args.dataset_name is not None:
        raw = load_hub_dataset(data_args, model_args, hint, streaming=streaming)
    elif data_args.train_dir is not None:
        files = {"train": image_folder(data_args.train_dir)}
        if data_args.validation_dir is not None:
            files["validation"] = image_folder(data_args.validation_dir)
        raw = load_dataset_or_explain(
            "imagefolder", data_files=files, cache_dir=model_args.cache_dir, streaming=streaming, hint=hint
        )
    else:
        raw = DatasetDict(fashion_mnist(data_args.fashion_mnist_dir))  # a copy: the splits are replaced below
        if streaming:
            raw = IterableDatasetDict({split: dataset.to_iterable_dataset() for split, dataset in raw.items()})
    if "train" not in raw:
        raise ValueError(f"The dataset has no 'train' split (its splits: {', '.join(raw)}).")
    for split in raw:
        check_column(raw[split], data_args.image_column_name, "--image_column_name")
        check_column(raw[split], data_args.label_column_name, "--label_column_name")
    # Decoded by the transforms in main, which name the file that cannot be read. (Cast before a stream's filter:
    # datasets 5.2 decodes what a filtered stream yields whatever is cast after it.)
    raw = type(raw)(
        {
            split: dataset.cast_column(data_args.image_column_name, Image(decode=False))
            for split, dataset in raw.items()
        }
    )
    if "validation" not in raw and streaming:
        raw["train"], raw["validation"] = hold_out_every_kth(raw["train"], data_args.train_val_split)
    elif "validation" not in raw:
        held_out = raw["train"].train_test_split(data_args.train_val_split, seed=0)
        raw["train"], raw["validation"] = held_out["train"], held_out["test"]
    if streaming:  # the evaluation images into memory, to be evaluated on again and again
        for split in [split for split in raw if split != "train"]:
            rows = islice(raw[split], data_args.max_eval_samples)
            raw[split] = Dataset.from_list(list(rows), features=raw[split].features)
    raw = encode_labels(raw, data_args.label_column_name)
    for split in raw:
        limit = data_args.max_train_samples if split == "train" else data_args.max_eval_samples
        if limit is not None and isinstance(raw[split], IterableDataset):
            raw[split] = raw[split].take(limit)
        elif limit is not None:
            raw[split] = raw[split].select(range(min(limit, len(raw[split]))))
    return raw


def open_image(value) -> PIL.Image.Image:
    try:
        image = PIL.Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
        return image.convert("RGB")
    except Exception as error:
        raise ValueError(f"Cannot read the image {value.get('path') or '(bytes)'}: {error}") from error


# ---------------------------------------------------------------------------------------------------- main


class ImageClassificationTrainer(MuonTrainer):
    """
    The Trainer (with `muon`, as `MuonTrainer`) and two options of the image recipes. `mixup_alpha` > 0 trains on
    convex combinations of pairs of images and of their one-hot labels (Zhang et al., 2018), smoothed by
    --label_smoothing_factor as the Trainer smooths plain labels. `flip_test_images` evaluates each image and its
    mirror image and averages their logits (for a model trained with flips, whose classes a mirror does not change).
    """

    loss_is_scaled_for_ga = False  # a mean over the batch

    def __init__(self, *args, mixup_alpha: float = 0.0, flip_test_images: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta = torch.distributions.Beta(mixup_alpha, mixup_alpha) if mixup_alpha > 0 else None
        self.flip_test_images = flip_test_images

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mixup, flip = (self.beta is not None, False) if model.training else (False, self.flip_test_images)
        if not (mixup or flip):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        pixel_values, labels = inputs["pixel_values"], inputs["labels"]
        targets = torch.nn.functional.one_hot(labels, self.model.config.num_labels).float()
        if mixup:
            lam = self.beta.sample().item()
            order = torch.randperm(len(labels), device=labels.device)
            outputs = model(pixel_values=lam * pixel_values + (1 - lam) * pixel_values[order])
            targets = lam * targets + (1 - lam) * targets[order]
        else:
            outputs = model(pixel_values=pixel_values)
            outputs.logits = (outputs.logits + model(pixel_values=pixel_values.flip(-1)).logits) / 2  # width: last
        loss = torch.nn.functional.cross_entropy(
            outputs.logits.float(), targets, label_smoothing=self.args.label_smoothing_factor
        )
        return (loss, outputs) if return_outputs else loss


def parse_args(argv=None):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    # The embedded job's defaults: Fashion-MNIST, trained and evaluated in about 10 minutes on 2 CPU cores, with the
    # recipe of docs/vision.md: Muon for the layers' matrices, flips in training and at test time, label smoothing.
    parser.set_defaults(
        output_dir="outputs/mixer-fashion-mnist",
        do_train=True,
        do_eval=True,
        muon=True,
        horizontal_flip=True,
        flip_test_images=True,
        label_smoothing_factor=0.1,
        learning_rate=1.2e-2,
        adam_beta2=0.95,
        weight_decay=0.05,
        warmup_steps=0.05,
        per_device_train_batch_size=128,
        per_device_eval_batch_size=256,
        eval_strategy="steps",
        eval_steps=250,
        logging_steps=50,
        save_strategy="no",
        report_to="none",
        max_grad_norm=1.0,
        remove_unused_columns=False,
    )
    why_precision = choose_precision(parser, argv)
    # The steps that fit the ten minutes: bf16 autocast on bf16 matrix units runs about 1.5x as many as fp32.
    parser.set_defaults(max_steps=2700 if parser.parse_known_args(argv)[0].bf16 else 1800)
    return *parser.parse_args_into_dataclasses(args=argv), why_precision


def main(argv=None):
    model_args, data_args, training_args, why_precision = parse_args(argv)
    setup_logging(training_args)
    log_precision(training_args, why_precision)
    check_streaming(data_args.streaming, training_args)
    logger.info(f"Training/evaluation parameters {training_args}")
    set_seed(training_args.seed)

    raw = load_raw_datasets(data_args, model_args)
    labels = raw["train"].features[data_args.label_column_name].names
    label_kwargs = dict(
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)}
    )

    if model_args.model_name_or_path:
        model = load_pretrained_with_labels(AutoModelForImageClassification, model_args, label_kwargs)
    else:
        config_class, model_class, defaults = MODEL_DEFAULTS[model_args.model_type]
        overrides = parse_config_overrides(config_class, model_args.config_overrides)
        if model_args.model_variant:
            if model_args.model_type != "mlp-mixer":
                raise ValueError("--model_variant names a Mixer of the paper: use it with --model_type mlp-mixer.")
            config = MixerConfig.from_variant(model_args.model_variant, **label_kwargs, **overrides)
        else:
            config = config_class(**{**defaults, **label_kwargs, **overrides})
        model = model_class(config)
        logger.info(f"New {model_args.model_type} model: {model.num_parameters() / 1e6:.2f}M parameters, {config}")

    source = model_args.image_processor_name or model_args.model_name_or_path
    if source:
        image_processor = AutoImageProcessor.from_pretrained(
            source, cache_dir=model_args.cache_dir, token=model_args.token
        )
    else:
        size = model.config.image_size  # a side, or (height, width): the Mixer's and the ViT's configs take both
        height, width = (size, size) if isinstance(size, int) else size
        image_processor = ViTImageProcessor(
            size={"height": height, "width": width}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )

    # Augmentations of the training images, before the image processor resizes and normalises them.
    augment = []
    if data_args.random_crop_padding > 0:
        augment.append(
            transforms.Lambda(
                lambda image: transforms.RandomCrop(
                    image.size[::-1], padding=max(1, round(data_args.random_crop_padding * min(image.size)))
                )(image)
            )
        )
    if data_args.horizontal_flip:
        augment.append(transforms.RandomHorizontalFlip())
    if data_args.rand_augment_magnitude > 0:
        augment.append(transforms.RandAugment(num_ops=2, magnitude=data_args.rand_augment_magnitude))
    augment = transforms.Compose(augment)

    def make_transform(train: bool):
        def transform(batch):
            images = [open_image(value) for value in batch[data_args.image_column_name]]
            if train:
                images = [augment(image) for image in images]
            return {
                "pixel_values": image_processor(images, return_tensors="pt")["pixel_values"],
                "labels": batch[data_args.label_column_name],
            }

        return transform

    if data_args.streaming:  # shuffled within a buffer, afresh each pass (the Trainer's set_epoch); decoded lazily
        train_dataset = (
            raw["train"]
            .shuffle(seed=training_args.seed, buffer_size=STREAMING_SHUFFLE_BUFFER)
            .map(make_transform(train=True), batched=True, remove_columns=list(raw["train"].features))
        )
    else:
        train_dataset = raw["train"].with_transform(make_transform(train=True))
    eval_dataset = raw["validation"].with_transform(make_transform(train=False))
    extra_eval = {"test": raw["test"].with_transform(make_transform(train=False))} if "test" in raw else None

    def collate_fn(examples):
        return {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "labels": torch.tensor([example["labels"] for example in examples]),
        }

    metric = load_metric("accuracy")

    def compute_metrics(eval_pred):
        return metric.compute(predictions=np.argmax(eval_pred.predictions, axis=1), references=eval_pred.label_ids)

    trainer = ImageClassificationTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        processing_class=image_processor,
        data_collator=collate_fn,
        compute_metrics=compute_metrics,
        mixup_alpha=data_args.mixup_alpha,
        flip_test_images=data_args.flip_test_images,
        muon=data_args.muon,
    )
    card = {
        "finetuned_from": model_args.model_name_or_path,
        "tasks": "image-classification",
        "tags": ["image-classification"],
    }
    if data_args.dataset_name:
        card.update(dataset_tags=data_args.dataset_name, dataset=data_args.dataset_name)
    return train_evaluate_save(trainer, training_args, train_dataset, eval_dataset, card, extra_eval=extra_eval)


if __name__ == "__main__":
    main()
