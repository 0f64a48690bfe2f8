/* `sandgate ingress`: the Lua-routed HTTP/SSE/WebSocket gateway. The
 * proxying is core/proxy; this file is configuration, the routing VM (built
 * off to the side and swapped on reload), the admin API and the process
 * lifecycle. */
#include "ingress/ingress.h"
#include "util/env.h"

#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <uv.h>

#include <lua.h>

#include "http/server.h"
#include "ingress/routing.h"
#include "nft/ipset.h"
#include "proxy/proxy.h"
#include "script/trusted.h"
#include "script/vm.h"
#include "util/file.h"
#include "util/json.h"
#include "util/log.h"
#include "util/sockaddr.h"

#define RELOAD_DEBOUNCE_MS 100
#define DRAIN_DEADLINE_MS 10000

/* clang-format off */
static const char usage[] =
    "usage: sandgate ingress [flags]\n"
    "\n"
    "A stable URL for every sandbox port: routes each HTTP, SSE or WebSocket\n"
    "request to a sandbox by a Lua routing script (OpenSandbox's header or URI\n"
    "mode, or your own).\n"
    "\n"
    "flags (each wins over its environment variable):\n"
    "  --port N               SANDGATE_INGRESS_PORT: listener port (28888)\n"
    "  --listen ADDR          SANDGATE_INGRESS_LISTEN: listener address (0.0.0.0)\n"
    "  --mode header|uri      SANDGATE_INGRESS_MODE: the shipped routing script to use (header)\n"
    "  --script FILE          SANDGATE_INGRESS_SCRIPT: a custom routing script instead\n"
    "  --script-config FILE   SANDGATE_INGRESS_SCRIPT_CONFIG: JSON the script gets as ctx.config.script_config\n"
    "  --routes FILE          SANDGATE_INGRESS_ROUTES: sandbox id -> backend (JSON; reloaded on change)\n"
    "  --dns-template T       SANDGATE_INGRESS_DNS_TEMPLATE: backend host name, e.g. {id}.sandboxes.svc\n"
    "  --secure-access-keys L SANDGATE_INGRESS_SECURE_ACCESS_KEYS: id=base64,... signing keys\n"
    "  --trusted-proxies L    SANDGATE_INGRESS_TRUSTED_PROXIES: CIDRs whose X-Forwarded-* are kept\n"
    "  --admin-addr ADDR      SANDGATE_INGRESS_ADMIN_ADDR: /metrics and /reload (127.0.0.1:28889; off)\n"
    "  --workers N            SANDGATE_INGRESS_WORKERS: SO_REUSEPORT workers, each with its loop and VM (cores)\n"
    "  --header-timeout S     request head deadline (10)\n"
    "  --connect-timeout S    backend connect deadline (5)\n"
    "  --first-byte-timeout S backend answer deadline (60)\n"
    "  --idle-timeout S       no byte either way on an exchange or tunnel (300)\n"
    "  --log-level LEVEL      SANDGATE_LOG_LEVEL: debug, info, warn, error (info)\n";
/* clang-format on */

typedef struct {
  struct sockaddr_storage listen, admin;
  int admin_enabled;
  const char *mode;
  const char *script;
  const char *routes;
  const char *script_config;
  const char *dns_template;
  const char *keys;
  sg_ipset_t trusted[2];
  uint32_t header_ms, connect_ms, first_byte_ms, idle_ms;
  int log_level;
  int workers;
  const char *data_dir;
  char script_buf[4096];
} config_t;

#define MAX_WORKERS 64

typedef struct ingress ingress_t;

/* One worker: its own loop, listener (SO_REUSEPORT) and routing VM. The
 * main thread hands it a new VM (next_vm, under the lock) and pokes it
 * through `async`; the worker swaps it in between two requests. */
typedef struct {
  ingress_t *g;
  uv_loop_t loop;
  uv_thread_t tid;
  uv_async_t async;
  uv_mutex_t lock;
  sg_vm_t *vm;
  sg_vm_t *next_vm; /* under lock */
  int stop;         /* under lock */
  sg_proxy_t *proxy;
  size_t vm_bytes; /* for /metrics, set by the worker */
} worker_t;

struct ingress {
  uv_loop_t *loop;
  config_t cfg;
  worker_t w[MAX_WORKERS];
  int nworkers;
  sg_http_server_t *admin;
  /* POST /explain: a VM of the main thread's own, built and swapped with
   * the workers' (a worker's VM belongs to its thread), and a trusted state
   * that reads request descriptions (sandgate.cases). */
  sg_vm_t *explain_vm;
  lua_State *L;
  uv_signal_t sighup, sigterm, sigint;
  uv_fs_event_t watch_script, watch_routes, watch_config;
  uv_timer_t debounce;
  struct stat seen_script, seen_routes, seen_config;
  uint64_t reloads, reload_failures;
  int stopping;
};

static int parse_secs(const char *name, const char *v, uint32_t *out, char *err,
                      size_t errlen) {
  char *end;
  errno = 0;
  unsigned long n = strtoul(v, &end, 10);
  if (errno || end == v || *end || v[0] == '-' || n < 1 || n > 86400) {
    snprintf(err, errlen, "%s: \"%s\" is not a number of seconds (1-86400)",
             name, v);
    return -EINVAL;
  }
  *out = (uint32_t)n * 1000;
  return 0;
}

enum {
  O_PORT = 256,
  O_LISTEN,
  O_MODE,
  O_SCRIPT,
  O_ROUTES,
  O_SCRIPT_CONFIG,
  O_TEMPLATE,
  O_KEYS,
  O_TRUSTED,
  O_ADMIN,
  O_HEADER_T,
  O_CONNECT_T,
  O_FIRST_T,
  O_IDLE_T,
  O_LOG,
  O_WORKERS,
  O_HELP,
};

static const struct option long_opts[] = {
    {"port", required_argument, NULL, O_PORT},
    {"listen", required_argument, NULL, O_LISTEN},
    {"mode", required_argument, NULL, O_MODE},
    {"script", required_argument, NULL, O_SCRIPT},
    {"routes", required_argument, NULL, O_ROUTES},
    {"script-config", required_argument, NULL, O_SCRIPT_CONFIG},
    {"dns-template", required_argument, NULL, O_TEMPLATE},
    {"secure-access-keys", required_argument, NULL, O_KEYS},
    {"trusted-proxies", required_argument, NULL, O_TRUSTED},
    {"admin-addr", required_argument, NULL, O_ADMIN},
    {"header-timeout", required_argument, NULL, O_HEADER_T},
    {"connect-timeout", required_argument, NULL, O_CONNECT_T},
    {"first-byte-timeout", required_argument, NULL, O_FIRST_T},
    {"idle-timeout", required_argument, NULL, O_IDLE_T},
    {"log-level", required_argument, NULL, O_LOG},
    {"workers", required_argument, NULL, O_WORKERS},
    {"help", no_argument, NULL, O_HELP},
    {NULL, 0, NULL, 0},
};

static int load_config(config_t *c, int argc, char **argv, char *err,
                       size_t errlen) {
  const char *port = sg_env("SANDGATE_INGRESS_PORT");
  const char *listen = sg_env("SANDGATE_INGRESS_LISTEN");
  const char *trusted = sg_env("SANDGATE_INGRESS_TRUSTED_PROXIES");
  const char *admin = sg_env("SANDGATE_INGRESS_ADMIN_ADDR");
  const char *log_level = sg_env("SANDGATE_LOG_LEVEL");
  const char *workers = sg_env("SANDGATE_INGRESS_WORKERS");
  const char *secs[4] = {NULL, NULL, NULL, NULL};
  c->mode = sg_env("SANDGATE_INGRESS_MODE");
  c->script = sg_env("SANDGATE_INGRESS_SCRIPT");
  c->routes = sg_env("SANDGATE_INGRESS_ROUTES");
  c->script_config = sg_env("SANDGATE_INGRESS_SCRIPT_CONFIG");
  c->dns_template = sg_env("SANDGATE_INGRESS_DNS_TEMPLATE");
  c->keys = sg_env("SANDGATE_INGRESS_SECURE_ACCESS_KEYS");
  optind = 1;
  opterr = 0;
  int opt;
  while ((opt = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
    switch (opt) {
    case O_PORT: port = optarg; break;
    case O_LISTEN: listen = optarg; break;
    case O_MODE: c->mode = optarg; break;
    case O_SCRIPT: c->script = optarg; break;
    case O_ROUTES: c->routes = optarg; break;
    case O_SCRIPT_CONFIG: c->script_config = optarg; break;
    case O_TEMPLATE: c->dns_template = optarg; break;
    case O_KEYS: c->keys = optarg; break;
    case O_TRUSTED: trusted = optarg; break;
    case O_ADMIN: admin = optarg; break;
    case O_HEADER_T: secs[0] = optarg; break;
    case O_CONNECT_T: secs[1] = optarg; break;
    case O_FIRST_T: secs[2] = optarg; break;
    case O_IDLE_T: secs[3] = optarg; break;
    case O_LOG: log_level = optarg; break;
    case O_WORKERS: workers = optarg; break;
    case 'h':
    case O_HELP: fputs(usage, stdout); return 1;
    default:
      snprintf(err, errlen,
               "unknown flag or missing value near \"%s\" (see sandgate "
               "ingress --help)",
               argv[optind - 1]);
      return -EINVAL;
    }
  }
  if (optind < argc) {
    snprintf(err, errlen, "unexpected argument \"%s\"", argv[optind]);
    return -EINVAL;
  }
  const char *home = sg_env("SANDGATE_HOME");
  c->data_dir = home ? home : SG_DATA_DIR;
  if (!c->mode)
    c->mode = "header";
  if (strcasecmp(c->mode, "header") != 0 && strcasecmp(c->mode, "uri") != 0) {
    snprintf(err, errlen, "--mode: \"%s\" is not header or uri", c->mode);
    return -EINVAL;
  }
  if (!c->script) {
    snprintf(c->script_buf, sizeof(c->script_buf), "%s/policies/ingress/%s.lua",
             c->data_dir, strcasecmp(c->mode, "uri") == 0 ? "uri" : "header");
    c->script = c->script_buf;
  }
  char perr[256];
  unsigned long pn = 28888;
  if (port) {
    char *end;
    pn = strtoul(port, &end, 10);
    if (*end || end == port || pn < 1 || pn > 65535) {
      snprintf(err, errlen, "--port: \"%s\" is not a port", port);
      return -EINVAL;
    }
  }
  if (sg_sockaddr_parse(listen ? listen : "0.0.0.0", (uint16_t)pn, &c->listen,
                        perr, sizeof(perr))) {
    snprintf(err, errlen, "--listen: %s", perr);
    return -EINVAL;
  }
  if (!admin)
    admin = "127.0.0.1:28889";
  c->admin_enabled = strcasecmp(admin, "off") != 0;
  if (c->admin_enabled &&
      sg_sockaddr_parse(admin, 28889, &c->admin, perr, sizeof(perr))) {
    snprintf(err, errlen, "--admin-addr: %s", perr);
    return -EINVAL;
  }
  sg_ipset_init(&c->trusted[0], 4);
  sg_ipset_init(&c->trusted[1], 6);
  if (trusted && sg_ipset_parse_list("--trusted-proxies", trusted, 0,
                                     c->trusted, err, errlen))
    return -EINVAL;
  c->header_ms = 10000;
  c->connect_ms = 5000;
  c->first_byte_ms = 60000;
  c->idle_ms = 300000;
  static const char *const names[4] = {"--header-timeout", "--connect-timeout",
                                       "--first-byte-timeout",
                                       "--idle-timeout"};
  uint32_t *outs[4] = {&c->header_ms, &c->connect_ms, &c->first_byte_ms,
                       &c->idle_ms};
  for (int i = 0; i < 4; i++)
    if (secs[i] && parse_secs(names[i], secs[i], outs[i], err, errlen))
      return -EINVAL;
  c->workers = (int)uv_available_parallelism();
  if (workers) {
    char *end;
    long n = strtol(workers, &end, 10);
    if (*end || end == workers || n < 1 || n > MAX_WORKERS) {
      snprintf(err, errlen, "--workers: \"%s\" is not a number from 1 to %d",
               workers, MAX_WORKERS);
      return -EINVAL;
    }
    c->workers = (int)n;
  }
  if (c->workers > MAX_WORKERS)
    c->workers = MAX_WORKERS;
  c->log_level = SG_LOG_INFO;
  if (log_level && (c->log_level = sg_log_parse_level(log_level)) < 0) {
    snprintf(err, errlen, "SANDGATE_LOG_LEVEL: \"%s\" is not a level",
             log_level);
    return -EINVAL;
  }
  return 0;
}

/* ---- the routing VM ---- */

static int build_vm(ingress_t *g, sg_vm_t **out, char *err, size_t errlen) {
  sg_ingress_sources_t src = {
      .mode = g->cfg.mode,
      .routes = g->cfg.routes,
      .script_config = g->cfg.script_config,
      .dns_template = g->cfg.dns_template,
      .keys = g->cfg.keys,
  };
  char *cfg = sg_ingress_config_json(&src, err, errlen);
  if (!cfg)
    return -EINVAL;
  sg_vm_opts_t o = {
      .data_dir = g->cfg.data_dir,
      .script_path = g->cfg.script,
  };
  int rc = sg_vm_new_ingress(&o, cfg, out, err, errlen);
  free(cfg);
  return rc;
}

static void remember(const char *path, struct stat *st) {
  if (!path || stat(path, st) != 0)
    memset(st, 0, sizeof(*st));
}

static int changed(const char *path, const struct stat *o) {
  struct stat st;
  remember(path, &st);
  return st.st_ino != o->st_ino || st.st_dev != o->st_dev ||
         st.st_size != o->st_size || st.st_mtim.tv_sec != o->st_mtim.tv_sec ||
         st.st_mtim.tv_nsec != o->st_mtim.tv_nsec;
}

static int reload(ingress_t *g, const char *trigger, char *err, size_t errlen) {
  /* One VM per worker, and one for /explain: all or none. */
  sg_vm_t *vms[MAX_WORKERS + 1];
  int want = g->nworkers + (g->explain_vm ? 1 : 0);
  remember(g->cfg.script, &g->seen_script);
  remember(g->cfg.routes, &g->seen_routes);
  remember(g->cfg.script_config, &g->seen_config);
  int rc = 0, built = 0;
  for (; built < want && !rc; built++)
    rc = build_vm(g, &vms[built], err, errlen);
  if (rc) {
    for (int i = 0; i < built - 1; i++)
      sg_vm_unref(vms[i]);
    g->reload_failures++;
    sg_logline_t l;
    sg_log_begin(&l, SG_LOG_ERROR, "ingress.reload_failed");
    sg_log_str(&l, "trigger", trigger);
    sg_log_str(&l, "error", err);
    sg_log_str(&l, "kept", "previous script and routes");
    sg_log_end(&l);
    return -EINVAL;
  }
  for (int i = 0; i < g->nworkers; i++) {
    worker_t *w = &g->w[i];
    uv_mutex_lock(&w->lock);
    sg_vm_t *stale = w->next_vm;
    w->next_vm = vms[i];
    uv_mutex_unlock(&w->lock);
    sg_vm_unref(stale);
    uv_async_send(&w->async);
  }
  if (g->explain_vm) {
    sg_vm_unref(g->explain_vm);
    g->explain_vm = vms[g->nworkers];
  }
  g->reloads++;
  sg_logline_t l;
  sg_log_begin(&l, SG_LOG_INFO, "ingress.reloaded");
  sg_log_str(&l, "trigger", trigger);
  sg_log_str(&l, "script", g->cfg.script);
  sg_log_end(&l);
  return 0;
}

static void on_debounce(uv_timer_t *t) {
  ingress_t *g = t->data;
  if (!changed(g->cfg.script, &g->seen_script) &&
      !changed(g->cfg.routes, &g->seen_routes) &&
      !changed(g->cfg.script_config, &g->seen_config))
    return;
  char err[1024];
  reload(g, "file-change", err, sizeof(err));
}

static void on_fs_event(uv_fs_event_t *h, const char *filename, int events,
                        int status) {
  (void)filename;
  (void)events;
  ingress_t *g = h->data;
  if (status >= 0)
    uv_timer_start(&g->debounce, on_debounce, RELOAD_DEBOUNCE_MS, 0);
}

static void watch_dir(ingress_t *g, uv_fs_event_t *h, const char *path) {
  uv_fs_event_init(g->loop, h);
  h->data = g;
  if (!path)
    return;
  char tmp[4096];
  snprintf(tmp, sizeof(tmp), "%s", path);
  int rc = uv_fs_event_start(h, on_fs_event, dirname(tmp), 0);
  if (rc)
    sg_log_msg(SG_LOG_WARN, "ingress.watch_failed",
               "not watching %s: %s (SIGHUP still reloads)", path,
               uv_strerror(rc));
}

/* ---- requests ---- */

static void route(void *ctx, const sg_proxy_request_t *req,
                  sg_proxy_route_t *out) {
  worker_t *w = ctx;
  sg_ingress_route(w->vm, req, out);
}

static void write_metrics(ingress_t *g, FILE *f) {
  /* The workers' counters, summed (read without a lock: each is a word the
   * reader may see a moment late, never torn). */
  sg_proxy_stats_t sum;
  memset(&sum, 0, sizeof(sum));
  size_t vm_bytes = 0;
  for (int i = 0; i < g->nworkers; i++) {
    const sg_proxy_stats_t *x = sg_proxy_stats(g->w[i].proxy);
    const uint64_t *a = (const uint64_t *)x;
    uint64_t *b = (uint64_t *)&sum;
    for (size_t k = 0; k < sizeof(sum) / sizeof(uint64_t); k++)
      b[k] += a[k];
    vm_bytes += g->w[i].vm_bytes;
  }
  const sg_proxy_stats_t *s = &sum;
  fprintf(f,
          "# HELP sandgate_ingress_requests_total Requests routed.\n"
          "# TYPE sandgate_ingress_requests_total counter\n"
          "sandgate_ingress_requests_total %llu\n"
          "# HELP sandgate_ingress_responses_total Responses by status class.\n"
          "# TYPE sandgate_ingress_responses_total counter\n",
          (unsigned long long)s->requests);
  for (int i = 1; i <= 5; i++)
    fprintf(f, "sandgate_ingress_responses_total{class=\"%dxx\"} %llu\n", i,
            (unsigned long long)s->responses_by_class[i]);
  fprintf(f,
          "# HELP sandgate_ingress_upstream_connections_total Backend "
          "connections opened, and requests sent on a pooled one.\n"
          "# TYPE sandgate_ingress_upstream_connections_total counter\n"
          "sandgate_ingress_upstream_connections_total{kind=\"new\"} %llu\n"
          "sandgate_ingress_upstream_connections_total{kind=\"reused\"} %llu\n"
          "sandgate_ingress_upstream_connections_total{kind=\"retry\"} %llu\n"
          "# HELP sandgate_ingress_tunnels_total Upgraded connections "
          "(WebSocket).\n"
          "# TYPE sandgate_ingress_tunnels_total counter\n"
          "sandgate_ingress_tunnels_total %llu\n"
          "# HELP sandgate_ingress_clients Open client connections.\n"
          "# TYPE sandgate_ingress_clients gauge\n"
          "sandgate_ingress_clients %llu\n"
          "# HELP sandgate_ingress_aborted_total Responses cut off after "
          "they started (the backend failed mid-stream).\n"
          "# TYPE sandgate_ingress_aborted_total counter\n"
          "sandgate_ingress_aborted_total %llu\n"
          "# HELP sandgate_ingress_reloads_total Routing reloads by result.\n"
          "# TYPE sandgate_ingress_reloads_total counter\n"
          "sandgate_ingress_reloads_total{result=\"ok\"} %llu\n"
          "sandgate_ingress_reloads_total{result=\"failed\"} %llu\n"
          "# HELP sandgate_ingress_vm_bytes Memory held by the routing VMs.\n"
          "# TYPE sandgate_ingress_vm_bytes gauge\n"
          "sandgate_ingress_vm_bytes %zu\n",
          (unsigned long long)s->upstream_connects,
          (unsigned long long)s->upstream_reused,
          (unsigned long long)s->upstream_retries,
          (unsigned long long)s->tunnels, (unsigned long long)s->clients_open,
          (unsigned long long)s->aborted, (unsigned long long)g->reloads,
          (unsigned long long)g->reload_failures, vm_bytes);
  fprintf(f,
          "# HELP sandgate_ingress_workers Worker loops.\n"
          "# TYPE sandgate_ingress_workers gauge\n"
          "sandgate_ingress_workers %d\n",
          g->nworkers);
}

/* POST /explain with a request description ({method, path, headers, host,
 * client}): what the gateway would do with that request, without sending
 * anything (see ingress/routing.h). */
static void on_explain(ingress_t *g, const sg_http_request_t *req,
                       sg_http_reply_t *r) {
  lua_State *L = g->L;
  lua_getfield(L, 1, "decode_request");
  lua_pushlstring(L, req->body, req->body_len);
  int failed = lua_pcall(L, 1, 4, 0) != 0;
  if (failed || lua_isnil(L, -4)) {
    /* The error of a failed call, or the 400 message next to the nil. */
    const char *why = lua_tostring(L, failed ? -1 : -3);
    char body[1200];
    int n = snprintf(body, sizeof(body), "%s\n", why ? why : "bad request");
    if (n >= (int)sizeof(body))
      n = (int)sizeof(body) - 1;
    sg_http_respond(r, 400, "text/plain; charset=utf-8", body, (size_t)n, NULL);
    lua_settop(L, 1);
    return;
  }
  /* The description's strings stay on the stack for the whole call. */
  sg_proxy_header_t hdrs[128];
  size_t n = 0, count = lua_objlen(L, -1) / 2;
  for (size_t i = 0; i < count && n < sizeof(hdrs) / sizeof(hdrs[0]); i++) {
    lua_rawgeti(L, -1, (int)(2 * i + 1));
    lua_rawgeti(L, -2, (int)(2 * i + 2));
    hdrs[n].name = lua_tolstring(L, -2, &hdrs[n].name_len);
    hdrs[n].value = lua_tolstring(L, -1, &hdrs[n].value_len);
    lua_pop(L, 2);
    n++;
  }
  size_t tlen;
  const char *target = lua_tolstring(L, -3, &tlen);
  sg_proxy_request_t pr = {
      .method = lua_tostring(L, -4),
      .target = target,
      .target_len = tlen,
      .client_ip = lua_tostring(L, -2),
      .headers = hdrs,
      .nheaders = n,
  };
  char *body = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&body, &len);
  if (f) {
    sg_ingress_explain(g->explain_vm, &pr, g->cfg.trusted, f);
    fputc('\n', f);
    fclose(f);
    sg_http_respond(r, 200, "application/json", body, len, NULL);
  } else {
    sg_http_respond(r, 500, "text/plain; charset=utf-8", "out of memory\n", 14,
                    NULL);
  }
  free(body);
  lua_settop(L, 1);
}

static void on_admin(void *ctx, const sg_http_request_t *req,
                     sg_http_reply_t *r) {
  ingress_t *g = ctx;
  if (strcmp(req->method, "GET") == 0 && req->path_len == 8 &&
      memcmp(req->path, "/metrics", 8) == 0) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f) {
      write_metrics(g, f);
      fclose(f);
    }
    sg_http_respond(r, 200, "text/plain; version=0.0.4; charset=utf-8",
                    text ? text : "", text ? len : 0, NULL);
    free(text);
    return;
  }
  if (strcmp(req->method, "POST") == 0 && req->path_len == 7 &&
      memcmp(req->path, "/reload", 7) == 0) {
    char err[1024], body[1200];
    if (reload(g, "admin", err, sizeof(err)) == 0) {
      sg_http_respond(r, 200, "text/plain; charset=utf-8", "reloaded\n", 9,
                      NULL);
    } else {
      int n = snprintf(body, sizeof(body), "reload failed: %s\n", err);
      sg_http_respond(r, 400, "text/plain; charset=utf-8", body, (size_t)n,
                      NULL);
    }
    return;
  }
  if (strcmp(req->method, "POST") == 0 && req->path_len == 8 &&
      memcmp(req->path, "/explain", 8) == 0) {
    on_explain(g, req, r);
    return;
  }
  static const char nf[] =
      "not found (GET /metrics, POST /reload, POST /explain)\n";
  sg_http_respond(r, 404, "text/plain; charset=utf-8", nf, sizeof(nf) - 1,
                  NULL);
}

/* ---- workers ---- */

static void on_drained(void *arg) {
  worker_t *w = arg;
  w->proxy = NULL;
  uv_close((uv_handle_t *)&w->async, NULL);
}

/* The main thread's news: a new VM, or the order to stop. */
static void on_worker_async(uv_async_t *a) {
  worker_t *w = a->data;
  uv_mutex_lock(&w->lock);
  sg_vm_t *vm = w->next_vm;
  w->next_vm = NULL;
  int stop = w->stop;
  uv_mutex_unlock(&w->lock);
  if (vm) {
    /* Routing is synchronous: no request is inside the old VM now. */
    sg_vm_unref(w->vm);
    w->vm = vm;
    w->vm_bytes = sg_vm_mem_used(vm);
  }
  if (stop && w->proxy && !uv_is_closing((uv_handle_t *)a))
    sg_proxy_drain(w->proxy, DRAIN_DEADLINE_MS, on_drained, w);
}

static void worker_run(void *arg) {
  worker_t *w = arg;
  uv_run(&w->loop, UV_RUN_DEFAULT);
}

static void stop_workers(ingress_t *g) {
  for (int i = 0; i < g->nworkers; i++) {
    worker_t *w = &g->w[i];
    uv_mutex_lock(&w->lock);
    w->stop = 1;
    uv_mutex_unlock(&w->lock);
    uv_async_send(&w->async);
  }
}

/* ---- lifecycle ---- */

static void close_handle(uv_handle_t *h) {
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

static void on_signal(uv_signal_t *h, int signum) {
  ingress_t *g = h->data;
  if (signum == SIGHUP) {
    char err[1024];
    reload(g, "SIGHUP", err, sizeof(err));
    return;
  }
  if (g->stopping)
    return;
  g->stopping = 1;
  sg_log_msg(SG_LOG_INFO, "ingress.stopping",
             "%s: draining (no new connections, open requests finish "
             "within %d s)",
             signum == SIGTERM ? "SIGTERM" : "SIGINT",
             DRAIN_DEADLINE_MS / 1000);
  sg_http_server_close(g->admin);
  g->admin = NULL;
  close_handle((uv_handle_t *)&g->sighup);
  close_handle((uv_handle_t *)&g->sigterm);
  close_handle((uv_handle_t *)&g->sigint);
  close_handle((uv_handle_t *)&g->watch_script);
  close_handle((uv_handle_t *)&g->watch_routes);
  close_handle((uv_handle_t *)&g->watch_config);
  close_handle((uv_handle_t *)&g->debounce);
  stop_workers(g);
}

/* Sets up worker i: loop, VM, listener. The thread starts later. */
static int worker_init(ingress_t *g, int i, char *err, size_t errlen) {
  worker_t *w = &g->w[i];
  w->g = g;
  uv_loop_init(&w->loop);
  uv_mutex_init(&w->lock);
  uv_async_init(&w->loop, &w->async, on_worker_async);
  w->async.data = w;
  int rc = build_vm(g, &w->vm, err, errlen);
  if (rc)
    return rc;
  w->vm_bytes = sg_vm_mem_used(w->vm);
  sg_proxy_opts_t po = {
      .listen = g->cfg.listen,
      .reuseport = 1,
      .route = route,
      .route_ctx = w,
      .error_prefix = "OpenSandbox Ingress: ",
      .powered_by = "OpenSandbox-ingress",
      .trusted = g->cfg.trusted,
      .header_timeout_ms = g->cfg.header_ms,
      .connect_timeout_ms = g->cfg.connect_ms,
      .first_byte_timeout_ms = g->cfg.first_byte_ms,
      .idle_timeout_ms = g->cfg.idle_ms,
      .keepalive_ms = 60000,
      .pool_idle_ms = 30000,
      .pool_max_per_backend = 256,
  };
  return sg_proxy_start(&w->loop, &po, &w->proxy, err, errlen);
}

/* Frees what a worker holds once its loop has stopped. */
static void worker_free(worker_t *w) {
  sg_vm_unref(w->vm);
  sg_vm_unref(w->next_vm);
  w->vm = w->next_vm = NULL;
  uv_mutex_destroy(&w->lock);
  uv_loop_close(&w->loop);
}

int sg_ingress_main(int argc, char **argv) {
  static ingress_t g;
  memset(&g, 0, sizeof(g));
  char err[1024];
  int rc = load_config(&g.cfg, argc, argv, err, sizeof(err));
  if (rc == 1)
    return 0;
  if (rc) {
    fprintf(stderr, "sandgate ingress: %s\n", err);
    sg_ipset_free(&g.cfg.trusted[0]);
    sg_ipset_free(&g.cfg.trusted[1]);
    return 2;
  }
  sg_log_set_level((sg_log_level_t)g.cfg.log_level);
  signal(SIGPIPE, SIG_IGN);
  g.loop = uv_default_loop();
  remember(g.cfg.script, &g.seen_script);
  remember(g.cfg.routes, &g.seen_routes);
  remember(g.cfg.script_config, &g.seen_config);
  int started = 0;
  for (int i = 0; i < g.cfg.workers; i++) {
    g.nworkers = i + 1;
    if ((rc = worker_init(&g, i, err, sizeof(err)))) {
      sg_log_msg(SG_LOG_ERROR, "ingress.start_failed", "%s", err);
      fprintf(stderr, "sandgate ingress: %s\n", err);
      goto fail;
    }
  }
  if (g.cfg.admin_enabled) {
    if ((rc = build_vm(&g, &g.explain_vm, err, sizeof(err))) ||
        (rc = sg_trusted_open(g.cfg.data_dir, "sandgate.cases", &g.L, err,
                              sizeof(err)))) {
      sg_log_msg(SG_LOG_ERROR, "ingress.start_failed", "admin API: %s", err);
      fprintf(stderr, "sandgate ingress: admin API: %s\n", err);
      goto fail;
    }
    sg_http_server_opts_t ao = {
        .listen = g.cfg.admin, .handler = on_admin, .ctx = &g};
    if ((rc = sg_http_server_start(g.loop, &ao, &g.admin, err, sizeof(err)))) {
      sg_log_msg(SG_LOG_ERROR, "ingress.start_failed", "admin API: %s", err);
      fprintf(stderr, "sandgate ingress: admin API: %s\n", err);
      goto fail;
    }
  }
  for (; started < g.nworkers; started++)
    uv_thread_create(&g.w[started].tid, worker_run, &g.w[started]);
  uv_signal_init(g.loop, &g.sighup);
  uv_signal_init(g.loop, &g.sigterm);
  uv_signal_init(g.loop, &g.sigint);
  g.sighup.data = g.sigterm.data = g.sigint.data = &g;
  uv_signal_start(&g.sighup, on_signal, SIGHUP);
  uv_signal_start(&g.sigterm, on_signal, SIGTERM);
  uv_signal_start(&g.sigint, on_signal, SIGINT);
  uv_timer_init(g.loop, &g.debounce);
  g.debounce.data = &g;
  watch_dir(&g, &g.watch_script, g.cfg.script);
  watch_dir(&g, &g.watch_routes, g.cfg.routes);
  watch_dir(&g, &g.watch_config, g.cfg.script_config);
  {
    sg_logline_t l;
    char a[SG_ADDRSTR_MAX];
    sg_log_begin(&l, SG_LOG_INFO, "ingress.started");
    sg_log_str(&l, "listen",
               sg_sockaddr_str((struct sockaddr *)&g.cfg.listen, a, sizeof(a)));
    sg_log_int(&l, "workers", g.nworkers);
    sg_log_str(&l, "script", g.cfg.script);
    sg_log_str(&l, "routes", g.cfg.routes);
    sg_log_str(&l, "dns_template", g.cfg.dns_template);
    if (g.cfg.admin_enabled)
      sg_log_str(
          &l, "admin",
          sg_sockaddr_str((struct sockaddr *)&g.cfg.admin, a, sizeof(a)));
    sg_log_end(&l);
  }
  uv_run(g.loop, UV_RUN_DEFAULT);
  for (int i = 0; i < g.nworkers; i++) {
    uv_thread_join(&g.w[i].tid);
    worker_free(&g.w[i]);
  }
  sg_log_msg(SG_LOG_INFO, "ingress.stopped", "drained");
  rc = 0;
  goto out;

fail:
  /* Nothing runs yet: close what was opened, loop by loop. */
  for (int i = 0; i < g.nworkers; i++) {
    worker_t *w = &g.w[i];
    if (w->proxy)
      sg_proxy_drain(w->proxy, 0, NULL, NULL);
    if (w->async.data)
      uv_close((uv_handle_t *)&w->async, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    worker_free(w);
  }
  sg_http_server_close(g.admin);
  uv_run(g.loop, UV_RUN_DEFAULT);
  rc = 1;
out:
  sg_vm_unref(g.explain_vm);
  if (g.L)
    lua_close(g.L);
  sg_ipset_free(&g.cfg.trusted[0]);
  sg_ipset_free(&g.cfg.trusted[1]);
  uv_loop_close(g.loop);
  return rc;
}
