#!/usr/bin/env bash
# The CI matrix beyond `make test` (Redis 7.0, Python 3.11, the newest Celery/kombu/redis-py, every test):
# each cell runs the part of the suite that can tell that server, Python, release set or pool apart.
#
#   bash .ci/matrix.sh [CELL...]    (default: every cell, in this order; `make matrix-CELL` runs one)
#
#   redis86 valkey8 valkey9   the unit tier, the worker end-to-end, fault and shutdown tests, the cluster,
#                             exactly-once, hygiene/retention, lag and idempotent produce tests, every server
#                             CRS_SERVER=<cell> (.ci/servers.sh)
#   py310-oldest              Python 3.10, celery==5.3.0 kombu==5.3.0 redis==5.0.0: the unit tier, the Redis
#                             fast path and the worker subset
#   py313-newest              Python 3.13, the newest releases: the same
#   prefork solo threads gevent   the worker subset, every worker on that pool (CRS_POOL)
#
# Each cell is bounded (`timeout`) and timed; a summary closes the run. A cell whose Python or server is
# missing fails, saying what is missing: a matrix that skips a cell silently proves less than it says.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/steps.sh

ALL_CELLS=(redis86 valkey8 valkey9 py310-oldest py313-newest prefork solo threads gevent)
OLDEST=("celery==5.3.0" "kombu==5.3.0" "redis==5.0.0")
NEWEST=(celery kombu redis)

# tests/unit/test_house.py reads the source (style, layout): make test runs it, no cell can tell it apart.
# Server cells: what a server can change (commands, replies, Lua, cluster, persistence across a restart).
SERVER_TESTS=(
    tests/unit --ignore=tests/unit/test_house.py tests/e2e/test_worker_e2e.py tests/e2e/test_fault_broker.py
    tests/e2e/test_fault_streams_redis.py tests/e2e/test_fault_workers.py tests/e2e/test_cluster.py
    tests/e2e/test_exactly_once.py tests/e2e/test_hygiene.py tests/e2e/test_lag.py
    tests/e2e/test_idempotent_produce.py tests/e2e/test_shutdown.py
)
# The worker subset: the pool CRS_POOL names (the banner, the tasks' processes), a real `celery worker`
# dispatching, sharing a stream, killed and restarted, stopped warm mid-stream, claiming a dead worker's entries.
# (test_one_reader_per_worker_whatever_the_pool names its own pools: make test runs it.)
WORKER_TESTS=(tests/e2e/test_worker_e2e.py -k
    "crs_pool or mapped_task or split_a_stream or kill_9_and_restart or sigterm_mid_stream or dead_worker or warm_shutdown")
# Version cells: the unit tier (the fast paths build kombu's messages byte for byte) and the fast path through
# a real worker, then the worker subset.
VERSION_TESTS=(tests/unit tests/e2e/test_fastpath.py --ignore=tests/unit/test_house.py)

CELL_LIMIT="${CRS_CELL_LIMIT:-900}"   # seconds per cell
VENVS="${CRS_MATRIX_VENVS:-.venv-matrix}"

die() { printf 'matrix.sh: %s\n' "$*" >&2; exit 1; }

pytest_in() {
    local python="$1"
    shift
    "$python" -c 'import sys, celery, kombu, redis; print("matrix: Python %s, celery %s, kombu %s, redis-py %s" % (sys.version.split()[0], celery.__version__, kombu.__version__, redis.__version__))'
    "$python" -m pytest -n 2 -p no:cacheprovider "$@"
}

main_venv() {
    make install >/dev/null
    echo .venv/bin/python
}

# `find_python 3.10`: pyenv's newest 3.10.x, else python3.10 on PATH (or CRS_PYTHON310); a clear failure else.
find_python() {
    local want="$1" override candidate
    override="CRS_PYTHON${want/./}"
    local candidates=()
    [ -n "${!override:-}" ] && candidates+=("${!override}")
    # shellcheck disable=SC2012
    candidates+=($(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$want".*/bin/python 2>/dev/null | sort -V -r))
    candidates+=("$(command -v "python$want" || true)")
    for candidate in "${candidates[@]}"; do
        [ -n "$candidate" ] && [ -x "$candidate" ] || continue
        if [ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$want" ] \
            && "$candidate" -c 'import venv, ensurepip' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    die "Python $want is missing: no ${PYENV_ROOT:-$HOME/.pyenv}/versions/$want.*, no python$want (with venv and ensurepip) on PATH. Install it (pyenv install $want, or your distribution's python$want and python$want-venv) or set $override to its interpreter."
}

# `version_venv NAME PYTHON REQUIREMENT...`: a venv of its own with the package's test extras and these
# releases; reused while its requirements are unchanged.
version_venv() {
    local name="$1" python="$2"
    shift 2
    local dir="$VENVS/$name" want
    want="$("$python" --version) $* $(sha1sum pyproject.toml | cut -c1-12)"
    if [ ! -x "$dir/bin/python" ] || [ "$(cat "$dir/.installed" 2>/dev/null)" != "$want" ]; then
        rm -rf "$dir"
        "$python" -m venv "$dir"
        "$dir/bin/python" -m pip install -q --upgrade pip >&2
        "$dir/bin/python" -m pip install -q -e '.[test]' "$@" >&2
        echo "$want" >"$dir/.installed"
    elif [[ " $* " != *==* ]]; then
        # The newest releases: whatever came out since the venv was made.
        "$dir/bin/python" -m pip install -q --upgrade "$@" >&2
    fi
    echo "$dir/bin/python"
}

run_cell() {
    local cell="$1" python interpreter failed=0
    case "$cell" in
        redis86 | valkey8 | valkey9)
            bash .ci/servers.sh "$cell"
            python="$(main_venv)"
            CRS_SERVER="$cell" pytest_in "$python" "${SERVER_TESTS[@]}"
            ;;
        py310-oldest)
            interpreter="$(find_python 3.10)"
            python="$(version_venv py310-oldest "$interpreter" "${OLDEST[@]}")"
            pytest_in "$python" "${VERSION_TESTS[@]}" || failed=1
            pytest_in "$python" "${WORKER_TESTS[@]}" || failed=1
            ;;
        py313-newest)
            interpreter="$(find_python 3.13)"
            python="$(version_venv py313-newest "$interpreter" "${NEWEST[@]}")"
            pytest_in "$python" "${VERSION_TESTS[@]}" || failed=1
            pytest_in "$python" "${WORKER_TESTS[@]}" || failed=1
            ;;
        prefork | solo | threads)
            python="$(main_venv)"
            CRS_POOL="$cell" pytest_in "$python" "${WORKER_TESTS[@]}"
            ;;
        gevent)
            python="$(main_venv)"
            "$python" -m pip install -q gevent
            CRS_POOL=gevent pytest_in "$python" "${WORKER_TESTS[@]}"
            ;;
        *) die "unknown cell '$cell': one of ${ALL_CELLS[*]}" ;;
    esac
    return "$failed"
}

if [ "${1:-}" = "--cell" ]; then
    # One cell, inside a step of the caller (its own timeout and timing).
    run_cell "$2"
    exit
fi

[ $# -gt 0 ] || set -- "${ALL_CELLS[@]}"
for cell in "$@"; do
    case " ${ALL_CELLS[*]} " in *" $cell "*) ;; *) die "unknown cell '$cell': one of ${ALL_CELLS[*]}" ;; esac
done
steps_init
for cell in "$@"; do
    step "matrix $cell" "$CELL_LIMIT" bash .ci/matrix.sh --cell "$cell"
done
! steps_failed
