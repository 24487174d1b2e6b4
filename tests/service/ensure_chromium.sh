#!/usr/bin/env bash
# Test set-up for the browser tests: install Debian's chromium when it is missing (as root; CI runs as root).
# Without root and without chromium the browser tests skip loudly; in CI (CI=true) they fail instead.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "installing Debian's chromium for the browser tests (apt-get)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    exit 0
fi
echo "WARNING: /usr/bin/chromium is missing and this is not root: the browser tests will be skipped" >&2
if [ "${CI:-}" = "true" ]; then
    echo "CI=true: the browser tests must run; install chromium (apt-get install chromium)" >&2
    exit 1
fi
