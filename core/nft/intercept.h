/* DNS interception in the kernel, through nf_tables netlink (libnftnl +
 * libmnl, no nft or iptables binary).
 *
 * The egress plane owns one table, `inet sandgate`. This module installs
 * its nat part: chain `dns_intercept`, type nat, hook output, priority -100
 * (dstnat), with the rules
 *
 *   meta mark 0x1 return                    (the proxy's own upstream traffic)
 *   meta l4proto udp udp dport 53 redirect to :<port>
 *   meta l4proto tcp tcp dport 53 redirect to :<port>
 *
 * The inet family covers IPv4 and IPv6 with one chain. */
#ifndef SG_NFT_INTERCEPT_H
#define SG_NFT_INTERCEPT_H

#include <stddef.h>
#include <stdint.h>

#define SG_NFT_TABLE "sandgate"
#define SG_NFT_INTERCEPT_CHAIN "dns_intercept"

typedef struct {
  uint16_t redirect_port; /* where port 53 goes: 15353 */
  uint32_t bypass_mark;   /* packets carrying it are not redirected: 0x1 */
} sg_nft_intercept_opts_t;

/* Creates the table with the interception chain, replacing in one atomic
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
