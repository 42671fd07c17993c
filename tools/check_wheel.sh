#!/usr/bin/env bash
# The newcomer's route, checked: build the wheel, install it (not editable) in a fresh virtual
# environment, and from an empty folder run the main job and the same kind of pipeline through
# g2v fetch, embed, fit and report, with geom2vec's files served by a local HTTP server through
# G2V_MIRROR (no GitHub). Then tests/test_cli.py runs against the installed wheel: the command
# line and the Python route give the same slowest implied timescale.
#
#   tools/check_wheel.sh [CHECKPOINTS_FOLDER]     (default: ../shared/checkpoints)
#
# Needs Python 3.10+ as python3 and PyPI (or a local index) for the dependencies; a few minutes.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
checkpoints=$(cd "${1:-$repo/../shared/checkpoints}" && pwd)
work=$(mktemp -d)
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

echo "== build and install the wheel in a fresh virtual environment ($work/venv)"
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install --quiet --upgrade pip build
"$py" -m build --wheel --outdir "$work/dist" "$repo" >"$work/build.log"
wheel=$(ls "$work"/dist/g2v_sklearn-*.whl)
"$py" -m pip install --quiet "torch==2.13.0" "$wheel[plot]" pytest
# from outside the checkout: python -c puts the working folder first on sys.path
(cd "$work" && "$py" -c "import g2v_sklearn, sys; assert g2v_sklearn.__file__.startswith(sys.prefix), g2v_sklearn.__file__; print('installed:', g2v_sklearn.__file__)")

echo "== serve geom2vec's files from $checkpoints on 127.0.0.1"
port=$("$py" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$py" -m http.server "$port" --bind 127.0.0.1 --directory "$checkpoints" >"$work/server.log" 2>&1 &
server=$!
sleep 1
export G2V_MIRROR="http://127.0.0.1:$port/" G2V_CACHE="$work/cache" MPLBACKEND=Agg
export PATH="$work/venv/bin:$PATH"

empty=$(mktemp -d -p "$work")
cd "$empty"
echo "== the main job, from an empty folder: $empty"
python "$repo/examples/alanine_dipeptide.py" --quick --out ala2_report | tail -n 8

echo "== the command line, from the same folder"
g2v fetch visnet
data=$(python -c "import g2v_sklearn.datasets as d, pathlib; print(pathlib.Path(d.__file__).parent / '_data' / 'alanine_dipeptide')")
g2v embed "$data"/traj_*.xtc --topology "$data/ala2_heavy.pdb" --backbone visnet --stride 10 --out tokens
cat > fit.toml <<'EOF'
[data]
stores = ["tokens"]
[merge]
window = 1
operator = "none"
[vamp]
lagtime = 1
n_components = 2
score_k = 2
max_epochs = 2
progress = false
random_state = 0
[cluster]
n_clusters = 20
random_state = 0
[msm]
lagtime = 1
bayesian = true
n_samples = 50
random_state = 0
[grid]
vamp__lr = [1e-3, 5e-3]
EOF
g2v fit fit.toml --out fit
g2v report fit/model.joblib --out report
ls report

echo "== tests/test_cli.py against the installed wheel (from the empty folder, so the clone is not imported)"
pytest "$repo/tests/test_cli.py" -p no:cacheprovider -q -o addopts="" --rootdir "$repo"
echo "== all done"
