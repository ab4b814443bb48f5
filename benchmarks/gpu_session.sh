#!/usr/bin/env bash
# The GPU checks of issues 26 and 27 as one prepared script, for a session lent a GPU machine (see DEVELOPERS.md).
# Here, from the repo root with the venv active:  ../shared/tools/device-pack
# Then the device tool's run, carrying .device-carry, in two calls (each under its 10-minute limit):
#   . .device-carry/setup.sh && bash benchmarks/gpu_session.sh speed    # cuda tests, pipeline and training speed
#   . .device-carry/setup.sh && bash benchmarks/gpu_session.sh learn    # small-from-scratch-gpu, seed 0, scored
# Every step's log goes to runs/gpu/<step>.log and the folder is tarred into $OUT after each step, so a
# timeout still returns what was done. Figures are on the data shrunk to 256 px: say so wherever they go.
set -uo pipefail
stage=${1:?usage: gpu_session.sh speed|learn}
case "$stage" in speed|learn) ;; *) echo "error: unknown stage '$stage': give speed or learn" >&2; exit 2 ;; esac
logs=runs/gpu
mkdir -p "$logs"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$logs/gpu.txt" 2>&1
nproc >> "$logs/gpu.txt"

step() {  # step NAME COMMAND...: run it, log it, ship the logs so far
  local name=$1; shift
  echo "== $name: $*" | tee "$logs/$name.log"
  local start=$SECONDS
  "$@" >> "$logs/$name.log" 2>&1
  echo "== $name: exit $? after $((SECONDS - start)) s" | tee -a "$logs/$name.log"
  tar -czf "${OUT:-/tmp}/gpu-logs.tar.gz" "$logs"
}

if [ "$stage" = speed ]; then
  step cuda-tests python -m pytest -q -m cuda tests -p no:cacheprovider
  # issue 26's rows first (predict >= 300 photos/s in fp32 and >= 500 in bf16, the report >= 300 in bf16)
  step pipeline python benchmarks/pipeline_throughput.py --device cuda
  step pipeline-bf16 python benchmarks/pipeline_throughput.py --device cuda --speed bf16 --batch_size 64 --only full
  # the full fine-tune of the full-size CIDAS config at batch 32 in bf16 (the 140 samples/s; target 600)
  step train-full python benchmarks/train_throughput.py --config ../shared/clipseg-rd64-refined --image_size 352 \
    --batch_size 32 --rows 1024 --steps 30 --warmup 5 --device cuda
  step train-full-fused python benchmarks/train_throughput.py --config ../shared/clipseg-rd64-refined --image_size 352 \
    --batch_size 32 --rows 1024 --steps 30 --warmup 5 --device cuda --train_flags --optim adamw_torch_fused
  # the small recipe at batch 32 (the 802 samples/s; target 2400)
  step train-small python benchmarks/train_throughput.py --batch_size 32 --rows 1024 --steps 50 --warmup 5 \
    --device cuda
else
  step build python -m data_builders build --cracks ../shared/data/cracks --joints ../shared/data/drywall-join-detect \
    --split-by-source --output data/drywall-qa-256
  step learn python benchmarks/learn_from_scratch.py --dataset_path data/drywall-qa-256 --seeds 0 \
    --recipe configs/small-from-scratch-gpu.json --output_dir runs/lfs-gpu --max_minutes 12
fi
