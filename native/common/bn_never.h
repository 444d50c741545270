/*
 * bn_never.h — defensive checks that no input can make true (issue 16).
 *
 * After SQLite's NEVER()/ALWAYS(): a branch kept for safety although nothing
 * a caller, a file or a fault point can do reaches it is written
 *
 *     if (NEVER(n > cap, "n is clamped to cap two lines above")) return BITNET_E_INTERNAL;
 *
 * so that "not covered" in the coverage report always means "not tested
 * yet", never "cannot be tested".  The reason is a string literal, required:
 * tools/error_sites.py lists every marked site with it, apart from the
 * counted ones (a site is marked when its statement, or the `if` line just
 * above it, holds NEVER().  Keep the check and its failure on one line so the
 * coverage figures can leave that line's branch out too:
 * gcovr --exclude-branches-by-pattern '.*\bNEVER\(').
 *
 * In the test builds (the coverage build, -DBN_COVERAGE, and the sanitizer
 * build, -DBN_TEST_BUILD; pytest_bitnet/bridge/_build.py) a NEVER that is
 * true aborts, naming the condition, the reason and the place: a
 * wrong marker is a crash in CI, not a silently skipped error path.  In
 * release it is the plain test, so the defence stays.  ALWAYS(x, why) is the
 * mirror, for a condition that must hold.
 *
 * Not for what a fault point can reach: inject it and test it instead.
 */
#ifndef BN_NEVER_H
#define BN_NEVER_H

#if defined(BN_COVERAGE) || defined(BN_TEST_BUILD)
#include <stdio.h>
#include <stdlib.h>

__attribute__((noreturn, cold)) static inline void bn_never_reached_(const char *cond, const char *why,
                                                                     const char *file, int line)
{
    fprintf(stderr, "%s:%d: NEVER(%s) was reached, which its marker says cannot happen (%s)\n", file, line,
            cond, why);
    abort();
}
#define NEVER(x, why) ((x) ? (bn_never_reached_(#x, why, __FILE__, __LINE__), 1) : 0)
#define ALWAYS(x, why) ((x) ? 1 : (bn_never_reached_("!(" #x ")", why, __FILE__, __LINE__), 0))
#else
#define NEVER(x, why) (x)
#define ALWAYS(x, why) (x)
#endif

#endif
