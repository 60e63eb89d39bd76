#!/usr/bin/env bash
# Rekindle vs restic vs Borg on the shared, seeded dataset (`make bench` runs this from the repo
# root). Installs what is missing (restic and GNU time via apt, Borg into its own venv), runs the
# shared harness (../shared/bench/run_peers.py), keeps its log, markdown table and raw JSON lines
# under $BENCH_WORK/results/, and prints Rekindle/restic and Rekindle/borg ratios against the
# targets in docs/benchmarks.md (bench/report.py).
#
# Environment (all optional):
#   BENCH_WORK      working dir: dataset, repos, restored trees, results (/tmp/rekindle-bench/work)
#   BENCH_SCALE     dataset scale, 1 = 50,007 files / 1.70 GB; 0.05 for a quick smoke run (1)
#   BENCH_REPS      repetitions; the tables show median (min..max) (3)
#   BENCH_HARNESS   directory holding run_peers.py (<repo>/../shared/bench)
#   BENCH_VENV      virtualenv for Borg (and py-spy); the harness runs with its python
#                   (/tmp/rekindle-bench/venv)
#   BENCH_REKINDLE  the rekindle command (<repo>/.venv/bin/rekindle)
#   BENCH_PIN       1: benchmark a commit (BENCH_COMMIT, default HEAD), installed (not
#                   editable) into /tmp/rekindle-bench/rekindle-<commit>/venv, so that edits to
#                   src/ made while the benchmark runs do not change the code under test (0)
#   BENCH_ARGS      extra harness options, e.g. "--cooldown 1" or "--cache cold"
# Needs root (or sudo) only when something has to be installed. A full run needs ~35 GB of disk
# and takes 20-40 minutes; wait >= 6 minutes after a previous run's cleanup (see the harness
# README: ext4 without a journal is slow to create files right after mass deletions).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_WORK="${BENCH_WORK:-/tmp/rekindle-bench/work}"
BENCH_SCALE="${BENCH_SCALE:-1}"
BENCH_REPS="${BENCH_REPS:-3}"
BENCH_HARNESS="${BENCH_HARNESS:-$REPO_ROOT/../shared/bench}"
BENCH_VENV="${BENCH_VENV:-/tmp/rekindle-bench/venv}"
BENCH_REKINDLE="${BENCH_REKINDLE:-$REPO_ROOT/.venv/bin/rekindle}"
BENCH_ARGS="${BENCH_ARGS:-}"
BENCH_PIN="${BENCH_PIN:-0}"
BENCH_COMMIT="${BENCH_COMMIT:-HEAD}"

log() { printf '[bench] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@"
}

# --------------------------------------------------------------------------- prerequisites
if [ ! -f "$BENCH_HARNESS/run_peers.py" ]; then
    log "harness not found: $BENCH_HARNESS/run_peers.py (set BENCH_HARNESS)"
    exit 2
fi
BENCH_HARNESS="$(cd "$BENCH_HARNESS" && pwd)"
if [ "$BENCH_PIN" = 1 ]; then
    COMMIT="$(git -C "$REPO_ROOT" rev-parse --short=12 "$BENCH_COMMIT^{commit}")"
    PIN_DIR="/tmp/rekindle-bench/rekindle-$COMMIT"
    if [ ! -x "$PIN_DIR/venv/bin/rekindle" ]; then
        log "installing Rekindle $COMMIT (a commit, not the working tree) into $PIN_DIR"
        rm -rf "$PIN_DIR"
        mkdir -p "$PIN_DIR/src"
        git -C "$REPO_ROOT" archive "$COMMIT" | tar -x -C "$PIN_DIR/src"
        python3 -m venv "$PIN_DIR/venv"
        "$PIN_DIR/venv/bin/pip" install --quiet "$PIN_DIR/src"
    fi
    BENCH_REKINDLE="$PIN_DIR/venv/bin/rekindle"
    CODE="commit $COMMIT (pinned copy)"
else
    COMMIT="$(git -C "$REPO_ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
    dirty="$(git -C "$REPO_ROOT" status --porcelain -- src 2>/dev/null | wc -l)"
    CODE="commit $COMMIT, $dirty uncommitted file(s) under src/"
    if [ "$dirty" -gt 0 ]; then
        log "note: src/ has uncommitted edits; the editable install runs them (BENCH_PIN=1 pins HEAD)"
    fi
fi
if [ ! -x "$BENCH_REKINDLE" ]; then
    log "rekindle not found at $BENCH_REKINDLE (run 'make run' or set BENCH_REKINDLE)"
    exit 2
fi

missing=()
command -v restic >/dev/null 2>&1 || missing+=(restic)
[ -x /usr/bin/time ] || missing+=(time)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} (apt)"
    apt_install "${missing[@]}"
fi

if [ ! -x "$BENCH_VENV/bin/python" ]; then
    log "creating $BENCH_VENV"
    python3 -m venv "$BENCH_VENV"
fi
# Borg: from PyPI into the venv (the harness picks the borg next to its python), else Debian's.
if [ ! -x "$BENCH_VENV/bin/borg" ] && ! command -v borg >/dev/null 2>&1; then
    log "installing borgbackup into $BENCH_VENV (builds from source)"
    apt_install build-essential pkg-config libssl-dev libacl1-dev liblz4-dev libzstd-dev \
        libxxhash-dev
    # borg 2 changed the command line the harness uses (init/create ::name); stay on 1.x
    if ! "$BENCH_VENV/bin/pip" install --quiet 'borgbackup<2'; then
        log "pip build of borgbackup failed; falling back to Debian's borgbackup"
        apt_install borgbackup
    fi
fi

PY="$BENCH_VENV/bin/python"
log "restic: $(restic version | head -1)"
if [ -x "$BENCH_VENV/bin/borg" ]; then
    log "borg: $("$BENCH_VENV/bin/borg" --version) ($BENCH_VENV/bin/borg)"
else
    log "borg: $(borg --version) ($(command -v borg))"
fi
log "rekindle: $("$BENCH_REKINDLE" --version) ($BENCH_REKINDLE), $CODE"

# --------------------------------------------------------------------------- run
RESULTS="$BENCH_WORK/results"
mkdir -p "$RESULTS"
STAMP="$(date +%Y%m%d-%H%M%S)"
RUNLOG="$RESULTS/run-$STAMP.log"
TABLE="$RESULTS/table-$STAMP.md"
RATIOS="$RESULTS/ratios-$STAMP.md"

{
    echo "rekindle: $BENCH_REKINDLE, $CODE"
    echo "settings: BENCH_SCALE=$BENCH_SCALE BENCH_REPS=$BENCH_REPS BENCH_ARGS=$BENCH_ARGS"
} >"$RESULTS/run-$STAMP.meta"
log "harness: $BENCH_HARNESS/run_peers.py, work $BENCH_WORK, scale $BENCH_SCALE, reps $BENCH_REPS"
# shellcheck disable=SC2086  # BENCH_ARGS is a list of options, split on purpose
"$PY" -u "$BENCH_HARNESS/run_peers.py" \
    --work "$BENCH_WORK" --scale "$BENCH_SCALE" --reps "$BENCH_REPS" \
    --tools rekindle,restic,borg-zstd3 --rekindle "$BENCH_REKINDLE" $BENCH_ARGS \
    2>&1 | tee "$RUNLOG"

# The harness appends raw results as JSON lines and names the file on its last line.
JSONL="$(sed -n 's/^raw results: //p' "$RUNLOG" | tail -1)"
if [ -z "$JSONL" ] || [ ! -f "$JSONL" ]; then
    log "no 'raw results:' line in $RUNLOG"
    exit 1
fi
# The human-readable part of the log: from the "Dataset:" line to the end.
sed -n '/^Dataset: /,$p' "$RUNLOG" >"$TABLE"

"$PY" "$REPO_ROOT/bench/report.py" "$JSONL" --markdown "$RATIOS" --json "${RATIOS%.md}.json"
log "results: $JSONL"
log "         $TABLE (harness table), $RATIOS (ratios), $RUNLOG (full log), run-$STAMP.meta"

# --------------------------------------------------------------------------- services
# Issue 3's targets: an agent through the storage node against the local engine, and 1,000
# simulated agents long-polling one cloud (bench/agent_vs_local.py, bench/load.py).
SERVICES="$RESULTS/services-$STAMP.jsonl"
REKINDLE_PY="$(dirname "$BENCH_REKINDLE")/python"
log "agent through the storage node vs local engine ($BENCH_REPS reps)"
"$REKINDLE_PY" "$REPO_ROOT/bench/agent_vs_local.py" "$BENCH_WORK/data/pristine" \
    --reps "$BENCH_REPS" --out "$SERVICES" 2>&1 | tee -a "$RUNLOG"
log "1,000 simulated agents long-polling one cloud"
"$REKINDLE_PY" "$REPO_ROOT/bench/load.py" --agents 1000 --out "$SERVICES" 2>&1 | tee -a "$RUNLOG"
log "services results: $SERVICES"
