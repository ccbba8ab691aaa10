#!/usr/bin/env bash
# Build the self-contained nscmonitor folder (dist/nscmonitor/) for offline instrument PCs,
# then check that it starts: prints its version and runs 'doctor'.
#
#   installer/build_frozen.sh            # build into ./dist with the active Python
#   NSCMONITOR_FROZEN_GUI=0 installer/build_frozen.sh   # without the dashboard (smaller)
#
# The same spec builds the Windows folder when run there (py -m PyInstaller ...): PyInstaller
# does not cross-compile, so build on the oldest Windows the lab runs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
dist="${DIST:-$root/dist}"
work="${WORK:-$root/build/pyinstaller}"
python="${PYTHON:-python}"

"$python" -m PyInstaller --version >/dev/null 2>&1 || {
    echo "PyInstaller is not installed: $python -m pip install pyinstaller" >&2; exit 2; }
start=$(date +%s)
"$python" -m PyInstaller --noconfirm --clean --distpath "$dist" --workpath "$work" \
    "$here/pyinstaller/nscmonitor.spec"
echo "built $dist/nscmonitor in $(( $(date +%s) - start )) s ($(du -sh "$dist/nscmonitor" | cut -f1))"
"$dist/nscmonitor/nscmonitor" --version
"$dist/nscmonitor/nscmonitor" doctor
