#!/usr/bin/env bash
# Installs Debian's Chromium for the browser test (tests/test_ui_browser.py) when it is missing.
# Idempotent: does nothing when /usr/bin/chromium is already there. Playwright drives this binary;
# `playwright install` (which downloads its own browsers) is never needed.
set -euo pipefail

PACKAGES=(chromium)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ] && [ -x /usr/bin/chromium ]; then
  echo "install-browser: chromium already installed ($(/usr/bin/chromium --version 2>/dev/null || echo '?')); nothing to do"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-browser: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi

start=$(date +%s)
echo "install-browser: installing ${missing[*]:-chromium} (apt-get update, then apt-get install --no-install-recommends)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]:-chromium}" >/dev/null
echo "install-browser: installed $(/usr/bin/chromium --version 2>/dev/null) in $(( $(date +%s) - start ))s"
