#!/usr/bin/env bash
# Make sure a Chromium binary exists for the dashboard browser test
# (tests/integration/test_dashboard_browser.py) and print its path.
#
# Uses Debian/Ubuntu's `chromium` package via apt-get when no binary is on PATH.
# apt needs root: the script runs apt-get directly as root, through `sudo -n`
# otherwise (no password prompt), and gives up with exit code 2 when neither works.
# Playwright's own browser download (`playwright install`) is never used.
#
# Usage: ops/tools/ensure-chromium.sh        -> prints e.g. /usr/bin/chromium
# Env:   DURABLE_CHROMIUM_PACKAGE            -> apt package name (default: chromium)
set -euo pipefail

package="${DURABLE_CHROMIUM_PACKAGE:-chromium}"

find_chromium() {
    local name
    for name in chromium chromium-browser google-chrome-stable google-chrome; do
        if command -v "${name}" >/dev/null 2>&1; then
            command -v "${name}"
            return 0
        fi
    done
    return 1
}

if path="$(find_chromium)"; then
    echo "${path}"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium.sh: no chromium on PATH and no apt-get to install it" >&2
    exit 2
fi

if [[ "$(id -u)" -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "ensure-chromium.sh: installing ${package} needs root (run as root or allow sudo -n)" >&2
    exit 2
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq >&2
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${package}" >&2

if path="$(find_chromium)"; then
    echo "${path}"
    exit 0
fi
echo "ensure-chromium.sh: installed ${package} but found no chromium binary on PATH" >&2
exit 3
