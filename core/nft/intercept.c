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
#include <libnftnl/table.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netlink.h>

#include "nft/batch.h"

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

static struct nftnl_table *new_table(void) {
  struct nftnl_table *t = nftnl_table_alloc();
  if (!t)
    return NULL;
  nftnl_table_set_u32(t, NFTNL_TABLE_FAMILY, NFPROTO_INET);
  if (nftnl_table_set_str(t, NFTNL_TABLE_NAME, SG_NFT_TABLE) < 0) {
    nftnl_table_free(t);
    return NULL;
  }
  return t;
}

static struct nftnl_chain *new_chain(void) {
  struct nftnl_chain *c = nftnl_chain_alloc();
  if (!c)
    return NULL;
  nftnl_chain_set_u32(c, NFTNL_CHAIN_FAMILY, NFPROTO_INET);
  nftnl_chain_set_u32(c, NFTNL_CHAIN_HOOKNUM, NF_INET_LOCAL_OUT);
  nftnl_chain_set_s32(c, NFTNL_CHAIN_PRIO, CHAIN_PRIORITY);
  if (nftnl_chain_set_str(c, NFTNL_CHAIN_TABLE, SG_NFT_TABLE) < 0 ||
      nftnl_chain_set_str(c, NFTNL_CHAIN_NAME, SG_NFT_INTERCEPT_CHAIN) < 0 ||
      nftnl_chain_set_str(c, NFTNL_CHAIN_TYPE, "nat") < 0) {
    nftnl_chain_free(c);
    return NULL;
  }
  return c;
}

/* Rule building: each add_* appends one expression to r and returns false
 * when out of memory; the rule owns the expressions it was given. */

static struct nftnl_expr *new_expr(struct nftnl_rule *r, const char *name) {
  struct nftnl_expr *e = nftnl_expr_alloc(name);
  if (e)
    nftnl_rule_add_expr(r, e);
  return e;
}

/* reg1 = meta <key> */
static bool add_meta(struct nftnl_rule *r, uint32_t key) {
  struct nftnl_expr *e = new_expr(r, "meta");
  if (!e)
    return false;
  nftnl_expr_set_u32(e, NFTNL_EXPR_META_KEY, key);
  nftnl_expr_set_u32(e, NFTNL_EXPR_META_DREG, NFT_REG_1);
  return true;
}

/* reg1 = <len> bytes of the transport header at <offset> */
static bool add_transport_payload(struct nftnl_rule *r, uint32_t offset,
                                  uint32_t len) {
  struct nftnl_expr *e = new_expr(r, "payload");
  if (!e)
    return false;
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_BASE, NFT_PAYLOAD_TRANSPORT_HEADER);
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_OFFSET, offset);
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_LEN, len);
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_DREG, NFT_REG_1);
  return true;
}

/* stop the rule unless reg1 == data */
static bool add_cmp_eq(struct nftnl_rule *r, const void *data, uint32_t len) {
  struct nftnl_expr *e = new_expr(r, "cmp");
  if (!e)
    return false;
  nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_SREG, NFT_REG_1);
  nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_OP, NFT_CMP_EQ);
  return nftnl_expr_set(e, NFTNL_EXPR_CMP_DATA, data, len) == 0;
}

static struct nftnl_rule *new_rule(void) {
  struct nftnl_rule *r = nftnl_rule_alloc();
  if (!r)
    return NULL;
  nftnl_rule_set_u32(r, NFTNL_RULE_FAMILY, NFPROTO_INET);
  if (nftnl_rule_set_str(r, NFTNL_RULE_TABLE, SG_NFT_TABLE) < 0 ||
      nftnl_rule_set_str(r, NFTNL_RULE_CHAIN, SG_NFT_INTERCEPT_CHAIN) < 0) {
    nftnl_rule_free(r);
    return NULL;
  }
  return r;
}

/* meta mark <mark> return: the proxy marks its own upstream queries, which
 * go to port 53 too and must not come back to it. */
static struct nftnl_rule *bypass_rule(uint32_t mark) {
  struct nftnl_rule *r = new_rule();
  if (!r)
    return NULL;
  struct nftnl_expr *verdict;
  /* The mark is compared in host byte order, as the kernel keeps it. */
  if (!add_meta(r, NFT_META_MARK) || !add_cmp_eq(r, &mark, sizeof(mark)) ||
      !(verdict = new_expr(r, "immediate"))) {
    nftnl_rule_free(r);
    return NULL;
  }
  nftnl_expr_set_u32(verdict, NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT);
  nftnl_expr_set_u32(verdict, NFTNL_EXPR_IMM_VERDICT, (uint32_t)NFT_RETURN);
  return r;
}

/* meta l4proto <proto> th dport 53 redirect to :<port>. Both UDP and TCP
 * keep the destination port at offset 2 of their header. */
static struct nftnl_rule *redirect_rule(uint8_t l4proto, uint16_t port) {
  struct nftnl_rule *r = new_rule();
  if (!r)
    return NULL;
  uint16_t dport_be = htons(DNS_PORT);
  uint16_t port_be = htons(port);
  struct nftnl_expr *imm = NULL, *redir = NULL;
  bool ok = add_meta(r, NFT_META_L4PROTO) &&
            add_cmp_eq(r, &l4proto, sizeof(l4proto)) &&
            add_transport_payload(r, 2, 2) &&
            add_cmp_eq(r, &dport_be, sizeof(dport_be)) &&
            (imm = new_expr(r, "immediate")) != NULL &&
            nftnl_expr_set(imm, NFTNL_EXPR_IMM_DATA, &port_be,
                           sizeof(port_be)) == 0 &&
            (redir = new_expr(r, "redir")) != NULL;
  if (!ok) {
    nftnl_rule_free(r);
    return NULL;
  }
  /* The port goes through a register: redir takes its range from there, in
   * network byte order. */
  nftnl_expr_set_u32(imm, NFTNL_EXPR_IMM_DREG, NFT_REG_1);
  nftnl_expr_set_u32(redir, NFTNL_EXPR_REDIR_REG_PROTO_MIN, NFT_REG_1);
  return r;
}

/* Where each part of the install batch sits, to name what the kernel
 * refused. */
typedef struct {
  int last_table; /* messages 0..last_table are the table ones */
  int chain;
  int first_rule;
} layout_t;

/* Fills b with the whole replace transaction and notes where each part
 * sits. */
static int fill_install_batch(sg_nft_batch_t *b, const struct nftnl_table *t,
                              const struct nftnl_chain *c,
                              struct nftnl_rule *rules[3], layout_t *l) {
  /* add + delete + add: the delete needs the table to exist, and wipes
   * whatever a previous run left in it (chains, rules, sets), all in the
   * same transaction as the new contents, so no packet ever sees a
   * half-built table. */
  int rc = sg_nft_batch_add_table(b, NFT_MSG_NEWTABLE, NLM_F_CREATE, t);
  if (rc >= 0)
    rc = sg_nft_batch_add_table(b, NFT_MSG_DELTABLE, 0, t);
  if (rc >= 0)
    rc = sg_nft_batch_add_table(b, NFT_MSG_NEWTABLE, NLM_F_CREATE, t);
  if (rc < 0)
    return rc;
  l->last_table = rc;

  rc = sg_nft_batch_add_chain(b, NFT_MSG_NEWCHAIN, NLM_F_CREATE, c);
  if (rc < 0)
    return rc;
  l->chain = rc;
  l->first_rule = rc + 1;

  for (int i = 0; i < 3; i++) {
    rc = sg_nft_batch_add_rule(b, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND,
                               rules[i]);
    if (rc < 0)
      return rc;
  }
  return 0;
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
  if (!opts || opts->redirect_port == 0) {
    set_err(err, errlen, "DNS interception needs a redirect port");
    return -EINVAL;
  }

  struct nftnl_table *table = new_table();
  struct nftnl_chain *chain = new_chain();
  struct nftnl_rule *rules[3] = {
      bypass_rule(opts->bypass_mark),
      redirect_rule(IPPROTO_UDP, opts->redirect_port),
      redirect_rule(IPPROTO_TCP, opts->redirect_port),
  };
  sg_nft_batch_t *b = sg_nft_batch_new();
  int rc = -ENOMEM, where = SG_NFT_BATCH_AT_IO;
  layout_t l = {0};
  if (!table || !chain || !rules[0] || !rules[1] || !rules[2] || !b)
    goto build_failed;
  rc = fill_install_batch(b, table, chain, rules, &l);
  if (rc < 0)
    goto build_failed;

  rc = sg_nft_batch_send(b, &where);
  if (rc < 0)
    describe_install_error(rc, where, &l, err, errlen);
  else
    rc = 0;
  goto out;

build_failed:
  set_err(err, errlen,
          "could not build the DNS interception batch (%s)" NO_INTERCEPT_HINT,
          strerror(-rc));
out:
  sg_nft_batch_free(b);
  for (int i = 0; i < 3; i++)
    if (rules[i])
      nftnl_rule_free(rules[i]);
  if (chain)
    nftnl_chain_free(chain);
  if (table)
    nftnl_table_free(table);
  return rc;
}

int sg_nft_intercept_remove(char *err, size_t errlen) {
  set_err(err, errlen, "%s", "");
  struct nftnl_table *table = new_table();
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
