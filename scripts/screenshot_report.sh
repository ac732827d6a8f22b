#!/usr/bin/env bash
# Render results/report.html in headless Chromium (Debian: apt-get install chromium) and save a PNG screenshot.
# Usage: scripts/screenshot_report.sh [REPORT_HTML] [OUT_PNG] [HEIGHT_PX]
set -euo pipefail
report="$(realpath "${1:-results/report.html}")"
out="$(realpath -m "${2:-results/report.png}")"
height="${3:-2400}"
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[ -n "$browser" ] || { echo "error: no chromium found; install it (Debian: apt-get install chromium)" >&2; exit 2; }
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars \
  --window-size=1280,"$height" --screenshot="$out" "file://$report" >/dev/null 2>&1
echo "wrote $out"
