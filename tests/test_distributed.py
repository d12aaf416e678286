"""Several processes: the launch checks of the scripts, DDP through the Trainer, FSDP2 sharding, on CPUs (gloo)."""

import importlib
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint.format_utils as dcp_format
from transformers import AutoModelForMaskedLM, TrainingArguments, pipeline

import fsdp2_worker
from configuration_mixer import MIXER_AUTO_MAP, MixerConfig
from helpers import ROOT, TINY_MLM
from mixer_scripts import common

TINY = dict(hidden_size=16, num_hidden_layers=2, tokens_mlp_dim=8, channels_mlp_dim=32)
TINY_HEADS = {
    "image": MixerConfig(image_size=8, patch_size=4, num_labels=3, **TINY),
    "mlm": MixerConfig(modality="text", vocab_size=40, max_position_embeddings=8, **TINY),
}


TINY_MLM = TINY_MLM + [
    "--max_eval_samples",
    "32",
    "--logging_steps",
    "2",
    "--save_strategy",
    "no",
    "--fill_mask_examples",
    "0",
]


def torchrun(*args, nproc=2, timeout=300) -> subprocess.CompletedProcess:
    """
    `torchrun --standalone` (a free port), stopped with SIGTERM if it outlasts `timeout`: torchrun then stops its
    workers, which run in sessions of their own (SIGKILL to torchrun would leave them running).
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        *map(str, args),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate()
            pytest.fail(f"torchrun ran past {timeout} s:\n{(stdout + stderr)[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


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
                    head,
                    name,
                    rank,
                    kind,
                    local_shape,
                )
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

        # save_pretrained of the sharded model, given the gathered weights: the folder of the Mixer class, its own code
        # and auto_map (fully_shard's FSDPMixer* subclass lives in torch), and the weights.
        folder = tmp_path / "out" / head / "hf"
        assert sorted(path.name for path in folder.iterdir()) == [
            "config.json",
            "configuration_mixer.py",
            "model.safetensors",
            "modeling_mixer.py",
        ]
        config = json.loads((folder / "config.json").read_text())
        assert config["architectures"] == [model_class.__name__]
        assert config["auto_map"] == MIXER_AUTO_MAP
        from_folder = model_class.from_pretrained(folder).state_dict()
        for name, tensor in expected.items():
            torch.testing.assert_close(from_folder[name], tensor, rtol=1e-5, atol=1e-6, msg=f"{head} {name}")

        # The sharded checkpoint → one file → a plain from_pretrained folder with the same outputs.
        dcp_format.dcp_to_torch_save(tmp_path / "out" / head / "dcp", tmp_path / "out" / head / "full.pt")
        state_dict = torch.load(tmp_path / "out" / head / "full.pt")
        model = model_class.from_pretrained(tmp_path / "init" / head)
        assert model.load_state_dict(state_dict, strict=True)
        model.save_pretrained(tmp_path / "plain" / head)
        reloaded = model_class.from_pretrained(tmp_path / "plain" / head).eval()
        inputs = {k: v for k, v in fsdp2_worker.batches(head, reference.config)[0].items() if k != "labels"}
        with torch.no_grad():
            torch.testing.assert_close(
                reloaded(**inputs).logits, reference.eval()(**inputs).logits, rtol=1e-5, atol=1e-5
            )
        if head == "mlm":
            assert reloaded.lm_head.decoder.weight is reloaded.mixer.embeddings.word_embeddings.weight


def test_torchrun_without_use_cpu_stops_at_once_saying_what_to_add(tmp_path, text_files):
    result = torchrun(
        ROOT / "scripts" / "training" / "run_mlm.py",
        *TINY_MLM,
        *text_files,
        "--max_steps",
        "4",
        "--output_dir",
        tmp_path / "out",
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for rank in (0, 1):  # each process believes it is alone, and says so before it stops
        assert (
            f"[rank{rank}]: ValueError: 2 processes were launched (WORLD_SIZE=2) but this one trains alone "
            "(world size 1)" in output
        ), output[-3000:]
    assert "add --use_cpu: on a machine without GPUs" in output
    assert not (tmp_path / "out").exists()  # stopped before it wrote anything


def test_mlm_on_two_cpu_processes_shares_the_work(tmp_path, text_files):
    output_dir = tmp_path / "ddp"
    result = torchrun(
        ROOT / "scripts" / "training" / "run_mlm.py",
        *TINY_MLM,
        *text_files,
        "--max_steps",
        "6",
        "--use_cpu",
        "--log_level",
        "info",
        "--output_dir",
        output_dir,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for rank in (0, 1):
        assert re.search(f"Process rank: {rank}, world size: 2, device: cpu(:0)?, distributed training: True", output)
    # Both ranks draw batches: 2 x 16 blocks a step, and an epoch is half as many steps as one process would need.
    assert re.search(r"Total train batch size \(w\. parallel, distributed & accumulation\) = 32\b", output)
    state = json.loads((output_dir / "trainer_state.json").read_text())
    train_blocks = json.loads((output_dir / "train_results.json").read_text())["train_samples"]
    assert state["global_step"] == 6 and state["epoch"] == pytest.approx(6 / (train_blocks / 32), rel=0.05)
    assert type(AutoModelForMaskedLM.from_pretrained(output_dir)).__name__ == "MixerForMaskedLM"
    assert pipeline("fill-mask", model=str(output_dir))("To be or not to b[MASK]", top_k=1)[0]["token_str"]


LAUNCH_VARIABLES = [
    "WORLD_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "MV2_COMM_WORLD_SIZE",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_NTASKS",
    "ACCELERATE_USE_CPU",
    "ACCELERATE_USE_FSDP",
    "MASTER_ADDR",
    "LOCAL_RANK",
]


@pytest.mark.parametrize(
    "env, kwargs, message",
    [
        (
            {"WORLD_SIZE": "2"},
            {},
            "2 processes were launched (WORLD_SIZE=2) but this one trains alone (world size 1): "
            "they would repeat each other's work and write over each other's output. To train with all 2, add --use_cpu",
        ),
        (
            {"OMPI_COMM_WORLD_SIZE": "4"},
            {},
            "4 processes were launched (OMPI_COMM_WORLD_SIZE=4) but this one trains alone (world size 1)",
        ),
        (
            {"SLURM_STEP_NUM_TASKS": "2"},
            {"use_cpu": True},
            "To train with all 2, srun's tasks do not find each other by themselves: run torchrun in each",
        ),
        (
            {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"},
            {},
            "`accelerate launch` was asked for several processes but started one",
        ),
        (
            {},
            {"fsdp": True, "fsdp_config": {"transformer_layer_cls_to_wrap": ["MixerLayer"]}, "use_cpu": True},
            "FSDP was asked for (--fsdp) on CPU processes, where the Trainer and Accelerate do not shard: they would train "
            "with plain DDP",
        ),
        (
            {"ACCELERATE_USE_FSDP": "true"},
            {"use_cpu": True},
            "FSDP was asked for (ACCELERATE_USE_FSDP=true, an accelerate FSDP config) on CPU",
        ),
    ],
)
def test_launches_that_would_not_train_together_stop(monkeypatch, tmp_path, env, kwargs, message):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as error:
        common.check_processes(TrainingArguments(tmp_path, report_to="none", **kwargs))
    assert message in str(error.value)


@pytest.mark.parametrize("script", ["run_mlm", "run_image_classification", "run_text_classification"])
def test_every_script_stops_before_it_reads_data(monkeypatch, tmp_path, script):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    main = importlib.import_module(f"mixer_scripts.training.{script}").main
    message = "2 processes were launched (WORLD_SIZE=2) but this one trains alone"
    with pytest.raises(ValueError, match=re.escape(message)):
        main(
            [
                "--output_dir",
                str(tmp_path / "out"),
                "--train_file" if script != "run_image_classification" else "--train_dir",
                str(tmp_path / "missing"),
            ]
        )  # a missing file: the data would be the next error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("env", [{}, {"WORLD_SIZE": "1"}, {"SLURM_NTASKS": "4"}])  # sbatch alone: one process
def test_a_single_process_trains(monkeypatch, tmp_path, env):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    common.check_processes(TrainingArguments(tmp_path, report_to="none", use_cpu=True))


def test_the_shipped_accelerate_fsdp_config_wraps_each_mixer_layer_and_stops_on_cpu_processes(monkeypatch, tmp_path):
    """What `accelerate launch --config_file scripts/training/accelerate_fsdp.yaml` hands each process, built by accelerate."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(
        ["--config_file", str(ROOT / "scripts" / "training" / "accelerate_fsdp.yaml"), "scripts/training/run_mlm.py"]
    )
    args, _, _ = _validate_launch_command(args)
    assert args.use_fsdp and args.num_processes == 2
    env = prepare_multi_gpu_env(args)
    assert (
        env["ACCELERATE_USE_FSDP"],
        env["FSDP_VERSION"],
        env["FSDP_TRANSFORMER_CLS_TO_WRAP"],
        env["FSDP_STATE_DICT_TYPE"],
    ) == ("true", "2", "MixerLayer", "FULL_STATE_DICT")
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if name.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(name, value)
    plugin = FullyShardedDataParallelPlugin()  # from the environment, as the Trainer's Accelerator builds it
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == ["MixerLayer"]
    model = fsdp2_worker.HEADS["mlm"](TINY_HEADS["mlm"])
    plugin.set_auto_wrap_policy(model)
    wrapped = [name for name, module in model.named_modules() if plugin.auto_wrap_policy(module, False, 0)]
    assert wrapped == ["mixer.layers.0", "mixer.layers.1"]
    with pytest.raises(
        ValueError,
        match=re.escape("FSDP was asked for (ACCELERATE_USE_FSDP=true, an accelerate FSDP config) on CPU processes"),
    ):
        common.check_processes(TrainingArguments(tmp_path, report_to="none", use_cpu=True))
