"""
FSDP2 on CPU processes: each rank of `torchrun --nproc_per_node N tests/fsdp2_worker.py INIT OUT` loads the Mixer heads
saved under INIT/<head>, shards them with `fully_shard` (one unit per MixerLayer, then the root) over a gloo mesh,
trains them on its share of every batch of `batches(head)`, and writes under OUT/<head>: the sharded checkpoint
(`dcp/`, torch.distributed.checkpoint) and, from rank 0, the `save_pretrained` folder (`hf/`) and `result.pt` (the losses averaged over the ranks, the full
state dict gathered from the shards, and what each parameter holds in each rank). tests/test_distributed.py compares
them with one process trained on whole batches.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from modeling_mixer import MixerForImageClassification, MixerForMaskedLM

HEADS = {"image": MixerForImageClassification, "mlm": MixerForMaskedLM}
STEPS, BATCH_SIZE, LEARNING_RATE = 4, 8, 0.1


def batches(head: str, config) -> list[dict]:
    """
    One random batch, the same in every process, for each of the STEPS steps (the loss falls as it is learnt). MLM
    labels at every other position: each example has as many, so the mean loss over the batch is the mean of the
    ranks' mean losses, as data parallelism assumes.
    """
    generator = torch.Generator().manual_seed(0)
    if head == "image":
        size = config.image_size
        batch = {
            "pixel_values": torch.randn(BATCH_SIZE, config.num_channels, size, size, generator=generator),
            "labels": torch.randint(config.num_labels, (BATCH_SIZE,), generator=generator),
        }
    else:
        input_ids = torch.randint(
            1, config.vocab_size, (BATCH_SIZE, config.max_position_embeddings), generator=generator
        )
        labels = torch.full_like(input_ids, -100)
        labels[:, ::2] = input_ids[:, ::2]
        batch = {"input_ids": input_ids, "labels": labels}
    return [batch] * STEPS


def optimizer(model):
    # SGD, not Adam: some gradients are 0 up to rounding (the token-mixing output bias is a per-token shift that the
    # next LayerNorm removes), and Adam divides them by their own size, turning rounding noise into steps of lr.
    return torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9)


def main(init_dir: Path, out_dir: Path):
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world_size,))
    for head, model_class in HEADS.items():
        model = model_class.from_pretrained(init_dir / head)
        for layer in model.mixer.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        optim = optimizer(model)
        losses = []
        for batch in batches(head, model.config):
            loss = model(**{key: value.chunk(world_size)[rank] for key, value in batch.items()}).loss
            loss.backward()
            optim.step()
            optim.zero_grad()
            loss = loss.detach()
            dist.all_reduce(loss)
            losses.append(loss.item() / world_size)
        local = {
            name: (type(p).__name__, tuple(p.to_local().shape) if isinstance(p, DTensor) else None)
            for name, p in model.named_parameters()
        }
        shards = [None] * world_size
        dist.all_gather_object(shards, local)
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        dcp.save(get_model_state_dict(model), checkpoint_id=out_dir / head / "dcp")
        if rank == 0:
            model.save_pretrained(out_dir / head / "hf", state_dict=full)  # as the Trainer saves an FSDP2 model
            torch.save(
                {
                    "losses": losses,
                    "state_dict": full,
                    "shards": shards,
                    "tied": model.lm_head.decoder.weight is model.mixer.embeddings.word_embeddings.weight
                    if head == "mlm"
                    else None,
                },
                out_dir / head / "result.pt",
            )
    dist.barrier()  # no rank tears gloo down while another still saves (a rank once aborted at exit without it)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
