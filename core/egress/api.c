#include "egress/api.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "http/server.h"
#include "script/trusted.h"
#include "util/log.h"

#define AUTH_HEADER "OPENSANDBOX-EGRESS-AUTH"
#define POLICY_METHODS "GET, POST, PUT, PATCH, DELETE"

struct sg_egress_api {
  sg_egress_api_opts_t o;
  char *token;
  size_t token_len;
  char *enforcement;
  lua_State *L; /* trusted state; sandgate.policyapi at stack index 1 */
  uint64_t writes_ok, writes_failed;
  sg_http_server_t *http;
};

/* Compares a presented token with ours in time that depends only on the
 * length of ours, so the comparison leaks nothing about where they differ. */
static int token_ok(const sg_egress_api_t *a, const char *got, size_t len) {
  unsigned char diff = len != a->token_len;
  for (size_t i = 0; i < a->token_len; i++) {
    unsigned char g = i < len ? (unsigned char)got[i] : 0;
    diff |= g ^ (unsigned char)a->token[i];
  }
  return diff == 0;
}

/* Errors are plain text ending with a newline, as Go's http.Error writes
 * them: OpenSandbox clients compare these bodies. */
static void respond_text(sg_http_reply_t *r, int status, const char *msg,
                         const char *extra_headers) {
  size_t n = strlen(msg);
  char *body = malloc(n + 2);
  if (!body) {
    sg_http_respond(r, 500, "text/plain; charset=utf-8", "out of memory\n", 14,
                    NULL);
    return;
  }
  memcpy(body, msg, n);
  body[n] = '\n';
  sg_http_respond(r, status, "text/plain; charset=utf-8", body, n + 1,
                  extra_headers);
  free(body);
}

/* egress.update_failed, with the request that was refused (the rules
 * concerned), cut at 2 KiB. */
static void log_refused(const sg_http_request_t *req, int status,
                        const char *why) {
  sg_logline_t l;
  sg_log_begin(&l, SG_LOG_WARN, "egress.update_failed");
  sg_log_str(&l, "method", req->method);
  sg_log_int(&l, "status", status);
  sg_log_str(&l, "error", why);
  sg_log_strn(&l, "body", req->body ? req->body : "",
              req->body_len > 2048 ? 2048 : req->body_len);
  sg_log_end(&l);
}

static int method_is(const sg_http_request_t *req, const char *m) {
  return strcmp(req->method, m) == 0;
}

static int path_is(const sg_http_request_t *req, const char *p) {
  size_t n = strlen(p);
  return req->path_len == n && memcmp(req->path, p, n) == 0;
}

/* A /policy request: policyapi.handle(method, document, body, max_rules,
 * enforcement) answers with status, body, and (for a change) the new
 * document, which the plane applies before the client hears "ok". */
static void run_policy(sg_egress_api_t *a, const sg_http_request_t *req,
                       sg_http_reply_t *r) {
  lua_State *L = a->L;
  const char *cur = a->o.current_doc(a->o.ctx);
  lua_getfield(L, 1, "handle");
  lua_pushstring(L, req->method);
  lua_pushstring(L, cur ? cur : "");
  lua_pushlstring(L, req->body ? req->body : "", req->body_len);
  lua_pushnumber(L, (lua_Number)a->o.max_rules);
  lua_pushstring(L, a->enforcement);
  if (lua_pcall(L, 5, 3, 0) != 0) {
    const char *msg = lua_tostring(L, -1);
    sg_log_msg(SG_LOG_ERROR, "api.internal_error", "policyapi.handle: %s",
               msg ? msg : "?");
    respond_text(r, 500, "internal error", NULL);
    lua_settop(L, 1);
    return;
  }
  if (lua_isnil(L, -3)) {
    lua_settop(L, 1);
    respond_text(r, 405, "method not allowed", "Allow: " POLICY_METHODS "\r\n");
    return;
  }
  int status = (int)lua_tointeger(L, -3);
  size_t blen = 0;
  const char *body = lua_tolstring(L, -2, &blen);
  const char *doc = lua_tostring(L, -1);
  if (!body)
    body = "";

  if (doc) {
    char err[1024];
    int rc = a->o.apply_doc(a->o.ctx, doc, err, sizeof(err));
    if (rc == -EINVAL) {
      char msg[1100];
      snprintf(msg, sizeof(msg), "%s%s",
               strncmp(err, "invalid policy: ", 16) == 0 ? ""
                                                         : "invalid policy: ",
               err);
      a->writes_failed++;
      log_refused(req, 400, msg);
      respond_text(r, 400, msg, NULL);
      lua_settop(L, 1);
      return;
    }
    if (rc) {
      a->writes_failed++;
      log_refused(req, 500, err);
      respond_text(r, 500, err, NULL);
      lua_settop(L, 1);
      return;
    }
  }
  if (!method_is(req, "GET")) {
    if (status == 200) {
      a->writes_ok++;
    } else {
      a->writes_failed++;
      log_refused(req, status, body);
    }
  }
  if (status == 200)
    sg_http_respond(r, 200, "application/json", body, blen, NULL);
  else
    respond_text(r, status, body, NULL);
  lua_settop(L, 1);
}

/* GET returns the running script; PUT replaces it (the same rules as a
 * reload: only a script that loads and passes its checks goes live). */
static void on_script(sg_egress_api_t *a, const sg_http_request_t *req,
                      sg_http_reply_t *r) {
  if (method_is(req, "GET")) {
    size_t len = 0;
    const char *src = a->o.current_script(a->o.ctx, &len);
    sg_http_respond(r, 200, "text/x-lua; charset=utf-8", src ? src : "", len,
                    NULL);
  } else if (method_is(req, "PUT")) {
    if (req->body_len == 0) {
      respond_text(r, 400, "empty body", NULL);
      return;
    }
    char err[1024];
    int rc =
        a->o.apply_script(a->o.ctx, req->body, req->body_len, err, sizeof(err));
    if (rc == -EINVAL) {
      char msg[1100];
      snprintf(msg, sizeof(msg), "invalid script: %s", err);
      sg_log_msg(SG_LOG_WARN, "policy.script_refused", "%s", msg);
      respond_text(r, 400, msg, NULL);
    } else if (rc) {
      respond_text(r, 500, err, NULL);
    } else {
      static const char ok[] = "{\"status\":\"ok\"}\n";
      sg_http_respond(r, 200, "application/json", ok, sizeof(ok) - 1, NULL);
    }
  } else {
    respond_text(r, 405, "method not allowed", "Allow: GET, PUT\r\n");
  }
}

/* GET /policy/explain?name=NAME[&qtype=A][&client=IP][&transport=udp]:
 * policyapi.explain_args reads the query string, the plane asks its running
 * VM. */
static void on_explain(sg_egress_api_t *a, const sg_http_request_t *req,
                       sg_http_reply_t *r) {
  if (!method_is(req, "GET")) {
    respond_text(r, 405, "method not allowed", "Allow: GET\r\n");
    return;
  }
  lua_State *L = a->L;
  lua_getfield(L, 1, "explain_args");
  if (req->query)
    lua_pushlstring(L, req->query, req->query_len);
  else
    lua_pushnil(L);
  if (lua_pcall(L, 1, 4, 0) != 0) {
    sg_log_msg(SG_LOG_ERROR, "api.internal_error", "policyapi.explain_args: %s",
               lua_tostring(L, -1));
    respond_text(r, 500, "internal error", NULL);
    lua_settop(L, 1);
    return;
  }
  if (lua_isnil(L, -4)) {
    const char *why = lua_tostring(L, -3);
    respond_text(r, 400, why ? why : "bad query", NULL);
    lua_settop(L, 1);
    return;
  }
  sg_egress_question_t q = {
      .name = lua_tostring(L, -4),
      .qtype = lua_tostring(L, -3),
      .client = lua_tostring(L, -2),
      .transport = lua_tostring(L, -1),
  };
  char *body = NULL, err[600];
  size_t len = 0;
  FILE *f = open_memstream(&body, &len);
  int rc = f ? a->o.explain(a->o.ctx, &q, f, err, sizeof(err)) : -ENOMEM;
  if (f) {
    fputc('\n', f);
    fclose(f);
  }
  lua_settop(L, 1);
  if (rc == 0)
    sg_http_respond(r, 200, "application/json", body, len, NULL);
  else if (rc == -EINVAL)
    respond_text(r, 400, err, NULL);
  else
    respond_text(r, 500, "out of memory", NULL);
  free(body);
}

/* GET /metrics: the plane's counters, then the API's own. */
static void on_metrics(sg_egress_api_t *a, sg_http_reply_t *r) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  if (!f) {
    respond_text(r, 500, "out of memory", NULL);
    return;
  }
  a->o.write_metrics(a->o.ctx, f);
  lua_State *L = a->L;
  lua_getfield(L, 1, "count");
  const char *cur = a->o.current_doc(a->o.ctx);
  lua_pushstring(L, cur ? cur : "");
  long rules = 0;
  if (lua_pcall(L, 1, 1, 0) == 0)
    rules = (long)lua_tointeger(L, -1);
  lua_settop(L, 1);
  fprintf(f,
          "# HELP sandgate_policy_rules Rules in the policy document.\n"
          "# TYPE sandgate_policy_rules gauge\n"
          "sandgate_policy_rules %ld\n"
          "# HELP sandgate_policy_updates_total Policy writes through the "
          "API, by result.\n"
          "# TYPE sandgate_policy_updates_total counter\n"
          "sandgate_policy_updates_total{result=\"ok\"} %llu\n"
          "sandgate_policy_updates_total{result=\"failed\"} %llu\n",
          rules, (unsigned long long)a->writes_ok,
          (unsigned long long)a->writes_failed);
  fclose(f);
  sg_http_respond(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len,
                  NULL);
  free(text);
}

static void on_request(void *ctx, const sg_http_request_t *req,
                       sg_http_reply_t *r) {
  sg_egress_api_t *a = ctx;

  /* Health needs no token: it is what probes ask. The API only starts once
   * the DNS listeners and the interception are up. */
  if (path_is(req, "/healthz")) {
    sg_http_respond(r, 200, "text/plain; charset=utf-8", "ok", 2, NULL);
    return;
  }
  /* Scrapers get the counters without the token: they reveal no policy. */
  if (path_is(req, "/metrics")) {
    on_metrics(a, r);
    return;
  }
  if (a->token_len) {
    size_t len = 0;
    const char *got = sg_http_header(req, AUTH_HEADER, &len);
    if (!got || !token_ok(a, got, len)) {
      respond_text(r, 401, "unauthorized", NULL);
      return;
    }
  }
  if (path_is(req, "/policy/script")) {
    on_script(a, req, r);
    return;
  }
  if (path_is(req, "/policy/explain")) {
    on_explain(a, req, r);
    return;
  }
  if (!path_is(req, "/policy")) {
    respond_text(r, 404, "404 page not found", NULL);
    return;
  }

  run_policy(a, req, r);
}

static void api_free(sg_egress_api_t *a) {
  if (a->L)
    lua_close(a->L);
  free(a->token);
  free(a->enforcement);
  free(a);
}

int sg_egress_api_start(uv_loop_t *loop, const sg_egress_api_opts_t *o,
                        sg_egress_api_t **out, char *err, size_t errlen) {
  sg_egress_api_t *a = calloc(1, sizeof(*a));
  if (!a)
    return -ENOMEM;
  a->o = *o;
  if (o->token && *o->token) {
    a->token = strdup(o->token);
    a->token_len = strlen(o->token);
  }
  a->enforcement = strdup(o->enforcement ? o->enforcement : "dns");

  /* The API's own Lua state: trusted code only (no user script runs here). */
  int rc =
      sg_trusted_open(o->data_dir, "sandgate.policyapi", &a->L, err, errlen);
  if (rc) {
    api_free(a);
    return rc;
  }

  sg_http_server_opts_t ho = {
      .listen = o->listen,
      .max_body = 1u << 20,
      .handler = on_request,
      .ctx = a,
  };
  rc = sg_http_server_start(loop, &ho, &a->http, err, errlen);
  if (rc) {
    api_free(a);
    return rc;
  }
  *out = a;
  return 0;
}

void sg_egress_api_close(sg_egress_api_t *a) {
  if (!a)
    return;
  sg_http_server_close(a->http);
  api_free(a);
}
