"""
transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`, `PipelineTesterMixin`), imported from the
`tests/` folder of the installed version's source distribution, which `make install` unpacks into
`.venv/transformers-tests/` (the wheel holds no tests).

The source distribution lacks the subfolders that these three files import a few names from: the export tests
(`exporters/`), the generation tests (`generation/`), the configuration utilities (`utils/`) and the per-task
pipeline tests (`pipelines/`). They are stood in for below, each with what it means for the tests that run.
"""

import importlib
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import transformers
from transformers import PreTrainedConfig

from helpers import ROOT

TESTS_DIR = Path(os.environ.get("TRANSFORMERS_COMMON_TESTS", ROOT / ".venv" / "transformers-tests" / "tests"))
PACKAGE = "transformers_common_tests"

if not (TESTS_DIR / "test_modeling_common.py").is_file():
    raise ImportError(
        f"transformers' common tests are not in {TESTS_DIR}: run `make install`, which unpacks them from the "
        f"transformers {transformers.__version__} source distribution (or point TRANSFORMERS_COMMON_TESTS to them)."
    )


def _stand_in(name: str, **attributes):
    module = types.ModuleType(f"{PACKAGE}.{name}")
    module.__dict__.update(attributes)
    sys.modules[module.__name__] = module


class ExportTesterMixin:
    """
    Not in the distribution, and no copy that matches the installed transformers can be had from PyPI (the file
    follows transformers' main branch, whose exporters change from release to release). tests/test_integrations.py
    runs the equivalent: transformers' DynamoExporter and OnnxExporter on the Mixer classes, against eager.
    """


class GenerationTesterMixin:
    """Not in the distribution; only named in a check that a model which cannot generate does not use it."""


# `ConfigTester.check_config_arguments_init` sets each of these and reads it back: a value other than the default
# for every field of `PreTrainedConfig` that a user may set (the upstream list lives in the missing utils/).
_defaults = PreTrainedConfig()
config_common_kwargs = {
    "return_dict": not _defaults.return_dict,
    "output_hidden_states": not _defaults.output_hidden_states,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["MixerModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}

package = types.ModuleType(PACKAGE)
package.__path__ = [str(TESTS_DIR)]
sys.modules[PACKAGE] = package
_stand_in("exporters", __path__=[])
_stand_in("exporters.test_export", ExportTesterMixin=ExportTesterMixin)
_stand_in("generation", __path__=[])
_stand_in("generation.test_utils", GenerationTesterMixin=GenerationTesterMixin)
_stand_in("utils", __path__=[])
_stand_in("utils.test_configuration_utils", config_common_kwargs=config_common_kwargs)

# PipelineTesterMixin reads the list of tiny Hub models at import. With no Mixer in it (an empty list in a local
# folder), each pipeline test skips with transformers' own reason; the per-task pipeline tests that it would run are
# not in the distribution either. tests/test_modeling.py, test_conversion.py and test_text_heads.py run our
# pipelines (fill-mask, image-classification, text- and token-classification, feature-extraction).
_tiny_models_folder = tempfile.TemporaryDirectory(prefix="mixer-tiny-models-")  # removed when the session ends
_tiny_models = Path(_tiny_models_folder.name)
(_tiny_models / "reports").mkdir()
(_tiny_models / "reports" / "tiny_model_summary.json").write_text(json.dumps({}))
os.environ["TRANSFORMERS_TINY_MODEL_PATH"] = str(_tiny_models)

test_modeling_common = importlib.import_module(f"{PACKAGE}.test_modeling_common")
test_configuration_common = importlib.import_module(f"{PACKAGE}.test_configuration_common")
test_pipeline_mixin = importlib.import_module(f"{PACKAGE}.test_pipeline_mixin")

ModelTesterMixin = test_modeling_common.ModelTesterMixin
ConfigTester = test_configuration_common.ConfigTester
PipelineTesterMixin = test_pipeline_mixin.PipelineTesterMixin
floats_tensor = test_modeling_common.floats_tensor
ids_tensor = test_modeling_common.ids_tensor
random_attention_mask = test_modeling_common.random_attention_mask
