#!/usr/bin/env python
"""
Trains the small Mixer that the resize tests load (tests/data/mixer-fashion-mnist-28): run_image_classification.py's
recipe on the full Fashion-MNIST (28×28, patches 4×4: a 7×7 grid), hidden 64, 3 layers, D_S 32, D_C 128, 1,500 steps
(a few minutes on 2 CPU cores). Keeps the config, the weights (~260 KB) and the image processor.

    python scripts/test_data/make_resize_test_model.py
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL = "patch_size=4,hidden_size=64,num_hidden_layers=3,tokens_mlp_dim=32,channels_mlp_dim=128"
KEPT = ["config.json", "model.safetensors", "preprocessor_config.json"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path(__file__).parents[2] / "tests/data/mixer-fashion-mnist-28")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                Path(__file__).parents[1] / "training" / "run_image_classification.py",
                "--config_overrides",
                MODEL,
                "--max_steps",
                "1500",
                "--eval_steps",
                "500",
                "--use_cpu",
                "--bf16",
                "false",
                "--disable_tqdm",
                "true",
                "--seed",
                "0",
                "--output_dir",
                tmp,
            ],
            check=True,
        )
        results = json.loads((Path(tmp) / "all_results.json").read_text())
        args.output.mkdir(parents=True, exist_ok=True)
        for name in KEPT:
            shutil.copy(Path(tmp) / name, args.output / name)
    print(f"Wrote {args.output}: test accuracy {results['test_accuracy']:.4f} on the 10,000 test images")


if __name__ == "__main__":
    main()
