#!/usr/bin/env bash
# Makes sure a Chromium is installed for the dashboard's browser tests (tests/ui): Debian's `chromium` package,
# driven by Playwright (Python) through DSKD_CHROMIUM (default /usr/bin/chromium). Playwright's own browser
# downloads are not used.
set -uo pipefail
CHROMIUM=${DSKD_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
  echo "chromium: installing Debian's package for the browser tests"
  $SUDO apt-get update -qq >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null 2>&1
fi
[ -x "$CHROMIUM" ] && echo "chromium: $("$CHROMIUM" --version 2>/dev/null)" || echo "chromium: NOT available (browser tests will be skipped)"
exit 0
