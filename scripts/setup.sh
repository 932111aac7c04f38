#!/usr/bin/env bash
# One-time set-up, safe to repeat: .venv with the project installed, Fashion-MNIST under data/.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    "$python" -m venv .venv
fi

# Reinstall only when pyproject.toml or constraints.txt changed since the last successful install.
# constraints.txt pins the exact versions (torch 2.14.1, torchvision 0.29.1, ...) the tests ran on.
stamp=.venv/.attnround-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing attnround-pl and its dependencies into .venv (first time: minutes)"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
    echo "$want" > "$stamp"
fi

# Fashion-MNIST: Debian's package when we are root, else torchvision's download.
if [ "$(id -u)" = 0 ] && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    echo "[setup] installing Debian's dataset-fashion-mnist"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } >/tmp/attnround-apt.log 2>&1; then
        echo "[setup] apt-get failed (log: /tmp/attnround-apt.log); falling back to torchvision's download"
    fi
fi
.venv/bin/python -m attnround_pl.data --root "${ATTNROUND_DATA:-data}"
