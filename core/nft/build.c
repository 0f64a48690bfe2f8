#include "nft/build.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include <libnftnl/chain.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>

/* nft's datatypes for address keys (nftables' datatype.h), so that
 * `nft list` shows the sets' elements as addresses. */
#define NFT_TYPE_IPADDR 7
#define NFT_TYPE_IP6ADDR 8

/* Offsets of the destination address in the network header. */
#define IPV4_DADDR_OFFSET 16
#define IPV6_DADDR_OFFSET 24

struct nftnl_table *sg_nft_table(void) { return sg_nft_table_named(SG_NFT_TABLE); }

struct nftnl_table *sg_nft_table_named(const char *name) {
  struct nftnl_table *t = nftnl_table_alloc();
  if (!t)
    return NULL;
  nftnl_table_set_u32(t, NFTNL_TABLE_FAMILY, NFPROTO_INET);
  if (nftnl_table_set_str(t, NFTNL_TABLE_NAME, name) < 0) {
    nftnl_table_free(t);
    return NULL;
  }
  return t;
}

struct nftnl_chain *sg_nft_chain(const char *name) {
  return sg_nft_chain_in(SG_NFT_TABLE, name);
}

struct nftnl_chain *sg_nft_chain_in(const char *table, const char *name) {
  struct nftnl_chain *c = nftnl_chain_alloc();
  if (!c)
    return NULL;
  nftnl_chain_set_u32(c, NFTNL_CHAIN_FAMILY, NFPROTO_INET);
  if (nftnl_chain_set_str(c, NFTNL_CHAIN_TABLE, table) < 0 ||
      nftnl_chain_set_str(c, NFTNL_CHAIN_NAME, name) < 0) {
    nftnl_chain_free(c);
    return NULL;
  }
  return c;
}

struct nftnl_chain *sg_nft_base_chain(const char *name, const char *type,
                                      uint32_t hook, int prio, int policy) {
  return sg_nft_base_chain_in(SG_NFT_TABLE, name, type, hook, prio, policy);
}

struct nftnl_chain *sg_nft_base_chain_in(const char *table, const char *name,
                                         const char *type, uint32_t hook,
                                         int prio, int policy) {
  struct nftnl_chain *c = sg_nft_chain_in(table, name);
  if (!c)
    return NULL;
  nftnl_chain_set_u32(c, NFTNL_CHAIN_HOOKNUM, hook);
  nftnl_chain_set_s32(c, NFTNL_CHAIN_PRIO, prio);
  if (policy >= 0)
    nftnl_chain_set_u32(c, NFTNL_CHAIN_POLICY, (uint32_t)policy);
  if (nftnl_chain_set_str(c, NFTNL_CHAIN_TYPE, type) < 0) {
    nftnl_chain_free(c);
    return NULL;
  }
  return c;
}

struct nftnl_rule *sg_nft_rule(const char *chain) {
  return sg_nft_rule_in(SG_NFT_TABLE, chain);
}

struct nftnl_rule *sg_nft_rule_in(const char *table, const char *chain) {
  struct nftnl_rule *r = nftnl_rule_alloc();
  if (!r)
    return NULL;
  nftnl_rule_set_u32(r, NFTNL_RULE_FAMILY, NFPROTO_INET);
  if (nftnl_rule_set_str(r, NFTNL_RULE_TABLE, table) < 0 ||
      nftnl_rule_set_str(r, NFTNL_RULE_CHAIN, chain) < 0) {
    nftnl_rule_free(r);
    return NULL;
  }
  return r;
}

static struct nftnl_expr *new_expr(struct nftnl_rule *r, const char *name) {
  struct nftnl_expr *e = nftnl_expr_alloc(name);
  if (e)
    nftnl_rule_add_expr(r, e);
  return e;
}

bool sg_nft_meta(struct nftnl_rule *r, uint32_t key) {
  struct nftnl_expr *e = new_expr(r, "meta");
  if (!e)
    return false;
  nftnl_expr_set_u32(e, NFTNL_EXPR_META_KEY, key);
  nftnl_expr_set_u32(e, NFTNL_EXPR_META_DREG, NFT_REG_1);
  return true;
}

bool sg_nft_cmp(struct nftnl_rule *r, uint32_t op, const void *data,
                uint32_t len) {
  struct nftnl_expr *e = new_expr(r, "cmp");
  if (!e)
    return false;
  nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_SREG, NFT_REG_1);
  nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_OP, op);
  return nftnl_expr_set(e, NFTNL_EXPR_CMP_DATA, data, len) == 0;
}

bool sg_nft_payload(struct nftnl_rule *r, uint32_t base, uint32_t offset,
                    uint32_t len) {
  struct nftnl_expr *e = new_expr(r, "payload");
  if (!e)
    return false;
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_BASE, base);
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_OFFSET, offset);
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_LEN, len);
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_DREG, NFT_REG_1);
  return true;
}

bool sg_nft_lookup(struct nftnl_rule *r, const char *set, uint32_t set_id) {
  struct nftnl_expr *e = new_expr(r, "lookup");
  if (!e)
    return false;
  nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_SREG, NFT_REG_1);
  if (set_id)
    nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_SET_ID, set_id);
  return nftnl_expr_set_str(e, NFTNL_EXPR_LOOKUP_SET, set) == 0;
}

bool sg_nft_ct_state(struct nftnl_rule *r, uint32_t mask) {
  struct nftnl_expr *ct = new_expr(r, "ct");
  if (!ct)
    return false;
  nftnl_expr_set_u32(ct, NFTNL_EXPR_CT_KEY, NFT_CT_STATE);
  nftnl_expr_set_u32(ct, NFTNL_EXPR_CT_DREG, NFT_REG_1);
  struct nftnl_expr *bw = new_expr(r, "bitwise");
  if (!bw)
    return false;
  uint32_t zero = 0;
  nftnl_expr_set_u32(bw, NFTNL_EXPR_BITWISE_SREG, NFT_REG_1);
  nftnl_expr_set_u32(bw, NFTNL_EXPR_BITWISE_DREG, NFT_REG_1);
  nftnl_expr_set_u32(bw, NFTNL_EXPR_BITWISE_LEN, sizeof(uint32_t));
  if (nftnl_expr_set(bw, NFTNL_EXPR_BITWISE_MASK, &mask, sizeof(mask)) < 0 ||
      nftnl_expr_set(bw, NFTNL_EXPR_BITWISE_XOR, &zero, sizeof(zero)) < 0)
    return false;
  return sg_nft_cmp(r, NFT_CMP_NEQ, &zero, sizeof(zero));
}

bool sg_nft_verdict(struct nftnl_rule *r, int verdict, const char *chain) {
  struct nftnl_expr *e = new_expr(r, "immediate");
  if (!e)
    return false;
  nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT);
  nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_VERDICT, (uint32_t)verdict);
  if (chain)
    return nftnl_expr_set_str(e, NFTNL_EXPR_IMM_CHAIN, chain) == 0;
  return true;
}

bool sg_nft_reject(struct nftnl_rule *r, uint32_t type, uint8_t code) {
  struct nftnl_expr *e = new_expr(r, "reject");
  if (!e)
    return false;
  nftnl_expr_set_u32(e, NFTNL_EXPR_REJECT_TYPE, type);
  nftnl_expr_set_u8(e, NFTNL_EXPR_REJECT_CODE, code);
  return true;
}

bool sg_nft_redirect(struct nftnl_rule *r, uint16_t port) {
  /* The port goes through a register: redir takes its range from there,
   * in network byte order. */
  uint16_t port_be = htons(port);
  struct nftnl_expr *imm = new_expr(r, "immediate");
  if (!imm ||
      nftnl_expr_set(imm, NFTNL_EXPR_IMM_DATA, &port_be, sizeof(port_be)) < 0)
    return false;
  nftnl_expr_set_u32(imm, NFTNL_EXPR_IMM_DREG, NFT_REG_1);
  struct nftnl_expr *redir = new_expr(r, "redir");
  if (!redir)
    return false;
  nftnl_expr_set_u32(redir, NFTNL_EXPR_REDIR_REG_PROTO_MIN, NFT_REG_1);
  return true;
}

bool sg_nft_match_nfproto(struct nftnl_rule *r, int family) {
  uint8_t p = family == 4 ? NFPROTO_IPV4 : NFPROTO_IPV6;
  return sg_nft_meta(r, NFT_META_NFPROTO) && sg_nft_cmp(r, NFT_CMP_EQ, &p, 1);
}

bool sg_nft_match_l4proto(struct nftnl_rule *r, uint8_t proto) {
  return sg_nft_meta(r, NFT_META_L4PROTO) &&
         sg_nft_cmp(r, NFT_CMP_EQ, &proto, 1);
}

bool sg_nft_match_dport(struct nftnl_rule *r, uint16_t port) {
  /* UDP and TCP both keep the destination port at offset 2. */
  uint16_t be = htons(port);
  return sg_nft_payload(r, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2) &&
         sg_nft_cmp(r, NFT_CMP_EQ, &be, 2);
}

bool sg_nft_match_daddr_set(struct nftnl_rule *r, int family, const char *set,
                            uint32_t set_id) {
  return sg_nft_payload(r, NFT_PAYLOAD_NETWORK_HEADER,
                        family == 4 ? IPV4_DADDR_OFFSET : IPV6_DADDR_OFFSET,
                        family == 4 ? 4 : 16) &&
         sg_nft_lookup(r, set, set_id);
}

bool sg_nft_match_mark(struct nftnl_rule *r, uint32_t mark) {
  /* The mark is compared in host byte order, as the kernel keeps it. */
  return sg_nft_meta(r, NFT_META_MARK) &&
         sg_nft_cmp(r, NFT_CMP_EQ, &mark, sizeof(mark));
}

bool sg_nft_match_skuid(struct nftnl_rule *r, uint32_t uid) {
  return sg_nft_meta(r, NFT_META_SKUID) &&
         sg_nft_cmp(r, NFT_CMP_EQ, &uid, sizeof(uid));
}

struct nftnl_set *sg_nft_set_ref(const char *name, int family) {
  struct nftnl_set *s = nftnl_set_alloc();
  if (!s)
    return NULL;
  nftnl_set_set_u32(s, NFTNL_SET_FAMILY, NFPROTO_INET);
  (void)family;
  if (nftnl_set_set_str(s, NFTNL_SET_TABLE, SG_NFT_TABLE) < 0 ||
      nftnl_set_set_str(s, NFTNL_SET_NAME, name) < 0) {
    nftnl_set_free(s);
    return NULL;
  }
  return s;
}

struct nftnl_set *sg_nft_set(const char *name, int family, uint32_t flags,
                             uint32_t size, uint32_t id) {
  struct nftnl_set *s = sg_nft_set_ref(name, family);
  if (!s)
    return NULL;
  nftnl_set_set_u32(s, NFTNL_SET_KEY_TYPE,
                    family == 4 ? NFT_TYPE_IPADDR : NFT_TYPE_IP6ADDR);
  nftnl_set_set_u32(s, NFTNL_SET_KEY_LEN, family == 4 ? 4 : 16);
  nftnl_set_set_u32(s, NFTNL_SET_FLAGS, flags);
  if (size)
    nftnl_set_set_u32(s, NFTNL_SET_DESC_SIZE, size);
  if (id)
    nftnl_set_set_u32(s, NFTNL_SET_ID, id);
  return s;
}

static bool add_elem(struct nftnl_set *s, const uint8_t *key, size_t len,
                     uint32_t flags, uint64_t timeout_ms) {
  struct nftnl_set_elem *e = nftnl_set_elem_alloc();
  if (!e)
    return false;
  if (nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, key, (uint32_t)len) < 0) {
    nftnl_set_elem_free(e);
    return false;
  }
  if (flags)
    nftnl_set_elem_set_u32(e, NFTNL_SET_ELEM_FLAGS, flags);
  if (timeout_ms)
    nftnl_set_elem_set_u64(e, NFTNL_SET_ELEM_TIMEOUT, timeout_ms);
  nftnl_set_elem_add(s, e);
  return true;
}

bool sg_nft_add_interval_elems(struct nftnl_set *s, const sg_ipset_t *set,
                               size_t first, size_t count) {
  uint8_t key[16];
  for (size_t i = first; i < set->n && i < first + count; i++) {
    const sg_range_t *r = &set->r[i];
    size_t len = sg_addr_bytes(set->family, r->lo, key);
    if (!add_elem(s, key, len, 0, 0))
      return false;
    if (r->hi == sg_addr_max(set->family))
      continue;
    len = sg_addr_bytes(set->family, r->hi + 1, key);
    if (!add_elem(s, key, len, NFT_SET_ELEM_INTERVAL_END, 0))
      return false;
  }
  return true;
}

bool sg_nft_add_addr_elem(struct nftnl_set *s, int family, const uint8_t *addr,
                          uint64_t timeout_ms) {
  return add_elem(s, addr, family == 4 ? 4 : 16, 0, timeout_ms);
}

bool sg_nft_bitwise_mask(struct nftnl_rule *r, const void *mask, uint32_t len) {
  struct nftnl_expr *e = new_expr(r, "bitwise");
  if (!e)
    return false;
  uint8_t zero[16] = {0};
  nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_SREG, NFT_REG_1);
  nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_DREG, NFT_REG_1);
  nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_LEN, len);
  return nftnl_expr_set(e, NFTNL_EXPR_BITWISE_MASK, mask, len) == 0 &&
         nftnl_expr_set(e, NFTNL_EXPR_BITWISE_XOR, zero, len) == 0;
}

bool sg_nft_masquerade(struct nftnl_rule *r) {
  return new_expr(r, "masq") != NULL;
}
