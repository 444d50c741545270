#!/usr/bin/env bash
# Builds the GGUF fuzzer (fuzz/gguf_fuzzer.c) with clang's libFuzzer, ASan
# and UBSan, makes the seed corpus if it is missing, and fuzzes for
# SECONDS (default 60).  Prints executions, exec/s and coverage at the
# end; a crash leaves crash-* / leak-* / timeout-* files in fuzz/artifacts/
# and a non-zero exit.
#
#   fuzz/run.sh                     # 60 s, byte-level mutations
#   fuzz/run.sh --mode structure 60 # 60 s, the structure-aware mutator
#   fuzz/run.sh --mode both 30      # the CI budget: 15 s of each
#   FUZZ_JOBS=2 fuzz/run.sh 300
#
# Modes (--mode, or FUZZ_MODE):
#   bytes      libFuzzer's own byte mutations (fuzz/build/gguf_fuzzer)
#   structure  fuzz/gguf_mutator.c: values, shapes, types, strings, arrays
#              and vocabularies changed with the layout recomputed
#              (fuzz/build/gguf_fuzzer_structure)
#   both       bytes then structure, half of SECONDS each, sharing the
#              corpus (each mode starts from what the other found)
#
# FUZZ_CORPUS: the corpus directory (default fuzz/corpus); point each mode
# at an empty one to compare them from the seeds alone.
#
# Reproduce one input:  fuzz/build/gguf_fuzzer fuzz/artifacts/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${FUZZ_MODE:-bytes}
if [ "${1:-}" = "--mode" ]; then
    mode=${2:?--mode needs bytes, structure or both}
    shift 2
fi
seconds=${1:-60}
case "$mode" in
bytes | structure) ;;
both)
    # each half runs the whole script, so a finding stops the run here
    half=$(((seconds + 1) / 2))
    FUZZ_MODE=bytes "$0" "$half"
    exec env FUZZ_MODE=structure "$0" "$((seconds - half))"
    ;;
*)
    echo "fuzz/run.sh: unknown mode '$mode' (bytes, structure or both)" >&2
    exit 2
    ;;
esac
CC=${CC:-clang}
build=fuzz/build
corpus=${FUZZ_CORPUS:-fuzz/corpus} # grows as the fuzzer finds new coverage (untracked)
# tests/fuzz_regressions/ (checked in) is read as a third corpus
seeds=fuzz/seeds        # made by make_corpus.py (untracked)
mkdir -p "$build" "$corpus" fuzz/artifacts

# The reader and everything a parsed file reaches, not the bridge: faults
# compiled out (-DBN_NO_FAULTS) so every allocation is real.
# The whole reference engine (a new file of it is in by itself).
sources=(native/common/*.c native/reference/*.c)
includes=(-Inative/include -Inative/common -Inative/reference -Inative/fault)
binary=$build/gguf_fuzzer
extra=()
if [ "$mode" = structure ]; then
    # The same target; libFuzzer finds LLVMFuzzerCustomMutator and uses it.
    # The mutator is built without coverage instrumentation: its own
    # branches are not the target's coverage (and would slow it down).
    binary=$build/gguf_fuzzer_structure
    extra=("$build/gguf_mutator.o")
fi
# Rebuild only when a source or header is newer than the binary (the
# instrumented build takes about a minute).
stale=1
if [ -x "$binary" ] &&
   [ -z "$(find fuzz/gguf_fuzzer.c fuzz/gguf_mutator.c native -newer "$binary" \( -name '*.c' -o -name '*.h' -o -name '*.def' \) | head -1)" ]; then
    stale=0
fi
if [ "$stale" = 1 ]; then
    if [ "$mode" = structure ]; then
        "$CC" -std=gnu11 -g -O1 -fno-omit-frame-pointer \
            -fsanitize=address,undefined -fno-sanitize-recover=all \
            "${includes[@]}" -c fuzz/gguf_mutator.c -o "$build/gguf_mutator.o"
    fi
    "$CC" -std=gnu11 -g -O1 -fno-omit-frame-pointer \
        -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
        -DBN_NO_FAULTS "${includes[@]}" \
        fuzz/gguf_fuzzer.c "${sources[@]}" "${extra[@]}" -lm -lpthread -ldl \
        -o "$binary"
fi

if [ ! -d "$seeds" ] || [ -z "$(ls -A "$seeds")" ]; then
    python3 fuzz/make_corpus.py "$seeds"
fi
echo "mode $mode; seed corpus: $(ls "$seeds" | wc -l) inputs in $seeds"

export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# -max_len: the largest seed (TQ2_0, F32 embeddings) is ~420 KiB; the
# F32/F16 seeds are 20-35 KiB.
# -rss_limit_mb / -malloc_limit_mb: a hostile header must not make the
# reader allocate much (gguf_reader.c bounds every count by the file size).
set +e +o pipefail
"$binary" "$corpus" "$seeds" tests/fuzz_regressions \
    -max_total_time="$seconds" -max_len=524288 -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=512 \
    -artifact_prefix=fuzz/artifacts/ -print_final_stats=1 \
    ${FUZZ_JOBS:+-jobs=$FUZZ_JOBS -workers=$FUZZ_JOBS} 2>&1 |
    tee "$build/last-run-$mode.log" |
    # progress lines and the dictionary are in the log, not on the screen
    sed -e '/^#[0-9]*[[:space:]]*\(NEW\|REDUCE\|pulse\)/d' \
        -e '/^###### Recommended dictionary/,/^###### End of recommended/d'
status=${PIPESTATUS[0]}
# the coverage this run reached, on one line for logs and comparisons
last=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$build/last-run-$mode.log" | tail -1)
echo "mode $mode: ${last:-no coverage line} after ${seconds} s (log: $build/last-run-$mode.log)"
exit "$status"
