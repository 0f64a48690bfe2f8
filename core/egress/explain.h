/* What the egress policy decides for a query, and why, as JSON: for the
 * policy API's GET /policy/explain and for `sandgate test`. The question is
 * put to the VM exactly as the DNS proxy puts a real query (the name goes
 * through the same wire parser, the same entry answers, and a script error
 * denies), so an explanation is the proxy's own answer. */
#ifndef SG_EGRESS_EXPLAIN_H
#define SG_EGRESS_EXPLAIN_H

#include <stddef.h>
#include <stdio.h>

#include "script/vm.h"

typedef struct {
  const char *name;      /* as people write it: any case, a trailing dot,
                            \DDD escapes ("." or "" is the root) */
  const char *qtype;     /* "A" when NULL; "AAAA", "https", "TYPE65", ... */
  const char *client;    /* the client's IP; "127.0.0.1" when NULL */
  const char *transport; /* "udp" (when NULL) or "tcp" */
} sg_egress_question_t;

/* Writes the explanation, one JSON object without a newline, to f:
 *   name, qtype, client, transport   the question as the script sees it
 *   verdict                          "allow" or "deny"
 *   rcode                            a deny's answer: "NXDOMAIN", "NOERROR"
 *                                    (no records), "REFUSED", "SERVFAIL"
 *   source                           "policy", "allow.always", "deny.always"
 *   rule                             the reference the dns.query log line
 *                                    shows ("egress[0] allow *.pypi.org",
 *                                    "default", "deny.always:3 x", ...), or
 *                                    null when the script named none
 *   index, action, target            when a rule of a list decided (the
 *                                    policy's rules or an always-list)
 *   default                          true when the policy's default applied
 *   log_skip                         true for an allowed query that is not
 *                                    logged (log_skip.always)
 *   error                            the script failed: the query is denied
 * Returns 0, or -EINVAL with err naming the bad part of the question (a name
 * that is no DNS name, an unknown type, a client that is no IP address, a
 * transport other than udp or tcp); nothing is written then. */
int sg_egress_explain(sg_vm_t *vm, const sg_egress_question_t *q, FILE *f,
                      char *err, size_t errlen);

#endif
