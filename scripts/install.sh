#!/usr/bin/env bash
# Create .venv/ in the checkout and install the plugin, the engine and the test tools
# with ONE pip install (installing Scipion first and the rest later breaks numpy/scipy).
# Re-running is cheap: a stamp records the setup.py that was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.installed-$(cat setup.py scripts/install.sh | sha1sum | cut -c1-12)
if [ -f "$stamp" ] && [ -x .venv/bin/fewshotpicker ]; then
    exit 0
fi
echo "install: creating .venv and installing dependencies (first time: a few minutes, ~6 GB)" >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade "pip>=23" 2>/dev/null || true
.venv/bin/python -m pip install --quiet -e ".[test]"
rm -f .venv/.installed-*
touch "$stamp"
echo "install: done" >&2
