#!/usr/bin/env bash
# Install headless Chromium (and its WebDriver) from Debian's packages, for the
# HTML report's browser test (tests/test_report_browser.py).
#
# Idempotent: does nothing when /usr/bin/chromium is already there. Runs as root
# (CI, containers) or through sudo. The test drives Chromium over its DevTools
# protocol on a pipe (--remote-debugging-pipe), so no Python package, driver
# download or network port is needed; chromium-driver is installed for people
# who prefer to drive it with WebDriver.
#
#   bash scripts/setup-browser.sh
set -euo pipefail

say() { printf '\033[1m[setup-browser]\033[0m %s\n' "$*"; }

CHROMIUM="${CXRFUSE_CHROMIUM:-/usr/bin/chromium}"
if [[ -x "$CHROMIUM" ]]; then
    say "chromium already installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
    exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    say "error: $CHROMIUM is missing and installing it needs root (or sudo): apt-get install chromium chromium-driver" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "error: $CHROMIUM is missing and apt-get is not available; install Chromium by hand" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Ubuntu ships Chromium only as a snap, which does not run in containers: take Debian's
# build instead, pinned so that nothing else comes from Debian.
if grep -qi '^ID=ubuntu' /etc/os-release 2>/dev/null; then
    say "Ubuntu: adding Debian bookworm's chromium (pinned to chromium only)"
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends debian-archive-keyring
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" \
        | "${SUDO[@]}" tee /etc/apt/sources.list.d/debian-chromium.list >/dev/null
    printf 'Package: *\nPin: release o=Debian\nPin-Priority: 100\n\nPackage: chromium chromium-common chromium-driver chromium-sandbox\nPin: release o=Debian\nPin-Priority: 700\n' \
        | "${SUDO[@]}" tee /etc/apt/preferences.d/debian-chromium >/dev/null
fi
say "apt-get update"
"${SUDO[@]}" apt-get update -q
say "apt-get install -y --no-install-recommends chromium chromium-driver"
"${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver
say "installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
