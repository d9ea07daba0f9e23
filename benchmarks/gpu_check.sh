#!/usr/bin/env bash
# What a session with a lent CUDA machine runs, in one call (run from the repository root):
#   1. the CUDA tests (tests/e2e/test_e2e_cuda.py and the CUDA cases elsewhere), which skip
#      on a machine without a GPU;
#   2. training throughput on the GPU (bf16 autocast; ours eager and compile=blocks beside
#      nanoGPT and the book's package, same run);
#   3. decoding and prefill on the GPU beside transformers (benchmarks/cuda_decode.py);
#   4. training throughput again under torch.compile, and with PROFILE=1 (PROFILE_COMPILE=1
#      for the compiled models) benchmarks/cuda_profile.py: ours beside nanoGPT, op by op.
# Session 7 ran 1-3 in 253 s and 4 (compile, cold cache) in about 65 s: ~6 minutes of the
# 15-minute device budget with the machine's start.
# Session 9 ran all of it with PROFILE=1 PROFILE_COMPILE=1 in 344 s (tests 95 s), plus ~30 s of start.
# Python packages the GPU image lacks travel as wheels in .whl/ (installed into /tmp/site);
# nanoGPT's model.py travels in .peers/nanogpt (passed with --nanogpt).
# Logs go to $OUT (or ./gpu-logs).
set -uo pipefail
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
NANOGPT=../shared/peers/nanogpt
[ -d .peers/nanogpt ] && NANOGPT=.peers/nanogpt
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported())"
echo "== CUDA tests"
SCRATCHLLM_E2E_SPAWN=1 timeout "${TESTS_S:-300}" python3 -m pytest -q -p no:cacheprovider -n 4 \
  -o addopts="" -rfEs tests/e2e/test_e2e_cuda.py tests/train/test_training_state.py -k "cuda" \
  2>&1 | tee "$OUT/cuda_tests.log" | tail -40
echo "== training throughput (GPU)"
timeout "${TRAIN_S:-150}" python3 benchmarks/train_throughput.py --device cuda --precision bf16 \
  --context-length 1024 --batch-size 8 --rounds 3 --window 4 --warmup 2 --nanogpt "$NANOGPT" \
  2>&1 | tee "$OUT/train_cuda.log" | grep -v '^  round' | tail -25
echo "== decoding (GPU)"
timeout "${DECODE_S:-120}" python3 benchmarks/cuda_decode.py 2>&1 | tee "$OUT/decode_cuda.log" \
  | grep -v '^  \.\.\.' | tail -15
echo "== training throughput (GPU, torch.compile)"
timeout "${COMPILE_S:-150}" python3 benchmarks/train_throughput.py --device cuda --precision bf16 \
  --context-length 1024 --batch-size 8 --rounds 3 --window 4 --warmup 3 --compile --no-blocks \
  --nanogpt "$NANOGPT" 2>&1 | tee "$OUT/train_cuda_compile.log" | grep -v '^  round' | tail -12
if [ -n "${PROFILE:-}" ]; then
  echo "== profile (GPU, ours beside nanoGPT)"
  timeout "${PROFILE_S:-120}" python3 benchmarks/cuda_profile.py --nanogpt "$NANOGPT" \
    ${PROFILE_COMPILE:+--compile} > "$OUT/cuda_profile.log" 2>&1
  grep -v '^-' "$OUT/cuda_profile.log" | cut -c1-70,100-200 | head -70
fi
