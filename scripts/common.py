"""What the training scripts share: logging, configs, metrics, data loading, the optimizer, the run and its card."""

import functools
import gzip
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import evaluate
import numpy as np
import torch
import transformers
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, IterableDataset
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    BertConfig,
    FNetConfig,
    PreTrainedTokenizerFast,
    RoFormerConfig,
    Trainer,
    TrainerCallback,
)

from configuration_mixer import MixerConfig
from mixer_scripts.model_card import write_model_card
from mixer_scripts.peers import BertForMaskedLM, FNetForMaskedLM, RoFormerForMaskedLM
from modeling_mixer import MixerForMaskedLM

logger = logging.getLogger(__name__)
LOCAL_METRICS = Path(__file__).resolve().parent / "metrics"


def bf16_matrix_units() -> str | None:
    """The CPU's bf16 matrix instructions (AMX, AVX-512 BF16) that make bf16 products 3-4x faster than fp32, if any."""
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        ).split()
    except (OSError, StopIteration):  # not Linux: no cheap way to know, so fp32
        return None
    found = [name for flag, name in [("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16")] if flag in flags]
    return " and ".join(found) or None


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 products run faster than fp32 on the device: a GPU with bf16 units, a CPU with bf16 matrix units."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bf16_matrix_units() is not None


def choose_precision(parser, argv=None) -> str:
    """
    Makes bf16 autocast the default where the hardware has fast bf16 products (a CUDA GPU that supports it, a CPU with
    bf16 matrix units), fp32 elsewhere; --bf16 true/false decides when given. Returns why, for the log. (Set on the
    parser: TrainingArguments passes its precision to Accelerate when it is built.)
    """
    argv = sys.argv[1:] if argv is None else argv
    if any(arg.split("=")[0] in ("--bf16", "--no_bf16", "--fp16") for arg in argv):
        return "as asked on the command line"
    if torch.cuda.is_available() and not any(arg.startswith("--use_cpu") for arg in argv):
        bf16 = fast_bf16(torch.device("cuda"))
        why = "the GPU has bf16 units" if bf16 else "the GPU has no bf16 units"
    elif "WORLD_SIZE" in os.environ and not any(arg.startswith("--use_cpu") for arg in argv):
        return "the default of a launch of several processes (check_processes says what it needs on CPUs)"
    else:  # the Trainer takes bf16 on the CPU only with use_cpu
        units = bf16_matrix_units()
        bf16 = units is not None
        why = f"the CPU has {units}" if bf16 else "the CPU has no bf16 matrix units (AMX, AVX-512 BF16)"
        parser.set_defaults(use_cpu=True)
    parser.set_defaults(bf16=bf16)
    return why


def log_precision(training_args, why: str):
    precision = "bf16 autocast" if training_args.bf16 else "fp16 autocast" if training_args.fp16 else "fp32"
    logger.warning(f"Precision: {precision}, {why}.")


# ---------------------------------------------------------------------------------------------------- data sets

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_MNIST_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format): magic (2 zero bytes, type, number of dimensions), big-endian sizes, the data."""
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    shape = np.frombuffer(data, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@functools.cache
def fashion_mnist(directory: str | Path = FASHION_MNIST) -> DatasetDict:
    """Fashion-MNIST's train and test splits from the four IDX .gz files in `directory`."""
    directory = Path(directory)
    files = {
        split: (directory / f"{prefix}-images-idx3-ubyte.gz", directory / f"{prefix}-labels-idx1-ubyte.gz")
        for split, prefix in [("train", "train"), ("test", "t10k")]
    }
    missing = [path.name for pair in files.values() for path in pair if not path.is_file()]
    if missing:
        raise ValueError(
            f"No data given and Fashion-MNIST is missing from {directory} ({', '.join(missing)}): install Debian's "
            "package as root (`apt-get install -y dataset-fashion-mnist`, or `make train-images`), or put the four "
            ".gz files of github.com/zalandoresearch/fashion-mnist in a folder and pass --fashion_mnist_dir, or pass "
            "--train_dir / --dataset_name."
        )
    features = Features({"image": Image(), "label": ClassLabel(names=FASHION_MNIST_LABELS)})
    return DatasetDict(
        {
            split: Dataset.from_dict({"image": list(read_idx(images)), "label": read_idx(labels)}, features=features)
            for split, (images, labels) in files.items()
        }
    )


SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# The size of a new text model (run_mlm.py, run_text_classification.py), before --config_overrides: the main job's
# (docs/text.md, "Why this size": in its ten minutes, more steps of 2 layers learned more than fewer of 4). The peers
# get the Mixer's width, depth and length, its channels_mlp_dim as their feed-forward width, no dropout (like the
# Mixer), and BERT and RoFormer (BERT with rotary position embeddings in place of learned absolute ones) 64-wide
# attention heads; all score only the masked positions in training (`sparse_prediction`, mixer_scripts.peers).
PEER = dict(hidden_size=128, num_hidden_layers=2, intermediate_size=512, hidden_dropout_prob=0.0)
ATTENTION_PEER = dict(**PEER, num_attention_heads=2, attention_probs_dropout_prob=0.0)
TEXT_MODEL_DEFAULTS = {
    "mlp-mixer": (
        MixerConfig,
        MixerForMaskedLM,
        dict(
            modality="text",
            hidden_size=128,
            num_hidden_layers=2,
            tokens_mlp_dim=128,
            channels_mlp_dim=512,
            sparse_prediction=True,
        ),
    ),
    "bert": (BertConfig, BertForMaskedLM, ATTENTION_PEER),
    "fnet": (FNetConfig, FNetForMaskedLM, PEER),
    "roformer": (RoFormerConfig, RoFormerForMaskedLM, ATTENTION_PEER),
}


@dataclass
class TextModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved model (directory or Hub id) to continue from. Default: a new model."}
    )
    model_type: str = field(
        default="mlp-mixer", metadata={"help": "The new model's kind.", "choices": list(TEXT_MODEL_DEFAULTS)}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Fields of the new model's config, e.g. 'hidden_size=128,num_hidden_layers=6'."},
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "A saved tokenizer to use. Default: the model's, or one trained on the data."}
    )
    tokenizer_type: str = field(
        default="wordpiece",
        metadata={"help": "The tokenizer trained when none is given.", "choices": ["char", "wordpiece"]},
    )
    tokenizer_vocab_size: int = field(default=8192, metadata={"help": "Vocabulary size of a trained WordPiece."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloads are cached."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models and datasets."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the Hub (models, datasets)."})


def train_tokenizer(texts, model_args, max_length: int) -> PreTrainedTokenizerFast:
    """A WordPiece (lower-cased, BERT's pre-tokenizer) or a character-level tokenizer, trained on `texts`."""
    if model_args.tokenizer_type == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=model_args.tokenizer_vocab_size, special_tokens=SPECIAL_TOKENS)
    else:  # every character a token, newlines and spaces included
        tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tokenizer.decoder = decoders.Fuse()
        trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=max_length,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
    )


# ---------------------------------------------------------------------------------------------------- runs


def setup_logging(training_args):
    """Logs each process's rank and world size, then stops a launch whose processes would not train together."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    for module_logger in (logger, logging.getLogger("__main__")):
        module_logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    # Every rank says who it is: the 2-process tests look for both lines.
    logger.warning(
        f"Process rank: {training_args.process_index}, world size: {training_args.world_size}, "
        f"device: {training_args.device}, distributed training: {training_args.parallel_mode.value != 'not_parallel'}"
    )
    check_processes(training_args)


# The variables by which each launcher tells a process how many there are: torchrun and `accelerate launch
# --multi_gpu` (WORLD_SIZE), MPI (`mpirun`, also `accelerate launch --mpirun_hostfile`), and SLURM's srun (the tasks
# of a job step; not SLURM_NTASKS, the allocation's, also seen by a batch script that starts one process). A launcher
# that wraps another (srun → torchrun) sets WORLD_SIZE for the script, which is read first.
WORLD_SIZE_VARIABLES = (
    "WORLD_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "MV2_COMM_WORLD_SIZE",
    "SLURM_STEP_NUM_TASKS",
)


def check_processes(training_args):
    """
    Stops a run that would not train the way it was launched: N > 1 processes that each train alone (the same data,
    one output folder), `accelerate launch --num_processes N` that started one, or FSDP asked for on CPUs, where
    Accelerate wraps the model in DDP instead (it shards only on accelerators).
    """
    on_cpu = training_args.device.type == "cpu"
    fsdp = bool(training_args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if fsdp and on_cpu:
        how = "--fsdp" if training_args.fsdp else "ACCELERATE_USE_FSDP=true, an accelerate FSDP config"
        raise ValueError(
            f"FSDP was asked for ({how}) on CPU processes, where the Trainer and Accelerate do not shard: they would "
            "train with plain DDP (the whole model and optimizer state in every process). Run it on GPUs, or drop "
            "the FSDP options (--fsdp / the accelerate FSDP config) to train with DDP on CPUs; docs/distributed.md "
            "shows FSDP2 (torch.distributed.fsdp.fully_shard) sharding the Mixer on CPUs without the Trainer."
        )
    launcher = next(((name, int(os.environ[name])) for name in WORLD_SIZE_VARIABLES if os.environ.get(name)), None)
    if launcher is None and os.environ.get("ACCELERATE_USE_CPU") is not None and os.environ.get("MASTER_ADDR"):
        # `accelerate launch --num_processes N` (N > 1) without --multi_gpu: it sets MASTER_ADDR, starts one process.
        raise ValueError(
            "`accelerate launch` was asked for several processes but started one, which would train alone: on CPUs "
            "it starts several only with --multi_gpu (and this script's --use_cpu), e.g. `accelerate launch "
            "--multi_gpu --num_processes 2 scripts/<script>.py --use_cpu ...`, or use torchrun."
        )
    if launcher is not None and launcher[1] > 1 and training_args.world_size != launcher[1]:
        name, count = launcher
        if on_cpu and not training_args.use_cpu:
            fix = (
                "add --use_cpu: on a machine without GPUs the Trainer sets up distributed training (gloo) only with it"
            )
        elif name == "SLURM_STEP_NUM_TASKS":
            fix = (
                "srun's tasks do not find each other by themselves: run torchrun in each, e.g. `srun "
                "--ntasks-per-node 1 torchrun --nnodes $SLURM_NNODES --nproc_per_node <processes per node> "
                "--rdzv_backend c10d --rdzv_endpoint <first node>:29500 scripts/<script>.py ...`"
            )
        else:
            fix = "launch it with torchrun or `accelerate launch --multi_gpu`, which set up the process group"
        raise ValueError(
            f"{count} processes were launched ({name}={count}) but this one trains alone (world size "
            f"{training_args.world_size}): they would repeat each other's work and write over each other's output. "
            f"To train with all {count}, {fix}."
        )


def load_pretrained_with_labels(auto_model_class, model_args, label_kwargs: dict):
    """
    The model saved at --model_name_or_path, as `auto_model_class`, with the labels of this data set in its config; a
    classifier of another size is re-initialised with --ignore_mismatched_sizes (and refused without it).
    """
    hub = dict(
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        token=model_args.token,
        trust_remote_code=model_args.trust_remote_code,
    )
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, **hub, **label_kwargs)
    return auto_model_class.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        **hub,
    )


def load_metric(name: str = "accuracy"):
    """
    `evaluate.load(name)` from the Hub, or the copy of the Hub's module shipped under scripts/metrics/ when the Hub
    is unreachable (or HF_HUB_OFFLINE=1, when it is not tried at all).
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes", "on"):
        try:
            return evaluate.load(name)
        except Exception as error:  # no network, no Hub: fall back to the local module
            logger.info(f"evaluate.load({name!r}) from the Hub failed ({type(error).__name__}); using the local copy.")
    return evaluate.load(str(LOCAL_METRICS / name))


def parse_config_overrides(config_class, overrides: str | None) -> dict:
    """
    "hidden_size=256,hidden_act=gelu" → {"hidden_size": 256, "hidden_act": "gelu"}, typed like the fields of
    `config_class` (as `PreTrainedConfig.update_from_string`, which also rejects unknown keys).
    """
    if not overrides:
        return {}
    probe = config_class()
    try:
        probe.update_from_string(overrides)
    except ValueError as error:
        raise ValueError(f"Bad --config_overrides {overrides!r} for {config_class.__name__}: {error}") from error
    return {key: getattr(probe, key) for key in (item.split("=")[0] for item in overrides.split(","))}


def load_dataset_or_explain(*args, hint: str = "", **kwargs):
    """`datasets.load_dataset`, whose failure names what was asked for and what else could be given."""
    try:
        return datasets.load_dataset(*args, **kwargs)
    except Exception as error:
        what = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items() if v is not None])
        raise ValueError(f"Could not load the dataset ({what}): {type(error).__name__}: {error}. {hint}") from error


def load_hub_dataset(data_args, model_args, hint: str, **kwargs):
    """
    --dataset_name (and --dataset_config_name) through `load_dataset_or_explain`, with the model arguments' cache
    folder, token and remote-code choice.
    """
    return load_dataset_or_explain(
        data_args.dataset_name,
        data_args.dataset_config_name,
        cache_dir=model_args.cache_dir,
        token=model_args.token,
        trust_remote_code=model_args.trust_remote_code or None,
        hint=hint,
        **kwargs,
    )


def check_column(dataset, column: str, option: str):
    # A stream (IterableDataset) of csv or json rows knows its columns once it has read a row.
    columns = dataset.column_names if dataset.column_names is not None else list(next(iter(dataset), {}))
    if column not in columns:
        raise ValueError(
            f"The dataset has no column {column!r} (its columns: {', '.join(columns)}); "
            f"name the right one with {option}."
        )


def check_streaming(streaming: bool, training_args):
    if streaming and training_args.do_train and training_args.max_steps <= 0:
        raise ValueError(
            f"--streaming reads data of unknown length: give the number of training steps with "
            f"--max_steps N (got --max_steps {training_args.max_steps})."
        )


def hold_out_every_kth(stream, share: float):
    """
    A stream's (kept, held-out) parts. Of unknown length, a stream cannot be split at random: every k-th row is held
    out, k = 1 / share (every 20th for 5%).
    """
    every = max(2, round(1 / share))
    return (
        stream.filter(lambda _, i: i % every != every - 1, with_indices=True),
        stream.filter(lambda _, i: i % every == every - 1, with_indices=True),
    )


def encode_labels(raw: DatasetDict, column: str) -> DatasetDict:
    """
    The label column as a ClassLabel with the same ids in every split: the sorted values, unless already one. A
    stream (IterableDataset) cannot be read ahead for its values: it must declare its classes.
    """
    feature = (raw["train"].features or {}).get(column)
    streamed = [split for split in raw if isinstance(raw[split], IterableDataset)]
    if streamed and not isinstance(feature, ClassLabel):
        raise ValueError(
            f"With --streaming the labels must be classes that the dataset declares (a ClassLabel feature, as image "
            f"folders and most Hub image datasets have); column {column!r} is {feature}. Without --streaming the "
            "script reads the values and encodes them itself."
        )
    if isinstance(feature, ClassLabel):
        for split in [split for split in raw if split not in streamed]:
            ids = set(raw[split].unique(column))
            if split == "test" and ids == {-1}:  # an unlabelled test split (GLUE's): nothing to evaluate
                logger.warning("The test split has no labels (all -1): it is not evaluated.")
                del raw[split]
            elif not ids <= set(range(feature.num_classes)):
                raise ValueError(
                    f"The {split} split has labels {sorted(ids - set(range(feature.num_classes)))} in "
                    f"column {column!r}, outside its {feature.num_classes} classes {feature.names}."
                )
        names = feature.names
    else:
        dtype = str(getattr(feature, "dtype", ""))
        if dtype not in ("string", "large_string", "bool") and not dtype.startswith(("int", "uint")):
            raise ValueError(
                f"The labels in column {column!r} are not classes: {feature}, e.g. {raw['train'][0][column]!r} "
                "(a column of integers with missing labels reads as floats). Expected a string or an integer a row; "
                "name the column of classes with --label_column_name."
            )
        values = {value for split in raw for value in raw[split].unique(column)}
        if None in values:
            raise ValueError(f"Some rows have no label in column {column!r}: every example needs a class.")
        values = sorted(values)
        label2id = {value: i for i, value in enumerate(values)}
        names = [str(value) for value in values]
        raw = raw.map(
            lambda batch: {column: [label2id[v] for v in batch[column]]}, batched=True, desc="Encoding the labels"
        ).cast_column(column, ClassLabel(names=names))
    if len(names) < 2:
        raise ValueError(f"The column {column!r} holds a single class ({names}): a classifier needs two at least.")
    return raw


class Fp32Muon(torch.optim.Muon):
    """
    `torch.optim.Muon` with its Newton-Schulz iterations in fp32 rather than bf16 (timm's, which takes the dtype), for
    hardware without fast bf16 products: there bf16 is emulated (a 512×128 by 128×512 product took 14-15x as long as
    in fp32 on an AVX2-only AMD EPYC; docs/results/2026-12-06-avx2-cpu.md). The update is torch's otherwise.
    """

    @torch.no_grad()
    def step(self, closure=None):
        from timm.optim.muon import zeropower_via_newtonschulz  # all of timm, ~2 s: only where this optimizer runs

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in (param for param in group["params"] if param.grad is not None):
                buffer = self.state[param].setdefault("momentum_buffer", torch.zeros_like(param.grad))
                buffer.lerp_(param.grad, 1 - group["momentum"])
                update = param.grad.lerp(buffer, group["momentum"]) if group["nesterov"] else buffer
                # Every singular value of the update pushed towards 1 (U Vᵀ, roughly, of its SVD U S Vᵀ)
                update = zeropower_via_newtonschulz(
                    update, group["ns_steps"], [group["ns_coefficients"]], group["eps"], dtype=torch.float32
                )
                param.mul_(1 - group["lr"] * group["weight_decay"])
                lr = torch.optim._muon._adjust_lr(group["lr"], group["adjust_lr_fn"], param.shape)  # torch's scaling
                param.add_(update, alpha=-lr)
        return loss


class MuonWithAdamW(torch.optim.Optimizer):
    """
    Muon (`torch.optim.Muon`: momentum orthogonalised by Newton-Schulz iterations, Jordan et al. 2024) for the given
    matrices and AdamW for the other parameters, as one optimizer, so that the Trainer's one schedule drives both.
    Muon's update is scaled to the RMS of AdamW's (`match_rms_adamw`, Liu et al. 2025): one learning rate and one
    weight decay serve both. With `fp32_newton_schulz`, Muon is `Fp32Muon`.
    """

    def __init__(
        self, matrices, adamw_groups, lr: float, weight_decay: float, betas, eps: float, fp32_newton_schulz=False
    ):
        muon = Fp32Muon if fp32_newton_schulz else torch.optim.Muon
        self.optimizers = {
            "muon": muon(matrices, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw"),
            "adamw": torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay),
        }
        super().__init__([p for group in adamw_groups for p in group["params"]] + list(matrices), {})
        self.share_param_groups()

    def share_param_groups(self):
        # The two optimizers' own groups, not copies, so that the schedule's learning rates reach both. Loading a
        # state makes new groups: Accelerate loads one when it wraps the optimizer, the Trainer when it resumes.
        self.param_groups = [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    def step(self, closure=None):
        loss = None
        if closure is not None:  # once for both, as torch's optimizers evaluate it
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers.values():
            optimizer.step()
        return loss

    def state_dict(self):
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state_dict):
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state_dict[name])
        self.share_param_groups()


class MuonTrainer(Trainer):
    """
    The Trainer, with `muon`: the weights of the trunk's linear layers (`model.base_model`: the Mixer layers, or the
    encoder of a ViT or BERT) trained with Muon, the rest (embeddings, patch projection, norms, biases, heads) with
    AdamW, under the Trainer's one learning rate, weight decay and schedule. Where bf16 products are not fast (a CPU
    without bf16 matrix units), Muon's Newton-Schulz iterations run in fp32 (`Fp32Muon`).
    """

    def __init__(self, *args, muon: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.muon = muon

    def create_optimizer(self, model=None):
        if not self.muon or self.optimizer is not None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        trunk_matrices = {
            id(module.weight) for module in model.base_model.modules() if isinstance(module, torch.nn.Linear)
        }
        decay = set(self.get_decay_parameter_names(model))
        matrices, decayed, not_decayed = [], [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (matrices if id(param) in trunk_matrices else decayed if name in decay else not_decayed).append(param)
        args = self.args
        self.optimizer = MuonWithAdamW(
            matrices,
            [{"params": decayed}, {"params": not_decayed, "weight_decay": 0.0}],
            lr=args.learning_rate,
            weight_decay=args.weight_decay,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            fp32_newton_schulz=not fast_bf16(args.device),
        )
        return self.optimizer


class StopOnDivergence(TrainerCallback):
    """
    Stops the run at the first logging step where a weight holds NaN or inf: the training diverged, and going on
    would only write broken checkpoints over good ones. (The Trainer's logged loss hides NaN by default, see
    `logging_nan_inf_filter`; the weights do not.) Checked at logging steps only, not every step: on a GPU each
    weight's check is a host sync.
    """

    def on_log(self, args, state, control, model=None, **kwargs):
        broken = [name for name, param in model.named_parameters() if not torch.isfinite(param).all()]
        if broken:
            raise ValueError(
                f"The training diverged by step {state.global_step}: NaN or inf in {', '.join(broken[:8])}"
                f"{f' and {len(broken) - 8} more' if len(broken) > 8 else ''}. Resume from an earlier checkpoint with "
                "a lower --learning_rate (or a longer --warmup_steps, --max_grad_norm 1.0)."
            )


def train_evaluate_save(
    trainer, training_args, train_dataset, eval_dataset, card_kwargs, extra_eval=None, perplexity=False
):
    """Trains, saves model and processor (and trainer_state.json), evaluates, pushes to the Hub or writes the card."""
    if training_args.do_train:
        trainer.add_callback(StopOnDivergence())
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()  # the model and the processing class (tokenizer or image processor)
        metrics = train_result.metrics
        if hasattr(train_dataset, "__len__"):  # not a stream (IterableDataset)
            metrics["train_samples"] = len(train_dataset)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
    results = {}
    if training_args.do_eval:
        for prefix, dataset in [("eval", eval_dataset), *(extra_eval or {}).items()]:
            metrics = trainer.evaluate(dataset, metric_key_prefix=prefix)
            metrics[f"{prefix}_samples"] = len(dataset)
            if perplexity:
                metrics[f"{prefix}_perplexity"] = math.exp(min(metrics[f"{prefix}_loss"], 700))  # no overflow
            trainer.log_metrics(prefix, metrics)
            trainer.save_metrics(prefix, metrics)
            results.update(metrics)
    if training_args.push_to_hub:
        trainer.push_to_hub(**card_kwargs)
        if trainer.model.config.model_type == MixerConfig.model_type:  # a baseline keeps Trainer's card
            # Trainer.push_to_hub rewrote README.md: the Mixer's card (tags, results, usage snippet) goes after it.
            card = write_model_card(
                training_args.output_dir,
                trainer.hub_model_id,
                card_kwargs["tasks"],
                metrics=results,
                dataset=card_kwargs.get("dataset_tags"),
            )
            card.push_to_hub(trainer.hub_model_id, token=training_args.hub_token)
    else:
        trainer.create_model_card(**card_kwargs)
    return results
