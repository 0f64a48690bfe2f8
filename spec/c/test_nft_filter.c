/* nft/ipset, nft/filter and nft/dynset: range normalization, the dns+nft
 * filter as the kernel takes it, in-place policy updates that keep learned
 * addresses, and learned addresses confirmed by the kernel's ACK.
 *
 * The process runs in a private network namespace (unshare before any
 * kernel case), so it only ever changes its own ruleset. Needs root and the
 * `nft` binary, which only the test uses to look; exits 77 when it cannot
 * unshare. */
#include <arpa/inet.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "nft/dynset.h"
#include "nft/filter.h"
#include "nft/intercept.h"
#include "nft/ipset.h"
#include "sgtest.h"

static char listing[65536];

static int capture(const char *cmd) {
  char full[512];
  snprintf(full, sizeof(full), "%s 2>&1", cmd);
  FILE *p = popen(full, "r");
  if (!p)
    return -1;
  size_t len = fread(listing, 1, sizeof(listing) - 1, p);
  listing[len] = '\0';
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A set from a list of texts, normalized. */
static void set_of(sg_ipset_t *s, int family, const char *const *texts) {
  sg_ipset_init(s, family);
  for (; *texts; texts++) {
    sg_range_t r;
    if (sg_range_parse(*texts, &r) == family)
      sg_ipset_add(s, &r);
  }
  sg_ipset_normalize(s);
}

static sg_range_t range(const char *text) {
  sg_range_t r = {0, 0};
  sg_range_parse(text, &r);
  return r;
}

/* ---- ipset ---- */

static void ipset_parse(void) {
  sg_range_t r;
  ASSERT_EQ(sg_range_parse("10.1.2.3/8", &r), 4);
  ASSERT(r.lo == range("10.0.0.0").lo && r.hi == range("10.255.255.255").lo);
  ASSERT_EQ(sg_range_parse("0.0.0.0/0", &r), 4);
  ASSERT(r.lo == 0 && r.hi == sg_addr_max(4));
  ASSERT_EQ(sg_range_parse("::/0", &r), 6);
  ASSERT(r.lo == 0 && r.hi == sg_addr_max(6));
  ASSERT_EQ(sg_range_parse("2001:db8::1", &r), 6);
  ASSERT(r.lo == r.hi);
  ASSERT_EQ(sg_range_parse("2001:db8::/32", &r), 6);
  ASSERT(r.hi - r.lo == ((sg_u128)1 << 96) - 1);
  static const char *const bad[] = {
      "",         "1.2.3",      "10.0.0.0/33", "::/129",   "a",
      "1.2.3.4/", "1.2.3.4/-1", "1.2.3.4/x",   "1.2.3.4 ", NULL};
  for (int i = 0; bad[i]; i++)
    ASSERT_EQ(sg_range_parse(bad[i], &r), 0);
}

static void ipset_normalize(void) {
  sg_ipset_t s;
  static const char *const in[] = {"10.1.0.0/16", "10.0.0.0/8", "10.0.0.5",
                                   "192.0.2.1",   "192.0.2.2",  "192.0.2.0",
                                   "192.0.2.1",   "11.0.0.0/8", NULL};
  set_of(&s, 4, in);
  /* 10/8 and 11/8 touch: one range; 192.0.2.0-2 merge. */
  ASSERT_EQ(s.n, 2);
  ASSERT(s.r[0].lo == range("10.0.0.0").lo &&
         s.r[0].hi == range("11.255.255.255").lo);
  ASSERT(s.r[1].lo == range("192.0.2.0").lo &&
         s.r[1].hi == range("192.0.2.2").lo);
  sg_ipset_free(&s);
  static const char *const all[] = {"255.255.255.255", "0.0.0.0/0", NULL};
  set_of(&s, 4, all);
  ASSERT_EQ(s.n, 1);
  ASSERT(s.r[0].hi == sg_addr_max(4));
  sg_ipset_free(&s);
}

static void ipset_subtract(void) {
  sg_ipset_t s, sub;
  static const char *const a[] = {"10.0.0.0/8", "::/0", NULL};
  static const char *const b[] = {"10.1.0.0/16", "10.0.0.0", NULL};
  set_of(&s, 4, a);
  set_of(&sub, 4, b);
  ASSERT_EQ(sg_ipset_subtract(&s, &sub), 0);
  ASSERT_EQ(s.n, 2);
  ASSERT(s.r[0].lo == range("10.0.0.1").lo &&
         s.r[0].hi == range("10.0.255.255").lo);
  ASSERT(s.r[1].lo == range("10.2.0.0").lo &&
         s.r[1].hi == range("10.255.255.255").lo);
  sg_ipset_free(&sub);
  static const char *const c[] = {"0.0.0.0/0", NULL};
  set_of(&sub, 4, c);
  ASSERT_EQ(sg_ipset_subtract(&s, &sub), 0);
  ASSERT_EQ(s.n, 0);
  sg_ipset_free(&s);
  sg_ipset_free(&sub);
  /* v6: removing the top address of ::/0 leaves one range. */
  set_of(&s, 6, a);
  static const char *const d[] = {"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                                  NULL};
  set_of(&sub, 6, d);
  ASSERT_EQ(sg_ipset_subtract(&s, &sub), 0);
  ASSERT_EQ(s.n, 1);
  ASSERT(s.r[0].lo == 0 && s.r[0].hi == sg_addr_max(6) - 1);
  sg_ipset_free(&s);
  sg_ipset_free(&sub);
}

static void ipset_lists(void) {
  sg_ipset_t s[2];
  char err[128];
  sg_ipset_init(&s[0], 4);
  sg_ipset_init(&s[1], 6);
  ASSERT_EQ(sg_ipset_parse_list("L", "10.0.0.0/8, 10.1.2.3 2001:db8::/32", 0, s,
                                err, sizeof(err)),
            0);
  ASSERT_EQ(s[0].n, 1); /* 10.1.2.3 merged into 10/8 */
  ASSERT_EQ(s[1].n, 1);
  ASSERT(sg_ipset_has_ip(s, "10.200.3.4"));
  ASSERT(sg_ipset_has_ip(s, "2001:db8::7"));
  ASSERT(!sg_ipset_has_ip(s, "11.0.0.1"));
  ASSERT(!sg_ipset_has_ip(s, "not an ip"));
  ASSERT(!sg_ipset_has_ip(NULL, "10.0.0.1"));
  ASSERT(sg_ipset_parse_list("L", "10.0.0.1,nope", 0, s, err, sizeof(err)) < 0);
  ASSERT_STREQ(err, "L: \"nope\" is not an IP address or CIDR");
  ASSERT(sg_ipset_parse_list("X", "10.0.0.0/24", 1, s, err, sizeof(err)) < 0);
  ASSERT_STREQ(err, "X: \"10.0.0.0/24\" is not an IP address");
  sg_ipset_free(&s[0]);
  sg_ipset_free(&s[1]);
}

/* ---- the filter in the kernel ---- */

static sg_nft_filter_opts_t fopts = {.reject = 1, .dyn_size = 1024};

static void statics_of(sg_nft_static_t *st, int allow_default,
                       const char *const *allow4, const char *const *allow6,
                       const char *const *deny4) {
  static const char *const none[] = {NULL};
  sg_nft_static_init(st);
  st->default_allow = allow_default;
  sg_ipset_free(&st->allow[0]);
  sg_ipset_free(&st->allow[1]);
  sg_ipset_free(&st->deny[0]);
  set_of(&st->allow[0], 4, allow4 ? allow4 : none);
  set_of(&st->allow[1], 6, allow6 ? allow6 : none);
  set_of(&st->deny[0], 4, deny4 ? deny4 : none);
}

static int install(const sg_nft_static_t *st) {
  char err[512];
  sg_nft_intercept_opts_t o = {.redirect_port = 15353,
                               .bypass_mark = 1,
                               .filter = &fopts,
                               .statics = st};
  int rc = sg_nft_intercept_install(&o, err, sizeof(err));
  if (rc)
    fprintf(stderr, "  install: %s\n", err);
  return rc;
}

static void filter_install_overlapping(void) {
  static const char *const a4[] = {"10.1.0.0/16", "10.0.0.0/8", "10.0.0.5",
                                   "192.0.2.7", NULL};
  static const char *const a6[] = {"2001:db8::/32", "2001:db8:1::/48", "::/0",
                                   NULL};
  static const char *const d4[] = {"198.51.100.0/24", "198.51.100.9", NULL};
  sg_nft_static_t st;
  statics_of(&st, 0, a4, a6, d4);
  ASSERT_EQ(install(&st), 0);
  ASSERT_EQ(capture("nft list table inet sandgate"), 0);
  ASSERT(strstr(listing, "elements = { 10.0.0.0/8, 192.0.2.7 }"));
  ASSERT(strstr(listing, "elements = { ::/0 }"));
  ASSERT(strstr(listing, "elements = { 198.51.100.0/24 }"));
  ASSERT(strstr(listing, "policy drop;"));
  ASSERT(strstr(listing, "chain egress_default {\n\t\tgoto block"));
  ASSERT(strstr(listing, "meta l4proto tcp reject with tcp reset"));
  sg_nft_static_free(&st);
}

static void filter_update_keeps_learned(void) {
  static const char *const a4[] = {"10.0.0.0/8", NULL};
  static const char *const b4[] = {"172.16.0.0/12", "10.0.0.0/8", NULL};
  sg_nft_static_t st, st2;
  statics_of(&st, 0, a4, NULL, NULL);
  statics_of(&st2, 1, b4, NULL, NULL);
  ASSERT_EQ(install(&st), 0);
  ASSERT_EQ(capture("nft add element inet sandgate dyn_v4 "
                    "'{ 203.0.113.5 timeout 300s }'"),
            0);
  char err[512];
  ASSERT_EQ(sg_nft_filter_update(&fopts, &st, &st2, err, sizeof(err)), 0);
  ASSERT_EQ(capture("nft list table inet sandgate"), 0);
  ASSERT(strstr(listing, "203.0.113.5"));
  ASSERT(strstr(listing, "elements = { 10.0.0.0/8, 172.16.0.0/12 }"));
  ASSERT(strstr(listing, "policy accept;"));
  ASSERT(strstr(listing, "chain egress_default {\n\t}"));
  /* And back: the default chain blocks again, the set shrinks. */
  ASSERT_EQ(sg_nft_filter_update(&fopts, &st2, &st, err, sizeof(err)), 0);
  ASSERT_EQ(capture("nft list table inet sandgate"), 0);
  ASSERT(strstr(listing, "203.0.113.5"));
  ASSERT(strstr(listing, "elements = { 10.0.0.0/8 }"));
  ASSERT(strstr(listing, "policy drop;"));
  ASSERT(strstr(listing, "chain egress_default {\n\t\tgoto block"));
  /* Emptying a set. */
  sg_nft_static_t empty;
  statics_of(&empty, 0, NULL, NULL, NULL);
  ASSERT_EQ(sg_nft_filter_update(&fopts, &st, &empty, err, sizeof(err)), 0);
  ASSERT_EQ(capture("nft list set inet sandgate allow_v4"), 0);
  ASSERT(!strstr(listing, "elements"));
  sg_nft_static_free(&st);
  sg_nft_static_free(&st2);
  sg_nft_static_free(&empty);
}

static void filter_update_refused_keeps_state(void) {
  static const char *const a4[] = {"10.0.0.0/8", NULL};
  sg_nft_static_t st, st2;
  statics_of(&st, 0, NULL, NULL, NULL);
  statics_of(&st2, 0, a4, NULL, NULL);
  ASSERT_EQ(install(&st), 0);
  /* Without the set the transaction fails as a whole. */
  ASSERT_EQ(capture("nft delete rule inet sandgate egress handle "
                    "$(nft -a list chain inet sandgate egress | "
                    "grep '@allow_v4' | sed 's/.*handle //') && "
                    "nft delete set inet sandgate allow_v4"),
            0);
  char err[512];
  ASSERT(sg_nft_filter_update(&fopts, &st, &st2, err, sizeof(err)) < 0);
  ASSERT(strstr(err, "refused"));
  sg_nft_static_free(&st);
  sg_nft_static_free(&st2);
}

/* ---- learned addresses ---- */

typedef struct {
  int calls, ok;
} result_t;

static void on_done(void *arg, int ok) {
  result_t *r = arg;
  r->calls++;
  r->ok = ok;
}

static sg_dynset_addr_t addr4(const char *ip, uint32_t ttl) {
  sg_dynset_addr_t a = {.family = 4, .ttl = ttl};
  inet_pton(AF_INET, ip, a.addr);
  return a;
}

static sg_dynset_addr_t addr6(const char *ip, uint32_t ttl) {
  sg_dynset_addr_t a = {.family = 6, .ttl = ttl};
  inet_pton(AF_INET6, ip, a.addr);
  return a;
}

static sg_dynset_t *dynset(uv_loop_t *loop, uint32_t ack_ms) {
  sg_dynset_opts_t o = {
      .grace_s = 60, .min_s = 60, .max_s = 360, .ack_timeout_ms = ack_ms};
  sg_dynset_t *d = NULL;
  char err[256];
  if (sg_dynset_new(loop, &o, &d, err, sizeof(err)))
    fprintf(stderr, "  dynset: %s\n", err);
  return d;
}

/* The filter with empty static sets installed, and a dynset on loop. */
static sg_dynset_t *dynset_installed(uv_loop_t *loop, uint32_t ack_ms) {
  sg_nft_static_t st;
  statics_of(&st, 0, NULL, NULL, NULL);
  int rc = install(&st);
  sg_nft_static_free(&st);
  if (rc != 0)
    return NULL;
  uv_loop_init(loop);
  return dynset(loop, ack_ms);
}

/* Runs the loop until r's callback came, for at most max_ms. */
static void run_until_called(uv_loop_t *loop, const result_t *r,
                             uint64_t max_ms) {
  uint64_t t0 = uv_hrtime();
  while (!r->calls && uv_hrtime() - t0 < max_ms * 1000000ull)
    uv_run(loop, UV_RUN_ONCE);
}

static void dynset_timeouts(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  sg_dynset_t *d = dynset(&loop, 100);
  ASSERT(d);
  ASSERT_EQ(sg_dynset_timeout_s(d, 0), 60);
  ASSERT_EQ(sg_dynset_timeout_s(d, 30), 90);
  ASSERT_EQ(sg_dynset_timeout_s(d, 300), 360);
  ASSERT_EQ(sg_dynset_timeout_s(d, 0xffffffffu), 360);
  sg_dynset_close(d);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
}

static void dynset_adds_before_callback(void) {
  uv_loop_t loop;
  sg_dynset_t *d = dynset_installed(&loop, 100);
  ASSERT(d);
  sg_dynset_addr_t a[2] = {addr4("203.0.113.7", 30),
                           addr6("2001:db8::7", 1000)};
  result_t r1 = {0}, r2 = {0}, r3 = {0};
  ASSERT_EQ(sg_dynset_allow(d, a, 2, on_done, &r1), 1);
  /* The same address in the same iteration: joins, is not sent twice. */
  ASSERT_EQ(sg_dynset_allow(d, a, 1, on_done, &r2), 1);
  ASSERT_EQ(r1.calls, 0); /* never from within the call */
  uv_run(&loop, UV_RUN_NOWAIT);
  uv_run(&loop, UV_RUN_NOWAIT);
  ASSERT_EQ(r1.calls, 1);
  ASSERT_EQ(r1.ok, 1);
  ASSERT_EQ(r2.calls, 1);
  ASSERT_EQ(r2.ok, 1);
  const sg_dynset_stats_t *s = sg_dynset_stats(d);
  ASSERT_EQ(s->elements, 2);
  ASSERT_EQ(s->joined, 1);
  ASSERT_EQ(s->batches_ok, 1);
  ASSERT_EQ(capture("nft list table inet sandgate"), 0);
  ASSERT(strstr(listing, "203.0.113.7 timeout 1m30s"));
  ASSERT(strstr(listing, "2001:db8::7 timeout 6m"));
  /* Known and fresh: nothing to send, no callback; also a moment later for
   * an answer whose TTL is beyond the clamp's maximum (it cannot be given
   * more than the maximum, so it must not be re-sent every time). */
  ASSERT_EQ(sg_dynset_allow(d, a, 2, on_done, &r3), 0);
  ASSERT_EQ(s->fresh, 2);
  usleep(20000);
  uv_update_time(&loop);
  ASSERT_EQ(sg_dynset_allow(d, a, 2, on_done, &r3), 0);
  ASSERT_EQ(s->fresh, 4);
  sg_dynset_close(d);
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(r3.calls, 0);
  uv_loop_close(&loop);
}

static void dynset_refused(void) {
  ASSERT_EQ(capture("nft delete table inet sandgate; true"), 0);
  uv_loop_t loop;
  uv_loop_init(&loop);
  sg_dynset_t *d = dynset(&loop, 100);
  ASSERT(d);
  sg_dynset_addr_t a = addr4("203.0.113.8", 30);
  result_t r = {0};
  ASSERT_EQ(sg_dynset_allow(d, &a, 1, on_done, &r), 1);
  run_until_called(&loop, &r, 2000);
  ASSERT_EQ(r.calls, 1);
  ASSERT_EQ(r.ok, 0);
  ASSERT_EQ(sg_dynset_stats(d)->batches_refused, 1);
  /* A refused address is not remembered as allowed: asked again, it is
   * sent again. */
  result_t r2 = {0};
  ASSERT_EQ(sg_dynset_allow(d, &a, 1, on_done, &r2), 1);
  sg_dynset_close(d);
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(r2.calls, 1);
  ASSERT_EQ(r2.ok, 0);
  uv_loop_close(&loop);
}

/* The kernel answers an nftables batch within sendmsg, so its ACK is there
 * at once. To see one come late, the test links with --wrap=recv and holds
 * the netlink socket's answers back (recv says EAGAIN) while hold_acks is
 * set; the kernel still processes the batch for real. */
ssize_t __real_recv(int fd, void *buf, size_t n, int flags);
ssize_t __wrap_recv(int fd, void *buf, size_t n, int flags);
static int hold_acks;
ssize_t __wrap_recv(int fd, void *buf, size_t n, int flags) {
  if (hold_acks) {
    errno = EAGAIN;
    return -1;
  }
  return __real_recv(fd, buf, n, flags);
}

/* An ACK later than the timeout: the answer fails (SERVFAIL), the address is
 * not remembered, the late ACK is dropped, and the next answer with the
 * address sends it again. */
static void dynset_ack_timeout(void) {
  uv_loop_t loop;
  sg_dynset_t *d = dynset_installed(&loop, 5);
  ASSERT(d);
  sg_dynset_addr_t a = addr4("203.0.113.9", 30);
  result_t r = {0};
  hold_acks = 1;
  uint64_t t0 = uv_hrtime();
  ASSERT_EQ(sg_dynset_allow(d, &a, 1, on_done, &r), 1);
  run_until_called(&loop, &r, 2000);
  hold_acks = 0;
  ASSERT_EQ(r.calls, 1);
  ASSERT_EQ(r.ok, 0);
  /* not at once (the loop clock counts whole milliseconds) */
  ASSERT(uv_hrtime() - t0 >= 4000000ull);
  const sg_dynset_stats_t *s = sg_dynset_stats(d);
  ASSERT_EQ(s->batches_timeout, 1);
  ASSERT_EQ(s->batches_ok, 0);
  /* The late ACK is read now, and belongs to no batch in flight. */
  for (int i = 0; i < 5; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ASSERT_EQ(s->batches_ok, 0);
  ASSERT_EQ(r.calls, 1);
  /* Not remembered as allowed: asked again, it is sent again. */
  result_t r2 = {0};
  ASSERT_EQ(sg_dynset_allow(d, &a, 1, on_done, &r2), 1);
  run_until_called(&loop, &r2, 2000);
  ASSERT_EQ(r2.calls, 1);
  ASSERT_EQ(r2.ok, 1);
  ASSERT_EQ(s->batches_ok, 1);
  ASSERT_EQ(s->batches_timeout, 1);
  sg_dynset_close(d);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
}

static const sg_test_case_t cases[] = {
    {"ipset: parses addresses and CIDRs, refuses the rest", ipset_parse},
    {"ipset: normalizes overlapping, contained and adjacent ranges",
     ipset_normalize},
    {"ipset: subtracts ranges", ipset_subtract},
    {"ipset: parses address lists and answers membership", ipset_lists},
    {"filter: overlapping prefixes install, normalized",
     filter_install_overlapping},
    {"filter: an update rewrites static sets and the policy, keeps learned "
     "addresses",
     filter_update_keeps_learned},
    {"filter: a refused update reports it", filter_update_refused_keeps_state},
    {"dynset: timeouts are clamp(TTL + grace, min, max)", dynset_timeouts},
    {"dynset: addresses are in the kernel before the callback; in-flight "
     "ones are joined; fresh ones are not re-sent",
     dynset_adds_before_callback},
    {"dynset: a refusal fails the callback and is not remembered",
     dynset_refused},
    {"dynset: an ACK later than the timeout fails the callback; the late ACK "
     "is dropped",
     dynset_ack_timeout},
    {NULL, NULL},
};

int main(void) {
  if (unshare(CLONE_NEWNET) < 0) {
    printf("skipped: cannot unshare a network namespace; run as root\n");
    return 77;
  }
  return sg_test_run(cases);
}
