"""
The Hub round trip, end to end, against the stand-in Hub of hub_server.py on 127.0.0.1: push a model, a tokenizer, an
image processor and a Trainer run; pull them back with the package, without it (`trust_remote_code=True`), at a
pinned revision and offline from the cache.

`huggingface_hub` reads HF_ENDPOINT when it is imported, so every push and pull runs in a subprocess whose
environment names the test Hub; this process (offline, see conftest.py) only reads the server's storage. The
subprocesses run once per module (fixtures) and leave their tensors in files, which the tests compare.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import ModelCard

from configuration_mixer import MIXER_AUTO_MAP
from helpers import ROOT, run_without_package
from hub_server import HubServer
from mixer_scripts import model_card

MLM, IMAGE, TRAINED = "user/mixer-mlm", "user/mixer-image", "user/mixer-trained"
SOURCES = ("configuration_mixer.py", "modeling_mixer.py")
TEXTS = ["w1 w2 [MASK] w3 zzz", "w4"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with HubServer(tmp_path_factory.mktemp("hub")) as server:
        yield server


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def env(hub, work, tmp_path_factory):
    """The environment of every push and pull: the test Hub, a dummy token, online, one fresh HF_HOME."""
    return {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": "dummy",
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path_factory.mktemp("hf-home")),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
        "WORK": str(work),
    }


def run_with_package(code: str, env: dict) -> str:
    """Runs `code` in a fresh process that imports this project (installed, as the tests run it)."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=env["WORK"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# ---------------------------------------------------------------------------------------------------- push

PUSH = """
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, ViTImageProcessor

from configuration_mixer import MixerConfig
from modeling_mixer import MixerForImageClassification, MixerForMaskedLM

work = Path(os.environ["WORK"])
torch.manual_seed(0)
out = {}

# A word-level tokenizer, then the same MLM twice, with other weights the second time.
words = ["[PAD]", "[UNK]", "[MASK]"] + [f"w{i}" for i in range(47)]
backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                    mask_token="[MASK]", model_input_names=["input_ids", "attention_mask"])
tokenizer.push_to_hub("user/mixer-mlm")
batch = tokenizer(%(texts)r, padding="max_length", max_length=12, return_tensors="pt")
out["input_ids"] = batch.input_ids
model = MixerForMaskedLM(MixerConfig(modality="text", vocab_size=50, max_position_embeddings=12, hidden_size=32,
                                     num_hidden_layers=2, tokens_mlp_dim=16, channels_mlp_dim=64)).eval()
with torch.no_grad():
    out["first"] = model.push_to_hub("user/mixer-mlm").oid
    out["logits1"] = model(**batch).logits
    for p in model.parameters():
        p.add_(0.1 * torch.randn_like(p))
    out["second"] = model.push_to_hub("user/mixer-mlm").oid
    out["logits2"] = model(**batch).logits

# An image classifier (a random head: the Mixer's starts at zero) and its image processor.
config = MixerConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, tokens_mlp_dim=16,
                     channels_mlp_dim=64, num_labels=3)
model = MixerForImageClassification(config).eval()
torch.nn.init.normal_(model.classifier.weight)
processor = ViTImageProcessor(size={"height": 32, "width": 32})
processor.push_to_hub("user/mixer-image")
model.push_to_hub("user/mixer-image")
Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(work / "image.png")
out["pixel_values"] = processor(Image.open(work / "image.png"), return_tensors="pt").pixel_values
with torch.no_grad():
    out["image_logits"] = model(out["pixel_values"]).logits
torch.save(out, work / "pushed.pt")
""" % {"texts": TEXTS}


@pytest.fixture(scope="module")
def pushed(hub, env, work):
    run_with_package(PUSH, env)
    return torch.load(work / "pushed.pt")


def test_push_publishes_complete_repos(hub, pushed):
    # initial commit, tokenizer, model, model again: each push is a revision; the first model's stays readable
    commits = hub.store.commits(MLM)
    assert commits[2:] == [pushed["first"], pushed["second"]] and len(commits) == 4
    first, files = hub.files(MLM, pushed["first"]), hub.files(MLM)
    assert first["model.safetensors"] != files["model.safetensors"]
    for name in ["model.safetensors", "config.json", "README.md", "tokenizer.json", "tokenizer_config.json", *SOURCES]:
        assert name in files, name
    for name in SOURCES:
        assert files[name] == (ROOT / name).read_bytes()
    config = json.loads(files["config.json"])
    assert config["auto_map"] == MIXER_AUTO_MAP and config["model_type"] == "mlp-mixer"
    assert sorted(config["auto_map"]) == [
        "AutoConfig",
        "AutoModel",
        "AutoModelForImageClassification",
        "AutoModelForMaskedLM",
        "AutoModelForSequenceClassification",
        "AutoModelForTokenClassification",
    ]

    image = hub.files(IMAGE)
    for name in ["model.safetensors", "config.json", "preprocessor_config.json", "README.md", *SOURCES]:
        assert name in image, name
    preprocessor = json.loads(image["preprocessor_config.json"])
    assert preprocessor["image_processor_type"].startswith("ViTImageProcessor")
    assert preprocessor["size"] == {"height": 32, "width": 32}


def test_push_to_hub_card_is_transformers_own(hub, pushed):
    """What `model.push_to_hub` writes: transformers' template card, library_name only."""
    card = ModelCard(hub.files(MLM)["README.md"].decode())
    assert card.data.library_name == "transformers"
    assert "pushed on the Hub" in card.text


# ---------------------------------------------------------------------------------------------------- Trainer

TRAIN = """
import os
from pathlib import Path

import torch
from transformers import AutoModelForImageClassification, Trainer, TrainingArguments, ViTImageProcessor

from configuration_mixer import MixerConfig
from mixer_scripts.model_card import write_model_card
from modeling_mixer import MixerForImageClassification

work = Path(os.environ["WORK"])
torch.manual_seed(0)
pixel_values = torch.randn(32, 3, 16, 16)
labels = (pixel_values[:, 0].mean((1, 2)) > 0).long()  # bright or dark red channel
data = [{"pixel_values": p, "labels": y} for p, y in zip(pixel_values, labels)]
config = MixerConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, tokens_mlp_dim=16,
                     channels_mlp_dim=64, num_labels=2, id2label={0: "dark", 1: "bright"},
                     label2id={"dark": 0, "bright": 1})
args = TrainingArguments(output_dir=str(work / "trained"), max_steps=4, per_device_train_batch_size=8,
                         learning_rate=1e-2, logging_steps=2, save_strategy="no", use_cpu=True, report_to=[],
                         hub_model_id="user/mixer-trained")
trainer = Trainer(
    model=MixerForImageClassification(config), args=args, train_dataset=data[:24], eval_dataset=data[24:],
    processing_class=ViTImageProcessor(size={"height": 16, "width": 16}),
    compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
)
trainer.train()
metrics = trainer.evaluate()
# as scripts/common.py: Trainer's push and card, then ours (Trainer.push_to_hub rewrites README.md)
trainer_commit = trainer.push_to_hub(tasks="image-classification", dataset_tags="user/toy-images",
                                     dataset="toy images").oid
card = write_model_card(args.output_dir, trainer.hub_model_id, "image-classification", metrics=metrics,
                        dataset="user/toy-images", dataset_name="toy images")
card.push_to_hub(trainer.hub_model_id)
model = trainer.model.eval()
reloaded = AutoModelForImageClassification.from_pretrained("user/mixer-trained").eval()
with torch.no_grad():
    logits, reloaded_logits = model(pixel_values).logits, reloaded(pixel_values).logits
torch.save({"metrics": metrics, "trainer_commit": trainer_commit, "hub_model_id": trainer.hub_model_id,
            "logits": logits, "reloaded_logits": reloaded_logits}, work / "trained.pt")
"""


@pytest.fixture(scope="module")
def trained(hub, env, work):
    run_with_package(TRAIN, env)
    return torch.load(work / "trained.pt")


def test_trainer_push_to_hub(hub, trained):
    assert trained["hub_model_id"] == TRAINED
    files = hub.files(TRAINED, trained["trainer_commit"])
    for name in ["model.safetensors", "config.json", "preprocessor_config.json", "README.md", *SOURCES]:
        assert name in files, name
    for name in SOURCES:
        assert files[name] == (ROOT / name).read_bytes()
    assert json.loads(files["config.json"])["auto_map"] == MIXER_AUTO_MAP
    assert torch.equal(trained["reloaded_logits"], trained["logits"])

    # Trainer's own card: library, tags, dataset, and the evaluation of the run as a model-index result
    card = ModelCard(files["README.md"].decode())
    metrics = trained["metrics"]
    assert card.data.library_name == "transformers"
    assert "generated_from_trainer" in card.data.tags
    assert card.data.datasets == ["user/toy-images"] and card.data.metrics == ["accuracy"]
    [result] = card.data.eval_results
    assert (result.task_type, result.dataset_type, result.metric_type) == (
        "image-classification",
        "user/toy-images",
        "accuracy",
    )
    assert result.metric_value == metrics["eval_accuracy"]


def test_model_card_pushed_after_trainer(hub, trained):
    """write_model_card's card, pushed after Trainer.push_to_hub: Trainer's body, our metadata, the usage snippet."""
    commits = hub.store.commits(TRAINED)
    assert commits[-2] == trained["trainer_commit"]  # one more commit: the card
    text = hub.files(TRAINED)["README.md"].decode()
    card, metrics = ModelCard(text), trained["metrics"]
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "image-classification"
    assert data.tags[:2] == ["mlp-mixer", "image-classification"] and "generated_from_trainer" in data.tags
    assert data.datasets == ["user/toy-images"] and data.metrics == ["accuracy"]
    assert data.model_name == "mixer-trained"
    results = {r.metric_type: r for r in data.eval_results}
    assert {k: r.metric_value for k, r in results.items()} == {
        "loss": metrics["eval_loss"],
        "accuracy": metrics["eval_accuracy"],
    }
    assert {(r.task_type, r.dataset_type, r.dataset_name, r.dataset_split) for r in results.values()} == {
        ("image-classification", "user/toy-images", "toy images", "validation")
    }
    assert model_card.usage_snippet(TRAINED, "image-classification") in text
    assert "AutoModelForImageClassification.from_pretrained(repo, trust_remote_code=True)" in text
    assert "### Training hyperparameters" in text  # Trainer's body is kept, one sentence mended:
    assert "fine-tuned version of [](" in hub.files(TRAINED, trained["trainer_commit"])["README.md"].decode()
    assert "This model was trained from scratch on the toy images dataset." in text


def test_write_model_card_alone(tmp_path):
    """No card there yet: a short body with the snippet; a second call changes nothing."""
    card = model_card.write_model_card(
        tmp_path,
        "user/m",
        "fill-mask",
        metrics={"eval_loss": 2.5, "epoch": 1.0, "eval_perplexity": 12.2, "eval_runtime": 0.1},
        dataset="user/text",
    )
    assert ModelCard.load(tmp_path / "README.md").data.to_dict() == card.data.to_dict()
    assert card.data.to_dict()["tags"] == ["mlp-mixer", "fill-mask"] and card.data.metrics == ["perplexity"]
    assert sorted((r.metric_type, r.metric_value) for r in card.data.eval_results) == [
        ("loss", 2.5),
        ("perplexity", 12.2),
    ]
    assert card.text.count("## Usage") == 1 and "AutoModelForMaskedLM.from_pretrained(repo" in card.text
    assert str(
        model_card.write_model_card(
            tmp_path,
            "user/m",
            "fill-mask",
            metrics={"eval_loss": 2.5, "epoch": 1.0, "eval_perplexity": 12.2, "eval_runtime": 0.1},
            dataset="user/text",
        )
    ) == str(card)
    bare = model_card.write_model_card(tmp_path / "bare", "user/m", "image-classification", metrics={"eval_loss": 1})
    assert bare.data.eval_results is None and bare.data.datasets is None  # no dataset: no model-index
    with pytest.raises(ValueError, match="task must be one of"):
        model_card.write_model_card(tmp_path, "user/m", "translation")


def test_pushed_cards_carry_the_mixer_tag(hub, pushed, trained):
    """`model.push_to_hub` and `Trainer.push_to_hub` put `model.model_tags` into the card's tags."""
    assert "mlp-mixer" in ModelCard(hub.files(MLM)["README.md"].decode()).data.tags
    assert "mlp-mixer" in ModelCard(hub.files(TRAINED, trained["trainer_commit"])["README.md"].decode()).data.tags


# ---------------------------------------------------------------------------------------------------- pull

PULL = """
import os
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, AutoModelForMaskedLM, AutoTokenizer

work, name = Path(os.environ["WORK"]), os.environ["PULL"]
out = {}
if name == "package":
    import modeling_mixer  # registers the Mixer with the Auto classes
remote = {"trust_remote_code": True} if name != "package" else {}
first = torch.load(work / "pushed.pt")["first"]
with torch.no_grad():
    tokenizer = AutoTokenizer.from_pretrained("user/mixer-mlm", **remote)
    batch = tokenizer(%(texts)r, padding="max_length", max_length=12, return_tensors="pt")
    out["input_ids"] = batch.input_ids
    model = AutoModelForMaskedLM.from_pretrained("user/mixer-mlm", **remote).eval()
    out["logits2"], out["module"] = model(**batch).logits, type(model).__module__
    out["logits1"] = AutoModelForMaskedLM.from_pretrained("user/mixer-mlm", revision=first, **remote)(**batch).logits
    processor = AutoImageProcessor.from_pretrained("user/mixer-image", **remote)
    out["pixel_values"] = processor(Image.open(work / "image.png"), return_tensors="pt").pixel_values
    model = AutoModelForImageClassification.from_pretrained("user/mixer-image", **remote).eval()
    out["image_logits"] = model(out["pixel_values"]).logits
torch.save(out, work / f"pulled-{name}.pt")
""" % {"texts": TEXTS}


@pytest.fixture(scope="module")
def pulled(hub, env, work, pushed, trained, tmp_path_factory):
    """
    Each way of loading in its own process and with its own cache: with the package; without it (remote code);
    without it and offline, from the cache that the previous one filled.
    """
    run_with_package(PULL, {**env, "PULL": "package", "HF_HOME": str(tmp_path_factory.mktemp("hf-home"))})
    remote = {**env, "PULL": "remote", "HF_HOME": str(tmp_path_factory.mktemp("hf-home"))}
    run_without_package(PULL, remote)
    requests = len(hub.log)
    run_without_package(PULL, {**remote, "PULL": "offline", "HF_HUB_OFFLINE": "1"})
    assert len(hub.log) == requests, hub.log[requests:]  # offline: not one request
    return {name: torch.load(work / f"pulled-{name}.pt") for name in ("package", "remote", "offline")}


@pytest.mark.parametrize("how", ["package", "remote", "offline"])
def test_pull_gives_identical_outputs(pulled, pushed, how):
    out = pulled[how]
    # the class: the package's, or the repo's code, from the modules cache (transformers_modules)
    module = "modeling_mixer" if how == "package" else "transformers_modules.user.mixer_hyphen_mlm."
    assert out["module"].startswith(module)
    assert torch.equal(out["input_ids"], pushed["input_ids"])  # the tokenizer
    assert torch.equal(out["logits2"], pushed["logits2"])  # the latest push
    assert torch.equal(out["logits1"], pushed["logits1"])  # revision=<first commit>: the first weights
    assert not torch.equal(pushed["logits1"], pushed["logits2"])
    assert torch.equal(out["pixel_values"], pushed["pixel_values"])  # the image processor
    assert torch.equal(out["image_logits"], pushed["image_logits"])


# The usage snippet of the Trainer run's card, as written, in a process of its own: transformers reuses the classes
# of the first repo that it loads with remote code for every later repo of the same model_type.
SNIPPET = """
import os
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from PIL import Image

work = Path(os.environ["WORK"])
snippet = ModelCard.load("user/mixer-trained").text.split("```python")[1].split("```")[0]
scope = {"image": Image.open(work / "image.png")}
exec(snippet, scope)
torch.save({"logits": scope["logits"], "module": type(scope["model"]).__module__}, work / "snippet.pt")
"""


def test_usage_snippet_runs_without_package(env, work, pushed, trained, tmp_path_factory):
    run_without_package(SNIPPET, {**env, "HF_HOME": str(tmp_path_factory.mktemp("hf-home"))})
    out = torch.load(work / "snippet.pt")
    assert out["module"].startswith("transformers_modules.user.mixer_hyphen_trained")
    assert out["logits"].shape == (1, 2)
