/* See intercept.h. The objects are built with libnftnl and sent in one
 * nf_tables transaction through nft/batch.h; the expressions are the ones
 * `nft` itself generates for the rules quoted in intercept.h (check with
 * `nft --debug=netlink add rule ...`). */
#include "nft/intercept.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <libnftnl/chain.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netlink.h>

#include "nft/batch.h"
#include "nft/build.h"

/* Priority of the chain: NF_IP_PRI_NAT_DST, where nft's `dstnat` is, so the
 * redirect happens where a destination NAT on output is expected. */
#define CHAIN_PRIORITY (-100)
#define DNS_PORT 53

/* Appended to every install failure: the start fails with the message, and
 * this is the way out. */
#define NO_INTERCEPT_HINT                                                      \
  "; `--no-intercept` runs the DNS proxy without interception"

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || errlen == 0)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* Where each part of the install batch sits, to name what the kernel
 * refused. */
typedef struct {
  int last_table; /* messages 0..last_table are the table ones */
  int chain;
  int first_rule;
  int first_filter; /* -1: no filter */
} layout_t;

static int add_rule(sg_nft_batch_t *b, struct nftnl_rule *r, bool ok) {
  int rc = -ENOMEM;
  if (r && ok)
    rc = sg_nft_batch_add_rule(b, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND,
                               r);
  if (r)
    nftnl_rule_free(r);
  return rc < 0 ? rc : 0;
}

/* meta l4proto <proto> th dport 53 redirect to :<port> */
static int redirect_rule(sg_nft_batch_t *b, uint8_t proto, uint16_t port) {
  struct nftnl_rule *r = sg_nft_rule(SG_NFT_INTERCEPT_CHAIN);
  return add_rule(b, r,
                  r && sg_nft_match_l4proto(r, proto) &&
                      sg_nft_match_dport(r, DNS_PORT) &&
                      sg_nft_redirect(r, port));
}

static int has_exempt(const sg_nft_intercept_opts_t *o, int f) {
  return o->exempt && o->exempt[f].n > 0;
}

/* The exempt nameserver sets (plain address sets, created in the batch
 * with ids 1 and 2) and their elements. */
static int add_exempt_sets(sg_nft_batch_t *b, const sg_nft_intercept_opts_t *o,
                           uint32_t ids[2]) {
  for (int f = 0; f < 2; f++) {
    ids[f] = (uint32_t)f + 1;
    if (!has_exempt(o, f))
      continue;
    int fam = f ? 6 : 4;
    struct nftnl_set *s = sg_nft_set(sg_nft_exempt_set[f], fam, 0, 0, ids[f]);
    int rc =
        s ? sg_nft_batch_add_set(b, NFT_MSG_NEWSET, NLM_F_CREATE, s) : -ENOMEM;
    if (s)
      nftnl_set_free(s);
    if (rc < 0)
      return rc;
    s = sg_nft_set_ref(sg_nft_exempt_set[f], fam);
    rc = -ENOMEM;
    /* Exempt lists are a handful of resolvers: one message. */
    if (s) {
      uint8_t key[16];
      bool ok = true;
      for (size_t i = 0; i < o->exempt[f].n && ok; i++)
        for (sg_u128 v = o->exempt[f].r[i].lo; ok; v++) {
          sg_addr_bytes(fam, v, key);
          ok = sg_nft_add_addr_elem(s, fam, key, 0);
          if (v == o->exempt[f].r[i].hi)
            break;
        }
      if (ok)
        rc = sg_nft_batch_add_setelems(b, NFT_MSG_NEWSETELEM, NLM_F_CREATE, s);
    }
    if (s)
      nftnl_set_free(s);
    if (rc < 0)
      return rc;
  }
  return 0;
}

/* Fills b with the whole replace transaction and notes where each part
 * sits. */
static int fill_install_batch(sg_nft_batch_t *b,
                              const sg_nft_intercept_opts_t *o, layout_t *l) {
  struct nftnl_table *t = sg_nft_table();
  if (!t)
    return -ENOMEM;
  /* add + delete + add: the delete needs the table to exist, and wipes
   * whatever a previous run left in it (chains, rules, sets), all in the
   * same transaction as the new contents, so no packet ever sees a
   * half-built table. */
  int rc = sg_nft_batch_add_table(b, NFT_MSG_NEWTABLE, NLM_F_CREATE, t);
  if (rc >= 0)
    rc = sg_nft_batch_add_table(b, NFT_MSG_DELTABLE, 0, t);
  if (rc >= 0)
    rc = sg_nft_batch_add_table(b, NFT_MSG_NEWTABLE, NLM_F_CREATE, t);
  nftnl_table_free(t);
  if (rc < 0)
    return rc;
  l->last_table = rc;

  uint32_t exempt_ids[2];
  if ((rc = add_exempt_sets(b, o, exempt_ids)) < 0)
    return rc;

  struct nftnl_chain *c = sg_nft_base_chain(
      SG_NFT_INTERCEPT_CHAIN, "nat", NF_INET_LOCAL_OUT, CHAIN_PRIORITY, -1);
  if (!c)
    return -ENOMEM;
  rc = sg_nft_batch_add_chain(b, NFT_MSG_NEWCHAIN, NLM_F_CREATE, c);
  nftnl_chain_free(c);
  if (rc < 0)
    return rc;
  l->chain = rc;
  l->first_rule = rc + 1;

  struct nftnl_rule *r = sg_nft_rule(SG_NFT_INTERCEPT_CHAIN);
  if ((rc = add_rule(b, r,
                     r && sg_nft_match_mark(r, o->bypass_mark) &&
                         sg_nft_verdict(r, NFT_RETURN, NULL))))
    return rc;
  for (int f = 0; f < 2; f++) {
    if (!has_exempt(o, f))
      continue;
    r = sg_nft_rule(SG_NFT_INTERCEPT_CHAIN);
    if ((rc = add_rule(b, r,
                       r && sg_nft_match_nfproto(r, f ? 6 : 4) &&
                           sg_nft_match_daddr_set(r, f ? 6 : 4,
                                                  sg_nft_exempt_set[f],
                                                  exempt_ids[f]) &&
                           sg_nft_match_skuid(r, o->exempt_uid) &&
                           sg_nft_verdict(r, NFT_RETURN, NULL))))
      return rc;
  }
  if ((rc = redirect_rule(b, IPPROTO_UDP, o->redirect_port)) ||
      (rc = redirect_rule(b, IPPROTO_TCP, o->redirect_port)))
    return rc;

  l->first_filter = -1;
  if (o->filter) {
    l->first_filter = sg_nft_batch_count(b);
    sg_nft_filter_opts_t fo = *o->filter;
    fo.bypass_mark = o->bypass_mark;
    fo.exempt_uid = o->exempt_uid;
    fo.exempt[0] = has_exempt(o, 0);
    fo.exempt[1] = has_exempt(o, 1);
    uint32_t next_id = 3;
    rc = sg_nft_filter_fill(b, &fo, o->statics, exempt_ids, &next_id);
  }
  return rc;
}

static void describe_install_error(int rc, int where, const layout_t *l,
                                   char *err, size_t errlen) {
  const char *why = strerror(-rc);
  if (rc == -EPERM || rc == -EACCES) {
    set_err(err, errlen,
            "installing the DNS interception needs CAP_NET_ADMIN in this "
            "network namespace (%s)" NO_INTERCEPT_HINT,
            why);
  } else if (where == SG_NFT_BATCH_AT_SOCKET) {
    set_err(err, errlen,
            "nf_tables netlink is not available (%s): the kernel has no "
            "NETLINK_NETFILTER socket" NO_INTERCEPT_HINT,
            why);
  } else if ((where == SG_NFT_BATCH_AT_FRAME && rc == -EOPNOTSUPP) ||
             (where >= 0 && where <= l->last_table)) {
    set_err(err, errlen,
            "nf_tables is not available in this kernel (%s)" NO_INTERCEPT_HINT,
            why);
  } else if (where == l->chain) {
    set_err(err, errlen,
            "the kernel has no nat output hook for nf_tables "
            "(%s)" NO_INTERCEPT_HINT,
            why);
  } else if (l->first_filter >= 0 && where >= l->first_filter) {
    set_err(err, errlen,
            "the kernel refused the dns+nft filter (%s): nf_tables sets "
            "with intervals and timeouts, the reject expression and conntrack "
            "matching are needed; OPENSANDBOX_EGRESS_MODE=dns runs without the "
            "filter",
            why);
  } else if (where >= l->first_rule) {
    set_err(err, errlen,
            "the kernel refused the DNS redirect rule (%s): the nft "
            "redirect/nat expressions may be missing" NO_INTERCEPT_HINT,
            why);
  } else if (where == SG_NFT_BATCH_AT_FRAME) {
    set_err(err, errlen,
            "nf_tables refused the DNS interception transaction "
            "(%s)" NO_INTERCEPT_HINT,
            why);
  } else {
    set_err(
        err, errlen,
        "nf_tables did not confirm the DNS interception (%s)" NO_INTERCEPT_HINT,
        why);
  }
}

int sg_nft_intercept_install(const sg_nft_intercept_opts_t *opts, char *err,
                             size_t errlen) {
  set_err(err, errlen, "%s", "");
  if (!opts || opts->redirect_port == 0 || (opts->filter && !opts->statics)) {
    set_err(err, errlen, "DNS interception needs a redirect port");
    return -EINVAL;
  }
  sg_nft_batch_t *b = sg_nft_batch_new();
  int rc = -ENOMEM, where = SG_NFT_BATCH_AT_IO;
  layout_t l = {.first_filter = -1};
  if (!b || (rc = fill_install_batch(b, opts, &l)) < 0) {
    set_err(err, errlen,
            "could not build the DNS interception batch (%s)" NO_INTERCEPT_HINT,
            strerror(-rc));
    sg_nft_batch_free(b);
    return rc;
  }
  rc = sg_nft_batch_send(b, &where);
  sg_nft_batch_free(b);
  if (rc < 0) {
    describe_install_error(rc, where, &l, err, errlen);
    return rc;
  }
  return 0;
}

int sg_nft_intercept_remove(char *err, size_t errlen) {
  set_err(err, errlen, "%s", "");
  struct nftnl_table *table = sg_nft_table();
  sg_nft_batch_t *b = sg_nft_batch_new();
  int rc = -ENOMEM, where = SG_NFT_BATCH_AT_IO;
  if (!table || !b ||
      (rc = sg_nft_batch_add_table(b, NFT_MSG_DELTABLE, 0, table)) < 0) {
    set_err(err, errlen,
            "could not build the batch removing the DNS interception (%s)",
            strerror(-rc));
    goto out;
  }
  rc = sg_nft_batch_send(b, &where);
  if (rc >= 0)
    goto out;

  /* Nothing to remove: no such table, or no nf_tables at all. */
  if ((rc == -ENOENT && where == 0) ||
      (where == SG_NFT_BATCH_AT_SOCKET && rc == -EPROTONOSUPPORT) ||
      (where == SG_NFT_BATCH_AT_FRAME && rc == -EOPNOTSUPP)) {
    rc = 0;
  } else if (rc == -EPERM || rc == -EACCES) {
    set_err(err, errlen,
            "removing the nf_tables table inet " SG_NFT_TABLE
            " needs CAP_NET_ADMIN in this network namespace (%s)",
            strerror(-rc));
  } else {
    set_err(err, errlen,
            "removing the nf_tables table inet " SG_NFT_TABLE " failed (%s)",
            strerror(-rc));
  }

out:
  if (rc > 0)
    rc = 0;
  sg_nft_batch_free(b);
  if (table)
    nftnl_table_free(table);
  return rc;
}
