"""
transformers' common model tests on every Mixer class, wired as transformers' own tests/models/vit/test_modeling_vit.py
wires them: a model tester per modality, `ConfigTester`, `ModelTesterMixin` and `PipelineTesterMixin`.
"""

import unittest

from torch import nn
from transformers.models.auto import modeling_auto

from configuration_mixer import MixerConfig
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
# head labels of its shape. The Mixer registers its classes at import instead; here it gets the entries it would have.
for mapping, name in [
    ("MODEL_MAPPING_NAMES", "MixerModel"),
    ("MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "MixerForImageClassification"),
    ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "MixerForMaskedLM"),
    ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "MixerForSequenceClassification"),
    ("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "MixerForTokenClassification"),
]:
    getattr(modeling_auto, mapping).setdefault(MixerConfig.model_type, name)


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
