#!/usr/bin/env bash
# Best effort: install headless Chromium and its WebDriver (Debian / Ubuntu packages chromium, chromium-driver) for
# the web UI's browser test (tests/test_webui_browser.py). Needs root or passwordless sudo and apt-get; it never
# fails: without a browser that test skips and says why.
set -uo pipefail
have() { command -v "$1" >/dev/null 2>&1; }

if { have chromium || have chromium-browser; } && have chromedriver; then
  echo "[browser] Chromium and chromedriver are installed"
  exit 0
fi
if ! have apt-get; then
  echo "[browser] no apt-get: not installing Chromium (the browser test will skip)"
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif have sudo && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "[browser] not root and no passwordless sudo: not installing Chromium (the browser test will skip)"
  exit 0
fi
echo "[browser] installing chromium and chromium-driver with apt-get"
if "${as_root[@]}" apt-get update -q >/dev/null &&
   "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; then
  echo "[browser] installed: $(chromium --version 2>/dev/null || chromium-browser --version 2>/dev/null)"
else
  echo "[browser] apt-get install failed (the browser test will skip)"
fi
exit 0
