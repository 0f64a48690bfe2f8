/* The DNS-learned allow sets (dyn_v4, dyn_v6): addresses of allowed answers
 * go into the kernel before the answer is released.
 *
 * A request names the addresses of one answer and a callback. Addresses the
 * set already holds with more than half their timeout left cost nothing;
 * the others are added (or their timeout refreshed: the kernel resets an
 * element's timeout when it is added again) in a netlink batch with
 * NLM_F_ACK, on a non-blocking socket the libuv loop polls. All requests of
 * one loop iteration share one batch. The callback runs once every batch
 * the request depends on was acknowledged (ok = 1), or once one of them was
 * refused or left unanswered past the ACK timeout (ok = 0: the caller must
 * not release the answer).
 *
 * An address already on its way to the kernel is not sent twice: a second
 * answer with it waits for the first one's batch, so it can never overtake
 * an add that is still in flight.
 *
 * The element timeout is clamp(TTL + grace, min, max) seconds. */
#ifndef SG_NFT_DYNSET_H
#define SG_NFT_DYNSET_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct sg_dynset sg_dynset_t;

typedef struct {
  uint32_t grace_s, min_s, max_s;
  uint32_t ack_timeout_ms;
} sg_dynset_opts_t;

typedef struct {
  int family; /* 4 or 6 */
  uint8_t addr[16];
  uint32_t ttl;
} sg_dynset_addr_t;

/* ok: 1 when every address is in the kernel's set, 0 otherwise. */
typedef void (*sg_dynset_cb)(void *arg, int ok);

#define SG_DYNSET_ACK_BUCKETS 14
extern const double sg_dynset_ack_le[SG_DYNSET_ACK_BUCKETS];

typedef struct {
  uint64_t batches_ok, batches_refused, batches_timeout;
  uint64_t elements; /* addresses sent to the kernel */
  uint64_t fresh;    /* addresses already allowed: nothing sent */
  uint64_t joined;   /* addresses that waited for another answer's batch */
  uint64_t entries;  /* addresses known to be in the sets now */
  /* Time from sendmsg to the last acknowledgement of a batch. */
  uint64_t ack_bucket[SG_DYNSET_ACK_BUCKETS]; /* non-cumulative */
  uint64_t ack_count;
  double ack_sum_seconds;
} sg_dynset_stats_t;

int sg_dynset_new(uv_loop_t *loop, const sg_dynset_opts_t *opts,
                  sg_dynset_t **out, char *err, size_t errlen);

/* Returns 0 when nothing had to be sent (cb is not called), 1 when cb will
 * be called later from the loop (never from within this call), or a
 * negative errno when the request could not be queued (treat as refused). */
int sg_dynset_allow(sg_dynset_t *d, const sg_dynset_addr_t *addrs, size_t n,
                    sg_dynset_cb cb, void *arg);

/* Remembers addresses the sets already hold (carried over from an earlier
 * table): left_ms until they expire, added with timeout_ms. */
void sg_dynset_seed(sg_dynset_t *d, int family, const uint8_t *addr,
                    uint64_t timeout_ms, uint64_t left_ms);

/* The timeout an address with this TTL gets, in seconds. */
uint32_t sg_dynset_timeout_s(const sg_dynset_t *d, uint32_t ttl);

const sg_dynset_stats_t *sg_dynset_stats(const sg_dynset_t *d);

/* Calls every pending callback with ok = 0, closes the socket and frees
 * itself once libuv released the handles. */
void sg_dynset_close(sg_dynset_t *d);

#endif
