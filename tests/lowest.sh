#!/usr/bin/env bash
# The suite at the lowest supported versions: a throwaway venv under /tmp with every runtime
# dependency pinned at its floor (tests/constraints-lowest.txt), then pytest there. Arguments go
# to pytest. Python: $LOWEST_PYTHON, else python3.10 (the lowest supported) when it runs, else
# python3. Called by `tests/run.sh --lowest`.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${LOWEST_PYTHON:-}
if [ -z "$python" ]; then
  if python3.10 -c '' >/dev/null 2>&1; then python=python3.10; else python=python3; fi
fi
venv=$(mktemp -d /tmp/resilience-lowest.XXXXXX)
trap 'rm -rf "$venv"' EXIT

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  -c tests/constraints-lowest.txt -e '.[test]' 2> >(grep -v -e '^WARNING: Location' >&2)
echo "lowest versions ($("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])')):" \
  $("$venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
    | awk 'tolower($1) ~ /^(aiohttp|anyio|backoff|structlog|redis|rich)$/ {print $1 "=" $2}')
"$venv/bin/python" -m pytest -p no:cacheprovider "$@"
