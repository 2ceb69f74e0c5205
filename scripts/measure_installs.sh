#!/usr/bin/env bash
# Size on disk and install time of a fresh virtual environment per install of edgeskip (the README's table).
#
#   bash scripts/measure_installs.sh [EXTRAS ...]     # default: core tflite search train tflite-export workstation,dev
#
# Each install is measured on its own: a new venv, `pip install --no-cache-dir` of a snapshot of this folder's
# tracked files (so an editable checkout's build folders do not count), then `du` of the whole venv. Install time
# includes downloading, so it depends on the network; the venvs are removed afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

work=$(mktemp -d "${TMPDIR:-/tmp}/edgeskip-installs.XXXXXX")
trap 'rm -rf "$work"' EXIT
git ls-files -z | tar --null -cf - -T - | (mkdir -p "$work/src" && tar -xf - -C "$work/src")
extras=("$@")
[ ${#extras[@]} -eq 0 ] && extras=(core tflite search train tflite-export "workstation,dev")

printf '%-18s %8s %8s %9s\n' install seconds MiB packages
for e in "${extras[@]}"; do
  venv="$work/venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  spec="$work/src"
  [ "$e" != core ] && spec="$work/src[$e]"
  start=$(date +%s)
  "$venv/bin/pip" install --no-cache-dir --quiet "$spec" > "$work/pip.log" 2>&1 || { cat "$work/pip.log"; exit 1; }
  seconds=$(( $(date +%s) - start ))
  printf '%-18s %8d %8d %9d\n' "$e" "$seconds" "$(du -sm "$venv" | cut -f1)" \
    "$("$venv/bin/pip" list --format=freeze 2>/dev/null | wc -l)"
done
