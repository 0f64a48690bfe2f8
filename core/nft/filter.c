#include "nft/filter.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <time.h>

#include <libmnl/libmnl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <libnftnl/chain.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "nft/build.h"

#define FILTER_PRIORITY 0
#define ARPHRD_LOOPBACK_TYPE 772
#define DNS_PORT 53
#define DOT_PORT 853
#define HTTPS_PORT 443
/* Ranges per element message: two elements each, well under 64 KiB. */
#define RANGES_PER_MSG 500

const char *const sg_nft_dyn_set[2] = {"dyn_v4", "dyn_v6"};
const char *const sg_nft_exempt_set[2] = {"exempt_v4", "exempt_v6"};
static const char *const allow_set[2] = {"allow_v4", "allow_v6"};
static const char *const deny_set[2] = {"deny_v4", "deny_v6"};
static const char *const doh_set[2] = {"doh_v4", "doh_v6"};

static int fam_of(int f) {
  return f ? 6 : 4;
}

void sg_nft_static_init(sg_nft_static_t *s) {
  memset(s, 0, sizeof(*s));
  for (int f = 0; f < 2; f++) {
    sg_ipset_init(&s->allow[f], f ? 6 : 4);
    sg_ipset_init(&s->deny[f], f ? 6 : 4);
  }
}

void sg_nft_static_free(sg_nft_static_t *s) {
  for (int f = 0; f < 2; f++) {
    sg_ipset_free(&s->allow[f]);
    sg_ipset_free(&s->deny[f]);
  }
}

int sg_nft_static_equal(const sg_nft_static_t *a, const sg_nft_static_t *b) {
  if (a->default_allow != b->default_allow)
    return 0;
  for (int f = 0; f < 2; f++)
    if (!sg_ipset_equal(&a->allow[f], &b->allow[f]) ||
        !sg_ipset_equal(&a->deny[f], &b->deny[f]))
      return 0;
  return 1;
}

/* ---- adding objects to a batch ---- */

static int add_chain(sg_nft_batch_t *b, struct nftnl_chain *c) {
  if (!c)
    return -ENOMEM;
  int rc = sg_nft_batch_add_chain(b, NFT_MSG_NEWCHAIN, NLM_F_CREATE, c);
  nftnl_chain_free(c);
  return rc < 0 ? rc : 0;
}

/* Appends the rule when it was built completely (ok), frees it either way. */
static int add_rule(sg_nft_batch_t *b, struct nftnl_rule *r, bool ok) {
  int rc = -ENOMEM;
  if (r && ok)
    rc = sg_nft_batch_add_rule(b, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND,
                               r);
  if (r)
    nftnl_rule_free(r);
  return rc < 0 ? rc : 0;
}

static int add_set(sg_nft_batch_t *b, struct nftnl_set *s) {
  if (!s)
    return -ENOMEM;
  int rc = sg_nft_batch_add_set(b, NFT_MSG_NEWSET, NLM_F_CREATE, s);
  nftnl_set_free(s);
  return rc < 0 ? rc : 0;
}

/* The elements of an interval set, in messages of RANGES_PER_MSG ranges. */
static int add_interval_elems(sg_nft_batch_t *b, const char *name,
                              const sg_ipset_t *set) {
  for (size_t first = 0; first < set->n; first += RANGES_PER_MSG) {
    struct nftnl_set *s = sg_nft_set_ref(name, set->family);
    int rc = -ENOMEM;
    if (s && sg_nft_add_interval_elems(s, set, first, RANGES_PER_MSG))
      rc = sg_nft_batch_add_setelems(b, NFT_MSG_NEWSETELEM, NLM_F_CREATE, s);
    if (s)
      nftnl_set_free(s);
    if (rc < 0)
      return rc;
  }
  return 0;
}

/* Empties a set (an element message without elements). */
static int flush_set(sg_nft_batch_t *b, const char *name, int family) {
  struct nftnl_set *s = sg_nft_set_ref(name, family);
  if (!s)
    return -ENOMEM;
  int rc = sg_nft_batch_add_setelems(b, NFT_MSG_DELSETELEM, 0, s);
  nftnl_set_free(s);
  return rc < 0 ? rc : 0;
}

/* The learned addresses of one family carried over from an earlier table,
 * each with what was left of its timeout. */
static int add_learned(sg_nft_batch_t *b, const sg_nft_filter_opts_t *o,
                       int f) {
  struct nftnl_set *s = NULL;
  int in_msg = 0, rc = 0;
  for (size_t i = 0; i <= o->nlearned && !rc; i++) {
    const sg_nft_learned_t *l = i < o->nlearned ? &o->learned[i] : NULL;
    if (s && (!l || in_msg == 800)) {
      rc = sg_nft_batch_add_setelems(b, NFT_MSG_NEWSETELEM, NLM_F_CREATE, s);
      nftnl_set_free(s);
      s = NULL;
      in_msg = 0;
      rc = rc < 0 ? rc : 0;
    }
    if (!l || l->family != fam_of(f) || l->left_ms < 1000 || rc)
      continue;
    if (!s && !(s = sg_nft_set_ref(sg_nft_dyn_set[f], fam_of(f))))
      return -ENOMEM;
    if (!sg_nft_add_addr_elem(s, l->family, l->addr, l->left_ms))
      rc = -ENOMEM;
    in_msg++;
  }
  if (s)
    nftnl_set_free(s);
  return rc;
}

/* ---- reading the learned addresses of an earlier table ---- */

typedef struct {
  sg_nft_learned_t *v;
  size_t n, cap;
  int family;
} dump_t;

static int on_elems(const struct nlmsghdr *nlh, void *data) {
  dump_t *d = data;
  struct nftnl_set *s = nftnl_set_alloc();
  if (!s)
    return MNL_CB_ERROR;
  if (nftnl_set_elems_nlmsg_parse(nlh, s) < 0) {
    nftnl_set_free(s);
    return MNL_CB_OK;
  }
  struct nftnl_set_elems_iter *it = nftnl_set_elems_iter_create(s);
  for (struct nftnl_set_elem *e = it ? nftnl_set_elems_iter_next(it) : NULL; e;
       e = nftnl_set_elems_iter_next(it)) {
    uint32_t len = 0;
    const void *key = nftnl_set_elem_get(e, NFTNL_SET_ELEM_KEY, &len);
    if (!key || len != (d->family == 4 ? 4u : 16u))
      continue;
    if (d->n == d->cap) {
      size_t cap = d->cap ? d->cap * 2 : 64;
      sg_nft_learned_t *v = realloc(d->v, cap * sizeof(*v));
      if (!v)
        break;
      d->v = v;
      d->cap = cap;
    }
    sg_nft_learned_t *l = &d->v[d->n++];
    memset(l, 0, sizeof(*l));
    l->family = d->family;
    memcpy(l->addr, key, len);
    if (nftnl_set_elem_is_set(e, NFTNL_SET_ELEM_TIMEOUT))
      l->timeout_ms = nftnl_set_elem_get_u64(e, NFTNL_SET_ELEM_TIMEOUT);
    if (nftnl_set_elem_is_set(e, NFTNL_SET_ELEM_EXPIRATION))
      l->left_ms = nftnl_set_elem_get_u64(e, NFTNL_SET_ELEM_EXPIRATION);
  }
  if (it)
    nftnl_set_elems_iter_destroy(it);
  nftnl_set_free(s);
  return MNL_CB_OK;
}

static void dump_set(struct mnl_socket *nl, int f, dump_t *d) {
  char *buf = malloc(MNL_SOCKET_BUFFER_SIZE * 4);
  struct nftnl_set *s = sg_nft_set_ref(sg_nft_dyn_set[f], fam_of(f));
  if (!buf || !s)
    goto out;
  uint32_t seq = (uint32_t)time(NULL) + (uint32_t)f;
  struct nlmsghdr *nlh = nftnl_nlmsg_build_hdr(
      buf, NFT_MSG_GETSETELEM, NFPROTO_INET, NLM_F_DUMP | NLM_F_ACK, seq);
  nftnl_set_elems_nlmsg_build_payload(nlh, s);
  if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0)
    goto out;
  d->family = fam_of(f);
  unsigned int portid = mnl_socket_get_portid(nl);
  for (;;) {
    ssize_t n = mnl_socket_recvfrom(nl, buf, MNL_SOCKET_BUFFER_SIZE * 4);
    if (n <= 0)
      break;
    /* Stops at NLMSG_DONE, or at an error such as "no such table". */
    if (mnl_cb_run(buf, (size_t)n, seq, portid, on_elems, d) <= MNL_CB_STOP)
      break;
  }
out:
  if (s)
    nftnl_set_free(s);
  free(buf);
}

int sg_nft_learned_dump(sg_nft_learned_t **out, size_t *n) {
  *out = NULL;
  *n = 0;
  struct mnl_socket *nl = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);
  if (!nl)
    return 0;
  if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
    mnl_socket_close(nl);
    return 0;
  }
  struct timeval tv = {.tv_sec = 2};
  setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  dump_t d = {0};
  dump_set(nl, 0, &d);
  dump_set(nl, 1, &d);
  mnl_socket_close(nl);
  *out = d.v;
  *n = d.n;
  return 0;
}

/* ---- the rules ---- */

/* <daddr in set> <verdict>, for one family. */
static int set_rule(sg_nft_batch_t *b, int f, const char *set, uint32_t id,
                    int verdict, const char *chain) {
  struct nftnl_rule *r = sg_nft_rule(SG_NFT_FILTER_CHAIN);
  bool ok = r && sg_nft_match_nfproto(r, fam_of(f)) &&
            sg_nft_match_daddr_set(r, fam_of(f), set, id) &&
            sg_nft_verdict(r, verdict, chain);
  return add_rule(b, r, ok);
}

/* meta l4proto <proto> th dport <port> goto block */
static int port_block_rule(sg_nft_batch_t *b, uint8_t proto, uint16_t port) {
  struct nftnl_rule *r = sg_nft_rule(SG_NFT_FILTER_CHAIN);
  bool ok = r && sg_nft_match_l4proto(r, proto) &&
            sg_nft_match_dport(r, port) &&
            sg_nft_verdict(r, NFT_GOTO, SG_NFT_BLOCK_CHAIN);
  return add_rule(b, r, ok);
}

static int block_chain_rules(sg_nft_batch_t *b, int reject) {
  int rc;
  struct nftnl_rule *r;
  if (!reject) {
    r = sg_nft_rule(SG_NFT_BLOCK_CHAIN);
    return add_rule(b, r, r && sg_nft_verdict(r, NF_DROP, NULL));
  }
  r = sg_nft_rule(SG_NFT_BLOCK_CHAIN);
  rc = add_rule(b, r,
                r && sg_nft_match_l4proto(r, IPPROTO_TCP) &&
                    sg_nft_reject(r, NFT_REJECT_TCP_RST, 0));
  if (rc)
    return rc;
  r = sg_nft_rule(SG_NFT_BLOCK_CHAIN);
  return add_rule(b, r,
                  r && sg_nft_reject(r, NFT_REJECT_ICMPX_UNREACH,
                                     NFT_REJECT_ICMPX_ADMIN_PROHIBITED));
}

/* egress_default: nothing (fall back to the accept policy) or goto block. */
static int default_rule(sg_nft_batch_t *b, int default_allow) {
  if (default_allow)
    return 0;
  struct nftnl_rule *r = sg_nft_rule(SG_NFT_DEFAULT_CHAIN);
  return add_rule(b, r, r && sg_nft_verdict(r, NFT_GOTO, SG_NFT_BLOCK_CHAIN));
}

static struct nftnl_chain *filter_chain(int default_allow) {
  return sg_nft_base_chain(SG_NFT_FILTER_CHAIN, "filter", NF_INET_LOCAL_OUT,
                           FILTER_PRIORITY,
                           default_allow ? NF_ACCEPT : NF_DROP);
}

static int filter_rules(sg_nft_batch_t *b, const sg_nft_filter_opts_t *o,
                        const uint32_t exempt_ids[2],
                        const uint32_t ids[4][2]) {
  int rc;
  struct nftnl_rule *r;
  const char *chain = SG_NFT_FILTER_CHAIN;

  r = sg_nft_rule(chain);
  if ((rc = add_rule(
           b, r,
           r &&
               sg_nft_ct_state(r, NF_CT_STATE_BIT(IP_CT_ESTABLISHED) |
                                      NF_CT_STATE_BIT(IP_CT_RELATED)) &&
               sg_nft_verdict(r, NF_ACCEPT, NULL))))
    return rc;
  r = sg_nft_rule(chain);
  if ((rc = add_rule(b, r,
                     r && sg_nft_match_mark(r, o->bypass_mark) &&
                         sg_nft_verdict(r, NF_ACCEPT, NULL))))
    return rc;
  uint16_t lo = ARPHRD_LOOPBACK_TYPE;
  r = sg_nft_rule(chain);
  if ((rc = add_rule(b, r,
                     r && sg_nft_meta(r, NFT_META_OIFTYPE) &&
                         sg_nft_cmp(r, NFT_CMP_EQ, &lo, sizeof(lo)) &&
                         sg_nft_verdict(r, NF_ACCEPT, NULL))))
    return rc;
  /* The redirected DNS queries: the output hook saw their route before
   * the nat chain rewrote them to the proxy's loopback address, so the
   * interface match above does not catch them. */
  uint8_t net127 = 127;
  r = sg_nft_rule(chain);
  if ((rc = add_rule(b, r,
                     r && sg_nft_match_nfproto(r, 4) &&
                         sg_nft_payload(r, NFT_PAYLOAD_NETWORK_HEADER, 16, 1) &&
                         sg_nft_cmp(r, NFT_CMP_EQ, &net127, 1) &&
                         sg_nft_verdict(r, NF_ACCEPT, NULL))))
    return rc;
  static const uint8_t lo6[16] = {[15] = 1};
  r = sg_nft_rule(chain);
  if ((rc =
           add_rule(b, r,
                    r && sg_nft_match_nfproto(r, 6) &&
                        sg_nft_payload(r, NFT_PAYLOAD_NETWORK_HEADER, 24, 16) &&
                        sg_nft_cmp(r, NFT_CMP_EQ, lo6, 16) &&
                        sg_nft_verdict(r, NF_ACCEPT, NULL))))
    return rc;
  /* Router and neighbour solicitation/advertisement, redirect: without
   * them IPv6 stops working under a drop policy. */
  uint8_t nd_first = 133, nd_last = 137;
  r = sg_nft_rule(chain);
  if ((rc =
           add_rule(b, r,
                    r && sg_nft_match_l4proto(r, IPPROTO_ICMPV6) &&
                        sg_nft_payload(r, NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1) &&
                        sg_nft_cmp(r, NFT_CMP_GTE, &nd_first, 1) &&
                        sg_nft_cmp(r, NFT_CMP_LTE, &nd_last, 1) &&
                        sg_nft_verdict(r, NF_ACCEPT, NULL))))
    return rc;
  /* The exempt nameservers, port 53 only, for the sidecar's own sockets. */
  static const uint8_t protos[2] = {IPPROTO_UDP, IPPROTO_TCP};
  for (int f = 0; f < 2; f++) {
    if (!o->exempt[f])
      continue;
    for (int p = 0; p < 2; p++) {
      r = sg_nft_rule(chain);
      if ((rc = add_rule(b, r,
                         r && sg_nft_match_nfproto(r, fam_of(f)) &&
                             sg_nft_match_l4proto(r, protos[p]) &&
                             sg_nft_match_dport(r, DNS_PORT) &&
                             sg_nft_match_daddr_set(r, fam_of(f),
                                                    sg_nft_exempt_set[f],
                                                    exempt_ids[f]) &&
                             sg_nft_match_skuid(r, o->exempt_uid) &&
                             sg_nft_verdict(r, NF_ACCEPT, NULL))))
        return rc;
    }
  }
  for (int p = 0; p < 2; p++)
    if ((rc = port_block_rule(b, protos[p], DOT_PORT)))
      return rc;
  if (o->doh_all) {
    if ((rc = port_block_rule(b, IPPROTO_TCP, HTTPS_PORT)))
      return rc;
  } else {
    for (int f = 0; f < 2; f++) {
      if (o->doh[f].n == 0)
        continue;
      r = sg_nft_rule(chain);
      if ((rc = add_rule(b, r,
                         r && sg_nft_match_nfproto(r, fam_of(f)) &&
                             sg_nft_match_l4proto(r, IPPROTO_TCP) &&
                             sg_nft_match_dport(r, HTTPS_PORT) &&
                             sg_nft_match_daddr_set(r, fam_of(f), doh_set[f],
                                                    ids[3][f]) &&
                             sg_nft_verdict(r, NFT_GOTO, SG_NFT_BLOCK_CHAIN))))
        return rc;
    }
  }
  for (int f = 0; f < 2; f++)
    if ((rc = set_rule(b, f, deny_set[f], ids[1][f], NFT_GOTO,
                       SG_NFT_BLOCK_CHAIN)))
      return rc;
  for (int f = 0; f < 2; f++)
    if ((rc = set_rule(b, f, sg_nft_dyn_set[f], ids[2][f], NF_ACCEPT, NULL)))
      return rc;
  for (int f = 0; f < 2; f++)
    if ((rc = set_rule(b, f, allow_set[f], ids[0][f], NF_ACCEPT, NULL)))
      return rc;
  r = sg_nft_rule(chain);
  return add_rule(b, r, r && sg_nft_verdict(r, NFT_JUMP, SG_NFT_DEFAULT_CHAIN));
}

int sg_nft_filter_fill(sg_nft_batch_t *b, const sg_nft_filter_opts_t *o,
                       const sg_nft_static_t *st, const uint32_t exempt_ids[2],
                       uint32_t *next_set_id) {
  int rc;
  /* ids[kind][family]: allow, deny, dyn, doh */
  uint32_t ids[4][2];
  for (int f = 0; f < 2; f++) {
    ids[0][f] = (*next_set_id)++;
    ids[1][f] = (*next_set_id)++;
    ids[2][f] = (*next_set_id)++;
    ids[3][f] = (*next_set_id)++;
    if ((rc = add_set(b, sg_nft_set(allow_set[f], fam_of(f), NFT_SET_INTERVAL,
                                    0, ids[0][f]))) ||
        (rc = add_set(b, sg_nft_set(deny_set[f], fam_of(f), NFT_SET_INTERVAL, 0,
                                    ids[1][f]))) ||
        (rc =
             add_set(b, sg_nft_set(sg_nft_dyn_set[f], fam_of(f),
                                   NFT_SET_TIMEOUT, o->dyn_size, ids[2][f]))) ||
        (rc = add_set(b, sg_nft_set(doh_set[f], fam_of(f), NFT_SET_INTERVAL, 0,
                                    ids[3][f]))))
      return rc;
    if ((rc = add_learned(b, o, f)) ||
        (rc = add_interval_elems(b, allow_set[f], &st->allow[f])) ||
        (rc = add_interval_elems(b, deny_set[f], &st->deny[f])) ||
        (rc = add_interval_elems(b, doh_set[f], &o->doh[f])))
      return rc;
  }
  if ((rc = add_chain(b, sg_nft_chain(SG_NFT_BLOCK_CHAIN))) ||
      (rc = add_chain(b, sg_nft_chain(SG_NFT_DEFAULT_CHAIN))) ||
      (rc = block_chain_rules(b, o->reject)) ||
      (rc = default_rule(b, st->default_allow)) ||
      (rc = add_chain(b, filter_chain(st->default_allow))))
    return rc;
  return filter_rules(b, o, exempt_ids, ids);
}

int sg_nft_filter_update(const sg_nft_filter_opts_t *o,
                         const sg_nft_static_t *old, const sg_nft_static_t *cur,
                         char *err, size_t errlen) {
  (void)o;
  if (sg_nft_static_equal(old, cur))
    return 0;
  sg_nft_batch_t *b = sg_nft_batch_new();
  int rc = b ? 0 : -ENOMEM;
  for (int f = 0; f < 2 && !rc; f++) {
    if (!sg_ipset_equal(&old->allow[f], &cur->allow[f]) &&
        !(rc = flush_set(b, allow_set[f], fam_of(f))))
      rc = add_interval_elems(b, allow_set[f], &cur->allow[f]);
    if (!rc && !sg_ipset_equal(&old->deny[f], &cur->deny[f]) &&
        !(rc = flush_set(b, deny_set[f], fam_of(f))))
      rc = add_interval_elems(b, deny_set[f], &cur->deny[f]);
  }
  if (!rc && old->default_allow != cur->default_allow) {
    struct nftnl_rule *flush = sg_nft_rule(SG_NFT_DEFAULT_CHAIN);
    rc = -ENOMEM;
    if (flush) {
      /* A rule message with the chain and no handle: every rule of it. */
      rc = sg_nft_batch_add_rule(b, NFT_MSG_DELRULE, 0, flush);
      nftnl_rule_free(flush);
    }
    if (rc >= 0)
      rc = default_rule(b, cur->default_allow);
    if (rc >= 0)
      rc = add_chain(b, filter_chain(cur->default_allow));
  }
  if (rc < 0) {
    snprintf(err, errlen, "could not build the nftables update (%s)",
             strerror(-rc));
    sg_nft_batch_free(b);
    return rc;
  }
  int where = SG_NFT_BATCH_AT_IO;
  rc = sg_nft_batch_count(b) ? sg_nft_batch_send(b, &where) : 0;
  sg_nft_batch_free(b);
  if (rc < 0) {
    snprintf(
        err, errlen,
        "the kernel refused the nftables update of table inet " SG_NFT_TABLE
        " (%s, at message %d): the previous rules stay",
        strerror(-rc), where);
    return rc;
  }
  return 0;
}
