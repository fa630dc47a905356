#!/usr/bin/env bash
# Check the package outside the checkout: a fresh venv, `pip install .` (NOT editable) from a copy of the
# checkout (tracked and untracked, non-ignored files), then, from an unrelated directory, load the default
# configuration, print the full configuration and run the ingest stage on the shipped set through the
# installed copy of resources/ and on a user's file given by absolute path.
#
#   bash scripts/check_install.sh            # about 3 minutes on 2 cores (most of it pip)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/src" "$WORK/elsewhere"
(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$WORK/src")
"$PY" -m venv "$WORK/venv"
# shellcheck disable=SC1091
source "$WORK/venv/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q "torch==2.13.0"
python -m pip install -q "$WORK/src"
rm -rf "$WORK/src"   # nothing may come from the copy of the checkout from here on
cd "$WORK/elsewhere"
python - <<'PYEOF'
import pipeline
from pipeline.config import load_config
from pipeline.resources import resolve

assert "site-packages" in pipeline.__file__, pipeline.__file__
cfg = load_config()
print("load_config(): ok;", cfg.data.paths[0], "->", resolve(cfg.data.paths[0]))
PYEOF
echo "{}" > empty.yaml && moe-mlip config --config empty.yaml > full.yaml
echo "moe-mlip config: $(wc -l < full.yaml) lines"
ingest() { mkdir -p "$2"; moe-mlip ingest --config "$1" --dataset "$2/dataset.extxyz" --manifest "$2/manifest.json" \
    --rejected "$2/rejected.csv" --stats-csv "$2/stats.csv" --stats-md "$2/stats.md" >/dev/null; }
ingest full.yaml ingest_default
python - <<'PYEOF'
from ase.io import read, write
from pipeline.resources import resolve
print("ingest of the default (installed) data:", len(read("ingest_default/dataset.extxyz", ":")), "frames")
write("mine.extxyz", read(resolve("resources/dft/pt_co_gpaw.extxyz"), ":150"))  # "the user's own" file
PYEOF
printf 'data:\n  paths: [%s/mine.extxyz]\n' "$PWD" > mine.yaml
ingest "$PWD/mine.yaml" ingest_mine
python -c "from ase.io import read; print('ingest of a user file:', len(read('ingest_mine/dataset.extxyz', ':')), 'frames')"
echo "check_install: all passed"
