#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the suite needs, then runs it.
# `tests/run.sh --lowest [pytest args]` then runs the suite again at the lowest supported
# versions of every dependency (tests/lowest.sh: a throwaway venv under /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."

lowest=0
if [ "${1:-}" = "--lowest" ]; then
  lowest=1
  shift
fi

# The fleet tests start their own redis-server; install Debian's when it is missing.
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  # The package starts a system service on 6379; the tests use their own instances.
  (service redis-server stop || systemctl stop redis-server || pkill -x redis-server) >/dev/null 2>&1 || true
fi

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
python3 -m ruff check resilience tests examples benchmarks
python3 -m ruff format --check resilience tests examples benchmarks
python3 -m mypy
python3 -m pytest "$@"
if [ "$lowest" = 1 ]; then
  bash tests/lowest.sh "$@"
fi
