#!/usr/bin/env bash
# The GPU checks as one prepared run (at most 6.5 minutes by its per-step limits): the CUDA tests (bf16 logits
# against transformers, CUDA-graph decoding, bf16 RM training, PPO with a bf16 sampling replica),
# then the three GPU benchmarks with short settings. Logs and JSON go to $OUT (default
# bench/results/gpu-<date>); each step has its own time limit, so one stuck step cannot eat the rest.
#
#     bash bench/gpu_checks.sh              # on a machine with a CUDA GPU and torch, transformers,
#                                           # safetensors, tokenizers, numpy, scipy, tqdm, matplotlib
#
# A machine without network that lacks orjson (the one dependency such images tend not to have)
# takes it as a wheel: on a machine with PyPI, `pip download --no-deps --only-binary=:all:
# --python-version 3.12 --platform manylinux_2_17_x86_64 -d .whl orjson`, then copy .whl/ along;
# this script installs it into /tmp/site when orjson is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-$(date +%F)}
mkdir -p "$OUT"
export PYTHONPATH=".:bench:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

if ! $PY -c "import orjson" 2>/dev/null && ls .whl/orjson-*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/orjson-*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
$PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())" || { echo "no CUDA device: nothing to check"; exit 1; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, stdout to NAME.jsonl/.log, stderr to NAME.err
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
    echo "   exit $? ; $(tail -c 400 "$OUT/$name.out" | tail -n 3)"
}
step test_gpu 120 $PY -m pytest -q -m gpu tests/test_gpu.py
step gpu_decoder 90 $PY bench/gpu_decoder.py --configs llama-3.2-1b
step rm_train_gpu 60 $PY bench/rm_train_gpu.py --steps 6
step ppo_gpu 120 $PY bench/ppo_gpu.py --rollouts 2
echo "outputs in $OUT"
