#!/usr/bin/env bash
# Fetch the browser scripts the built book needs (MathJax 3, require.js and the Jupyter
# widgets HTML manager) from the npm registry into _vendor/, so that pages render offline
# with no script from a CDN. Idempotent: does nothing when _vendor/ is complete.
set -euo pipefail
out=_vendor
[[ -f $out/mathjax/tex-mml-chtml.js && -f $out/require.js && -f $out/html-manager/embed-amd.js ]] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm install --silent --no-audit --no-fund --no-save \
  mathjax@3.2.2 @jupyter-widgets/html-manager@1.0.6 requirejs@2.3.7 >/dev/null)
rm -rf "$out.partial" && mkdir -p "$out.partial/html-manager"
cp -r "$tmp/node_modules/mathjax/es5" "$out.partial/mathjax"
cp "$tmp/node_modules/requirejs/require.js" "$out.partial/require.js"
cp "$tmp/node_modules/@jupyter-widgets/html-manager/dist/embed-amd.js" "$out.partial/html-manager/"
rm -rf "$out" && mv "$out.partial" "$out"
