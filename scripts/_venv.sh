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
# pip's own output is a page per install: show one line that moves instead (on a terminal),
# its latest step every 10 s otherwise, and pip's whole output only if it fails.
_pip() {
  local log="$venv/.pip.log" line pid ticks=0
  "$venv/bin/python" -m pip "$@" --progress-bar off >"$log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    line=$(grep -E '^(Collecting|Processing|Obtaining|Building|Installing)' "$log" | tail -n 1 || true)
    if [ -t 1 ]; then
      printf '\r\033[K    %s' "${line:0:76}"
    elif [ $((++ticks % 20)) = 0 ]; then
      echo "    $((ticks / 2))s: ${line:0:70}"
    fi
    sleep 0.5
  done
  if [ -t 1 ]; then printf '\r\033[K'; fi
  if ! wait "$pid"; then
    echo "error: pip $* failed:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
}

if [ ! -f "$stamp" ]; then
  echo "==> installing botcorebot${extras:+[$extras]} into .venv (about a minute the first time)"
  _pip install --quiet --upgrade pip
  _pip install -e "$root${extras:+[$extras]}"
  count=$(grep -E '^Successfully installed' "$venv/.pip.log" | wc -w | awk '{print ($1 > 2) ? $1 - 2 : 0}')
  echo "    installed $count package$([ "$count" = 1 ] || echo s)"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
