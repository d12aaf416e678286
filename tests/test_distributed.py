"""Several processes: the launch checks of the scripts, DDP through the Trainer, FSDP2 sharding, on CPUs (gloo)."""

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint.format_utils as dcp_format

from helpers import ROOT
from configuration_mixer import MixerConfig
import fsdp2_worker

TINY = dict(hidden_size=16, num_hidden_layers=2, tokens_mlp_dim=8, channels_mlp_dim=32)
TINY_HEADS = {
    "image": MixerConfig(image_size=8, patch_size=4, num_labels=3, **TINY),
    "mlm": MixerConfig(modality="text", vocab_size=40, max_position_embeddings=8, **TINY),
}


def torchrun(*args, nproc=2, timeout=300):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def test_fsdp2_shards_each_head_and_matches_one_process_on_the_whole_batches(tmp_path):
    for head, config in TINY_HEADS.items():
        torch.manual_seed(0)
        fsdp2_worker.HEADS[head](config).save_pretrained(tmp_path / "init" / head)
    result = torchrun(ROOT / "tests" / "fsdp2_worker.py", tmp_path / "init", tmp_path / "out")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    for head, model_class in fsdp2_worker.HEADS.items():
        saved = torch.load(tmp_path / "out" / head / "result.pt", weights_only=False)
        # Really sharded: every parameter is a DTensor whose local piece holds at most half of the rows.
        reference = model_class.from_pretrained(tmp_path / "init" / head)
        for name, param in reference.named_parameters():
            for rank, shards in enumerate(saved["shards"]):
                kind, local_shape = shards[name]
                rows = -(-param.shape[0] // 2)  # FSDP2 pads dim 0 to a multiple of the world size
                assert kind == "DTensor" and local_shape[0] <= rows and local_shape[1:] == param.shape[1:], (
                    head, name, rank, kind, local_shape)
        # One process, whole batches: the same losses and, gathered from the shards, the same weights.
        optim = fsdp2_worker.optimizer(reference)
        losses = []
        for batch in fsdp2_worker.batches(head, reference.config):
            loss = reference(**batch).loss
            loss.backward()
            optim.step()
            optim.zero_grad()
            losses.append(loss.item())
        assert saved["losses"] == pytest.approx(losses, rel=1e-5), head
        assert losses[-1] < losses[0], (head, losses)
        expected = reference.state_dict()
        assert saved["state_dict"].keys() == expected.keys()
        for name, tensor in expected.items():
            torch.testing.assert_close(saved["state_dict"][name], tensor, rtol=1e-5, atol=1e-6, msg=f"{head} {name}")
        if head == "mlm":
            assert saved["tied"]  # the decoder still shares the token embeddings under FSDP2

        # The sharded checkpoint → one file → a plain from_pretrained folder with the same outputs.
        dcp_format.dcp_to_torch_save(tmp_path / "out" / head / "dcp", tmp_path / "out" / head / "full.pt")
        state_dict = torch.load(tmp_path / "out" / head / "full.pt")
        model = model_class.from_pretrained(tmp_path / "init" / head)
        assert model.load_state_dict(state_dict, strict=True)
        model.save_pretrained(tmp_path / "plain" / head)
        reloaded = model_class.from_pretrained(tmp_path / "plain" / head).eval()
        inputs = {k: v for k, v in fsdp2_worker.batches(head, reference.config)[0].items() if k != "labels"}
        with torch.no_grad():
            torch.testing.assert_close(reloaded(**inputs).logits, reference.eval()(**inputs).logits,
                                       rtol=1e-5, atol=1e-5)
        if head == "mlm":
            assert reloaded.lm_head.decoder.weight is reloaded.mixer.embeddings.word_embeddings.weight
