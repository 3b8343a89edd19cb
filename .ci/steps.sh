# Sourced by .ci/run and .ci/matrix.sh: run each part of CI as a bounded, timed step, and print a timing
# summary at the end (also when a step fails).
#
#   step NAME SECONDS COMMAND...   run COMMAND (or a shell function) under `timeout SECONDS`; record its
#                                  time and result
#   steps_failed                   true when any step failed
#   steps_summary                  the table of steps (called from the EXIT trap by steps_init)

_steps=()
_steps_start=$SECONDS
_steps_bad=0

steps_init() {
    trap 'steps_summary' EXIT
}

step() {
    local name="$1" limit="$2" start rc
    shift 2
    printf '\n===== %s (at most %ss): %s\n' "$name" "$limit" "$*" >&2
    start=$SECONDS
    # --kill-after: a command that ignores SIGTERM at the deadline is killed 30 s later.
    set +e
    if declare -F "$1" >/dev/null; then
        # A function of the caller: in a bash of its own, so that `timeout` can bound it.
        export -f "$1"
        timeout --kill-after=30 "$limit" bash -c 'set -euo pipefail; "$@"' step "$@"
    else
        timeout --kill-after=30 "$limit" "$@"
    fi
    rc=$?
    set -e
    local took=$((SECONDS - start)) result=ok
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        result="TIMEOUT (over ${limit}s)"
    elif [ "$rc" -ne 0 ]; then
        result="FAILED (exit $rc)"
    fi
    [ "$result" = ok ] || _steps_bad=1
    _steps+=("$(printf '%-28s %6ss  %s' "$name" "$took" "$result")")
    printf '===== %s: %s in %ss\n' "$name" "$result" "$took" >&2
    return 0
}

steps_failed() { [ "$_steps_bad" -ne 0 ]; }

steps_summary() {
    local rc=$?
    [ "${#_steps[@]}" -gt 0 ] || return "$rc"
    printf '\n===== timing\n' >&2
    printf '%s\n' "${_steps[@]}" >&2
    printf '%-28s %6ss\n' "total" "$((SECONDS - _steps_start))" >&2
    return "$rc"
}
