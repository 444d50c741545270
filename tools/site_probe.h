/*
 * site_probe.h — which test reached an error site (issue 16; coverage runs only).
 *
 * gcov says whether a line ran, not which test ran it.  .ci/coverage
 * therefore rewrites every error site of its scratch copy of native/ (see
 * tools/error_sites.py --instrument, which keeps line numbers) into
 *
 *     return (BN_SITE("native/x.c:12"), NULL);
 *     (BN_SITE("native/x.c:34"), bn_error)(BITNET_E_OOM, ...);
 *
 * and force-includes this header (-include) in every library it builds.  The
 * first time a site runs in a process it appends one line, "pid<TAB>site<TAB>test",
 * to $BITNET_SITE_LOG; the test is $PYTEST_CURRENT_TEST, which pytest sets
 * for each test and every subprocess inherits.  O_APPEND keeps the lines of
 * concurrent processes whole.
 *
 * No system header is included: this header comes before a file's own
 * `#define _GNU_SOURCE`, which must still decide what the system headers
 * declare.  The few functions are declared here, as glibc declares them
 * (Linux, LP64: the open flags are the generic ones, x86_64 and aarch64).
 * errno is kept, since an error path often reads it next.
 */
#ifndef BN_SITE_PROBE_H
#define BN_SITE_PROBE_H
#ifndef __ASSEMBLER__ /* the interposer's trampolines.S is preprocessed too */

extern char *getenv(const char *);
extern int open(const char *, int, ...);
extern long write(int, const void *, unsigned long);
extern int close(int);
extern int getpid(void);
extern int snprintf(char *, unsigned long, const char *, ...);
extern int *__errno_location(void);

#define BN_SITE_O_FLAGS (01 /* O_WRONLY */ | 0100 /* O_CREAT */ | 02000 /* O_APPEND */)

__attribute__((unused, noinline, cold)) static void bn_site_log_(const char *where)
{
    int saved = *__errno_location();
    const char *path = getenv("BITNET_SITE_LOG");
    if (path && *path) {
        const char *test = getenv("PYTEST_CURRENT_TEST");
        char line[1024];
        int n = snprintf(line, sizeof line, "%d\t%s\t%s\n", getpid(), where, test ? test : "");
        if (n >= (int)sizeof line) {
            n = (int)sizeof line - 1;
            line[n - 1] = '\n';
        }
        int fd = n > 0 ? open(path, BN_SITE_O_FLAGS, 0644) : -1;
        if (fd >= 0) {
            (void)!write(fd, line, (unsigned long)n);
            close(fd);
        }
    }
    *__errno_location() = saved;
}

/* One flag per rewritten site (a static in the statement expression), so a
 * site logs once per process however often it runs. */
#define BN_SITE(where)                                                         \
    __extension__({                                                            \
        static int bn_site_seen_;                                              \
        if (!__atomic_exchange_n(&bn_site_seen_, 1, __ATOMIC_RELAXED))         \
            bn_site_log_(where);                                               \
        0;                                                                     \
    })

#endif
#endif
