/* Building blocks for the objects of table `inet sandgate`, made with
 * libnftnl: the table, chains, sets, set elements and rules, with the
 * expressions `nft` itself generates for the same rules (check with
 * `nft --debug=netlink add rule ...`).
 *
 * Rule builders append expressions to a rule and return false when out of
 * memory; the rule owns what it was given. Every match leaves the rule at
 * the first mismatch, as nft's do. */
#ifndef SG_NFT_BUILD_H
#define SG_NFT_BUILD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nft/ipset.h"

struct nftnl_table;
struct nftnl_chain;
struct nftnl_rule;
struct nftnl_set;

#define SG_NFT_TABLE "sandgate"

struct nftnl_table *sg_nft_table(void);

/* The same objects in another inet table (sandgate run's NAT table). */
struct nftnl_table *sg_nft_table_named(const char *name);
struct nftnl_chain *sg_nft_chain_in(const char *table, const char *name);
struct nftnl_chain *sg_nft_base_chain_in(const char *table, const char *name,
                                         const char *type, uint32_t hook,
                                         int prio, int policy);
struct nftnl_rule *sg_nft_rule_in(const char *table, const char *chain);

/* A base chain (type "filter"/"nat", a NF_INET_* hook, a priority). policy
 * is NF_ACCEPT or NF_DROP, or -1 to leave it out (nat chains). */
struct nftnl_chain *sg_nft_base_chain(const char *name, const char *type,
                                      uint32_t hook, int prio, int policy);
/* A regular chain, for jump and goto. */
struct nftnl_chain *sg_nft_chain(const char *name);

/* An empty rule of a chain of the table. */
struct nftnl_rule *sg_nft_rule(const char *chain);

/* reg1 = meta <key> (NFT_META_*) */
bool sg_nft_meta(struct nftnl_rule *r, uint32_t key);
/* stop unless reg1 <op> data (NFT_CMP_*) */
bool sg_nft_cmp(struct nftnl_rule *r, uint32_t op, const void *data,
                uint32_t len);
/* reg1 = len bytes at offset of the header (NFT_PAYLOAD_*_HEADER) */
bool sg_nft_payload(struct nftnl_rule *r, uint32_t base, uint32_t offset,
                    uint32_t len);
/* stop unless reg1 is in the set (named, and by id when it is created in
 * the same batch; 0 = by name only) */
bool sg_nft_lookup(struct nftnl_rule *r, const char *set, uint32_t set_id);
/* ct state: stop unless one of the NF_CT_STATE_* bits in mask is set */
bool sg_nft_ct_state(struct nftnl_rule *r, uint32_t mask);
/* The verdict: NF_ACCEPT, NF_DROP, NFT_RETURN, or NFT_JUMP/NFT_GOTO chain */
bool sg_nft_verdict(struct nftnl_rule *r, int verdict, const char *chain);
/* reject: NFT_REJECT_TCP_RST, or NFT_REJECT_ICMPX_UNREACH with an
 * NFT_REJECT_ICMPX_* code */
bool sg_nft_reject(struct nftnl_rule *r, uint32_t type, uint8_t code);
/* redirect to a local port */
bool sg_nft_redirect(struct nftnl_rule *r, uint16_t port);
/* reg1 &= mask (len bytes) */
bool sg_nft_bitwise_mask(struct nftnl_rule *r, const void *mask, uint32_t len);
/* masquerade (source NAT to the outgoing interface's address) */
bool sg_nft_masquerade(struct nftnl_rule *r);

/* Common matches, each one or more of the expressions above. */
bool sg_nft_match_nfproto(struct nftnl_rule *r, int family /* 4 or 6 */);
bool sg_nft_match_l4proto(struct nftnl_rule *r, uint8_t proto);
/* th dport == port (after an l4proto match for tcp or udp) */
bool sg_nft_match_dport(struct nftnl_rule *r, uint16_t port);
/* ip daddr / ip6 daddr @set (after an nfproto match) */
bool sg_nft_match_daddr_set(struct nftnl_rule *r, int family, const char *set,
                            uint32_t set_id);
bool sg_nft_match_mark(struct nftnl_rule *r, uint32_t mark);
bool sg_nft_match_skuid(struct nftnl_rule *r, uint32_t uid);

/* A set of addresses of one family (4 or 6): NFT_SET_INTERVAL for prefix
 * sets, NFT_SET_TIMEOUT for sets whose elements expire; size 0 = no limit.
 * id names it within a batch (0 = none). */
struct nftnl_set *sg_nft_set(const char *name, int family, uint32_t flags,
                             uint32_t size, uint32_t id);
/* The same set as a handle for element messages (no attributes but its
 * name). */
struct nftnl_set *sg_nft_set_ref(const char *name, int family);

/* Adds the ranges of an interval set as elements of s: a start element per
 * range and an end element (NFT_SET_ELEM_INTERVAL_END) one past its last
 * address, left out when the range runs to the family's last address.
 * first/count select a slice of the ranges (to keep a message under 64
 * KiB). Returns false when out of memory. */
bool sg_nft_add_interval_elems(struct nftnl_set *s, const sg_ipset_t *set,
                               size_t first, size_t count);
/* Adds one address element, with a timeout in milliseconds (0 = none). */
bool sg_nft_add_addr_elem(struct nftnl_set *s, int family, const uint8_t *addr,
                          uint64_t timeout_ms);

#endif
