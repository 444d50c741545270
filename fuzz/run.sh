#!/usr/bin/env bash
# Builds the GGUF fuzzer (fuzz/gguf_fuzzer.c) with clang's libFuzzer, ASan
# and UBSan, makes the seed corpus if it is missing, and fuzzes for
# $1 seconds (default 60).  Prints executions, exec/s and coverage at the
# end; a crash leaves crash-* / leak-* / timeout-* files in fuzz/artifacts/
# and a non-zero exit.
#
#   fuzz/run.sh            # 60 s
#   fuzz/run.sh 30         # the CI budget
#   FUZZ_JOBS=2 fuzz/run.sh 300
#
# Reproduce one input:  fuzz/build/gguf_fuzzer fuzz/artifacts/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
CC=${CC:-clang}
build=fuzz/build
corpus=fuzz/corpus      # grows as the fuzzer finds new coverage (untracked)
# tests/fuzz_regressions/ (checked in) is read as a third corpus
seeds=fuzz/seeds        # made by make_corpus.py (untracked)
mkdir -p "$build" "$corpus" fuzz/artifacts

# The reader and everything a parsed file reaches, not the bridge: faults
# compiled out (-DBN_NO_FAULTS) so every allocation is real.
sources=(native/common/*.c native/reference/gguf_*.c native/reference/model.c
         native/reference/tokenizer.c native/reference/kernels.c
         native/reference/pool.c)
# Rebuild only when a source or header is newer than the binary (the
# instrumented build takes about a minute).
stale=1
if [ -x "$build/gguf_fuzzer" ] &&
   [ -z "$(find fuzz/gguf_fuzzer.c native -newer "$build/gguf_fuzzer" \( -name '*.c' -o -name '*.h' -o -name '*.def' \) | head -1)" ]; then
    stale=0
fi
[ "$stale" = 0 ] || "$CC" -std=gnu11 -g -O1 -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -DBN_NO_FAULTS -Inative/include -Inative/common -Inative/reference \
    -Inative/fault \
    fuzz/gguf_fuzzer.c "${sources[@]}" -lm -lpthread -ldl \
    -o "$build/gguf_fuzzer"

if [ ! -d "$seeds" ] || [ -z "$(ls -A "$seeds")" ]; then
    python3 fuzz/make_corpus.py "$seeds"
fi
echo "seed corpus: $(ls "$seeds" | wc -l) inputs in $seeds"

export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# -max_len: the largest seed (TQ2_0, F32 embeddings) is ~420 KiB; the
# F32/F16 seeds are 20-35 KiB.
# -rss_limit_mb / -malloc_limit_mb: a hostile header must not make the
# reader allocate much (gguf_reader.c bounds every count by the file size).
set +e +o pipefail
"$build/gguf_fuzzer" "$corpus" "$seeds" tests/fuzz_regressions \
    -max_total_time="$seconds" -max_len=524288 -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=512 \
    -artifact_prefix=fuzz/artifacts/ -print_final_stats=1 \
    ${FUZZ_JOBS:+-jobs=$FUZZ_JOBS -workers=$FUZZ_JOBS} 2>&1 |
    tee "$build/last-run.log" |
    # progress lines and the dictionary are in the log, not on the screen
    sed -e '/^#[0-9]*[[:space:]]*\(NEW\|REDUCE\|pulse\)/d' \
        -e '/^###### Recommended dictionary/,/^###### End of recommended/d'
status=${PIPESTATUS[0]}
exit "$status"
