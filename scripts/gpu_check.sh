#!/usr/bin/env bash
# The GPU checks of the picking engine, in one run (214 s on an H200 in session 36, with the real folder):
#   1. benchmark pick-speed: the base model on a 4096 x 4096 micrograph (box 180, stride 28),
#      every window, --coarse 2, the student cascade, every window with the cascade checking the
#      cutoff (pick's default for a trained model), and model input 160, each compiled;
#   2. benchmark train-speed: pretraining and fine-tuning steps per second of that model;
#   3. the main job (demo) on the GPU: pretraining, fine-tuning, distillation and both picking
#      paths, with its scores beside the CPU's in docs/benchmarks.md "On a GPU";
#   4. with GPU_CHECK_REAL=DIR (DIR/model/model.pt, DIR/mics/*.mrc, DIR/truth.star: a trained
#      model and real micrographs with labels) and GPU_CHECK_REAL_BOX (their box, px), pick
#      them on the GPU (every window compiled, the student cascade, and two compiled shards on
#      one GPU) and evaluate each, to set beside the same commands run on the CPU; then pick
#      GPU_CHECK_READ (8) noise micrographs of GPU_CHECK_READ_SIZE (5760x4092, float16) with
#      the student cascade and print the command's wall seconds per micrograph beside the
#      picking's own (the summary's): the gap is what reading ahead did not hide; then the
#      same with --plots (the figures are drawn in a writer thread while picking goes on).
# Between 1 and 2, the fast setting uncompiled on that micrograph plain and with a carbon
# film's edge crossing it (film_edge_speed.log): what the edge's preparation adds.
# Up to eight files go to $OUT (default gpu_check_out/): device.txt, pick_speed.log/.json,
# film_edge_speed.log, train_speed.log, demo.log, demo_report.md and real.log (the runs' own
# folders stay in /tmp: a device run brings back few files).
# Needs python3 with torch (CUDA), timm, numpy, scipy, pandas, scikit-learn, matplotlib and
# tqdm; mrcfile and starfile too, installed or carried as wheels in .whl/ (a device machine has
# no network; see docs/benchmarks.md "On a GPU").
# GPU_CHECK_DEVICE, GPU_CHECK_MODEL and GPU_CHECK_SIZE override cuda, base and 4096x4096, and
# GPU_CHECK_DEMO=0 leaves the main job out (a dry run on a CPU: GPU_CHECK_DEVICE=cpu
# GPU_CHECK_MODEL=micro GPU_CHECK_SIZE=512x512 GPU_CHECK_DEMO=0).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
MODEL=${GPU_CHECK_MODEL:-base}
SIZE=${GPU_CHECK_SIZE:-4096x4096}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/fewshot_site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/fewshot_site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 FEWSHOTPICKER_NO_PROGRESS=1
"$PY" - <<'EOF' 2>&1 | tee "$OUT/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
EOF
compile=()
[ "$DEVICE" != cpu ] && compile=(--compile)
status=0
"$PY" -m fewshotpicker benchmark pick-speed --model "$MODEL" --size "$SIZE" --box 180 \
    --stride 28 --coarse 1,2 --student 0.4 --input-size 160 --device "$DEVICE" "${compile[@]}" \
    --out "$OUT/pick_speed.json" 2>&1 | tee "$OUT/pick_speed.log" || status=1
: > "$OUT/film_edge_speed.log"
for edge in "" --film-edge; do  # what a carbon film's edge adds (uncompiled, the fast setting)
    "$PY" -m fewshotpicker benchmark pick-speed --model "$MODEL" --size "$SIZE" --box 180 \
        --stride 28 --coarse 2 --student 0 --repeats 2 --device "$DEVICE" $edge 2>&1 \
        | tee -a "$OUT/film_edge_speed.log" || status=1
done
"$PY" -m fewshotpicker benchmark train-speed --model "$MODEL" --device "$DEVICE" \
    --steps 10 2>&1 | tee "$OUT/train_speed.log" || status=1
if [ "${GPU_CHECK_DEMO:-1}" != 0 ]; then
    demo=${TMPDIR:-/tmp}/fewshot_gpu_check_demo
    "$PY" -m fewshotpicker demo --device "$DEVICE" --out "$demo" 2>&1 \
        | tee "$OUT/demo.log" || status=1
    cp "$demo/report.md" "$OUT/demo_report.md" 2>/dev/null
fi
if [ -n "${GPU_CHECK_REAL:-}" ]; then
    real=${TMPDIR:-/tmp}/fewshot_gpu_check_real
    shards=$DEVICE:0,$DEVICE:0; [ "$DEVICE" = cpu ] && shards=cpu,cpu
    for run in "every --compile" "student --student 0.4" "shards --device $shards --compile"; do
        set -- $run
        name=$1; shift
        dev=(--device "$DEVICE"); [[ "$*" == *--device* ]] && dev=()
        { echo "== pick $name: $*"
          "$PY" -m fewshotpicker pick --model "$GPU_CHECK_REAL/model" \
              --micrographs "$GPU_CHECK_REAL"/mics/*.mrc --out "$real/$name" "${dev[@]}" "$@" &&
          "$PY" -m fewshotpicker evaluate --picks "$real/$name/autopick.star" \
              --truth "$GPU_CHECK_REAL/truth.star" --box "${GPU_CHECK_REAL_BOX:?}" --micrographs "$GPU_CHECK_REAL"/mics/*.mrc
        } 2>&1 | tee -a "$OUT/real.log" || status=1
    done
    "$PY" - "$real/large" "${GPU_CHECK_READ:-8}" "${GPU_CHECK_READ_SIZE:-5760x4092}" <<'PYEOF'
import sys, pathlib, numpy as np, mrcfile
out, n, (w, h) = pathlib.Path(sys.argv[1]), int(sys.argv[2]), map(int, sys.argv[3].split("x"))
out.mkdir(parents=True, exist_ok=True)
for i in range(n):
    with mrcfile.new(out / f"noise_{i}.mrc", overwrite=True) as m:
        m.set_data(np.random.default_rng(i).normal(size=(h, w)).astype(np.float16))
PYEOF
    for plots in "" --plots; do  # --plots: figures drawn in the writer's thread meanwhile
        { echo "== pick ${GPU_CHECK_READ:-8} noise micrographs of ${GPU_CHECK_READ_SIZE:-5760x4092} (float16), --student 0.4 $plots"
          start=$(date +%s.%N)
          "$PY" -m fewshotpicker pick --model "$GPU_CHECK_REAL/model" --micrographs "$real"/large/*.mrc \
              --out "$real/large_picks$plots" --device "$DEVICE" --student 0.4 $plots &&
          "$PY" - "$real/large_picks$plots/summary.json" "$start" "$(date +%s.%N)" <<'PYEOF'
import sys, json
s = json.load(open(sys.argv[1]))
n = len(s["micrographs"])
print(f"command wall {(float(sys.argv[3]) - float(sys.argv[2])) / n:.3f} s per micrograph "
      f"(start-up included); picking {s['seconds_per_micrograph']:.3f} s per micrograph")
PYEOF
        } 2>&1 | tee -a "$OUT/real.log" || status=1
    done
fi
exit $status
