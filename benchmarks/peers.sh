# Sourced by benchmarks/gpu.sh and benchmarks/device_check.sh (not run on its own).
#
# Makes this checkout importable without installing it (PYTHONPATH = the repository root), picks
# the interpreter ($PYTHON, default python3: the device machine has no `python`), and makes the
# other MEGABYTE implementations importable when their wheels were fetched beforehand
# (benchmarks/fetch_peer_wheels.sh, on a machine with a network): $WHEELS/*.whl (default
# .wheels/, ignored by git; name it in the device tool's `carry`) are installed with pip, no
# network, into $PEERS_SITE; a folder $WHEELS/site of unpacked packages is used as it is.
# Without either, the megabyte-pytorch and mblm rows say "not installed": nothing fails.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-$REPO/.wheels}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if compgen -G "$WHEELS/*.whl" >/dev/null; then
  PEERS_SITE=${PEERS_SITE:-${TMPDIR:-/tmp}/megabyte-peers}
  if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
       --target "$PEERS_SITE" "$WHEELS"/*.whl >&2; then
    export PYTHONPATH="$PYTHONPATH:$PEERS_SITE"  # after the checkout and its own settings
    echo "peers: installed $(compgen -G "$WHEELS/*.whl" | wc -l) wheels from $WHEELS into $PEERS_SITE" >&2
  else
    echo "peers: pip could not install $WHEELS/*.whl; their rows will say not installed" >&2
  fi
elif [[ -d "$WHEELS/site" ]]; then
  export PYTHONPATH="$PYTHONPATH:$WHEELS/site"
  echo "peers: using the unpacked packages in $WHEELS/site" >&2
else
  echo "peers: no wheels in $WHEELS (benchmarks/fetch_peer_wheels.sh fetches them); the megabyte-pytorch" \
       "and mblm rows will say not installed" >&2
fi
