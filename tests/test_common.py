"""
transformers' common model tests on every Mixer class, wired as transformers' own tests/models/vit/test_modeling_vit.py
wires them: a model tester per modality, `ConfigTester`, `ModelTesterMixin` and `PipelineTesterMixin`.
"""

import contextlib
import copy
import unittest
from unittest import mock

import pytest
import torch
from torch import nn
from transformers.exporters.exporter_dynamo import DynamoConfig, DynamoExporter
from transformers.exporters.exporter_onnx import OnnxConfig, OnnxExporter
from transformers.exporters.utils import get_leaf_tensors
from transformers.models.auto import modeling_auto
from transformers.testing_utils import set_config_for_less_flaky_test, set_model_for_less_flaky_test

from configuration_mixer import MixerConfig
from helpers import with_head
from modeling_mixer import (
    MixerForImageClassification,
    MixerForMaskedLM,
    MixerForSequenceClassification,
    MixerForTokenClassification,
    MixerModel,
)
from transformers_common import (
    ConfigTester,
    ModelTesterMixin,
    PipelineTesterMixin,
    floats_tensor,
    ids_tensor,
    random_attention_mask,
)

# The common tests know a library model's base class and heads by name, from transformers' name mappings (what a
# model's entry in models/auto/modeling_auto.py gives): they skip the base model in the training tests and give each
# head labels of its shape. The Mixer registers its classes at import instead; here it gets the entries it would have,
# for this module's tests only.
LIBRARY_NAMES = {
    "MODEL_MAPPING_NAMES": "MixerModel",
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES": "MixerForImageClassification",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES": "MixerForMaskedLM",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": "MixerForSequenceClassification",
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES": "MixerForTokenClassification",
}


@pytest.fixture(scope="module", autouse=True)
def library_names():
    with contextlib.ExitStack() as stack:
        for mapping, name in LIBRARY_NAMES.items():
            stack.enter_context(mock.patch.dict(getattr(modeling_auto, mapping), {MixerConfig.model_type: name}))
        yield


class MixerModelTester:
    """Tiny Mixers and their inputs: images of 16×16 pixels in 4×4 patches, or texts of 7 tokens out of 16."""

    def __init__(
        self,
        parent,
        modality,
        batch_size=13,
        image_size=16,
        patch_size=4,
        num_channels=3,
        seq_length=7,
        max_position_embeddings=16,
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        tokens_mlp_dim=16,
        channels_mlp_dim=37,
        num_labels=3,
        is_training=True,
    ):
        self.parent, self.modality = parent, modality
        self.batch_size, self.image_size, self.patch_size, self.num_channels = (
            batch_size,
            image_size,
            patch_size,
            num_channels,
        )
        self.max_position_embeddings, self.vocab_size = max_position_embeddings, vocab_size
        self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
        self.tokens_mlp_dim, self.channels_mlp_dim, self.num_labels = tokens_mlp_dim, channels_mlp_dim, num_labels
        self.is_training = is_training
        # The length of the hidden states: patches per image, or the text's length.
        self.seq_length = (image_size // patch_size) ** 2 if modality == "image" else seq_length

    def get_config(self) -> MixerConfig:
        return MixerConfig(
            modality=self.modality,
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            max_position_embeddings=self.max_position_embeddings,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            tokens_mlp_dim=self.tokens_mlp_dim,
            channels_mlp_dim=self.channels_mlp_dim,
            num_labels=self.num_labels,
        )

    def prepare_config_and_inputs_for_common(self):
        if self.modality == "image":
            inputs = {
                "pixel_values": floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
            }
        else:
            inputs = {
                "input_ids": ids_tensor([self.batch_size, self.seq_length], self.vocab_size),
                "attention_mask": random_attention_mask([self.batch_size, self.seq_length]),
            }
        return self.get_config(), inputs


class MixerCommonTests(ModelTesterMixin, PipelineTesterMixin):
    modality = None
    has_attentions = False  # no attention: the attention-output tests do not apply

    def setUp(self):
        self.model_tester = MixerModelTester(self, self.modality)
        text = self.modality == "text"
        self.config_tester = ConfigTester(
            self,
            config_class=MixerConfig,
            has_text_modality=text,
            common_properties=["hidden_size", "num_hidden_layers"],
            modality=self.modality,
            hidden_size=37,
        )

    def test_config(self):
        self.config_tester.run_common_tests()


class MixerImageCommonTest(MixerCommonTests, unittest.TestCase):
    modality = "image"
    all_model_classes = (MixerModel, MixerForImageClassification)
    pipeline_model_mapping = {
        "image-feature-extraction": MixerModel,
        "image-classification": MixerForImageClassification,
    }
    test_resize_embeddings = False  # patch embeddings have no vocabulary

    def test_model_get_set_embeddings(self):
        # As transformers' ViT test: the input embeddings of an image model are its patch projection, not nn.Embedding.
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), nn.Conv2d)
            self.assertTrue(
                model.get_output_embeddings() is None or isinstance(model.get_output_embeddings(), nn.Linear)
            )

    @unittest.skip("An image Mixer takes pixel_values, not input_ids: there are no input embeddings to pass instead.")
    def test_inputs_embeds(self):
        pass

    @unittest.skip("An image Mixer takes pixel_values, not input_ids: there are no input embeddings to pass instead.")
    def test_inputs_embeds_matches_input_ids(self):
        pass


class MixerTextCommonTest(MixerCommonTests, unittest.TestCase):
    modality = "text"
    all_model_classes = (MixerModel, MixerForMaskedLM, MixerForSequenceClassification, MixerForTokenClassification)
    pipeline_model_mapping = {
        "feature-extraction": MixerModel,
        "fill-mask": MixerForMaskedLM,
        "text-classification": MixerForSequenceClassification,
        "token-classification": MixerForTokenClassification,
    }


# ------------------------------------------------------------------------------------------- transformers' exporters
# What transformers' ExportTesterMixin (its tests/exporters/test_export.py, not in the source distribution) runs on
# every class of a model's common tests: each class built from the common model tester's config and inputs, exported
# with transformers' own DynamoExporter and OnnxExporter, the outputs compared to eager's at 1e-4. Beyond the mixin:
# the values of the ONNX outputs too (it compares their names), and a run at a smaller batch (and a shorter text) than
# the export's. Left out for time (about 17 s on 2 cores): the mixin's static exports (the dynamic ones run at the
# traced shapes as well), and the OnnxExporter of the image classifier and the MLM, whose graphs
# test_onnx_image_classifier and test_onnx_masked_lm export with torch.onnx.export, as OnnxExporter does.

EXPORT_CASES = [
    (test.modality, model_class, backend)
    for test in (MixerImageCommonTest, MixerTextCommonTest)
    for model_class in test.all_model_classes
    for backend in ("dynamo", "onnx")
    if backend == "dynamo" or model_class not in (MixerForImageClassification, MixerForMaskedLM)
]


@pytest.mark.parametrize(
    "modality, model_class, backend",
    EXPORT_CASES,
    ids=[f"{modality}-{cls.__name__}-{backend}" for modality, cls, backend in EXPORT_CASES],
)
def test_transformers_exporters(modality, model_class, backend):
    config, inputs = MixerModelTester(None, modality).prepare_config_and_inputs_for_common()
    set_config_for_less_flaky_test(config)
    torch.manual_seed(0)
    model = with_head(model_class(config).eval())
    set_model_for_less_flaky_test(model)
    exporter, export_config = (
        (DynamoExporter(), DynamoConfig(dynamic=True))
        if backend == "dynamo"
        else (OnnxExporter(), OnnxConfig(dynamic=True))
    )
    exported = exporter.export(model, copy.deepcopy(inputs), config=export_config)
    # Traced with 13 rows (of 7 tokens for a text): run with them, and with 5 (of 4 tokens).
    smaller = {key: value[:5] if modality == "image" else value[:5, :4] for key, value in inputs.items()}
    for batch in (inputs, smaller):
        with torch.no_grad():
            expected = get_leaf_tensors(model(**copy.deepcopy(batch)))
        outputs = get_leaf_tensors(exported(**copy.deepcopy(batch)))
        assert set(outputs) == set(expected)
        torch.testing.assert_close(outputs, expected, rtol=1e-4, atol=1e-4)
