"""
The Mixer's peers in the text comparisons, `BertForMaskedLM`, `RoFormerForMaskedLM` (BERT with rotary position
embeddings, Su et al. 2021) and `FNetForMaskedLM`, trained as the Mixer MLM trains: in training, the head scores only
the masked positions (the Mixer's `config.sparse_prediction`, ModernBERT's `sparse_prediction`). The loss is the stock
models' (the other positions have weight 0 in it); what goes is the decoder and the softmax over the whole vocabulary
at the ~85% unlabelled positions, which at the main job's size cost more than these models' trunks. So equal time and
tokens/s compare the trunks: token mixing against attention and against Fourier transforms. Evaluation and inference
run the stock forward, and a saved model is a stock one.
"""

import transformers
from transformers.modeling_outputs import MaskedLMOutput
from transformers.utils import can_return_tuple


class SparseMaskedLM:
    """Mixed into a transformers `...ForMaskedLM` whose head is `self.cls`."""

    @can_return_tuple  # return_dict=False: a tuple, as the stock forward gives
    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        if labels is None or not self.training:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        outputs = self.base_model(input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        hidden_states = outputs.last_hidden_state
        keep = labels != -100
        logits = self.cls(hidden_states[keep])
        loss = self.loss_function(logits, labels[keep], vocab_size=self.config.vocab_size, **kwargs)
        return MaskedLMOutput(loss=loss, logits=logits)


# The stock class names, which save_pretrained writes into config.architectures: a saved peer is the stock model.
class BertForMaskedLM(SparseMaskedLM, transformers.BertForMaskedLM):
    pass


class FNetForMaskedLM(SparseMaskedLM, transformers.FNetForMaskedLM):
    pass


class RoFormerForMaskedLM(SparseMaskedLM, transformers.RoFormerForMaskedLM):
    pass
