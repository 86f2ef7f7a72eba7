#!/usr/bin/env bash
# Boot a firmware ELF on QEMU's mps2-an386 (Cortex-M4F) and decode its defmt log (semihosting) to stdout.
# Usage: qemu-run.sh ELF        (also the cargo runner for thumbv7em-none-eabihf, see .cargo/config.toml)
# Exit status: QEMU's (0 = semihosting exit success, 1 = failure), 124 on timeout (QEMU_TIMEOUT, default 120 s),
# or defmt-print's if decoding failed.
set -uo pipefail
elf=${1:?usage: qemu-run.sh ELF}
timeout "${QEMU_TIMEOUT:-120}" qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic \
    -semihosting-config enable=on,target=native -kernel "$elf" \
  | defmt-print --log-format '{s}' -e "$elf"
status=("${PIPESTATUS[@]}")
if [ "${status[0]}" -ne 0 ]; then
    [ "${status[0]}" -eq 124 ] && echo "qemu-run.sh: timeout after ${QEMU_TIMEOUT:-120} s" >&2
    exit "${status[0]}"
fi
exit "${status[1]}"
