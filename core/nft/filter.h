/* The `dns+nft` filter of table `inet sandgate`: what a sandbox may connect
 * to, in the kernel.
 *
 *   chain egress  (filter, hook output, priority 0,
 *                  policy drop when the policy's default is deny, accept
 *                  when it is allow)
 *     ct state established,related accept
 *     meta mark 0x1 accept                    the proxy's own upstream traffic
 *     meta oiftype loopback accept
 *     icmpv6 type 133-137 accept              IPv6 neighbour discovery
 *     meta skuid <uid> ip daddr @exempt_v4 udp/tcp dport 53 accept   (and v6)
 *     tcp/udp dport 853 goto block            DNS over TLS
 *     tcp dport 443 [ip daddr @doh_v4] goto block   (when DoH is blocked)
 *     ip daddr @deny_v4 goto block            ip6 daddr @deny_v6 ...
 *     ip daddr @dyn_v4 accept                 DNS-learned, with timeouts
 *     ip daddr @allow_v4 accept               the policy's IPs and CIDRs
 *     jump egress_default
 *   chain egress_default  empty (allow) or `goto block` (deny)
 *   chain block           reject: tcp reset, else icmpx admin-prohibited;
 *                         or drop
 *
 * The static sets (allow_*, deny_*) are interval sets built from normalized
 * ranges (nft/ipset.h), so overlapping and contained prefixes never make
 * the kernel refuse them. A policy change rewrites only the static sets that
 * changed, the chain policy and egress_default, in one transaction; the
 * dynamic sets keep their elements. */
#ifndef SG_NFT_FILTER_H
#define SG_NFT_FILTER_H

#include <stddef.h>
#include <stdint.h>

#include "nft/batch.h"
#include "nft/ipset.h"

#define SG_NFT_FILTER_CHAIN "egress"
#define SG_NFT_DEFAULT_CHAIN "egress_default"
#define SG_NFT_BLOCK_CHAIN "block"

/* What the policy puts into the kernel. [0] is IPv4, [1] IPv6; all sets
 * normalized. */
typedef struct {
  int default_allow;
  sg_ipset_t allow[2], deny[2];
} sg_nft_static_t;

void sg_nft_static_init(sg_nft_static_t *s);
void sg_nft_static_free(sg_nft_static_t *s);
/* 1 when both would put the same thing into the kernel. */
int sg_nft_static_equal(const sg_nft_static_t *a, const sg_nft_static_t *b);

/* An address a dynamic set holds. */
typedef struct {
  int family; /* 4 or 6 */
  uint8_t addr[16];
  uint64_t timeout_ms; /* the timeout it was added with */
  uint64_t left_ms;    /* until the kernel drops it */
} sg_nft_learned_t;

/* How the filter is built; fixed for the life of the process. */
typedef struct {
  int reject;        /* 1: reject (reset / admin-prohibited); 0: drop */
  int doh_all;       /* tcp/443 blocked everywhere */
  sg_ipset_t doh[2]; /* tcp/443 blocked to these (when not doh_all) */
  uint32_t dyn_size; /* the most elements a dynamic set holds */
  uint32_t bypass_mark;
  int exempt[2];       /* the exempt_v4/v6 sets have elements */
  uint32_t exempt_uid; /* whose packets the exemption covers */
  /* Learned addresses to put back into the new dynamic sets at install. */
  const sg_nft_learned_t *learned;
  size_t nlearned;
} sg_nft_filter_opts_t;

/* Reads what dyn_v4 and dyn_v6 of an existing table hold (a table left by
 * an earlier run), so that a restart can carry the learned addresses over.
 * Returns 0 with *n = 0 when there is no such table or set; *out is
 * malloc'ed (free it). */
int sg_nft_learned_dump(sg_nft_learned_t **out, size_t *n);

/* Set names. */
extern const char *const sg_nft_dyn_set[2];    /* dyn_v4, dyn_v6 */
extern const char *const sg_nft_exempt_set[2]; /* exempt_v4, exempt_v6 */

/* Appends the filter's sets, chains, rules and static elements to an
 * install batch (after the table). *next_set_id gives set ids unique in
 * the batch; exempt sets, when used, were added before with
 * exempt_ids[family]. Returns 0 or a negative errno. */
int sg_nft_filter_fill(sg_nft_batch_t *b, const sg_nft_filter_opts_t *o,
                       const sg_nft_static_t *st, const uint32_t exempt_ids[2],
                       uint32_t *next_set_id);

/* Moves the kernel from old to cur in one transaction: the static sets
 * that differ (flushed and refilled), the chain policy and egress_default.
 * Nothing is sent when they are equal. Returns 0, or a negative errno with
 * a message in err (the kernel then applied nothing). */
int sg_nft_filter_update(const sg_nft_filter_opts_t *o,
                         const sg_nft_static_t *old, const sg_nft_static_t *cur,
                         char *err, size_t errlen);

#endif
