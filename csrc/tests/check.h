// The one assertion macro of the C++ unit tests: a failing check prints where and counts, so a test binary
// reports every failure before it exits non-zero.
#pragma once

#include <cstdio>

namespace diffsmooth_tests {
inline int failures = 0;
}  // namespace diffsmooth_tests

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ++diffsmooth_tests::failures;                                                  \
    }                                                                                \
  } while (0)
