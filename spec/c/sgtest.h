/* A minimal unit-test harness in the libuv style: one function per case, a
 * table of cases, each case asserting. Every test binary prints one line per
 * case and a summary, and exits non-zero when any case failed. */
#ifndef SG_TEST_H
#define SG_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *name;
  void (*fn)(void);
} sg_test_case_t;

static int sg_test_failed_;

#define ASSERT(cond)                                                           \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "  %s:%d: assertion failed: %s\n", __FILE__, __LINE__,   \
              #cond);                                                          \
      sg_test_failed_ = 1;                                                     \
      return;                                                                  \
    }                                                                          \
  } while (0)

#define ASSERT_EQ(a, b)                                                        \
  do {                                                                         \
    long long a_ = (long long)(a), b_ = (long long)(b);                        \
    if (a_ != b_) {                                                            \
      fprintf(stderr, "  %s:%d: %s == %s failed: %lld != %lld\n", __FILE__,    \
              __LINE__, #a, #b, a_, b_);                                       \
      sg_test_failed_ = 1;                                                     \
      return;                                                                  \
    }                                                                          \
  } while (0)

#define ASSERT_STREQ(a, b)                                                     \
  do {                                                                         \
    const char *a_ = (a), *b_ = (b);                                           \
    if (strcmp(a_, b_) != 0) {                                                 \
      fprintf(stderr, "  %s:%d: %s == %s failed: \"%s\" != \"%s\"\n",          \
              __FILE__, __LINE__, #a, #b, a_, b_);                             \
      sg_test_failed_ = 1;                                                     \
      return;                                                                  \
    }                                                                          \
  } while (0)

static inline int sg_test_run(const sg_test_case_t *cases) {
  int passed = 0, failed = 0;
  for (const sg_test_case_t *c = cases; c->name; c++) {
    sg_test_failed_ = 0;
    c->fn();
    printf("%s %s\n", sg_test_failed_ ? "not ok" : "ok", c->name);
    if (sg_test_failed_)
      failed++;
    else
      passed++;
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}

#endif
