/* DNS interception in the kernel, through nf_tables netlink (libnftnl +
 * libmnl, no nft or iptables binary).
 *
 * The egress plane owns one table, `inet sandgate`. This module installs
 * its nat part: chain `dns_intercept`, type nat, hook output, priority -100
 * (dstnat), with the rules
 *
 *   meta mark 0x1 return                    (the proxy's own upstream traffic)
 *   meta skuid <uid> ip daddr @exempt_v4 return     (exempt nameservers; v6)
 *   meta l4proto udp udp dport 53 redirect to :<port>
 *   meta l4proto tcp tcp dport 53 redirect to :<port>
 *
 * The inet family covers IPv4 and IPv6 with one chain. In dns+nft mode the
 * same transaction installs the filter (nft/filter.h). */
#ifndef SG_NFT_INTERCEPT_H
#define SG_NFT_INTERCEPT_H

#include <stddef.h>
#include <stdint.h>

#include "nft/build.h"
#include "nft/filter.h"
#include "nft/ipset.h"

#define SG_NFT_INTERCEPT_CHAIN "dns_intercept"

typedef struct {
  uint16_t redirect_port; /* where port 53 goes: 15353 */
  uint32_t bypass_mark;   /* packets carrying it are not redirected: 0x1 */
  /* Exempt nameservers ([0] IPv4, [1] IPv6; NULL or empty = none): port 53
   * to them is not redirected, and in the filter accepted, only for
   * packets of sockets owned by exempt_uid (the proxy's own, which queries
   * them without the mark). An app running as another user is redirected
   * like any other query. */
  const sg_ipset_t *exempt;
  uint32_t exempt_uid;
  /* dns+nft: the filter chain and its sets, with the policy's static sets
   * (NULL: DNS interception only). */
  const sg_nft_filter_opts_t *filter;
  const sg_nft_static_t *statics;
} sg_nft_intercept_opts_t;

/* Creates the table with the interception chain (and the filter, when
 * opts->filter is set), replacing in one atomic
 * netlink batch any table of that name a previous run left behind (add
 * table, delete table, add table, chain, rules). On failure returns a
 * negative errno and writes a message for humans into err that says which
 * kernel capability is missing (nf_tables itself, the nat output hook, the
 * redirect expression, or CAP_NET_ADMIN) and that --no-intercept still works;
 * nothing is left half-installed. */
int sg_nft_intercept_install(const sg_nft_intercept_opts_t *opts, char *err,
                             size_t errlen);

/* Deletes the whole table, in one batch. Succeeds (returns 0) when it does
 * not exist, including when the kernel has no nf_tables at all. On failure
 * returns a negative errno and writes a message for humans into err. */
int sg_nft_intercept_remove(char *err, size_t errlen);

#endif
