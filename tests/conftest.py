"""Every test runs offline, with a temporary HF_HOME: nothing reaches or pollutes the Hub cache."""

import os
import sys
import tempfile

from helpers import ROOT

# Set before transformers / huggingface_hub are imported: they read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="mixer-tests-hf-home-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(ROOT))  # the two model files, also when the package is not installed
sys.path.insert(1, str(ROOT / "scripts"))  # the scripts' modules, imported by name as the scripts import them
