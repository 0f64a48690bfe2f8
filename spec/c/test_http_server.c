/* Tests for core/http/server.c. Each case runs the server in this thread's
 * uv loop on 127.0.0.1, port 0, and a scenario in a client thread that
 * speaks raw bytes over blocking sockets, so every test says exactly what
 * goes over the wire. The scenario ends by stopping the loop (uv_async_send),
 * which closes the server; the loop must then have nothing left open. */
#include "http/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "sgtest.h"
#include "util/common.h"

/* ---- the server side ---- */

static uv_async_t stop_async;
static sg_http_server_t *server;
static uint16_t port;
static int stopped;

#define BIG_LEN (256 * 1024)
static char big[BIG_LEN];

/* Echoes what it was given, so that a test sees what the server parsed;
 * a few paths answer otherwise. */
static void handler(void *ctx, const sg_http_request_t *req,
                    sg_http_reply_t *reply) {
  char path[256];
  snprintf(path, sizeof(path), "%.*s", (int)req->path_len, req->path);
  if (strcmp(path, "/size") == 0) {
    char out[64];
    int n = snprintf(out, sizeof(out), "len=%zu", req->body_len);
    sg_http_respond(reply, 200, "text/plain", out, (size_t)n, NULL);
  } else if (strcmp(path, "/extra") == 0) {
    sg_http_respond(reply, 201, "application/json", "{}", 2,
                    "X-One: 1\r\nX-Two: 2\r\n");
  } else if (strcmp(path, "/extra-nocrlf") == 0) {
    sg_http_respond(reply, 200, NULL, "", 0, "X-One: 1");
  } else if (strcmp(path, "/nobody") == 0) {
    sg_http_respond(reply, 204, NULL, NULL, 0, NULL);
  } else if (strcmp(path, "/noreply") == 0) {
    /* Forgets to answer. */
  } else if (strcmp(path, "/twice") == 0) {
    sg_http_respond(reply, 200, "text/plain", "first", 5, NULL);
    sg_http_respond(reply, 200, "text/plain", "second", 6, NULL);
  } else if (strcmp(path, "/badstatus") == 0) {
    sg_http_respond(reply, 42, "text/plain", "x", 1, NULL);
  } else if (strcmp(path, "/big") == 0) {
    sg_http_respond(reply, 200, "text/plain", big, BIG_LEN, NULL);
  } else if (strcmp(path, "/close") == 0) {
    /* Closing the server from a handler: the answer is dropped with the
     * connection. */
    sg_http_server_close(server);
    server = NULL;
    sg_http_respond(reply, 200, "text/plain", "bye", 3, NULL);
  } else if (strcmp(path, "/headers") == 0) {
    /* Lookups in every case, and a missing one. */
    size_t l1 = 0, l2 = 0, l3 = 0;
    const char *a = sg_http_header(req, "x-mixed-case", &l1);
    const char *b = sg_http_header(req, "X-MIXED-CASE", &l2);
    const char *e = sg_http_header(req, "X-Empty", &l3);
    const char *m = sg_http_header(req, "X-Missing", NULL);
    char out[256];
    int n = snprintf(out, sizeof(out), "%s|%zu|%s|%zu|%s|%zu|%s", a ? a : "-",
                     l1, b ? b : "-", l2, e ? e : "-", l3, m ? m : "-");
    sg_http_respond(reply, 200, "text/plain", out, (size_t)n, NULL);
  } else {
    const char *h = sg_http_header(req, "x-test", NULL);
    size_t cap = req->body_len + req->path_len + req->query_len + 256;
    char *out = malloc(cap);
    int n =
        snprintf(out, cap, "%s %.*s q=%s h=%s b=%.*s", req->method,
                 (int)req->path_len, req->path, req->query ? req->query : "-",
                 h ? h : "-", (int)req->body_len, req->body);
    sg_http_respond(reply, 200, "text/plain", out, (size_t)n, NULL);
    free(out);
  }
}

static void on_stop(uv_async_t *a) {
  sg_http_server_close(server);
  uv_close((uv_handle_t *)a, NULL);
}

/* Stops the loop, which closes the server; once. A scenario may call it
 * itself to watch the server drop its clients. */
static void stop_server(void) {
  if (!stopped) {
    stopped = 1;
    uv_async_send(&stop_async);
  }
}

static void (*scenario)(void);

static void *client_main(void *arg) {
  scenario();
  stop_server();
  return NULL;
}

/* Runs a scenario against a server with these options. */
static void run(sg_http_server_opts_t *o, void (*fn)(void)) {
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  struct sockaddr_in *sin = (struct sockaddr_in *)&o->listen;
  sin->sin_family = AF_INET;
  sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sin->sin_port = 0;
  o->handler = handler;
  char err[256] = "";
  int rc = sg_http_server_start(&loop, o, &server, err, sizeof(err));
  if (rc)
    fprintf(stderr, "  %s\n", err);
  ASSERT_EQ(rc, 0);
  port = sg_http_server_port(server);
  ASSERT(port != 0);
  stopped = 0;
  ASSERT_EQ(uv_async_init(&loop, &stop_async, on_stop), 0);
  scenario = fn;
  pthread_t th;
  ASSERT_EQ(pthread_create(&th, NULL, client_main, NULL), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  pthread_join(th, NULL);
  /* Everything the server opened is closed and freed by now. */
  ASSERT_EQ(uv_loop_close(&loop), 0);
}

/* ---- the client side ---- */

typedef struct {
  int fd;
  char buf[1 << 16];
  size_t len;
} client_t;

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

static void set_timeout(int fd, int ms) {
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* Connects with 5 s send and receive timeouts, so that no test can hang.
 * Returns NULL on failure. */
static client_t *client_new_rcvbuf(int rcvbuf) {
  client_t *c = calloc(1, sizeof(*c));
  c->fd = socket(AF_INET, SOCK_STREAM, 0);
  set_timeout(c->fd, 5000);
  if (rcvbuf)
    setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(c->fd, (struct sockaddr *)&sin, sizeof(sin)) != 0) {
    close(c->fd);
    free(c);
    return NULL;
  }
  return c;
}

static client_t *client_new(void) {
  return client_new_rcvbuf(0);
}

static void client_free(client_t *c) {
  if (c) {
    close(c->fd);
    free(c);
  }
}

/* Returns 0 once everything is sent, -1 if the server stopped taking it. */
static int send_all(client_t *c, const char *data, size_t len) {
  while (len > 0) {
    ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    data += n;
    len -= (size_t)n;
  }
  return 0;
}

static int send_str(client_t *c, const char *s) {
  return send_all(c, s, strlen(s));
}

/* Reads more into the buffer: >0 bytes read, 0 at EOF, -1 on an error
 * (ECONNRESET) or the timeout. */
static ssize_t fill(client_t *c) {
  if (c->len == sizeof(c->buf))
    return -1;
  ssize_t n;
  do
    n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
  while (n < 0 && errno == EINTR);
  if (n > 0)
    c->len += (size_t)n;
  return n;
}

/* Takes one whole response off the connection into out (NUL-terminated)
 * and returns its length, or -1 if the connection ended first. The body
 * length comes from Content-Length; `head` says none follows (HEAD). */
static ssize_t read_response(client_t *c, char *out, size_t cap, int head) {
  char *end;
  for (;;) {
    c->buf[c->len < sizeof(c->buf) ? c->len : sizeof(c->buf) - 1] = '\0';
    end = strstr(c->buf, "\r\n\r\n");
    if (end)
      break;
    if (fill(c) <= 0)
      return -1;
  }
  size_t hlen = (size_t)(end + 4 - c->buf);
  int status = atoi(c->buf + 9);
  size_t blen = 0;
  const char *cl = strstr(c->buf, "Content-Length: ");
  if (cl && cl < end && !head && status >= 200 && status != 204 &&
      status != 304)
    blen = strtoul(cl + 16, NULL, 10);
  while (c->len < hlen + blen)
    if (fill(c) <= 0)
      return -1;
  size_t total = hlen + blen;
  if (total + 1 > cap)
    return -1;
  memcpy(out, c->buf, total);
  out[total] = '\0';
  memmove(c->buf, c->buf + total, c->len - total);
  c->len -= total;
  return (ssize_t)total;
}

/* 1 if the server closed the connection (EOF or reset) with nothing more
 * sent, 0 if bytes came, -1 if nothing happened within the timeout. */
static int closed_within(client_t *c, int ms) {
  if (c->len)
    return 0;
  set_timeout(c->fd, ms);
  ssize_t n = fill(c);
  int timed_out = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  set_timeout(c->fd, 5000);
  if (n == 0 || (n < 0 && !timed_out))
    return 1;
  return n > 0 ? 0 : -1;
}

static int is_closed(client_t *c) {
  return closed_within(c, 3000) == 1;
}

static const char *body_of(const char *resp) {
  const char *b = strstr(resp, "\r\n\r\n");
  return b ? b + 4 : "";
}

/* One request on a fresh connection; the response goes to out. */
static ssize_t roundtrip(const char *req, char *out, size_t cap) {
  client_t *c = client_new();
  if (!c)
    return -1;
  ssize_t n = send_str(c, req) == 0 ? read_response(c, out, cap, 0) : -1;
  client_free(c);
  return n;
}

/* A request to /size with a Content-Length body of len bytes. */
static char *sized_request(size_t len, size_t *total) {
  char head[128];
  int hn = snprintf(head, sizeof(head),
                    "POST /size HTTP/1.1\r\nHost: t\r\nContent-Length: "
                    "%zu\r\n\r\n",
                    len);
  char *r = malloc((size_t)hn + len);
  memcpy(r, head, (size_t)hn);
  memset(r + hn, 'b', len);
  *total = (size_t)hn + len;
  return r;
}

/* ---- scenarios ---- */

static char resp[1 << 16];

static void sc_simple_get(void) {
  ssize_t n = roundtrip("GET /echo?a=1&b=2 HTTP/1.1\r\nHost: t\r\n"
                        "X-Test: hello\r\n\r\n",
                        resp, sizeof(resp));
  ASSERT(n > 0);
  ASSERT_STREQ(resp, "HTTP/1.1 200 OK\r\n"
                     "Content-Type: text/plain\r\n"
                     "Content-Length: 30\r\n"
                     "\r\n"
                     "GET /echo q=a=1&b=2 h=hello b=");
  /* No query, no header; an empty query is still a query. */
  ASSERT(roundtrip("GET /p HTTP/1.1\r\n\r\n", resp, sizeof(resp)) > 0);
  ASSERT_STREQ(body_of(resp), "GET /p q=- h=- b=");
  ASSERT(roundtrip("GET /p? HTTP/1.1\r\n\r\n", resp, sizeof(resp)) > 0);
  ASSERT_STREQ(body_of(resp), "GET /p q= h=- b=");
  /* The absolute form comes down to its path. */
  ASSERT(roundtrip("GET http://h.example:80/abs?x HTTP/1.1\r\n\r\n", resp,
                   sizeof(resp)) > 0);
  ASSERT_STREQ(body_of(resp), "GET /abs q=x h=- b=");
  ASSERT(roundtrip("OPTIONS http://h.example HTTP/1.1\r\n\r\n", resp,
                   sizeof(resp)) > 0);
  ASSERT_STREQ(body_of(resp), "OPTIONS / q=- h=- b=");
}

static void test_simple_get(void) {
  sg_http_server_opts_t o = {0};
  run(&o, sc_simple_get);
}

static void sc_keepalive(void) {
  client_t *c = client_new();
  ASSERT(c);
  for (int i = 0; i < 2; i++) {
    ASSERT_EQ(send_str(c, "GET /one HTTP/1.1\r\nHost: t\r\n\r\n"), 0);
    ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
    ASSERT(strstr(resp, "Connection:") == NULL);
    ASSERT_STREQ(body_of(resp), "GET /one q=- h=- b=");
  }
  /* Still open. */
  ASSERT_EQ(closed_within(c, 100), -1);
  client_free(c);
}

static void test_keepalive(void) {
  sg_http_server_opts_t o = {0};
  run(&o, sc_keepalive);
}

static void sc_pipelined(void) {
  client_t *c = client_new();
  ASSERT(c);
  ASSERT_EQ(send_str(c, "GET /1 HTTP/1.1\r\nHost: t\r\n\r\n"
                        "POST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                        "GET /3?x=y HTTP/1.1\r\nX-Test: three\r\n\r\n"),
            0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_STREQ(body_of(resp), "GET /1 q=- h=- b=");
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_STREQ(body_of(resp), "POST /2 q=- h=- b=abc");
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_STREQ(body_of(resp), "GET /3 q=x=y h=three b=");
  /* The last one asks to close: answered, then closed, and nothing after
   * it is read. */
  ASSERT_EQ(send_str(c, "GET /4 HTTP/1.1\r\nConnection: close\r\n\r\n"
                        "GET /5 HTTP/1.1\r\n\r\n"),
            0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_STREQ(body_of(resp), "GET /4 q=- h=- b=");
  ASSERT(strstr(resp, "\r\nConnection: close\r\n"));
  ASSERT(is_closed(c));
  client_free(c);
}

static void test_pipelined(void) {
  sg_http_server_opts_t o = {0};
  run(&o, sc_pipelined);
}

/* A request sent a byte at a time is the same request. */
static void sc_byte_by_byte(void) {
  client_t *c = client_new();
  ASSERT(c);
  const char *req = "POST /bytes?q=1 HTTP/1.1\r\nX-Test: slow\r\n"
                    "Content-Length: 4\r\n\r\nbody"
                    "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "3\r\nabc\r\n0\r\n\r\n";
  for (const char *p = req; *p; p++) {
    ASSERT_EQ(send_all(c, p, 1), 0);
    if ((p - req) % 8 == 0)
      sleep_ms(1);
  }
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_STREQ(body_of(resp), "POST /bytes q=q=1 h=slow b=body");
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_STREQ(body_of(resp), "POST /c q=- h=- b=abc");
  client_free(c);
}

static void test_byte_by_byte(void) {
  sg_http_server_opts_t o = {0};
  run(&o, sc_byte_by_byte);
}

static void sc_post_content_length(void) {
  ASSERT(roundtrip("POST /echo HTTP/1.1\r\nHost: t\r\n"
                   "Content-Length: 11\r\n\r\nhello world",
                   resp, sizeof(resp)) > 0);
  ASSERT_STREQ(resp, "HTTP/1.1 200 OK\r\n"
                     "Content-Type: text/plain\r\n"
                     "Content-Length: 32\r\n"
                     "\r\n"
                     "POST /echo q=- h=- b=hello world");
}

static void test_post_content_length(void) {
  sg_http_server_opts_t o = {0};
  run(&o, sc_post_content_length);
}

static void sc_post_chunked(void) {
  client_t *c = client_new();
  ASSERT(c);
  ASSERT_EQ(send_str(c, "POST /echo HTTP/1.1\r\nHost: t\r\n"
                        "Transfer-Encoding: chunked\r\n\r\n5\r\nhel"),
            0);
  sleep_ms(20);
  ASSERT_EQ(send_str(c, "lo\r\n6;ext=1\r\n world\r\n0\r\n"
                        "X-Trailer: t\r\n\r\n"),
            0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_STREQ(body_of(resp), "POST /echo q=- h=- b=hello world");
  /* The connection goes on after a chunked body. */
  ASSERT_EQ(send_str(c, "GET /after HTTP/1.1\r\n\r\n"), 0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_STREQ(body_of(resp), "GET /after q=- h=- b=");
  client_free(c);
}

static void test_post_chunked(void) {
  sg_http_server_opts_t o = {0};
  run(&o, sc_post_chunked);
}

static size_t limit;

/* A body of exactly the limit passes; one byte more is refused with 413 and
 * the connection closed, whether the client sends it all or waits. */
static void sc_body_limit(void) {
  char expect[128];
  snprintf(expect, sizeof(expect), "request body exceeds %zu bytes", limit);
  size_t len;
  char *req = sized_request(limit, &len);
  client_t *c = client_new();
  ASSERT(c);
  ASSERT_EQ(send_all(c, req, len), 0);
  free(req);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  char ok[64];
  snprintf(ok, sizeof(ok), "len=%zu", limit);
  ASSERT_STREQ(body_of(resp), ok);
  client_free(c);

  /* Over: sends the whole body, then reads. The server reads and drops
   * what follows the refusal instead of resetting the connection. */
  req = sized_request(limit + 1, &len);
  c = client_new();
  ASSERT(c);
  int sent = send_all(c, req, len);
  free(req);
  ASSERT_EQ(sent, 0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT(strncmp(resp, "HTTP/1.1 413 Content Too Large\r\n", 32) == 0);
  ASSERT(strstr(resp, "\r\nConnection: close\r\n"));
  ASSERT_STREQ(body_of(resp), expect);
  ASSERT(is_closed(c));
  client_free(c);

  /* Over: the headers alone get the answer. */
  char head[128];
  snprintf(head, sizeof(head),
           "POST /size HTTP/1.1\r\nContent-Length: %zu\r\n\r\n", limit + 1);
  c = client_new();
  ASSERT(c);
  ASSERT_EQ(send_str(c, head), 0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_EQ(atoi(resp + 9), 413);
  /* A client that sends the body anyway is not reset (which could destroy
   * the answer before it is read): the server reads and drops it. */
  size_t more = 4 << 20;
  char *junk = calloc(1, more);
  sent = send_all(c, junk, more);
  free(junk);
  ASSERT_EQ(sent, 0);
  ASSERT(is_closed(c));
  client_free(c);

  /* Chunked: exactly the limit, then over it. */
  for (int over = 0; over <= 1; over++) {
    c = client_new();
    ASSERT(c);
    size_t half = limit / 2;
    size_t rest = limit - half + (size_t)over;
    char *chunk = malloc(rest);
    memset(chunk, 'c', rest);
    char line[64];
    ASSERT_EQ(send_str(c, "POST /size HTTP/1.1\r\n"
                          "Transfer-Encoding: chunked\r\n\r\n"),
              0);
    snprintf(line, sizeof(line), "%zx\r\n", half);
    sent = send_str(c, line) || send_all(c, chunk, half) || send_str(c, "\r\n");
    snprintf(line, sizeof(line), "%zx\r\n", rest);
    sent = sent || send_str(c, line) || send_all(c, chunk, rest) ||
           send_str(c, "\r\n0\r\n\r\n");
    free(chunk);
    ASSERT(over || sent == 0);
    ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
    if (over) {
      ASSERT_EQ(atoi(resp + 9), 413);
      ASSERT_STREQ(body_of(resp), expect);
      ASSERT(is_closed(c));
    } else {
      ASSERT_STREQ(body_of(resp), ok);
    }
    client_free(c);
  }
}

static void test_body_limit_small(void) {
  sg_http_server_opts_t o = {.max_body = 1024};
  limit = 1024;
  run(&o, sc_body_limit);
}

static void test_body_limit_default(void) {
  sg_http_server_opts_t o = {0};
  limit = 1 << 20;
  run(&o, sc_body_limit);
}

/* Headers of exactly max_header bytes pass, one more is refused. */
static void sc_header_limit(void) {
  static const char prefix[] = "GET /size HTTP/1.1\r\nX-Pad: ";
  size_t plen = sizeof(prefix) - 1;
  for (int over = 0; over <= 1; over++) {
    size_t total = limit + (size_t)over;
    char *req = malloc(total);
    memcpy(req, prefix, plen);
    memset(req + plen, 'p', total - plen - 4);
    memcpy(req + total - 4, "\r\n\r\n", 4);
    client_t *c = client_new();
    ASSERT(c);
    ASSERT_EQ(send_all(c, req, total), 0);
    free(req);
    ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
    if (over) {
      char msg[128];
      snprintf(msg, sizeof(msg), "request header fields exceed %zu bytes",
               limit);
      ASSERT(strncmp(resp, "HTTP/1.1 431 Request Header Fields Too Large\r\n",
                     46) == 0);
      ASSERT_STREQ(body_of(resp), msg);
      ASSERT(is_closed(c));
    } else {
      ASSERT_STREQ(body_of(resp), "len=0");
    }
    client_free(c);
  }
  /* Many small headers count as much as one big one. */
  client_t *c = client_new();
  ASSERT(c);
  ASSERT_EQ(send_str(c, "GET / HTTP/1.1\r\n"), 0);
  int sent = 0;
  for (size_t i = 0; i < limit / 4 && sent == 0; i++)
    sent = send_str(c, "A: b\r\n");
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_EQ(atoi(resp + 9), 431);
  ASSERT(is_closed(c));
  client_free(c);
  /* Trailers are bounded too. */
  c = client_new();
  ASSERT(c);
  ASSERT_EQ(send_str(c, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                        "\r\n1\r\nx\r\n0\r\n"),
            0);
  sent = 0;
  for (size_t i = 0; i < limit / 4 && sent == 0; i++)
    sent = send_str(c, "T: b\r\n");
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_EQ(atoi(resp + 9), 431);
  ASSERT(is_closed(c));
  client_free(c);
}

static void test_header_limit_small(void) {
  sg_http_server_opts_t o = {.max_header = 1024};
  limit = 1024;
  run(&o, sc_header_limit);
}

static void test_header_limit_default(void) {
  sg_http_server_opts_t o = {0};
  limit = 16 * 1024;
  run(&o, sc_header_limit);
}

static void expect_400(const char *req) {
  client_t *c = client_new();
  ASSERT(c);
  ASSERT_EQ(send_str(c, req), 0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT(strncmp(resp, "HTTP/1.1 400 Bad Request\r\n", 26) == 0);
  ASSERT(strstr(resp, "\r\nConnection: close\r\n"));
  ASSERT(strncmp(body_of(resp), "bad request: ", 13) == 0);
  ASSERT(is_closed(c));
  client_free(c);
}

static void sc_garbage(void) {
  expect_400("\x01\x02garbage\r\n\r\n");
  ASSERT_STREQ(body_of(resp), "bad request: Invalid method encountered");
  expect_400("FOO / HTTP/1.1\r\n\r\n");
  expect_400("GET / HTTP/1.1\r\nBad Header\r\n\r\n");
  expect_400("GET / HTTP/9.1\r\n\r\n");
  expect_400("POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n");
  expect_400("POST / HTTP/1.1\r\nContent-Length: 1\r\n"
             "Transfer-Encoding: chunked\r\n\r\n");
  expect_400("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
  /* A bad request after a good one on the same connection: the good one is
   * answered first. */
  client_t *c = client_new();
  ASSERT(c);
  ASSERT_EQ(send_str(c, "GET /ok HTTP/1.1\r\n\r\n\x7fnonsense\r\n\r\n"), 0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_STREQ(body_of(resp), "GET /ok q=- h=- b=");
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_EQ(atoi(resp + 9), 400);
  ASSERT(is_closed(c));
  client_free(c);
}

static void test_garbage(void) {
  sg_http_server_opts_t o = {0};
  run(&o, sc_garbage);
}

/* More with -DFUZZ_ROUNDS=... */
#ifndef FUZZ_ROUNDS
#define FUZZ_ROUNDS 400
#endif

static uint32_t rng_state = 2463534242u;

static uint32_t rng(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 17;
  rng_state ^= rng_state << 5;
  return rng_state;
}

/* Random bytes and mangled requests, each connection ended by the client:
 * the server must stay up and keep answering. */
static void sc_fuzz(void) {
  static const char *const seeds[] = {
      "GET /echo?a=1 HTTP/1.1\r\nHost: t\r\nX-Test: v\r\n\r\n",
      "POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
      "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5\r\nhello\r\n0\r\nT: x\r\n\r\n",
      "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
      "PATCH /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: "
      "2\r\n\r\nab",
      "GET /extra HTTP/1.1\r\n\r\nHEAD /echo HTTP/1.1\r\n\r\n",
  };
  char buf[512];
  for (int i = 0; i < FUZZ_ROUNDS; i++) {
    size_t len;
    if (i % 4 == 0) {
      len = 1 + rng() % (sizeof(buf) - 1);
      for (size_t k = 0; k < len; k++)
        buf[k] = (char)rng();
    } else {
      const char *s = seeds[rng() % SG_ARRAY_LEN(seeds)];
      len = strlen(s);
      memcpy(buf, s, len);
      int muts = 1 + (int)(rng() % 4);
      for (int m = 0; m < muts; m++) {
        switch (rng() % 4) {
        case 0: buf[rng() % len] = (char)rng(); break;
        case 1: len = rng() % len + 1; break;
        case 2: buf[rng() % len] = "\r\n: \t0;"[rng() % 7]; break;
        default:
          if (len * 2 < sizeof(buf)) {
            memcpy(buf + len, buf, len);
            len *= 2;
          }
        }
      }
    }
    client_t *c = client_new();
    ASSERT(c);
    /* Sometimes in two pieces, so that spans cross reads. */
    size_t cut = rng() % 2 ? rng() % len : len;
    send_all(c, buf, cut);
    if (cut < len) {
      sleep_ms(1);
      send_all(c, buf + cut, len - cut);
    }
    shutdown(c->fd, SHUT_WR);
    /* Reads whatever comes until the server closes. */
    while (fill(c) > 0)
      c->len = 0;
    client_free(c);
  }
  ASSERT(roundtrip("GET /still HTTP/1.1\r\n\r\n", resp, sizeof(resp)) > 0);
  ASSERT_STREQ(body_of(resp), "GET /still q=- h=- b=");
}

static void test_fuzz(void) {
  sg_http_server_opts_t o = {.max_header = 512, .max_body = 256};
  run(&o, sc_fuzz);
}

static void sc_http10(void) {
  client_t *c = client_new();
  ASSERT(c);
  ASSERT_EQ(send_str(c, "GET /old HTTP/1.0\r\n\r\n"), 0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_STREQ(resp, "HTTP/1.1 200 OK\r\n"
                     "Content-Type: text/plain\r\n"
                     "Content-Length: 19\r\n"
                     "Connection: close\r\n"
                     "\r\n"
                     "GET /old q=- h=- b=");
  ASSERT(is_closed(c));
  client_free(c);

  /* Keep-alive asked for, kept, and said so. */
  c = client_new();
  ASSERT(c);
  for (int i = 0; i < 2; i++) {
    ASSERT_EQ(
        send_str(c, "GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 0);
    ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
    ASSERT(strstr(resp, "\r\nConnection: keep-alive\r\n"));
  }
  ASSERT_EQ(closed_within(c, 100), -1);
  client_free(c);

  /* HTTP/1.1 asking to close. */
  c = client_new();
  ASSERT(c);
  ASSERT_EQ(send_str(c, "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n"), 0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT(strstr(resp, "\r\nConnection: close\r\n"));
  ASSERT(is_closed(c));
  client_free(c);
}

/* No protocol switch is offered: an Upgrade or CONNECT request is answered
 * like any other, then the connection ends (what follows is not HTTP). */
static void sc_upgrade(void) {
  static const char *const reqs[] = {
      "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
      "\x81\x05hello",
      "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
      "\x16\x03\x01",
  };
  static const char *const bodies[] = {"GET /ws q=- h=- b=",
                                       "CONNECT example.com:443 q=- h=- b="};
  for (size_t i = 0; i < SG_ARRAY_LEN(reqs); i++) {
    client_t *c = client_new();
    ASSERT(c);
    ASSERT_EQ(send_str(c, reqs[i]), 0);
    ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
    ASSERT(strstr(resp, "\r\nConnection: close\r\n"));
    ASSERT_STREQ(body_of(resp), bodies[i]);
    ASSERT(is_closed(c));
    client_free(c);
  }
}

static void test_upgrade(void) {
  sg_http_server_opts_t o = {0};
  run(&o, sc_upgrade);
}

static void test_http10(void) {
  sg_http_server_opts_t o = {0};
  run(&o, sc_http10);
}

static void sc_header_timeout(void) {
  /* Part of a request line, then nothing: 408. */
  client_t *c = client_new();
  ASSERT(c);
  long long t0 = now_ms();
  ASSERT_EQ(send_str(c, "GET /slow HT"), 0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  long long dt = now_ms() - t0;
  ASSERT(dt >= 150 && dt < 2000);
  ASSERT(strncmp(resp, "HTTP/1.1 408 Request Timeout\r\n", 30) == 0);
  ASSERT(strstr(resp, "\r\nConnection: close\r\n"));
  ASSERT_STREQ(body_of(resp), "request timeout");
  ASSERT(is_closed(c));
  client_free(c);

  /* Nothing at all: closed without a word. */
  c = client_new();
  ASSERT(c);
  t0 = now_ms();
  ASSERT_EQ(closed_within(c, 3000), 1);
  dt = now_ms() - t0;
  ASSERT(dt >= 150 && dt < 2000);
  client_free(c);

  /* Trickling bytes does not extend the deadline. */
  c = client_new();
  ASSERT(c);
  t0 = now_ms();
  ASSERT_EQ(send_str(c, "GET / HTTP/1.1\r\n"), 0);
  int got = -1;
  for (int i = 0; i < 40 && got == -1; i++) {
    ASSERT_EQ(send_str(c, "X: y\r\n"), 0);
    got = closed_within(c, 25);
  }
  ASSERT_EQ(got, 0);
  dt = now_ms() - t0;
  ASSERT(dt >= 150 && dt < 400);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_EQ(atoi(resp + 9), 408);
  client_free(c);
}

static void test_header_timeout(void) {
  sg_http_server_opts_t o = {.header_timeout_ms = 200};
  run(&o, sc_header_timeout);
}

static void sc_body_timeout(void) {
  client_t *c = client_new();
  ASSERT(c);
  long long t0 = now_ms();
  ASSERT_EQ(send_str(c, "POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"), 0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  long long dt = now_ms() - t0;
  ASSERT(dt >= 150 && dt < 2000);
  ASSERT_EQ(atoi(resp + 9), 408);
  ASSERT_STREQ(body_of(resp), "request timeout");
  ASSERT(is_closed(c));
  client_free(c);
}

static void test_body_timeout(void) {
  sg_http_server_opts_t o = {.body_timeout_ms = 200};
  run(&o, sc_body_timeout);
}

static void sc_idle_timeout(void) {
  client_t *c = client_new();
  ASSERT(c);
  ASSERT_EQ(send_str(c, "GET / HTTP/1.1\r\n\r\n"), 0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  long long t0 = now_ms();
  ASSERT_EQ(closed_within(c, 3000), 1);
  long long dt = now_ms() - t0;
  ASSERT(dt >= 150 && dt < 2000);
  client_free(c);
  /* A request in time resets it. */
  c = client_new();
  ASSERT(c);
  for (int i = 0; i < 3; i++) {
    ASSERT_EQ(send_str(c, "GET / HTTP/1.1\r\n\r\n"), 0);
    ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
    sleep_ms(100);
  }
  client_free(c);
}

static void test_idle_timeout(void) {
  sg_http_server_opts_t o = {.idle_timeout_ms = 200};
  run(&o, sc_idle_timeout);
}

static void sc_max_clients(void) {
  client_t *a = client_new(), *b = client_new();
  ASSERT(a && b);
  /* Answered, so surely accepted and counted. */
  ASSERT(send_str(a, "GET /a HTTP/1.1\r\n\r\n") == 0 &&
         read_response(a, resp, sizeof(resp), 0) > 0);
  ASSERT(send_str(b, "GET /b HTTP/1.1\r\n\r\n") == 0 &&
         read_response(b, resp, sizeof(resp), 0) > 0);
  client_t *c = client_new();
  ASSERT(c);
  long long t0 = now_ms();
  ASSERT_EQ(closed_within(c, 2000), 1);
  ASSERT(now_ms() - t0 < 1000);
  client_free(c);
  /* The first two still work. */
  ASSERT(send_str(a, "GET /a HTTP/1.1\r\n\r\n") == 0 &&
         read_response(a, resp, sizeof(resp), 0) > 0);
  /* A place freed is a place taken. */
  client_free(a);
  int ok = 0;
  for (int i = 0; i < 100 && !ok; i++) {
    client_t *d = client_new();
    ASSERT(d);
    ok = send_str(d, "GET /d HTTP/1.1\r\n\r\n") == 0 &&
         read_response(d, resp, sizeof(resp), 0) > 0;
    client_free(d);
    if (!ok)
      sleep_ms(20);
  }
  ASSERT(ok);
  ASSERT_STREQ(body_of(resp), "GET /d q=- h=- b=");
  client_free(b);
}

static void test_max_clients(void) {
  sg_http_server_opts_t o = {.max_clients = 2};
  run(&o, sc_max_clients);
}

static void sc_expect_continue(void) {
  client_t *c = client_new();
  ASSERT(c);
  ASSERT_EQ(send_str(c, "POST /echo HTTP/1.1\r\nHost: t\r\n"
                        "Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"),
            0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_STREQ(resp, "HTTP/1.1 100 Continue\r\n\r\n");
  ASSERT_EQ(send_str(c, "hello"), 0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_STREQ(body_of(resp), "POST /echo q=- h=- b=hello");
  /* No body: no 100. */
  ASSERT_EQ(send_str(c, "GET /e HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"), 0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_EQ(atoi(resp + 9), 200);
  client_free(c);

  /* Over the limit: 413 instead of 100. */
  c = client_new();
  ASSERT(c);
  ASSERT_EQ(send_str(c, "POST /echo HTTP/1.1\r\nExpect: 100-continue\r\n"
                        "Content-Length: 2000\r\n\r\n"),
            0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_EQ(atoi(resp + 9), 413);
  ASSERT(is_closed(c));
  client_free(c);
}

static void test_expect_continue(void) {
  sg_http_server_opts_t o = {.max_body = 1024};
  run(&o, sc_expect_continue);
}

static void sc_header_lookup(void) {
  ASSERT(roundtrip("GET /headers HTTP/1.1\r\nx-MiXeD-cAsE:   spaced out  \r\n"
                   "X-Empty:\r\nx-mixed-case: second\r\n\r\n",
                   resp, sizeof(resp)) > 0);
  ASSERT_STREQ(body_of(resp), "spaced out|10|spaced out|10||0|-");
  ASSERT(roundtrip("GET /e HTTP/1.1\r\nX-TEST: upper\r\n\r\n", resp,
                   sizeof(resp)) > 0);
  ASSERT_STREQ(body_of(resp), "GET /e q=- h=upper b=");
}

static void test_header_lookup(void) {
  sg_http_server_opts_t o = {0};
  run(&o, sc_header_lookup);
}

static void sc_responses(void) {
  client_t *c = client_new();
  ASSERT(c);
  ASSERT_EQ(send_str(c, "GET /extra HTTP/1.1\r\n\r\n"), 0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_STREQ(resp, "HTTP/1.1 201 Created\r\n"
                     "Content-Type: application/json\r\n"
                     "Content-Length: 2\r\n"
                     "X-One: 1\r\nX-Two: 2\r\n"
                     "\r\n"
                     "{}");
  ASSERT_EQ(send_str(c, "GET /extra-nocrlf HTTP/1.1\r\n\r\n"), 0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_STREQ(resp, "HTTP/1.1 200 OK\r\n"
                     "Content-Length: 0\r\n"
                     "X-One: 1\r\n"
                     "\r\n");
  ASSERT_EQ(send_str(c, "DELETE /nobody HTTP/1.1\r\n\r\n"), 0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_STREQ(resp, "HTTP/1.1 204 No Content\r\n\r\n");
  /* HEAD: the length, without the body. */
  ASSERT_EQ(send_str(c, "HEAD /echo HTTP/1.1\r\n\r\n"), 0);
  ASSERT(read_response(c, resp, sizeof(resp), 1) > 0);
  ASSERT_STREQ(resp, "HTTP/1.1 200 OK\r\n"
                     "Content-Type: text/plain\r\n"
                     "Content-Length: 21\r\n"
                     "\r\n");
  /* A handler that forgets to answer, answers twice, or with a bad status:
   * exactly one answer each, and the connection goes on. */
  ASSERT_EQ(send_str(c, "GET /noreply HTTP/1.1\r\n\r\n"
                        "GET /twice HTTP/1.1\r\n\r\n"
                        "GET /badstatus HTTP/1.1\r\n\r\n"
                        "GET /last HTTP/1.1\r\n\r\n"),
            0);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_EQ(atoi(resp + 9), 500);
  ASSERT_STREQ(body_of(resp), "handler did not respond");
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_STREQ(body_of(resp), "first");
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_EQ(atoi(resp + 9), 500);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_STREQ(body_of(resp), "GET /last q=- h=- b=");
  ASSERT_EQ(closed_within(c, 100), -1);
  client_free(c);
}

static void test_responses(void) {
  sg_http_server_opts_t o = {0};
  run(&o, sc_responses);
}

/* A client that asks for a lot and never reads is dropped. */
static void sc_slow_reader(void) {
  client_t *c = client_new_rcvbuf(16 * 1024);
  ASSERT(c);
  for (int i = 0; i < 64; i++)
    ASSERT_EQ(send_str(c, "GET /big HTTP/1.1\r\n\r\n"), 0);
  sleep_ms(300);
  size_t total = 0;
  ssize_t n;
  while ((n = fill(c)) > 0) {
    total += (size_t)n;
    c->len = 0;
  }
  /* Ended by the server (EOF or reset), not by our timeout. */
  ASSERT(n == 0 || errno == ECONNRESET);
  ASSERT(total < (size_t)64 * BIG_LEN);
  client_free(c);
  /* Others are served. */
  ASSERT(roundtrip("GET /x HTTP/1.1\r\n\r\n", resp, sizeof(resp)) > 0);
}

static void test_slow_reader(void) {
  sg_http_server_opts_t o = {0};
  run(&o, sc_slow_reader);
}

/* A client that sends a request and shuts its side down still gets the
 * answers, then the server closes. */
static void sc_half_close(void) {
  client_t *c = client_new();
  ASSERT(c);
  ASSERT_EQ(send_str(c, "GET /1 HTTP/1.1\r\n\r\nGET /big HTTP/1.1\r\n\r\n"), 0);
  shutdown(c->fd, SHUT_WR);
  ASSERT(read_response(c, resp, sizeof(resp), 0) > 0);
  ASSERT_STREQ(body_of(resp), "GET /1 q=- h=- b=");
  size_t total = c->len;
  ssize_t n;
  c->len = 0;
  while ((n = fill(c)) > 0) {
    total += (size_t)n;
    c->len = 0;
  }
  ASSERT_EQ(n, 0);
  ASSERT(total > BIG_LEN);
  client_free(c);
}

static void test_half_close(void) {
  sg_http_server_opts_t o = {0};
  run(&o, sc_half_close);
}

/* Closing the server drops clients in every state. */
static void sc_close_with_clients(void) {
  client_t *idle = client_new(), *head = client_new(), *body = client_new();
  ASSERT(idle && head && body);
  ASSERT(send_str(idle, "GET / HTTP/1.1\r\n\r\n") == 0 &&
         read_response(idle, resp, sizeof(resp), 0) > 0);
  ASSERT_EQ(send_str(head, "GET / HTTP/1.1\r\nX: "), 0);
  ASSERT_EQ(send_str(body, "POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nab"),
            0);
  sleep_ms(50);
  stop_server();
  ASSERT(is_closed(idle));
  ASSERT(is_closed(head));
  ASSERT(is_closed(body));
  client_free(idle);
  client_free(head);
  client_free(body);
}

static void sc_close_from_handler(void) {
  client_t *a = client_new(), *b = client_new();
  ASSERT(a && b);
  ASSERT(send_str(a, "GET / HTTP/1.1\r\n\r\n") == 0 &&
         read_response(a, resp, sizeof(resp), 0) > 0);
  ASSERT_EQ(
      send_str(b, "GET /close HTTP/1.1\r\n\r\nGET /after HTTP/1.1\r\n\r\n"), 0);
  ASSERT(is_closed(a));
  ASSERT(is_closed(b));
  client_free(a);
  client_free(b);
}

static void test_close_from_handler(void) {
  sg_http_server_opts_t o = {0};
  run(&o, sc_close_from_handler);
}

static void test_close_with_clients(void) {
  sg_http_server_opts_t o = {0};
  run(&o, sc_close_with_clients);
}

static void test_start_errors(void) {
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  sg_http_server_opts_t o = {0};
  struct sockaddr_in *sin = (struct sockaddr_in *)&o.listen;
  sin->sin_family = AF_INET;
  sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  char err[256] = "";
  sg_http_server_t *s = NULL;
  ASSERT_EQ(sg_http_server_start(&loop, &o, &s, err, sizeof(err)), -EINVAL);
  ASSERT(strstr(err, "no handler"));
  /* An address in use. */
  o.handler = handler;
  sg_http_server_t *first = NULL;
  ASSERT_EQ(sg_http_server_start(&loop, &o, &first, err, sizeof(err)), 0);
  sin->sin_port = htons(sg_http_server_port(first));
  ASSERT_EQ(sg_http_server_start(&loop, &o, &s, err, sizeof(err)),
            UV_EADDRINUSE);
  ASSERT(strstr(err, "cannot listen on 127.0.0.1:"));
  sg_http_server_close(first);
  sg_http_server_close(NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(uv_loop_close(&loop), 0);
}

static const sg_test_case_t cases[] = {
    {"simple_get", test_simple_get},
    {"keepalive", test_keepalive},
    {"pipelined", test_pipelined},
    {"byte_by_byte", test_byte_by_byte},
    {"post_content_length", test_post_content_length},
    {"post_chunked", test_post_chunked},
    {"body_limit_small", test_body_limit_small},
    {"body_limit_default", test_body_limit_default},
    {"header_limit_small", test_header_limit_small},
    {"header_limit_default", test_header_limit_default},
    {"garbage", test_garbage},
    {"fuzz", test_fuzz},
    {"http10", test_http10},
    {"upgrade", test_upgrade},
    {"header_timeout", test_header_timeout},
    {"body_timeout", test_body_timeout},
    {"idle_timeout", test_idle_timeout},
    {"max_clients", test_max_clients},
    {"expect_continue", test_expect_continue},
    {"header_lookup", test_header_lookup},
    {"responses", test_responses},
    {"slow_reader", test_slow_reader},
    {"half_close", test_half_close},
    {"close_with_clients", test_close_with_clients},
    {"close_from_handler", test_close_from_handler},
    {"start_errors", test_start_errors},
    {NULL, NULL},
};

int main(void) {
  memset(big, 'x', sizeof(big));
  return sg_test_run(cases);
}
