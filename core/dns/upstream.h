/* Upstream DNS transport over c-ares, driven by the libuv loop.
 *
 * Each configured nameserver gets its own c-ares channel (one server, one
 * try), so failover is ours to decide: a transport error, a timeout, or an
 * rcode other than NOERROR/NXDOMAIN moves the query to the next server, in
 * list order; when every server failed the caller gets no answer and replies
 * SERVFAIL. c-ares handles the wire: random IDs, matching answers to
 * questions, and the retry over TCP when a UDP answer comes back truncated.
 * Every socket c-ares opens carries SO_MARK, so the interception rules let
 * the proxy's own traffic through. */
#ifndef SG_DNS_UPSTREAM_H
#define SG_DNS_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#define SG_UPSTREAM_MAX 10

typedef struct sg_upstream sg_upstream_t;

typedef struct {
  struct sockaddr_storage servers[SG_UPSTREAM_MAX];
  int nservers;
  uint32_t timeout_ms; /* per exchange with one server */
  uint32_t mark;       /* SO_MARK on every upstream socket; 0 = none */
  /* Servers queried without the mark (exempt nameservers: the kernel
   * recognizes the proxy's sockets by their owner instead). */
  unsigned char no_mark[SG_UPSTREAM_MAX];
} sg_upstream_opts_t;

/* Called once per query. On success `answer` holds the server's message
 * (with c-ares' ID: the caller restores its client's); on failure answer is
 * NULL and `error` says what happened with the last server tried. */
typedef void (*sg_upstream_cb)(void *arg, const uint8_t *answer, size_t len,
                               const char *error);

/* Upper bounds (seconds) of the exchange-latency histogram buckets. */
#define SG_UPSTREAM_BUCKETS 12
extern const double sg_upstream_bucket_le[SG_UPSTREAM_BUCKETS];

typedef struct {
  uint64_t answered;  /* queries that got a NOERROR/NXDOMAIN answer */
  uint64_t failed;    /* queries every upstream failed (SERVFAIL given) */
  uint64_t failovers; /* moves to the next upstream */
  /* Time from the first send to the answer, answered queries only. */
  uint64_t bucket[SG_UPSTREAM_BUCKETS]; /* non-cumulative counts */
  double sum_seconds;
} sg_upstream_stats_t;

const sg_upstream_stats_t *sg_upstream_stats(const sg_upstream_t *up);

int sg_upstream_new(uv_loop_t *loop, const sg_upstream_opts_t *opts,
                    sg_upstream_t **out, char *err, size_t errlen);

/* Sends a query (copied). The callback runs later from the loop, never from
 * within this call. Returns 0 or a negative errno. */
int sg_upstream_query(sg_upstream_t *up, const uint8_t *pkt, size_t len,
                      sg_upstream_cb cb, void *arg);

/* Cancels everything in flight (callbacks run with an error) and closes the
 * handles; frees itself once libuv has released them. */
void sg_upstream_close(sg_upstream_t *up);

/* Reads up to SG_UPSTREAM_MAX nameservers from a resolv.conf, non-loopback
 * ones first (a loopback nameserver inside the sandbox is usually the
 * intercepted stub itself). Returns how many, or a negative errno. */
int sg_upstream_from_resolv_conf(const char *path, struct sockaddr_storage *out,
                                 int max, char *err, size_t errlen);

#endif
