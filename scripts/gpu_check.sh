#!/usr/bin/env bash
# GPU readiness check (scripts/gpu_check.py): each method's GPU path briefly on real bottle images; writes
# OUTDIR/gpu_check.json and OUTDIR/gpu_check.md (a table of timings). Under 8 minutes on one CUDA GPU.
#
#   scripts/gpu_check.sh OUTDIR [device=cpu|cuda|auto] [size=paper|tiny] [data=DIR|synthetic] [steps=N]
#
# The same settings as environment variables: DEVICE, SIZE, DATA (default ../shared/data/mvtec_ad beside the
# repository), STEPS, PYTHON (default python3), WHEELS. Defaults: device auto; paper sizes on a GPU, tiny on CPU.
#
# Meant for a machine whose Python has torch, torchvision, timm, scikit-learn, scipy, pandas and seaborn but not
# adbench's other dependencies: hydra-core, omegaconf (+ antlr4-python3-runtime), faiss, loralib. Those missing
# are installed, without network, from the wheels in WHEELS=DIR into a temporary folder that is put on
# PYTHONPATH for this run only (pip --no-index --no-deps --target; removed at the end). Fill WHEELS on a machine
# with network, for the target's Python version (here 3.11) and platform:
#
#   pip download --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
#       -d WHEELS 'hydra-core==1.3.*' 'omegaconf==2.3.*' loralib faiss-gpu-cu12   # or faiss-cpu: CPU search
#   pip wheel --no-deps -w WHEELS antlr4-python3-runtime==4.9.3    # hydra's parser; published as source only
#
# faiss-gpu-cu12 uses the CUDA 12 libraries that torch's CUDA wheels bring (nvidia-cublas-cu12, ...). Tested
# here (no GPU) with faiss-cpu, in a Python that lacked the five packages, in CPU mode.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ $# -ge 1 && "$1" != -* ]] || { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
OUT="$1"
shift
for arg in "$@"; do
    case "$arg" in
        device=*) DEVICE="${arg#device=}" ;;
        size=*) SIZE="${arg#size=}" ;;
        data=*) DATA="${arg#data=}" ;;
        steps=*) STEPS="${arg#steps=}" ;;
        *) echo "gpu_check: unknown argument '$arg' (device=, size=, data=, steps=)" >&2; exit 2 ;;
    esac
done
PYTHON="${PYTHON:-python3}"
DEVICE="${DEVICE:-auto}"
DATA="${DATA:-$REPO/../shared/data/mvtec_ad}"

# the machine's own packages (looked up, not imported), then the ones this script may install (imported: a
# broken install counts as missing)
base="$("$PYTHON" -c "import importlib.util as u
print(' '.join(m for m in ('torch', 'torchvision', 'timm', 'sklearn', 'scipy', 'pandas', 'seaborn') if u.find_spec(m) is None))")"
[[ -z "$base" ]] || { echo "gpu_check: $PYTHON lacks $base (needed on the machine itself)" >&2; exit 2; }
read -r -a missing <<<"$("$PYTHON" -c "
import importlib
out = []
for m in ('hydra', 'omegaconf', 'antlr4', 'loralib', 'faiss'):
    try:
        importlib.import_module(m)
    except Exception:
        out.append(m)
print(' '.join(out))" 2>/dev/null)"
# module -> pip package, for the dependencies this script may have to install from WHEELS
declare -A PKG=([hydra]=hydra-core [omegaconf]=omegaconf [antlr4]=antlr4-python3-runtime [loralib]=loralib
                [faiss]="faiss-gpu-cu12 faiss-gpu-cu11 faiss-gpu faiss-cpu")
SITE=""
cleanup() { if [[ -n "$SITE" ]]; then rm -rf "$SITE"; fi; }
trap cleanup EXIT
if ((${#missing[@]})); then
    [[ -n "${WHEELS:-}" && -d "${WHEELS:-}" ]] || {
        echo "gpu_check: $PYTHON lacks ${missing[*]}; put their wheels in a folder and pass WHEELS=DIR" \
             "(see the top of $0 for the pip download lines)" >&2; exit 2; }
    SITE="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_site.XXXXXX")"
    for mod in "${missing[@]}"; do
        ok=""
        for pkg in ${PKG[$mod]}; do  # the first of the candidates that has a wheel in WHEELS
            if "$PYTHON" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" --target "$SITE" "$pkg" \
                >/dev/null 2>&1; then ok="$pkg"; break; fi
        done
        [[ -n "$ok" ]] || { echo "gpu_check: no wheel for $mod (${PKG[$mod]}) in $WHEELS" >&2; exit 2; }
        echo "gpu_check: installed $ok from $WHEELS into $SITE"
    done
fi

export PYTHONPATH="$REPO${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
export ADBENCH_PROGRESS=0
args=("$OUT" --device "$DEVICE" --data "$DATA")
[[ -n "${SIZE:-}" ]] && args+=(--size "$SIZE")
[[ -n "${STEPS:-}" ]] && args+=(--steps "$STEPS")
cd "$REPO"
"$PYTHON" "$REPO/scripts/gpu_check.py" "${args[@]}"
