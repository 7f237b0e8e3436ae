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

# The fleet tests start their own redis-server, cluster (redis-cli) and Sentinels; install
# Debian's packages for whichever binary is missing.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # The packages start system services (6379, 26379); the tests use their own instances.
  for service in redis-server redis-sentinel; do
    ($sudo service "$service" stop || $sudo systemctl stop "$service") >/dev/null 2>&1 || true
  done
fi

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
python3 -m ruff check resilience tests examples benchmarks
python3 -m ruff format --check resilience tests examples benchmarks
python3 -m mypy
python3 -m pytest "$@"
if [ "$lowest" = 1 ]; then
  bash tests/lowest.sh "$@"
fi
