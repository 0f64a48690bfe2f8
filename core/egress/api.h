/* The egress policy API (OpenSandbox-compatible, on :18080): health, auth,
 * /policy reads and writes, and /policy/explain. The semantics of every write
 * (PATCH merge, DELETE, limits, the JSON shapes) live in
 * lua/sandgate/policyapi.lua and run in a trusted Lua state of their own; this
 * file routes requests, checks the token, and hands a new document to the
 * plane, which builds a policy VM with it, persists it and swaps it in, or
 * refuses it whole. */
#ifndef SG_EGRESS_API_H
#define SG_EGRESS_API_H

#include <stddef.h>
#include <stdio.h>
#include <sys/socket.h>
#include <uv.h>

#include "egress/explain.h"

typedef struct sg_egress_api sg_egress_api_t;

typedef struct {
  /* The current policy document (JSON text; NULL means deny-all). */
  const char *(*current_doc)(void *ctx);
  /* Applies a new document: build a VM with it, persist, swap. Returns 0,
   * -EINVAL when the policy script refused the document (err says why), or
   * another negative errno when it could not be persisted (err says why).
   * On any failure nothing changed. */
  int (*apply_doc)(void *ctx, const char *doc, char *err, size_t errlen);
  /* Writes the plane's metrics (Prometheus text) for GET /metrics. */
  void (*write_metrics)(void *ctx, FILE *f);
  /* The running policy script's source. */
  const char *(*current_script)(void *ctx, size_t *len);
  /* Replaces the script: -EINVAL when it does not load or pass its checks
   * with the current document (err has the Lua error with its line), another
   * negative errno when it could not be persisted. Nothing changes then. */
  int (*apply_script)(void *ctx, const char *src, size_t len, char *err,
                      size_t errlen);
  /* GET /policy/explain: writes what the running policy decides for q (see
   * egress/explain.h); -EINVAL with err for a bad question. */
  int (*explain)(void *ctx, const sg_egress_question_t *q, FILE *f, char *err,
                 size_t errlen);
  void *ctx;
  struct sockaddr_storage listen;
  const char *data_dir;    /* where lua/ is */
  const char *token;       /* NULL or "": no auth */
  const char *enforcement; /* "dns" or "dns+nft" */
  long max_rules;          /* 0 = unlimited */
} sg_egress_api_opts_t;

int sg_egress_api_start(uv_loop_t *loop, const sg_egress_api_opts_t *opts,
                        sg_egress_api_t **out, char *err, size_t errlen);
void sg_egress_api_close(sg_egress_api_t *api);

#endif
