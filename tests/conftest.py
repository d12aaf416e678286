"""Every test runs offline, with a temporary HF_HOME: nothing reaches or pollutes the Hub cache."""

import os
import tempfile

# Set before torch, transformers and huggingface_hub are imported: they read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
_hf_home = tempfile.TemporaryDirectory(prefix="mixer-tests-hf-home-")  # removed when the session ends
os.environ["HF_HOME"] = _hf_home.name
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch.compile's on-disk cache, one per CPU kernel set: inductor reuses code compiled under another
# ATEN_CPU_CAPABILITY (its cache key leaves it out), and that code aborted or gave NaN in the compiled tests.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"mixer-tests-inductor-{os.environ.get('ATEN_CPU_CAPABILITY', 'native')}"),
)

import pytest  # noqa: E402

from helpers import FASHION_MNIST_SAMPLE  # noqa: E402


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    """Shakespeare as two local text files (a line a row): 600 speeches to train on, 100 to evaluate on."""
    from mixer_scripts.training import run_mlm

    folder = tmp_path_factory.mktemp("text")
    plays = run_mlm.shakespeare()
    (folder / "train.txt").write_text("".join(plays["train"]["text"][:600]))
    (folder / "validation.txt").write_text("".join(plays["validation"]["text"][:100]))
    return ["--train_file", str(folder / "train.txt"), "--validation_file", str(folder / "validation.txt")]


@pytest.fixture
def image_folders(tmp_path):
    """Two classes of real Fashion-MNIST images as PNG files, in train/ and val/."""
    from mixer_scripts.common import fashion_mnist

    data = fashion_mnist(FASHION_MNIST_SAMPLE)["train"]
    for split, rows in [("train", range(0, 300)), ("val", range(300, 400))]:
        for index in rows:
            example = data[index]
            if example["label"] in (1, 7):
                name = data.features["label"].names[example["label"]]
                (tmp_path / split / name).mkdir(parents=True, exist_ok=True)
                example["image"].save(tmp_path / split / name / f"{index}.png")
    return tmp_path
