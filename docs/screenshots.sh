#!/usr/bin/env bash
# Build the site strictly, open it in headless Chromium (Debian's; installed when missing) and
# save screenshots of the home page and one reference page to docs/screenshots/. Also checks, in
# the DOM Chromium rendered, that each page shows what it should. Run from anywhere:
#   bash docs/screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq chromium >/dev/null
fi
# The docs extra (tests/run.sh installs it with the test extra).
python3 -c 'import sphinx, myst_parser, furo' 2>/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check -e '.[docs]'

site=docs/_build/html
python3 -m sphinx -W --keep-going -n -E -q -b html docs "$site"

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chrome() {  # a fresh profile, nothing fetched from the network, bounded
  timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --window-size=1280,1000 "$@" 2>/dev/null
}

shoot() {  # page, png name, text the rendered page must contain
  local url="file://$PWD/$site/$1"
  chrome --screenshot="docs/screenshots/$2" "$url" >/dev/null
  test -s "docs/screenshots/$2"
  chrome --dump-dom "$url" | grep -q "$3" || { echo "$1: rendered page lacks '$3'" >&2; exit 1; }
  echo "docs/screenshots/$2 <- $1"
}

shoot index.html home.png "Where to start"
shoot reference/api.html reference.png 'id="resilience.ResilienceMiddleware"'
