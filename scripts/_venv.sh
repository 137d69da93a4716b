# Sourced by scripts/run and scripts/test: make sure .venv exists and has the project installed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
extras="${1:-}"

python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      python="$candidate"; break
    fi
  done
fi
if [ -z "$python" ]; then
  echo "error: BotCoreBot needs Python 3.11 or newer; none found (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating $venv with $("$python" --version)"
  "$python" -m venv "$venv"
fi

# Reinstall only when pyproject.toml (or the extras asked for) changed.
stamp="$venv/.installed-$(cat "$root/pyproject.toml" | cksum | cut -d' ' -f1)${extras:+-$extras}"
if [ ! -f "$stamp" ]; then
  echo "==> installing botcorebot${extras:+[$extras]} into .venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$root${extras:+[$extras]}"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
