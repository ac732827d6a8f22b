#!/usr/bin/env bash
# Render results/report.html in headless Chromium (Debian: apt-get install chromium) and save a PNG screenshot.
# Usage: scripts/screenshot_report.sh [REPORT_HTML] [OUT_PNG] [HEIGHT_PX] [WIDTH_PX]
# e.g. the report at 1280 and at 800 px: scripts/screenshot_report.sh results/report.html /tmp/r800.png 2400 800
set -euo pipefail
report="$(realpath "${1:-results/report.html}")"
out="$(realpath -m "${2:-results/report.png}")"
height="${3:-2400}"
width="${4:-1280}"
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[ -n "$browser" ] || { echo "error: no chromium found; install it (Debian: apt-get install chromium)" >&2; exit 2; }
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars \
  --window-size="$width","$height" --screenshot="$out" "file://$report" >/dev/null 2>&1
echo "wrote $out"
