#!/usr/bin/env bash
# Build wheels/ for the lent GPU machine (docs/gpu.md, "On the lent device"): Python 3.12, x86-64, with torch,
# torchvision, timm, numpy, scipy, pandas, scikit-learn, matplotlib, safetensors (and their needs) but no
# registry. Everything else that `benchmarks/gpu.py` imports travels as these wheels, at the versions .venv holds
# (the ones the tests ran with). wheels/ is ignored through .git/info/exclude and named in the run's `carry`.
# Fails if the tree that travels (tracked + untracked-not-ignored files + wheels/) is over 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=wheels
LIMIT=$((64 * 1024 * 1024))

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF "/$OUT/" "$exclude" 2>/dev/null || echo "/$OUT/" >>"$exclude"

# torchio's imports: deprecated (-> wrapt), einops, humanize, jaxtyping (-> wadler-lindig); its rich, typer and
# tqdm serve only its command line. pydicom's pylibjpeg* (compressed DICOM) are left out: the synthetic studies
# are uncompressed. antlr4-python3-runtime (hydra, omegaconf) is a source archive only: built here.
BINARY=(SimpleITK pydicom nibabel torchio timm-3d hydra-core omegaconf deprecated wrapt humanize einops jaxtyping
        wadler-lindig)
pin() {  # NAME==VERSION of .venv, or NAME where .venv lacks it
    "$PY" -c "import importlib.metadata as m, sys
try: print(f'{sys.argv[1]}=={m.version(sys.argv[1])}')
except m.PackageNotFoundError: print(sys.argv[1])" "$1"
}
specs=()
for name in "${BINARY[@]}"; do specs+=("$(pin "$name")"); done
antlr=$(pin antlr4-python3-runtime)
[ "$antlr" = antlr4-python3-runtime ] && antlr=antlr4-python3-runtime==4.9.3

rm -rf "$OUT" && mkdir -p "$OUT"
echo "[wheels] downloading ${specs[*]}"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$OUT" "${specs[@]}"
echo "[wheels] building $antlr"
"$PY" -m pip wheel --quiet --no-deps -w "$OUT" "$antlr"

ls "$OUT"/*.whl | sed 's#.*/##' | cut -d- -f1 | tr '[:upper:]' '[:lower:]' | sort | uniq -d | grep . \
    && { echo "[wheels] ERROR: two versions of one package (the install would stop)" >&2; exit 1; }
du -b "$OUT"/*.whl | sort -rn | awk '{printf "%10.1f KiB  %s\n", $1 / 1024, $2}'
wheels=$(du -cb "$OUT"/*.whl | tail -1 | cut -f1)
tree=$( (git ls-files -z; git ls-files -z -o --exclude-standard) | (du -cb --files0-from=- 2>/dev/null || true) \
    | tail -1 | cut -f1)
total=$((wheels + tree))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "[wheels] $(ls "$OUT"/*.whl | wc -l) wheels: $(mib "$wheels"); tree without them: $(mib "$tree");" \
     "together: $(mib "$total") of 64 MiB"
if [ "$total" -gt "$LIMIT" ]; then
    echo "[wheels] ERROR: the tree that travels would be $(mib "$total"), over 64 MiB" >&2
    exit 1
fi
