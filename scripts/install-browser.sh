#!/usr/bin/env bash
# Chromium for the dashboard's browser tests (Debian's package; Playwright drives it, see docs/dashboard.md).
# Installs it with apt-get when missing and this user may; otherwise says why the browser tests will be skipped.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || [ -n "${AEGIS_TEST_CHROMIUM:-}" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: apt-get install chromium (for the dashboard tests)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "install-browser: could not install chromium; the dashboard browser tests will be skipped"
else
  echo "install-browser: chromium not found and cannot apt-get it here; the dashboard browser tests will be skipped" \
       "(install chromium, or set AEGIS_TEST_CHROMIUM to a Chromium binary)"
fi
