/* `sandgate portproxy`: OpenSandbox execd's in-sandbox port proxy.
 * `/proxy/<port>/<rest>?<query>` goes to 127.0.0.1:<port>/<rest>?<query>,
 * so one published port reaches every port of the sandbox: HTTP, SSE and
 * WebSocket through the same proxy engine as the gateway (core/proxy). */
#include "portproxy/portproxy.h"
#include "util/env.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#include "proxy/proxy.h"
#include "util/log.h"
#include "util/sockaddr.h"

#define TOKEN_HEADER "X-EXECD-ACCESS-TOKEN"
#define DRAIN_DEADLINE_MS 10000

/* clang-format off */
static const char usage[] =
    "usage: sandgate portproxy [flags]\n"
    "\n"
    "The in-sandbox port proxy (OpenSandbox execd's /proxy/{port}): forwards\n"
    "/proxy/<port>/<rest>?<query> to 127.0.0.1:<port>/<rest>?<query>, HTTP, SSE\n"
    "and WebSocket alike.\n"
    "\n"
    "flags (each wins over its environment variable):\n"
    "  --port N          SANDGATE_PORTPROXY_PORT: listener port (44772)\n"
    "  --listen ADDR     SANDGATE_PORTPROXY_LISTEN: listener address (0.0.0.0)\n"
    "  --token TOKEN     EXECD_ACCESS_TOKEN: required X-EXECD-ACCESS-TOKEN value\n"
    "  --log-level LEVEL SANDGATE_LOG_LEVEL: debug, info, warn, error (info)\n";
/* clang-format on */

typedef struct {
  uv_loop_t *loop;
  sg_proxy_t *proxy;
  char *token;
  size_t token_len;
  uv_signal_t sigterm, sigint;
} portproxy_t;

/* Constant-time comparison of a presented token with ours. */
static int token_ok(const portproxy_t *pp, const char *v, size_t n) {
  unsigned char diff = (unsigned char)(n != pp->token_len);
  for (size_t i = 0; i < pp->token_len; i++)
    diff |= (unsigned char)(pp->token[i] ^ (i < n ? v[i] : 0));
  return diff == 0;
}

static void route(void *ctx, const sg_proxy_request_t *req,
                  sg_proxy_route_t *out) {
  portproxy_t *pp = ctx;
  if (pp->token) {
    const sg_proxy_header_t *tok = NULL;
    for (size_t i = 0; i < req->nheaders; i++)
      if (req->headers[i].name_len == strlen(TOKEN_HEADER) &&
          strncasecmp(req->headers[i].name, TOKEN_HEADER,
                      req->headers[i].name_len) == 0)
        tok = &req->headers[i];
    if (!tok || !tok->value_len || !token_ok(pp, tok->value, tok->value_len)) {
      out->status = 401;
      snprintf(out->content_type, sizeof(out->content_type),
               "application/json; charset=utf-8");
      snprintf(out->message, sizeof(out->message),
               "{\"error\":\"Unauthorized: invalid or missing header "
               "%s\"}",
               TOKEN_HEADER);
      return;
    }
  }
  const char *t = req->target;
  size_t n = req->target_len;
  if (n < 7 || memcmp(t, "/proxy/", 7) != 0) {
    out->status = 404;
    snprintf(out->message, sizeof(out->message), "404 page not found");
    return;
  }
  /* /proxy/<port>[/<rest>][?query] */
  const char *p = t + 7, *end = t + n;
  const char *q = memchr(p, '?', (size_t)(end - p));
  const char *path_end = q ? q : end;
  const char *slash = memchr(p, '/', (size_t)(path_end - p));
  const char *port_end = slash ? slash : path_end;
  size_t plen = (size_t)(port_end - p);
  if (plen == 0) {
    out->status = 400;
    snprintf(out->message, sizeof(out->message), "port is required");
    return;
  }
  unsigned long port = 0;
  int digits = 1;
  for (size_t i = 0; i < plen; i++) {
    if (p[i] < '0' || p[i] > '9') {
      digits = 0;
      break;
    }
    port = port * 10 + (unsigned long)(p[i] - '0');
    if (port > 65535)
      break;
  }
  if (!digits || port < 1 || port > 65535 || (plen > 1 && p[0] == '0')) {
    out->status = 400;
    snprintf(out->message, sizeof(out->message),
             "invalid port \"%.*s\": expected a number from 1 to 65535",
             (int)(plen > 64 ? 64 : plen), p);
    return;
  }
  /* The rest of the path (or "/") and the query, bytes as received. */
  size_t rest = (size_t)(end - port_end);
  if (rest + 2 > sizeof(out->path)) {
    out->status = 400;
    snprintf(out->message, sizeof(out->message), "request target too long");
    return;
  }
  if (slash)
    memcpy(out->path, port_end, rest);
  else {
    out->path[0] = '/';
    memcpy(out->path + 1, port_end, rest);
    rest++;
  }
  out->path[rest] = 0;
  snprintf(out->host, sizeof(out->host), "127.0.0.1");
  out->port = (uint16_t)port;
  out->nset = 1;
  snprintf(out->set_name[0], sizeof(out->set_name[0]), "X-Forwarded-Prefix");
  snprintf(out->set_value[0], sizeof(out->set_value[0]), "/proxy/%lu", port);
  out->nremove = 1;
  snprintf(out->remove[0], sizeof(out->remove[0]), "x-execd-access-token");
  out->status = 0;
}

static void on_drained(void *arg) {
  portproxy_t *pp = arg;
  pp->proxy = NULL;
}

static void on_signal(uv_signal_t *h, int signum) {
  portproxy_t *pp = h->data;
  sg_log_msg(SG_LOG_INFO, "portproxy.stopping", "%s: draining",
             signum == SIGTERM ? "SIGTERM" : "SIGINT");
  uv_close((uv_handle_t *)&pp->sigterm, NULL);
  uv_close((uv_handle_t *)&pp->sigint, NULL);
  sg_proxy_drain(pp->proxy, DRAIN_DEADLINE_MS, on_drained, pp);
}

int sg_portproxy_main(int argc, char **argv) {
  static const struct option opts[] = {
      {"port", required_argument, NULL, 'p'},
      {"listen", required_argument, NULL, 'l'},
      {"token", required_argument, NULL, 't'},
      {"log-level", required_argument, NULL, 'L'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *port = sg_env("SANDGATE_PORTPROXY_PORT");
  const char *listen = sg_env("SANDGATE_PORTPROXY_LISTEN");
  const char *token = sg_env("EXECD_ACCESS_TOKEN");
  const char *level = sg_env("SANDGATE_LOG_LEVEL");
  optind = 1;
  opterr = 0;
  int opt;
  while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (opt) {
    case 'p': port = optarg; break;
    case 'l': listen = optarg; break;
    case 't': token = optarg; break;
    case 'L': level = optarg; break;
    case 'h': fputs(usage, stdout); return 0;
    default:
      fprintf(stderr,
              "sandgate portproxy: unknown flag or missing value near \"%s\" "
              "(see --help)\n",
              argv[optind - 1]);
      return 2;
    }
  }
  unsigned long pn = 44772;
  if (port) {
    char *e;
    pn = strtoul(port, &e, 10);
    if (*e || e == port || pn < 1 || pn > 65535) {
      fprintf(stderr, "sandgate portproxy: --port: \"%s\" is not a port\n",
              port);
      return 2;
    }
  }
  if (level) {
    int lv = sg_log_parse_level(level);
    if (lv < 0) {
      fprintf(stderr, "sandgate portproxy: \"%s\" is not a log level\n", level);
      return 2;
    }
    sg_log_set_level((sg_log_level_t)lv);
  }
  portproxy_t pp;
  memset(&pp, 0, sizeof(pp));
  if (token) {
    pp.token = strdup(token);
    pp.token_len = strlen(token);
  }
  char err[512];
  sg_proxy_opts_t po = {
      .route = route,
      .route_ctx = &pp,
      .plain_errors = 1,
      .header_timeout_ms = 10000,
      .connect_timeout_ms = 5000,
      .first_byte_timeout_ms = 600000,
      .idle_timeout_ms = 600000,
      .keepalive_ms = 60000,
      .pool_idle_ms = 30000,
      .pool_max_per_backend = 16,
  };
  if (sg_sockaddr_parse(listen ? listen : "0.0.0.0", (uint16_t)pn, &po.listen,
                        err, sizeof(err))) {
    fprintf(stderr, "sandgate portproxy: --listen: %s\n", err);
    free(pp.token);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  pp.loop = uv_default_loop();
  if (sg_proxy_start(pp.loop, &po, &pp.proxy, err, sizeof(err))) {
    sg_log_msg(SG_LOG_ERROR, "portproxy.start_failed", "%s", err);
    fprintf(stderr, "sandgate portproxy: %s\n", err);
    free(pp.token);
    return 1;
  }
  uv_signal_init(pp.loop, &pp.sigterm);
  uv_signal_init(pp.loop, &pp.sigint);
  pp.sigterm.data = pp.sigint.data = &pp;
  uv_signal_start(&pp.sigterm, on_signal, SIGTERM);
  uv_signal_start(&pp.sigint, on_signal, SIGINT);
  {
    char a[SG_ADDRSTR_MAX];
    sg_logline_t l;
    sg_log_begin(&l, SG_LOG_INFO, "portproxy.started");
    sg_log_str(&l, "listen",
               sg_sockaddr_str((struct sockaddr *)&po.listen, a, sizeof(a)));
    sg_log_bool(&l, "token", pp.token != NULL);
    sg_log_end(&l);
  }
  uv_run(pp.loop, UV_RUN_DEFAULT);
  uv_loop_close(pp.loop);
  free(pp.token);
  sg_log_msg(SG_LOG_INFO, "portproxy.stopped", "drained");
  return 0;
}
