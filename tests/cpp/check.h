// The one assertion macro of the C++ unit tests: a failed CHECK is reported
// (file, line, condition) and counted, and the test goes on; main() returns
// check_result() (non-zero if any CHECK failed).
#pragma once

#include <cstdio>

inline int &check_failures()
{
    static int failures = 0;
    return failures;
}

#define CHECK(cond)                                                                       \
    do                                                                                    \
    {                                                                                     \
        if (!(cond))                                                                      \
        {                                                                                 \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            check_failures()++;                                                           \
        }                                                                                 \
    } while (0)

/// Print the outcome; the exit status for main().
inline int check_result(const char *name)
{
    if (check_failures())
    {
        std::fprintf(stderr, "%s: %d check(s) failed\n", name, check_failures());
        return 1;
    }
    std::printf("%s: all checks passed\n", name);
    return 0;
}
