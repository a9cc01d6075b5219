#!/usr/bin/env bash
# Run benchmarks/bench_vs_ray.py in its own virtualenv (.venv-bench) with Ray Train 2.60 next to trainkeep.
#
# Ray is never a dependency of trainkeep or of `make test`: it lives only in .venv-bench, which this script
# creates on first use (and refreshes when this script or pyproject.toml changes). Arguments are passed on to
# the benchmark, e.g. `benchmarks/bench_vs_ray.sh --sizes 0,10 --reports 10`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${BENCH_VENV:-$ROOT/.venv-bench}"
STAMP="$VENV/.installed-bench"

needs_install() {
    [[ ! -f "$STAMP" ]] || [[ "$ROOT/pyproject.toml" -nt "$STAMP" ]] || [[ "${BASH_SOURCE[0]}" -nt "$STAMP" ]]
}

# A virtualenv named by BENCH_VENV that already has Ray 2.60, torch and psutil is used as it is: nothing is
# installed into it (it may be shared), and trainkeep comes from this checkout's src/ (PYTHONPATH below).
has_deps() {
    [[ -n "${BENCH_VENV:-}" && -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c \
        "import ray, torch, psutil; assert ray.__version__ == '2.60.0'" >/dev/null 2>&1
}

if ! has_deps && needs_install; then
    echo "bench_vs_ray: preparing $VENV (ray[train]==2.60.0, torch==2.13.0, psutil, trainkeep)" >&2
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "ray[train]==2.60.0" "torch==2.13.0" "psutil>=5.9"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT"
    "$VENV/bin/python" -c "import ray, torch, psutil, trainkeep; assert ray.__version__ == '2.60.0', ray.__version__"
    touch "$STAMP"
fi

# Keep Ray quiet and local: no usage stats, no dashboard, loopback only. Ray swaps 127.0.0.1 for the machine's
# routable address unless it is in single-machine mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0). The benchmark sets
# these again for each run, passes 127.0.0.1 to ray.init, and refuses to go on if a Ray socket listens elsewhere.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export RAY_USAGE_STATS_ENABLED=0
export RAY_NODE_IP_ADDRESS=127.0.0.1
export RAY_DISABLE_DOCKER_CPU_WARNING=1
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"

cd "$ROOT"
exec "$VENV/bin/python" benchmarks/bench_vs_ray.py "$@"
