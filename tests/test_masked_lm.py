"""The MLM head: full logits in evaluation, and the sparse decoder of training against the dense computation; the
same for the BERT, RoFormer and FNet peers of the comparisons."""

import json

import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers import AutoModelForMaskedLM

from configuration_mixer import MixerConfig
from helpers import TINY_TEXT
from mixer_scripts import peers
from modeling_mixer import MixerForMaskedLM

# The sparse decoder of training (the default of the scripts), over 60 tokens at 16 positions.
SPARSE_MLM = dict(TINY_TEXT, vocab_size=60, max_position_embeddings=16, sparse_prediction=True)


def masked_batch(seed, share, batch=4, length=16):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (batch, length), generator=generator)
    labels = torch.where(torch.rand(ids.shape, generator=generator) < share, ids, -100)
    return ids, labels


def test_sparse_decoder_gives_the_dense_loss_and_gradients():
    torch.manual_seed(0)
    model = MixerForMaskedLM(MixerConfig(**SPARSE_MLM)).train()
    ids, labels = masked_batch(0, 0.15)
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    labels[1, 11:] = -100

    out = model(ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    sparse_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    # The dense computation, by hand from the same weights: the head at every position, the loss over the labelled.
    dense_logits = model.lm_head(model.mixer(input_ids=ids, attention_mask=mask).last_hidden_state)
    dense_loss = F.cross_entropy(dense_logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    dense_loss.backward()

    keep = labels != -100
    assert 0 < keep.sum() < keep.numel() // 4
    assert out.logits.shape == (keep.sum(), 60)
    torch.testing.assert_close(out.logits, dense_logits[keep])
    torch.testing.assert_close(out.loss, dense_loss)
    for name, p in model.named_parameters():
        torch.testing.assert_close(sparse_grads[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("sparse_prediction", [False, True])
def test_evaluation_logits_cover_every_position(sparse_prediction):
    """MaskedLMOutput's contract, labels or not: (batch, length, vocab); sparse rows in training only, if asked."""
    torch.manual_seed(0)
    model = MixerForMaskedLM(MixerConfig(**{**SPARSE_MLM, "sparse_prediction": sparse_prediction})).eval()
    ids, labels = masked_batch(1, 0.15)
    with torch.no_grad():
        full, evaluated = model(ids).logits, model(ids, labels=labels).logits
        trained = model.train()(ids, labels=labels).logits
    assert full.shape == evaluated.shape == (4, 16, 60)
    torch.testing.assert_close(evaluated, full)
    torch.testing.assert_close(trained, full[labels != -100] if sparse_prediction else full)


def test_compiled_sparse_decoder_serves_every_mask_with_one_graph():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = MixerForMaskedLM(MixerConfig(**SPARSE_MLM)).train()
    compiled = torch.compile(model, fullgraph=True)
    batches = [masked_batch(seed, share) for seed, share in [(2, 0.15), (3, 0.3), (4, 0.05)]]
    counts = [int((labels != -100).sum()) for _, labels in batches]
    assert len(set(counts)) == 3, counts
    with torch._dynamo.config.patch(error_on_recompile=True):  # a second graph for another count would raise
        for ids, labels in batches:
            out = compiled(ids, labels=labels)
            out.loss.backward()
            torch.testing.assert_close(out.loss, model(ids, labels=labels).loss, rtol=1e-5, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_no_or_all_positions_labelled(share):
    torch.manual_seed(0)
    model = MixerForMaskedLM(MixerConfig(**SPARSE_MLM)).train()
    ids, labels = masked_batch(5, share)
    with torch.no_grad():
        out, full = model(ids, labels=labels), model(ids).logits
    assert out.logits.shape == ((labels != -100).sum(), 60)
    if share == 1.0:
        torch.testing.assert_close(out.loss, F.cross_entropy(full.flatten(0, 1), ids.flatten()))
    else:  # nothing to score: the mean over no position, NaN, as in the dense loss
        assert torch.isnan(out.loss)


@pytest.mark.parametrize("name", ["BertForMaskedLM", "RoFormerForMaskedLM", "FNetForMaskedLM"])
def test_peers_train_with_the_sparse_decoder_and_save_as_stock_models(name, tmp_path):
    """The comparisons' peers: the stock loss and gradients in training, the stock model in evaluation and saved."""
    stock_class, peer_class = getattr(transformers, name), getattr(peers, name)
    config = stock_class.config_class(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    stock = stock_class(config).train()
    peer = peer_class(config).train()
    peer.load_state_dict(stock.state_dict())
    ids, labels = masked_batch(2, 0.15)
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    labels[1, 11:] = -100

    stock_out, peer_out = stock(ids, attention_mask=mask, labels=labels), peer(ids, attention_mask=mask, labels=labels)
    stock_out.loss.backward()
    peer_out.loss.backward()
    keep = labels != -100
    assert peer_out.logits.shape == (keep.sum(), 60)
    torch.testing.assert_close(peer_out.logits, stock_out.logits[keep])
    torch.testing.assert_close(peer_out.loss, stock_out.loss)
    for (param_name, p), q in zip(stock.named_parameters(), peer.parameters()):
        assert (p.grad is None) == (q.grad is None), param_name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=param_name)
    loss, logits = peer(ids, attention_mask=mask, labels=labels, return_dict=False)  # a tuple, as the stock one's
    torch.testing.assert_close((loss, logits), (peer_out.loss, peer_out.logits))

    with torch.no_grad():
        torch.testing.assert_close(peer.eval()(ids, labels=labels).logits, stock.eval()(ids, labels=labels).logits)
    peer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [name]
    assert type(AutoModelForMaskedLM.from_pretrained(tmp_path)) is stock_class
