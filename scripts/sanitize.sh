#!/usr/bin/env bash
# `make sanitize`: the C++ CPU kernels under AddressSanitizer + UndefinedBehaviorSanitizer.
#   1. builds adaeagle_ext._C with ADAEAGLE_SANITIZE=1 (CPU only, -O1 -g) into build/sanitize,
#      leaving the normal in-place build untouched;
#   2. makes a shadow package build/sanitize/pkg/adaeagle_ext: links to the Python sources plus
#      the sanitized _C;
#   3. builds and runs the C++ host-logic tests (ctest) with the same sanitizers;
#   4. runs the op tests and the fuzz tests (hypothesis profile $HYPOTHESIS_PROFILE, default
#      "short") against the sanitized _C with the ASan runtime preloaded. Any ASan or UBSan
#      report aborts the process, so the run fails.
# The CUDA kernels are not covered here: on a GPU machine run the op tests under
# compute-sanitizer instead (see the README).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
OUT="$ROOT/build/sanitize"
SAN_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"

echo "== building the sanitized extension into $OUT"
ADAEAGLE_SANITIZE=1 ADAEAGLE_CUDA=0 "$PY" setup.py -q build_ext \
  --build-lib "$OUT/lib" --build-temp "$OUT/temp" > "$OUT.build.log" 2>&1 \
  || { tail -50 "$OUT.build.log"; exit 1; }
PKG="$OUT/pkg/adaeagle_ext"
rm -rf "$OUT/pkg" && mkdir -p "$PKG"
for entry in adaeagle_ext/*; do
  case "$entry" in
    *.so|*/__pycache__) ;;
    *) ln -s "$ROOT/$entry" "$PKG/" ;;
  esac
done
cp "$OUT"/lib/adaeagle_ext/_C*.so "$PKG/"

export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

echo "== C++ host-logic tests (ctest) under the sanitizers"
cmake -S . -B "$OUT/cmake" -DADAEAGLE_ENABLE_CUDA=OFF -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_FLAGS="$SAN_FLAGS" > /dev/null
cmake --build "$OUT/cmake" -j "${MAX_JOBS:-2}" > /dev/null
ctest --test-dir "$OUT/cmake" --output-on-failure

echo "== op and fuzz tests against the sanitized extension"
LIBS="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
OP_TESTS=()
for t in build_tree kv_compact verify_greedy verify_sampling tree_attention ldlp_mlp linear aded; do
  OP_TESTS+=("$ROOT/python_tests/test_$t.py")
done
# Left out: tree_attention cases whose time goes to the Python reference's loops (the fuzz test
# covers the same shapes) and the subprocess test that imports the in-place build.
SKIP="not (test_tree_attention and (test_matches_reference or test_large_trees_and_prefixes or test_portable_path))"
# Run from the shadow package's parent: `python -m` puts the working directory first on
# sys.path, so `import adaeagle_ext` finds the sanitized build, never the in-place one.
cd "$OUT/pkg"
run() { LD_PRELOAD="$LIBS" "$PY" "$@"; }
run -c "import adaeagle_ext._C as c; \
assert '/build/sanitize/' in c.__file__, c.__file__; print('using', c.__file__)"
run -m pytest -q -p no:cacheprovider -m "not slow" -k "$SKIP" \
  "$ROOT"/python_tests/test_fuzz_*.py "${OP_TESTS[@]}" "$@"
echo "== the portable (non-AVX2) attention and linear paths"
ADAEAGLE_NO_AVX2=1 ADAEAGLE_LINEAR_ISA=scalar run -m pytest -q -p no:cacheprovider \
  "$ROOT/python_tests/test_fuzz_attention.py" "$ROOT/python_tests/test_fuzz_dense.py" "$@"
