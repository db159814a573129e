#!/usr/bin/env bash
# Render a run report in a real headless browser (Debian's chromium) and save a screenshot:
#   scripts/check-report.sh runs/demo/report.html [runs/demo/report.png]
set -euo pipefail
html=${1:?usage: scripts/check-report.sh REPORT.html [OUT.png]}
out=${2:-${html%.html}.png}
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
  echo "chromium not found: apt-get install chromium" >&2
  exit 2
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size=1200,5200 \
  --screenshot="$out" "file://$(realpath "$html")" 2>/dev/null
echo "screenshot: $out"
