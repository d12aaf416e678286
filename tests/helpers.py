"""What several test files share."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST_SAMPLE = ROOT / "tests/data/fashion-mnist"  # 1,000 train and 500 test images
TINY_IMAGES = [
    "--fashion_mnist_dir",
    str(FASHION_MNIST_SAMPLE),
    "--max_train_samples",
    "600",
    "--max_eval_samples",
    "100",
    "--per_device_train_batch_size",
    "32",
    "--per_device_eval_batch_size",
    "100",
    "--learning_rate",
    "5e-3",
    "--logging_steps",
    "5",
    "--eval_steps",
    "1000",
    "--use_cpu",
    "--disable_tqdm",
    "true",
]

BLOCK_PACKAGE = """
import importlib.abc, sys
class BlockPackage(importlib.abc.MetaPathFinder):  # as on a machine that never installed this project
    def find_spec(self, name, path=None, target=None):
        if name in ("configuration_mixer", "modeling_mixer"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, BlockPackage())
try:
    import modeling_mixer
    sys.exit("the block does not work")
except ModuleNotFoundError:
    pass
"""


def run_without_package(code: str, env: dict | None = None) -> str:
    """
    Runs `code` in a fresh Python process that cannot import this project; returns its stdout. `env`: the process's
    whole environment (default: this one's).
    """
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_PACKAGE + textwrap.dedent(code)], capture_output=True, text=True, cwd="/", env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout
