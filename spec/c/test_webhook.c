/* Tests for core/egress/webhook.c and core/http/client.c. Everything runs in
 * one uv loop: the webhook, and a real receiver on 127.0.0.1 port 0 (the
 * project's HTTP server, recording each request and answering with a
 * scripted status; or a raw TCP listener that never answers, or answers
 * garbage). Delays are shortened (10/20/40 ms, a 300 ms window); each case
 * ends by closing everything and checks that the loop has nothing left. */
#include "egress/webhook.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http/client.h"
#include "http/server.h"
#include "sgtest.h"
#include "util/common.h"
#include "util/log.h"

static uv_loop_t loop;

/* ---- running the loop ---- */

static uv_timer_t check_timer;
static int (*check_cond)(void);
static uint64_t check_deadline;

static void on_check(uv_timer_t *t) {
  if (check_cond() || uv_now(t->loop) >= check_deadline)
    uv_stop(t->loop);
}

/* Runs the loop until cond holds or max_ms passed; returns cond(). */
static int run_until(int (*cond)(void), uint64_t max_ms) {
  if (cond())
    return 1;
  check_cond = cond;
  uv_update_time(&loop);
  check_deadline = uv_now(&loop) + max_ms;
  uv_timer_start(&check_timer, on_check, 1, 1);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_timer_stop(&check_timer);
  return cond();
}

static int never(void) {
  return 0;
}

static void run_for(uint64_t ms) {
  run_until(never, ms);
}

static void loop_setup(void) {
  uv_loop_init(&loop);
  uv_timer_init(&loop, &check_timer);
}

/* Closes the helper timer, runs the loop dry; 0 when nothing was left. */
static int loop_teardown(void) {
  uv_close((uv_handle_t *)&check_timer, NULL);
  /* Bounded: a leaked active handle would otherwise hang the test. */
  for (int i = 0; i < 1000 && uv_run(&loop, UV_RUN_NOWAIT); i++)
    usleep(1000);
  return uv_loop_close(&loop);
}

/* ---- the recording receiver ---- */

typedef struct {
  char method[16], path[256], ctype[64], host[128], conn[32], agent[64];
  char body[4096];
  uint64_t at;
} rec_t;

#define MAX_RECS 64
static struct {
  int n;
  rec_t recs[MAX_RECS];
  int statuses[16];
  int nstatuses;
} rx;
static sg_http_server_t *server;
static uint16_t server_port;

static void copy_hdr(char *dst, size_t cap, const sg_http_request_t *req,
                     const char *name) {
  const char *v = sg_http_header(req, name, NULL);
  snprintf(dst, cap, "%s", v ? v : "-");
}

static void rx_handler(void *ctx, const sg_http_request_t *req,
                       sg_http_reply_t *reply) {
  (void)ctx;
  int i = rx.n++;
  if (i < MAX_RECS) {
    rec_t *r = &rx.recs[i];
    snprintf(r->method, sizeof(r->method), "%s", req->method);
    snprintf(r->path, sizeof(r->path), "%.*s%s%.*s", (int)req->path_len,
             req->path, req->query ? "?" : "", (int)req->query_len,
             req->query ? req->query : "");
    copy_hdr(r->ctype, sizeof(r->ctype), req, "Content-Type");
    copy_hdr(r->host, sizeof(r->host), req, "Host");
    copy_hdr(r->conn, sizeof(r->conn), req, "Connection");
    copy_hdr(r->agent, sizeof(r->agent), req, "User-Agent");
    snprintf(r->body, sizeof(r->body), "%.*s", (int)req->body_len, req->body);
    r->at = uv_now(&loop);
  }
  int status = i < rx.nstatuses ? rx.statuses[i] : 200;
  sg_http_respond(reply, status, "text/plain", "ok", 2, NULL);
}

static int server_start(void) {
  memset(&rx, 0, sizeof(rx));
  sg_http_server_opts_t o;
  memset(&o, 0, sizeof(o));
  struct sockaddr_in *sin = (struct sockaddr_in *)&o.listen;
  sin->sin_family = AF_INET;
  sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  o.handler = rx_handler;
  char err[256];
  if (sg_http_server_start(&loop, &o, &server, err, sizeof(err)) != 0) {
    fprintf(stderr, "  %s\n", err);
    return -1;
  }
  server_port = sg_http_server_port(server);
  return 0;
}

/* ---- a raw receiver: accepts, then never answers (or answers once) ---- */

typedef enum { RAW_STALL, RAW_GARBAGE, RAW_CLOSE } raw_mode_t;

typedef struct raw_conn {
  uv_tcp_t tcp;
  struct raw_conn *next;
  int closing;
} raw_conn_t;

static struct {
  uv_tcp_t listener;
  raw_mode_t mode;
  uint16_t port;
  int accepted, open, max_open;
  raw_conn_t *conns;
  char buf[4096];
} raw;

static void raw_conn_closed(uv_handle_t *h) {
  raw_conn_t *c = container_of((uv_tcp_t *)h, raw_conn_t, tcp);
  raw_conn_t **pp = &raw.conns;
  while (*pp != c)
    pp = &(*pp)->next;
  *pp = c->next;
  raw.open--;
  free(c);
}

static void raw_conn_close(raw_conn_t *c) {
  if (c->closing)
    return;
  c->closing = 1;
  uv_close((uv_handle_t *)&c->tcp, raw_conn_closed);
}

static void raw_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) {
  *b = uv_buf_init(raw.buf, sizeof(raw.buf));
}

static void raw_written(uv_write_t *w, int status) {
  raw_conn_close(w->data);
  free(w);
}

static void raw_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  raw_conn_t *c = container_of((uv_tcp_t *)st, raw_conn_t, tcp);
  if (n < 0) {
    raw_conn_close(c);
    return;
  }
  if (n == 0 || raw.mode == RAW_STALL)
    return;
  if (raw.mode == RAW_CLOSE) {
    raw_conn_close(c);
    return;
  }
  static char garbage[] = "SMTP is not HTTP\r\n\r\n";
  uv_write_t *w = malloc(sizeof(*w));
  w->data = c;
  uv_buf_t wb = uv_buf_init(garbage, sizeof(garbage) - 1);
  uv_read_stop(st);
  uv_write(w, st, &wb, 1, raw_written);
}

static void raw_on_conn(uv_stream_t *ls, int status) {
  raw_conn_t *c = calloc(1, sizeof(*c));
  uv_tcp_init(&loop, &c->tcp);
  c->next = raw.conns;
  raw.conns = c;
  raw.open++;
  raw.accepted++;
  if (raw.open > raw.max_open)
    raw.max_open = raw.open;
  if (uv_accept(ls, (uv_stream_t *)&c->tcp) == 0)
    uv_read_start((uv_stream_t *)&c->tcp, raw_alloc, raw_read);
  else
    raw_conn_close(c);
}

static void raw_start(raw_mode_t mode) {
  memset(&raw, 0, sizeof(raw));
  raw.mode = mode;
  struct sockaddr_in sin;
  uv_ip4_addr("127.0.0.1", 0, &sin);
  uv_tcp_init(&loop, &raw.listener);
  uv_tcp_bind(&raw.listener, (struct sockaddr *)&sin, 0);
  uv_listen((uv_stream_t *)&raw.listener, 512, raw_on_conn);
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  uv_tcp_getsockname(&raw.listener, (struct sockaddr *)&ss, &len);
  raw.port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void raw_stop(void) {
  uv_close((uv_handle_t *)&raw.listener, NULL);
  for (raw_conn_t *c = raw.conns; c; c = c->next)
    raw_conn_close(c);
}

/* A port nothing listens on: bound, then closed. */
static uint16_t dead_port(int type) {
  int fd = socket(AF_INET, type, 0);
  struct sockaddr_in sin = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  bind(fd, (struct sockaddr *)&sin, sizeof(sin));
  socklen_t len = sizeof(sin);
  getsockname(fd, (struct sockaddr *)&sin, &len);
  close(fd);
  return ntohs(sin.sin_port);
}

/* ---- the webhook under test ---- */

static sg_webhook_t *wh;
static char url[256];

static sg_webhook_opts_t fast_opts(const char *u) {
  sg_webhook_opts_t o;
  memset(&o, 0, sizeof(o));
  o.url = u;
  o.sandbox_id = "sbx-123";
  o.retry_delay_ms[0] = 10;
  o.retry_delay_ms[1] = 20;
  o.retry_delay_ms[2] = 40;
  o.dedup_window_ms = 300;
  o.attempt_timeout_ms = 2000;
  return o;
}

static int wh_start_opts(const sg_webhook_opts_t *o) {
  char err[512];
  int rc = sg_webhook_new(&loop, o, &wh, err, sizeof(err));
  if (rc)
    fprintf(stderr, "  %s\n", err);
  return rc;
}

static int wh_start(void) {
  snprintf(url, sizeof(url), "http://127.0.0.1:%u/hook?x=1", server_port);
  sg_webhook_opts_t o = fast_opts(url);
  return wh_start_opts(&o);
}

static const sg_webhook_stats_t *st(void) {
  return sg_webhook_stats(wh);
}

static void notify(const char *name) {
  sg_webhook_notify(wh, name, strlen(name));
}

static int settled(void) {
  return st()->pending == 0;
}
static int got1(void) {
  return rx.n >= 1;
}

/* Checks "<prefix><YYYY-MM-DDTHH:MM:SSZ><suffix>" and that the time is
 * now (within a few seconds). */
static int body_matches(const char *body, const char *prefix,
                        const char *suffix) {
  size_t pl = strlen(prefix);
  if (strncmp(body, prefix, pl) != 0)
    return 0;
  const char *ts = body + pl;
  struct tm tm;
  memset(&tm, 0, sizeof(tm));
  const char *end = strptime(ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (!end || end - ts != 20 || strcmp(end, suffix) != 0)
    return 0;
  time_t t = timegm(&tm);
  time_t now = time(NULL);
  return t <= now && now - t < 5;
}

/* ---- cases ---- */

static void test_url_parse(void) {
  char host[SG_HTTP_HOST_MAX], path[SG_HTTP_PATH_MAX], err[512];
  uint16_t port;
#define PARSE(u)                                                               \
  sg_http_url_parse(u, host, sizeof(host), &port, path, sizeof(path), err,     \
                    sizeof(err))
  ASSERT_EQ(PARSE("http://hooks.example.com:8080/a/b?c=d#frag"), 0);
  ASSERT_STREQ(host, "hooks.example.com");
  ASSERT_EQ(port, 8080);
  ASSERT_STREQ(path, "/a/b?c=d");
  ASSERT_EQ(PARSE("http://example.com"), 0);
  ASSERT_STREQ(host, "example.com");
  ASSERT_EQ(port, 80);
  ASSERT_STREQ(path, "/");
  ASSERT_EQ(PARSE("HTTP://Example.com?q=1"), 0);
  ASSERT_STREQ(host, "Example.com");
  ASSERT_STREQ(path, "/?q=1");
  ASSERT_EQ(PARSE("http://10.0.0.1:9/"), 0);
  ASSERT_STREQ(host, "10.0.0.1");
  ASSERT_EQ(port, 9);
  ASSERT_EQ(PARSE("http://[::1]:8080/x"), 0);
  ASSERT_STREQ(host, "::1");
  ASSERT_EQ(port, 8080);
  ASSERT_STREQ(path, "/x");
  ASSERT_EQ(PARSE("http://[2001:db8::1]"), 0);
  ASSERT_STREQ(host, "2001:db8::1");
  ASSERT_EQ(port, 80);

  ASSERT_EQ(PARSE("https://hooks.example.com/x"), -EINVAL);
  ASSERT(strstr(err, "https is not supported") != NULL);
  ASSERT(strstr(err, "TLS") != NULL);
  ASSERT(strstr(err, "https://hooks.example.com/x") != NULL);
  const char *bad[] = {"",
                       "garbage",
                       "ftp://example.com/",
                       "http://",
                       "http:///path",
                       "http://:80/",
                       "http://example.com:/",
                       "http://example.com:0/",
                       "http://example.com:65536/",
                       "http://example.com:80a/",
                       "http://example.com:8080:1/",
                       "http://user:pw@example.com/",
                       "http://exa mple.com/",
                       "http://example.com/a b",
                       "http://example.com/a\r\nX: y",
                       "http://[::1/",
                       "http://[nonsense]/",
                       "http://[::1]x/",
                       NULL};
  for (int i = 0; bad[i]; i++) {
    err[0] = '\0';
    if (PARSE(bad[i]) != -EINVAL) {
      fprintf(stderr, "  accepted: \"%s\"\n", bad[i]);
      ASSERT(0);
    }
    ASSERT(err[0] != '\0');
  }
  ASSERT_EQ(sg_http_url_parse(NULL, host, sizeof(host), &port, path,
                              sizeof(path), err, sizeof(err)),
            -EINVAL);
#undef PARSE
}

static void test_https_refused(void) {
  loop_setup();
  sg_webhook_opts_t o = fast_opts("https://hooks.example.com/deny");
  char err[512] = "";
  sg_webhook_t *w = NULL;
  ASSERT_EQ(sg_webhook_new(&loop, &o, &w, err, sizeof(err)), -EINVAL);
  ASSERT(w == NULL);
  ASSERT(strstr(err, "deny webhook") != NULL);
  ASSERT(strstr(err, "no TLS library") != NULL);
  o.url = "not a url";
  ASSERT_EQ(sg_webhook_new(&loop, &o, &w, err, sizeof(err)), -EINVAL);
  ASSERT(strstr(err, "not a url") != NULL);
  ASSERT_EQ(loop_teardown(), 0);
}

static void test_one_post(void) {
  loop_setup();
  ASSERT_EQ(server_start(), 0);
  ASSERT_EQ(wh_start(), 0);
  notify("blocked.example.com");
  ASSERT_EQ(st()->pending, 1);
  ASSERT(run_until(settled, 3000));
  run_for(50); /* nothing more comes */
  ASSERT_EQ(rx.n, 1);
  rec_t *r = &rx.recs[0];
  ASSERT_STREQ(r->method, "POST");
  ASSERT_STREQ(r->path, "/hook?x=1");
  ASSERT_STREQ(r->ctype, "application/json");
  char host[64];
  snprintf(host, sizeof(host), "127.0.0.1:%u", server_port);
  ASSERT_STREQ(r->host, host);
  ASSERT_STREQ(r->conn, "close");
  ASSERT_STREQ(r->agent, "sandgate");
  if (!body_matches(r->body,
                    "{\"hostname\":\"blocked.example.com\",\"timestamp\":\"",
                    "\",\"source\":\"opensandbox-egress\",\"sandboxId\":"
                    "\"sbx-123\"}")) {
    fprintf(stderr, "  body: %s\n", r->body);
    ASSERT(0);
  }
  ASSERT_EQ(st()->sent, 1);
  ASSERT_EQ(st()->failed, 0);
  ASSERT_EQ(st()->attempts, 1);
  ASSERT_EQ(st()->dropped, 0);
  ASSERT_EQ(st()->deduplicated, 0);
  sg_webhook_close(wh);
  sg_http_server_close(server);
  ASSERT_EQ(loop_teardown(), 0);
}

static void test_empty_sandbox_id(void) {
  loop_setup();
  ASSERT_EQ(server_start(), 0);
  snprintf(url, sizeof(url), "http://127.0.0.1:%u", server_port);
  sg_webhook_opts_t o = fast_opts(url);
  o.sandbox_id = NULL;
  ASSERT_EQ(wh_start_opts(&o), 0);
  notify("x.test");
  ASSERT(run_until(settled, 3000));
  ASSERT_EQ(rx.n, 1);
  ASSERT_STREQ(rx.recs[0].path, "/");
  ASSERT(
      body_matches(rx.recs[0].body, "{\"hostname\":\"x.test\",\"timestamp\":\"",
                   "\",\"source\":\"opensandbox-egress\",\"sandboxId\":\"\"}"));
  sg_webhook_close(wh);
  sg_http_server_close(server);
  ASSERT_EQ(loop_teardown(), 0);
}

static void test_dedup_window(void) {
  loop_setup();
  ASSERT_EQ(server_start(), 0);
  ASSERT_EQ(wh_start(), 0);
  uint64_t t0 = uv_now(&loop);
  notify("twice.example.com"); /* A */
  notify("twice.example.com"); /* AAAA */
  notify("TWICE.example.com.");
  ASSERT_EQ(st()->deduplicated, 2);
  ASSERT(run_until(settled, 3000));
  notify("twice.example.com"); /* still within the window */
  run_for(100);
  ASSERT_EQ(rx.n, 1);
  ASSERT_EQ(st()->deduplicated, 3);
  ASSERT(uv_now(&loop) - t0 < 300);
  /* Another name is not affected. */
  notify("other.example.com");
  ASSERT(run_until(settled, 3000));
  ASSERT_EQ(rx.n, 2);
  /* After the window: reported again. */
  run_for(300 - (uv_now(&loop) - t0) + 20);
  notify("twice.example.com");
  ASSERT(run_until(settled, 3000));
  ASSERT_EQ(rx.n, 3);
  ASSERT(strstr(rx.recs[2].body, "\"hostname\":\"twice.example.com\"") != NULL);
  ASSERT_EQ(st()->sent, 3);
  ASSERT_EQ(st()->deduplicated, 3);
  sg_webhook_close(wh);
  sg_http_server_close(server);
  ASSERT_EQ(loop_teardown(), 0);
}

/* The memory of reported names is bounded: past the limit the oldest is
 * forgotten, and reported again. */
static void test_dedup_bounded(void) {
  loop_setup();
  ASSERT_EQ(server_start(), 0);
  snprintf(url, sizeof(url), "http://127.0.0.1:%u/", server_port);
  sg_webhook_opts_t o = fast_opts(url);
  o.dedup_max = 4;
  ASSERT_EQ(wh_start_opts(&o), 0);
  const char *names[] = {"n0.test", "n1.test", "n2.test", "n3.test", "n4.test"};
  for (int i = 0; i < 5; i++)
    notify(names[i]);
  notify("n0.test"); /* forgotten: reported again */
  notify("n4.test"); /* remembered */
  notify("n1.test"); /* forgotten when n0 came back */
  ASSERT_EQ(st()->deduplicated, 1);
  ASSERT(run_until(settled, 3000));
  ASSERT_EQ(rx.n, 7);
  ASSERT_EQ(st()->sent, 7);
  sg_webhook_close(wh);
  sg_http_server_close(server);
  ASSERT_EQ(loop_teardown(), 0);
}

static void test_retry_then_success(void) {
  loop_setup();
  ASSERT_EQ(server_start(), 0);
  rx.statuses[0] = 500;
  rx.statuses[1] = 503;
  rx.statuses[2] = 200;
  rx.nstatuses = 3;
  ASSERT_EQ(wh_start(), 0);
  notify("retry.example.com");
  ASSERT(run_until(settled, 3000));
  run_for(100);
  ASSERT_EQ(rx.n, 3);
  ASSERT_EQ(st()->sent, 1);
  ASSERT_EQ(st()->failed, 0);
  ASSERT_EQ(st()->attempts, 3);
  /* The same document each time, after the backoff. */
  ASSERT_STREQ(rx.recs[0].body, rx.recs[1].body);
  ASSERT_STREQ(rx.recs[1].body, rx.recs[2].body);
  ASSERT(rx.recs[1].at - rx.recs[0].at >= 10);
  ASSERT(rx.recs[2].at - rx.recs[1].at >= 20);
  sg_webhook_close(wh);
  sg_http_server_close(server);
  ASSERT_EQ(loop_teardown(), 0);
}

static void test_retry_exhausted(void) {
  loop_setup();
  ASSERT_EQ(server_start(), 0);
  for (int i = 0; i < 8; i++)
    rx.statuses[i] = 500;
  rx.nstatuses = 8;
  ASSERT_EQ(wh_start(), 0);
  uint64_t t0 = uv_now(&loop);
  notify("five-hundred.example.com");
  ASSERT(run_until(settled, 3000));
  ASSERT(uv_now(&loop) - t0 >= 70); /* 10 + 20 + 40 */
  run_for(150);                     /* no fifth attempt */
  ASSERT_EQ(rx.n, 4);
  ASSERT_EQ(st()->failed, 1);
  ASSERT_EQ(st()->sent, 0);
  ASSERT_EQ(st()->attempts, 4);
  ASSERT(rx.recs[3].at - rx.recs[2].at >= 40);
  sg_webhook_close(wh);
  sg_http_server_close(server);
  ASSERT_EQ(loop_teardown(), 0);
}

static void test_4xx_not_retried(void) {
  loop_setup();
  ASSERT_EQ(server_start(), 0);
  rx.statuses[0] = 404;
  rx.nstatuses = 1;
  ASSERT_EQ(wh_start(), 0);
  notify("missing.example.com");
  ASSERT(run_until(settled, 3000));
  run_for(150);
  ASSERT_EQ(rx.n, 1);
  ASSERT_EQ(st()->failed, 1);
  ASSERT_EQ(st()->sent, 0);
  ASSERT_EQ(st()->attempts, 1);
  sg_webhook_close(wh);
  sg_http_server_close(server);
  ASSERT_EQ(loop_teardown(), 0);
}

static void test_3xx_ends_it(void) {
  loop_setup();
  ASSERT_EQ(server_start(), 0);
  rx.statuses[0] = 302;
  rx.nstatuses = 1;
  ASSERT_EQ(wh_start(), 0);
  notify("moved.example.com");
  ASSERT(run_until(settled, 3000));
  run_for(100);
  ASSERT_EQ(rx.n, 1);
  ASSERT_EQ(st()->sent, 1);
  ASSERT_EQ(st()->failed, 0);
  sg_webhook_close(wh);
  sg_http_server_close(server);
  ASSERT_EQ(loop_teardown(), 0);
}

static int two_attempts(void) {
  return st()->attempts >= 2;
}

static void test_dead_receiver(void) {
  loop_setup();
  snprintf(url, sizeof(url), "http://127.0.0.1:%u/hook",
           dead_port(SOCK_STREAM));
  sg_webhook_opts_t o = fast_opts(url);
  ASSERT_EQ(wh_start_opts(&o), 0);
  uint64_t t0 = uv_now(&loop);
  notify("dead.example.com");
  ASSERT(run_until(two_attempts, 3000));
  ASSERT_EQ(st()->pending, 1);

  /* While deliveries fail and back off, reporting stays immediate. */
  char names[1000][32];
  for (int i = 0; i < 1000; i++)
    snprintf(names[i], sizeof(names[i]), "n%d.flood.example", i);
  uint64_t start = uv_hrtime();
  for (int i = 0; i < 1000; i++)
    sg_webhook_notify(wh, names[i], strlen(names[i]));
  uint64_t took_ns = uv_hrtime() - start;
  fprintf(stderr, "  1000 notify calls: %.3f ms\n", took_ns / 1e6);
  ASSERT(took_ns < 5000000);
  ASSERT_EQ(st()->pending, 256);
  ASSERT_EQ(st()->dropped, 1000 - 255);

  ASSERT(run_until(settled, 10000));
  ASSERT(uv_now(&loop) - t0 >= 70);
  ASSERT_EQ(st()->failed, 256);
  ASSERT_EQ(st()->sent, 0);
  ASSERT_EQ(st()->attempts, 256 * 4);
  sg_webhook_close(wh);
  ASSERT_EQ(loop_teardown(), 0);
}

static int four_accepted(void) {
  return raw.accepted >= 4;
}

/* A receiver that accepts and never answers: each attempt times out. */
static void test_timeout_retried(void) {
  loop_setup();
  raw_start(RAW_STALL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%u/", raw.port);
  sg_webhook_opts_t o = fast_opts(url);
  o.attempt_timeout_ms = 50;
  ASSERT_EQ(wh_start_opts(&o), 0);
  notify("slow.example.com");
  ASSERT(run_until(settled, 3000));
  run_for(100);
  ASSERT_EQ(raw.accepted, 4);
  ASSERT_EQ(st()->failed, 1);
  ASSERT_EQ(st()->attempts, 4);
  sg_webhook_close(wh);
  raw_stop();
  ASSERT_EQ(loop_teardown(), 0);
}

/* Answers that are not HTTP, and connections closed without an answer,
 * are transport errors: retried, then failed. */
static void test_bad_answers(void) {
  raw_mode_t modes[] = {RAW_GARBAGE, RAW_CLOSE};
  for (size_t m = 0; m < SG_ARRAY_LEN(modes); m++) {
    loop_setup();
    raw_start(modes[m]);
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/", raw.port);
    sg_webhook_opts_t o = fast_opts(url);
    ASSERT_EQ(wh_start_opts(&o), 0);
    notify("garbage.example.com");
    ASSERT(run_until(settled, 3000));
    ASSERT_EQ(raw.accepted, 4);
    ASSERT_EQ(st()->failed, 1);
    sg_webhook_close(wh);
    raw_stop();
    ASSERT_EQ(loop_teardown(), 0);
  }
}

static void test_queue_overflow(void) {
  loop_setup();
  raw_start(RAW_STALL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%u/", raw.port);
  sg_webhook_opts_t o = fast_opts(url);
  ASSERT_EQ(wh_start_opts(&o), 0);
  for (int i = 0; i < 300; i++) {
    char name[32];
    snprintf(name, sizeof(name), "q%d.example.com", i);
    notify(name);
  }
  ASSERT_EQ(st()->pending, 256);
  ASSERT_EQ(st()->dropped, 44);
  /* The receiver is slow: no more than 4 requests at once. */
  ASSERT(run_until(four_accepted, 3000));
  run_for(100);
  ASSERT_EQ(raw.accepted, 4);
  ASSERT_EQ(raw.max_open, 4);
  ASSERT_EQ(st()->pending, 256);
  notify("q299.example.com"); /* dropped, not remembered: dropped again */
  ASSERT_EQ(st()->dropped, 45);
  ASSERT_EQ(st()->deduplicated, 0);
  notify("q0.example.com");
  ASSERT_EQ(st()->deduplicated, 1);
  /* Closed with requests in flight and events queued. */
  sg_webhook_close(wh);
  raw_stop();
  ASSERT_EQ(loop_teardown(), 0);
}

static void test_json_escape(void) {
  loop_setup();
  ASSERT_EQ(server_start(), 0);
  ASSERT_EQ(wh_start(), 0);
  static const char name[] = "a\"b\\c\x01\n\t\x7f\xc3.example";
  sg_webhook_notify(wh, name, sizeof(name) - 1);
  ASSERT(run_until(settled, 3000));
  ASSERT_EQ(rx.n, 1);
  ASSERT(body_matches(rx.recs[0].body,
                      "{\"hostname\":\"a\\\"b\\\\c\\u0001\\n\\t\\u007f\\u00c3"
                      ".example\",\"timestamp\":\"",
                      "\",\"source\":\"opensandbox-egress\",\"sandboxId\":"
                      "\"sbx-123\"}"));
  sg_webhook_close(wh);
  sg_http_server_close(server);

  /* The sandbox id is escaped as well. */
  ASSERT_EQ(server_start(), 0);
  snprintf(url, sizeof(url), "http://127.0.0.1:%u/", server_port);
  sg_webhook_opts_t o = fast_opts(url);
  o.sandbox_id = "id\"with\\quote";
  ASSERT_EQ(wh_start_opts(&o), 0);
  notify("x.example");
  ASSERT(run_until(settled, 3000));
  ASSERT_EQ(rx.n, 1);
  ASSERT(strstr(rx.recs[0].body, "\"sandboxId\":\"id\\\"with\\\\quote\"}") !=
         NULL);
  sg_webhook_close(wh);
  sg_http_server_close(server);
  ASSERT_EQ(loop_teardown(), 0);
}

static void test_localhost_resolution(void) {
  loop_setup();
  ASSERT_EQ(server_start(), 0);
  snprintf(url, sizeof(url), "http://localhost:%u/deny", server_port);
  sg_webhook_opts_t o = fast_opts(url);
  ASSERT_EQ(wh_start_opts(&o), 0);
  notify("resolved.example.com");
  ASSERT(run_until(settled, 3000));
  ASSERT_EQ(rx.n, 1);
  ASSERT_EQ(st()->sent, 1);
  char host[64];
  snprintf(host, sizeof(host), "localhost:%u", server_port);
  ASSERT_STREQ(rx.recs[0].host, host);
  ASSERT_STREQ(rx.recs[0].path, "/deny");
  sg_webhook_close(wh);
  sg_http_server_close(server);
  ASSERT_EQ(loop_teardown(), 0);
}

/* ---- the client on its own ---- */

static int client_status[8];
static int client_done;

static void on_client(void *arg, int status) {
  client_status[(intptr_t)arg] = status;
  client_done++;
}

static int all_done(void) {
  return client_done >= 1;
}

static void test_client_errors(void) {
  loop_setup();
  client_done = 0;
  /* Nameservers that refuse: a name not in the hosts file fails fast. */
  sg_http_client_opts_t co;
  memset(&co, 0, sizeof(co));
  struct sockaddr_in *sin = (struct sockaddr_in *)&co.dns_servers[0];
  uv_ip4_addr("127.0.0.1", dead_port(SOCK_DGRAM), sin);
  co.ndns_servers = 1;
  sg_http_client_t *cl;
  char err[256];
  ASSERT_EQ(sg_http_client_new(&loop, &co, &cl, err, sizeof(err)), 0);
  sg_http_client_req_t q = {.method = "GET",
                            .host = "no-such-host.sandgate.test",
                            .port = 80,
                            .path = "/",
                            .timeout_ms = 1000};
  ASSERT_EQ(sg_http_client_request(cl, &q, on_client, (void *)0), 0);
  ASSERT_EQ(client_done, 0); /* never from within the call */
  ASSERT(run_until(all_done, 3000));
  ASSERT(client_status[0] < 0);
  ASSERT(client_status[0] != UV_ETIMEDOUT);
  ASSERT(sg_http_client_strerror(client_status[0])[0] != '\0');

  /* Bad requests are refused at once. */
  q.host = "127.0.0.1";
  q.path = "/a b";
  ASSERT_EQ(sg_http_client_request(cl, &q, on_client, NULL), -EINVAL);
  q.path = "nopath";
  ASSERT_EQ(sg_http_client_request(cl, &q, on_client, NULL), -EINVAL);

  /* Connection refused, on an IP literal. */
  client_done = 0;
  q.path = "/";
  q.port = dead_port(SOCK_STREAM);
  ASSERT_EQ(sg_http_client_request(cl, &q, on_client, (void *)1), 0);
  ASSERT(run_until(all_done, 3000));
  ASSERT_EQ(client_status[1], UV_ECONNREFUSED);

  /* Garbage, and a close before any answer. */
  raw_start(RAW_GARBAGE);
  client_done = 0;
  q.port = raw.port;
  ASSERT_EQ(sg_http_client_request(cl, &q, on_client, (void *)2), 0);
  ASSERT(run_until(all_done, 3000));
  ASSERT_EQ(client_status[2], UV_EPROTO);
  raw.mode = RAW_CLOSE;
  client_done = 0;
  ASSERT_EQ(sg_http_client_request(cl, &q, on_client, (void *)3), 0);
  ASSERT(run_until(all_done, 3000));
  ASSERT_EQ(client_status[3], UV_EOF);

  /* IPv6 literal (when the host has IPv6 loopback). */
  client_done = 0;
  q.host = "::1";
  q.port = dead_port(SOCK_STREAM);
  ASSERT_EQ(sg_http_client_request(cl, &q, on_client, (void *)4), 0);
  ASSERT(run_until(all_done, 3000));
  ASSERT(client_status[4] < 0);

  sg_http_client_close(cl);
  raw_stop();
  ASSERT_EQ(loop_teardown(), 0);
}

static void test_client_close_cancels(void) {
  loop_setup();
  client_done = 0;
  /* A nameserver that never answers: the lookup is pending at close. */
  int ufd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in us = {.sin_family = AF_INET,
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  bind(ufd, (struct sockaddr *)&us, sizeof(us));
  socklen_t ulen = sizeof(us);
  getsockname(ufd, (struct sockaddr *)&us, &ulen);
  sg_http_client_opts_t co;
  memset(&co, 0, sizeof(co));
  memcpy(&co.dns_servers[0], &us, sizeof(us));
  co.ndns_servers = 1;
  sg_http_client_t *cl;
  char err[256];
  ASSERT_EQ(sg_http_client_new(&loop, &co, &cl, err, sizeof(err)), 0);
  raw_start(RAW_STALL);
  sg_http_client_req_t q = {.method = "POST",
                            .host = "pending.sandgate.test",
                            .port = 80,
                            .path = "/",
                            .body = "{}",
                            .body_len = 2};
  ASSERT_EQ(sg_http_client_request(cl, &q, on_client, (void *)0), 0);
  q.host = "127.0.0.1";
  q.port = raw.port;
  ASSERT_EQ(sg_http_client_request(cl, &q, on_client, (void *)1), 0);
  run_for(50);
  ASSERT_EQ(client_done, 0);
  ASSERT_EQ(raw.accepted, 1);
  /* And one not even started. */
  ASSERT_EQ(sg_http_client_request(cl, &q, on_client, (void *)2), 0);
  sg_http_client_close(cl);
  ASSERT_EQ(client_done, 3);
  ASSERT_EQ(client_status[0], UV_ECANCELED);
  ASSERT_EQ(client_status[1], UV_ECANCELED);
  ASSERT_EQ(client_status[2], UV_ECANCELED);
  raw_stop();
  close(ufd);
  ASSERT_EQ(loop_teardown(), 0);
}

static void test_close_in_flight(void) {
  loop_setup();
  ASSERT_EQ(server_start(), 0);
  ASSERT_EQ(wh_start(), 0);
  /* Queued and not started yet. */
  notify("a.example.com");
  notify("b.example.com");
  sg_webhook_close(wh);
  sg_http_server_close(server);
  ASSERT_EQ(loop_teardown(), 0);
  ASSERT_EQ(rx.n, 0);

  /* Mid-backoff, and in flight against a receiver that stalls. */
  loop_setup();
  ASSERT_EQ(server_start(), 0);
  rx.statuses[0] = 500;
  rx.nstatuses = 1;
  snprintf(url, sizeof(url), "http://127.0.0.1:%u/", server_port);
  sg_webhook_opts_t o1 = fast_opts(url);
  o1.retry_delay_ms[0] = 5000;
  ASSERT_EQ(wh_start_opts(&o1), 0);
  notify("c.example.com");
  ASSERT(run_until(got1, 3000));
  sg_http_server_close(server);
  raw_start(RAW_STALL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%u/", raw.port);
  sg_webhook_opts_t o = fast_opts(url);
  sg_webhook_t *first = wh;
  ASSERT_EQ(wh_start_opts(&o), 0);
  for (int i = 0; i < 10; i++) {
    char name[32];
    snprintf(name, sizeof(name), "f%d.example.com", i);
    notify(name);
  }
  ASSERT(run_until(four_accepted, 3000));
  sg_webhook_close(first);
  sg_webhook_close(wh);
  sg_webhook_close(NULL);
  sg_webhook_notify(NULL, "x", 1);
  raw_stop();
  ASSERT_EQ(loop_teardown(), 0);
}

static void test_defaults(void) {
  /* The production timings, without waiting for them: an event that
   * failed once is not tried again within the first second. */
  loop_setup();
  ASSERT_EQ(server_start(), 0);
  rx.statuses[0] = 500;
  rx.nstatuses = 1;
  snprintf(url, sizeof(url), "http://127.0.0.1:%u/", server_port);
  sg_webhook_opts_t o;
  memset(&o, 0, sizeof(o));
  o.url = url;
  ASSERT_EQ(wh_start_opts(&o), 0);
  notify("slowly.example.com");
  ASSERT(run_until(got1, 3000));
  run_for(900);
  ASSERT_EQ(rx.n, 1);
  ASSERT(run_until(settled, 1500));
  ASSERT_EQ(rx.n, 2);
  ASSERT_EQ(st()->sent, 1);
  /* The 10 s window: within it, deduplicated. */
  notify("slowly.example.com");
  ASSERT_EQ(st()->deduplicated, 1);
  ASSERT(strstr(rx.recs[1].body, "\"sandboxId\":\"\"}") != NULL);
  sg_webhook_close(wh);
  sg_http_server_close(server);
  ASSERT_EQ(loop_teardown(), 0);
}

int main(void) {
  sg_log_set_level(SG_LOG_ERROR);
  static const sg_test_case_t cases[] = {
      {"url_parse", test_url_parse},
      {"https_refused", test_https_refused},
      {"one_post", test_one_post},
      {"empty_sandbox_id", test_empty_sandbox_id},
      {"dedup_window", test_dedup_window},
      {"dedup_bounded", test_dedup_bounded},
      {"retry_then_success", test_retry_then_success},
      {"retry_exhausted", test_retry_exhausted},
      {"4xx_not_retried", test_4xx_not_retried},
      {"3xx_ends_it", test_3xx_ends_it},
      {"dead_receiver", test_dead_receiver},
      {"timeout_retried", test_timeout_retried},
      {"bad_answers", test_bad_answers},
      {"queue_overflow", test_queue_overflow},
      {"json_escape", test_json_escape},
      {"localhost_resolution", test_localhost_resolution},
      {"client_errors", test_client_errors},
      {"client_close_cancels", test_client_close_cancels},
      {"close_in_flight", test_close_in_flight},
      {"defaults", test_defaults},
      {NULL, NULL},
  };
  return sg_test_run(cases);
}
