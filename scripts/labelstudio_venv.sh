#!/usr/bin/env bash
# Create (once) the cached virtual environment with Label Studio 1.23.2 that the end-to-end test
# (tests/test_e2e_labelstudio.py) runs, and print its path on stdout (the only thing on stdout).
#
#   LS_VENV     where the venv lives (default ${XDG_CACHE_HOME:-$HOME/.cache}/fcfi-backend/ls-1.23.2),
#               outside the repository so that it survives between CI runs on the same machine
#   LS_PYTHON   the interpreter to build it with (default python3.11, else python3; needs >= 3.10)
#
# Idempotent: a marker file is written only after a successful install and a check that Label Studio
# imports at the right version; a venv without the marker, or that fails the check, is rebuilt. The marker
# also names a digest of scripts/labelstudio_constraints.txt (upper bounds on Label Studio's dependencies
# that newer releases broke), so a venv built before a constraint changed is rebuilt too.
# Concurrent callers wait on a lock. About 1 GB and a minute to build; instant afterwards.
set -euo pipefail

LS_VERSION=1.23.2
CONSTRAINTS="$(cd "$(dirname "$0")" && pwd)/labelstudio_constraints.txt"
SPEC="label-studio==$LS_VERSION constraints:$(sha256sum "$CONSTRAINTS" | cut -c1-16)"
VENV="${LS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/fcfi-backend/ls-$LS_VERSION}"
MARKER="$VENV/.fcfi-installed"

if [[ -n "${LS_PYTHON:-}" ]]; then
    PY="$LS_PYTHON"
elif command -v python3.11 >/dev/null 2>&1; then
    PY=python3.11
else
    PY=python3
fi

log() { echo "labelstudio_venv: $*" >&2; }

healthy() {
    [[ -f "$MARKER" && -x "$VENV/bin/python" && -x "$VENV/bin/label-studio" ]] || return 1
    [[ "$(cat "$MARKER")" == "$SPEC" ]] || return 1
    # Cheap check (no Django start): the distribution is there at the pinned version and the package imports.
    "$VENV/bin/python" - "$LS_VERSION" >/dev/null 2>&1 <<'EOF'
import importlib.metadata, importlib.util, sys
assert importlib.metadata.version("label-studio") == sys.argv[1]
assert importlib.util.find_spec("label_studio") is not None
EOF
}

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

if healthy; then
    echo "$VENV"
    exit 0
fi

if [[ -e "$VENV" ]]; then
    log "removing the incomplete or broken venv at $VENV"
    rm -rf "$VENV"
fi
log "installing label-studio==$LS_VERSION into $VENV (about 1 GB, a minute or so)"
start=$SECONDS
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2 || true
if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$CONSTRAINTS" \
        "label-studio==$LS_VERSION" >&2; then
    log "pip install label-studio==$LS_VERSION failed"
    rm -rf "$VENV"
    exit 1
fi
echo "$SPEC" >"$MARKER"
if ! healthy; then
    log "the installed venv fails its check (label_studio does not import at $LS_VERSION)"
    rm -rf "$VENV"
    exit 1
fi
log "done in $((SECONDS - start)) s"
echo "$VENV"
