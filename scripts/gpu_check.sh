#!/usr/bin/env bash
# The GPU check, prepared for a session that is lent a GPU machine: one call of the device tool,
#     run(command="bash scripts/gpu_check.sh", timeout_s=540)
# 1. CUDA correctness: tests/test_devices.py (every execution path on the GPU in float32 against
#    float64 on the CPU) with the core tests beside it;
# 2. the speed benchmark on the GPU: plmu bench --device cuda (about 5 minutes at most).
# It uses the machine's own python3 (PyTorch with CUDA, lightning, pytest, hypothesis and
# matplotlib are there; nothing is installed) and writes everything into $OUT when set (the
# device tool's folder), else into benchmarks/. Copy cuda.json/cuda.png/cuda.txt to benchmarks/.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
          torch.cuda.get_device_name() if torch.cuda.is_available() else "")' \
    2>&1 | tee "$out/cuda_env.txt"

timeout 150 "$py" -m pytest -q -p no:cacheprovider tests/test_devices.py tests/test_memory.py \
    tests/test_layers.py tests/test_fast_paths.py tests/test_higher_order.py 2>&1 \
    | tee "$out/cuda_tests.txt"
tests=${PIPESTATUS[0]}

timeout 360 "$py" -m plmu.bench --device cuda --json "$out/cuda.json" --plot "$out/cuda.png" \
    2>&1 | tee "$out/cuda.txt"
bench=${PIPESTATUS[0]}

echo "tests exit status $tests, bench exit status $bench"
exit $((tests || bench))
