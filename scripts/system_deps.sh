#!/usr/bin/env bash
# Ensure the Debian packages the project needs outside Python are present.
#   scripts/system_deps.sh napari   virtual X display + software OpenGL for headless napari
#   scripts/system_deps.sh test     the above, plus Chromium (the test that opens built pages)
#   scripts/system_deps.sh book     the above, plus npm (fetches MathJax and the widget
#                                   scripts so that the built book renders offline)
# As root, missing packages are installed with apt-get; otherwise the exact command is printed
# and the script fails.
set -euo pipefail

napari_pkgs=(xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libfontconfig1 libdbus-1-3
  libglib2.0-0 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1
  libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1)
pkgs=("${napari_pkgs[@]}")
case "${1:-napari}" in
  book) command -v npm >/dev/null 2>&1 || pkgs+=(npm) ;;
  test) command -v npm >/dev/null 2>&1 || pkgs+=(npm); pkgs+=(chromium fonts-dejavu-core) ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
if [[ $(id -u) -eq 0 ]]; then
  echo "Installing system packages: ${missing[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "Missing system packages: ${missing[*]}" >&2
  echo "Install them as root with:  sudo sh -c '$cmd'" >&2
  exit 1
fi
