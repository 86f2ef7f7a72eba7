#!/usr/bin/env bash
# spiketile firmware-sim runner: trains the same tiny network on spiketile-core tiles twice,
#   1. as bare-metal firmware on QEMU's mps2-an386 (Cortex-M4F), log decoded with defmt-print,
#   2. as a host reference on x86 (examples/host-reference.rs, same scenario function),
# once with the default exact math (libm) and once with `--features fast-math` (micromath), checks
# that firmware and host print identical lines (losses as f32 bits, final weight checksum), and
# reports RAM/flash use against the 624 KiB tile and the board's 4 MiB.
#
# Usage: bash firmware-sim/run.sh            (from anywhere; exits non-zero on any failure)
# Needs: qemu-system-arm, defmt-print, rustup target thumbv7em-none-eabihf, and one of llvm-size or
# binutils' size (section sizes of the ELF; both print the same `-A` table).
# Env: CARGO_TARGET_DIR (default <workspace>/target), QEMU_TIMEOUT (seconds, default 120),
#      HOST_REF_DIR (workspace to build the host reference from; default this one. Pointing it at a
#      copy with a patched core is how a mismatch is demonstrated, see firmware-sim/README.md).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
host_root=$(cd "${HOST_REF_DIR:-$root}" && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
target=thumbv7em-none-eabihf
pkg=spiketile-firmware-sim
elf=$CARGO_TARGET_DIR/$target/release/$pkg
TILE_BYTES=638976          # TILE_SRAM_BYTES = 624 KiB
BOARD_RAM=$((4 * 1024 * 1024))
BOARD_FLASH=$((4 * 1024 * 1024))
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
for tool in qemu-system-arm defmt-print cargo timeout; do
    command -v "$tool" >/dev/null || fail "$tool not found (see firmware-sim/README.md)"
done
if command -v llvm-size >/dev/null; then size_tool=llvm-size
elif command -v size >/dev/null; then size_tool=size
else fail "neither llvm-size nor size (binutils) found"; fi

# Lines both sides must print identically (the firmware also prints `fw ...` lines of its own).
scenario_lines() { grep -E '^(scenario|tile|step|checksum|result) ' "$1" || true; }

echo "== spiketile firmware-sim =="
echo "board: QEMU $(qemu-system-arm --version | head -1 | sed 's/QEMU emulator version //'),"\
     "machine mps2-an386, cpu cortex-m4 (Cortex-M4F, single-precision FPU, thumbv7em-none-eabihf);"
echo "       memory.x: FLASH 4 MiB @ 0x00000000 (SSRAM), RAM 4 MiB @ 0x20000000; tile budget $TILE_BYTES bytes"

declare -A loss_lines
for mode in libm fast-math; do
    feat=(); [ "$mode" = fast-math ] && feat=(--features fast-math)
    echo
    echo "== math: $mode =="
    echo "-- build firmware (release, $target${feat:+, ${feat[*]}})"
    (cd "$root" && cargo build -q --release -p "$pkg" --target "$target" "${feat[@]}") \
        || fail "firmware build ($mode)"
    echo "-- run firmware in QEMU (timeout ${QEMU_TIMEOUT:-120} s), defmt-print -e ELF"
    set +e
    QEMU_TIMEOUT=${QEMU_TIMEOUT:-120} bash "$here/qemu-run.sh" "$elf" >"$work/fw-$mode.log" 2>"$work/fw-$mode.err"
    rc=$?
    set -e
    sed 's/^/   fw | /' "$work/fw-$mode.log"
    if [ $rc -ne 0 ]; then
        sed 's/^/   fw stderr | /' "$work/fw-$mode.err" >&2
        case $rc in
            124) fail "firmware ($mode) timed out in QEMU" ;;
            *) fail "firmware ($mode) exited with status $rc (semihosting failure exit, QEMU or defmt-print error)" ;;
        esac
    fi
    grep -q '^result ok' "$work/fw-$mode.log" || fail "firmware ($mode) did not report 'result ok'"

    echo "-- memory ($size_tool -A on the ELF section headers)"
    "$size_tool" -A "$elf" >"$work/size-$mode.txt"
    sec() { awk -v s="$1" '$1 == s { print $2; found = 1 } END { if (!found) print 0 }' "$work/size-$mode.txt"; }
    vt=$(sec .vector_table); text=$(sec .text); ro=$(sec .rodata); data=$(sec .data)
    bss=$(sec .bss); uninit=$(sec .uninit)
    ram=$((data + bss + uninit)); flash=$((vt + text + ro + data))
    printf '   sections: .vector_table %d  .text %d  .rodata %d  .data %d  .bss %d  .uninit %d bytes\n' \
        "$vt" "$text" "$ro" "$data" "$bss" "$uninit"
    awk -v ram="$ram" -v flash="$flash" -v bram="$BOARD_RAM" -v bflash="$BOARD_FLASH" -v tile="$TILE_BYTES" 'BEGIN {
        printf "   static RAM (.data+.bss+.uninit): %d bytes = %.1f%% of the board'"'"'s 4 MiB RAM = %.2f x the 638976-byte tile budget; %d bytes left for the stack\n", ram, 100 * ram / bram, ram / tile, bram - ram
        printf "   flash (.vector_table+.text+.rodata+.data): %d bytes = %.2f%% of the board'"'"'s 4 MiB\n", flash, 100 * flash / bflash }'
    [ "$ram" -le "$BOARD_RAM" ] || fail "static RAM exceeds the board"
    echo "   (the three tile arenas are static 624 KiB buffers in .bss; each tile uses the arena+descriptor bytes its 'fw tile N' line shows)"

    echo "-- host reference (x86_64, examples/host-reference.rs${feat:+, ${feat[*]}})"
    (cd "$host_root" && cargo run -q --release -p "$pkg" --example host-reference "${feat[@]}") \
        >"$work/host-$mode.log" || fail "host reference ($mode)"
    sed 's/^/ host | /' "$work/host-$mode.log"

    echo "-- compare firmware vs host (bitwise: every line identical)"
    scenario_lines "$work/fw-$mode.log" >"$work/fw-$mode.cmp"
    scenario_lines "$work/host-$mode.log" >"$work/host-$mode.cmp"
    [ -s "$work/fw-$mode.cmp" ] || fail "no scenario lines from the firmware ($mode)"
    if ! diff -u --label "firmware ($mode)" --label "host ($mode)" "$work/fw-$mode.cmp" "$work/host-$mode.cmp"; then
        fail "firmware and host reference differ ($mode)"
    fi
    n=$(wc -l <"$work/fw-$mode.cmp")
    ck=$(grep '^checksum ' "$work/fw-$mode.cmp" | head -1)
    echo "   OK: $n lines identical, $ck (firmware = host)"
done

echo
echo "== libm vs fast-math (firmware losses; the two runs are expected to differ slightly) =="
python_free_diff() {
    # step N loss_bits=0x... loss=X  ->  print |X_libm - X_fast|
    paste -d' ' <(grep '^step ' "$work/fw-libm.cmp") <(grep '^step ' "$work/fw-fast-math.cmp") | awk '{
        for (i = 1; i <= NF; i++) { if ($i ~ /^loss=/) { v[++k] = substr($i, 6) } }
        d = v[1] - v[2]; if (d < 0) d = -d
        printf "   step %s: libm %s  fast-math %s  |diff| %.3g\n", $2, v[1], v[2], d; k = 0 }'
}
python_free_diff
ck_l=$(grep '^checksum ' "$work/fw-libm.cmp"); ck_f=$(grep '^checksum ' "$work/fw-fast-math.cmp")
echo "   libm      $ck_l"
echo "   fast-math $ck_f"
echo
echo "PASS: firmware (QEMU mps2-an386) and host reference agree bit for bit, with libm and with fast-math"
