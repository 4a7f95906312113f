// A minimal check macro for the host-logic tests (no test framework needed).
#pragma once

#include <cstdio>
#include <cstdlib>

inline int g_failures = 0;

#define CHECK_EQ(actual, expected)                                                     \
  do {                                                                                 \
    const auto a_ = (actual);                                                          \
    const auto e_ = (expected);                                                        \
    if (!(a_ == e_)) {                                                                 \
      std::fprintf(stderr, "%s:%d: %s == %lld, expected %lld\n", __FILE__, __LINE__,   \
                   #actual, static_cast<long long>(a_), static_cast<long long>(e_));   \
      ++g_failures;                                                                    \
    }                                                                                  \
  } while (0)

inline int finish(const char* name) {
  if (g_failures == 0) std::printf("%s: all checks passed\n", name);
  return g_failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
