#!/usr/bin/env bash
# Debian packages the tests drive: baresip (softphone), SIPp (scripted SIP), Kamailio (a SIP
# trunk stand-in), sox (WAV tools) for SIP Connect; Chromium (a real browser on the room page)
# for WebRTC members. Installs only what is missing; on a machine
# without apt-get (or without the right to use it) it says so and exits 0: the tests that need a
# missing tool then skip, or fail when CALLBRIDGE_REQUIRE_SERVICES=1 (as CI sets).
set -euo pipefail

declare -A PACKAGES=(
  [baresip]=baresip-core [sipp]=sip-tester [kamailio]=kamailio [sox]=sox [chromium]=chromium
)
missing=()
for binary in "${!PACKAGES[@]}"; do
  command -v "$binary" >/dev/null 2>&1 || missing+=("${PACKAGES[$binary]}")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-packages: no apt-get here; install ${missing[*]} yourself" >&2
  exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    echo "install-test-packages: not root; install ${missing[*]} yourself" >&2
    exit 0
  fi
fi
echo "install-test-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
