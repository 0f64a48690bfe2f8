#include "http/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/common.h"
#include "util/log.h"
#include "util/sockaddr.h"

/* Unsent answers beyond this mean the client does not read: drop it. */
#define MAX_WRITE_QUEUE (1u << 20)
/* Every read lands in one buffer per server: a read is parsed completely
 * (whatever the request needs is copied out) before the next one. */
#define READ_BUF (64 * 1024)
/* After the last answer of a connection, how long it may take to leave and
 * the client to close its side. Until then its input is read and dropped:
 * closing a socket with unread input sends a reset, which can destroy the
 * answer (a 413 sent while the client still uploads) before it is read. */
#define LINGER_MS 5000
/* A body buffer bigger than this is not kept for the next request. */
#define BODY_KEEP_MAX (64 * 1024)

typedef enum {
  PH_NEW,   /* connected, no byte of a request yet */
  PH_IDLE,  /* kept alive, between requests */
  PH_HEAD,  /* a request started: reading its request line and headers */
  PH_BODY,  /* reading its body */
  PH_DRAIN, /* the last answer is queued: flush, FIN, drop input until EOF */
} phase_t;

/* A header as offsets into hbuf, which moves as it grows. */
typedef struct {
  size_t name_off, name_len, value_off, value_len;
} field_t;

typedef struct conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_shutdown_t shutdown;
  sg_http_server_t *srv;
  struct conn *prev, *next;
  llhttp_t parser;
  phase_t phase;
  int handles;
  int closing;
  int peer_eof;
  /* Bytes of the current request before the end of its headers. */
  size_t head_bytes;
  /* The URL, then each header name and value, each NUL-terminated. */
  char *hbuf;
  size_t hlen, hcap;
  size_t url_len;
  field_t *fields;
  size_t nfields, fcap;
  int in_field; /* a header name may arrive in several pieces */
  int in_value;
  char *body;
  size_t body_len, body_cap;
  size_t body_want; /* the declared length, 0 if none (chunked) */
  int fail_status;  /* set by a parser callback that refuses the request */
  int msg_done;
  int keep_alive;
  int http10;
  char peer_ip[INET6_ADDRSTRLEN];
} conn_t;

struct sg_http_server {
  uv_loop_t *loop;
  uv_tcp_t listener;
  sg_http_server_opts_t opts;
  llhttp_settings_t settings;
  conn_t *conns;
  int nconns;
  int open_handles;
  int closing;
  char rbuf[READ_BUF];
};

struct sg_http_reply {
  conn_t *c;
  int done;
  int head; /* a HEAD request: headers only */
};

typedef struct {
  uv_write_t req;
  char data[];
} write_t;

static void on_timer(uv_timer_t *t);

/* ---- lifetime ---- */

static void maybe_free_server(sg_http_server_t *s) {
  if (s->closing && s->open_handles == 0)
    free(s);
}

static void on_listener_closed(uv_handle_t *h) {
  sg_http_server_t *s = h->data;
  s->open_handles--;
  maybe_free_server(s);
}

static void on_conn_handle_closed(uv_handle_t *h) {
  conn_t *c = h->data;
  if (--c->handles > 0)
    return;
  sg_http_server_t *s = c->srv;
  free(c->hbuf);
  free(c->fields);
  free(c->body);
  free(c);
  s->open_handles--;
  maybe_free_server(s);
}

static void conn_close(conn_t *c) {
  if (c->closing)
    return;
  c->closing = 1;
  sg_http_server_t *s = c->srv;
  if (c->prev)
    c->prev->next = c->next;
  else
    s->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  s->nconns--;
  uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
  uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

static void timer_set(conn_t *c, uint64_t ms) {
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  conn_t *c = container_of(req, conn_t, shutdown);
  if (c->closing)
    return;
  /* Everything is sent. Wait for the client's EOF (input is dropped
   * meanwhile) unless it already came. */
  if (status < 0 || c->peer_eof)
    conn_close(c);
}

/* Ends the connection once what is queued has been sent. */
static void conn_finish(conn_t *c) {
  if (c->closing || c->phase == PH_DRAIN)
    return;
  c->phase = PH_DRAIN;
  timer_set(c, LINGER_MS);
  if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
    conn_close(c);
}

/* ---- writing ---- */

static void on_written(uv_write_t *req, int status) {
  conn_t *c = req->handle->data;
  free(container_of(req, write_t, req));
  if (status < 0 && !c->closing)
    conn_close(c);
}

static write_t *write_new(conn_t *c, size_t len) {
  if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) >
      MAX_WRITE_QUEUE) {
    conn_close(c);
    return NULL;
  }
  write_t *w = len <= UINT_MAX ? malloc(sizeof(*w) + len) : NULL;
  if (!w)
    conn_close(c);
  return w;
}

static void write_send(conn_t *c, write_t *w, size_t len) {
  uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0) {
    free(w);
    conn_close(c);
  }
}

static void write_raw(conn_t *c, const char *data, size_t len) {
  write_t *w = write_new(c, len);
  if (!w)
    return;
  memcpy(w->data, data, len);
  write_send(c, w, len);
}

static const char *reason_phrase(int status) {
  switch (status) {
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 304: return "Not Modified";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 411: return "Length Required";
  case 413: return "Content Too Large";
  case 415: return "Unsupported Media Type";
  case 422: return "Unprocessable Content";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  default: break;
  }
  static const char *const by_class[] = {"Success", "Redirection",
                                         "Client Error", "Server Error"};
  return by_class[status / 100 - 2];
}

static size_t put(char *dst, const char *src, size_t len) {
  memcpy(dst, src, len);
  return len;
}

/* Queues one complete answer; with `close`, the connection ends after it. */
static void send_response(conn_t *c, int status, const char *content_type,
                          const char *body, size_t len,
                          const char *extra_headers, int head, int close) {
  const char *reason = reason_phrase(status);
  /* These statuses never carry a body, nor a length for one. */
  int bodyless = status == 204 || status == 304;
  size_t ct_len = content_type ? strlen(content_type) : 0;
  size_t extra_len = extra_headers ? strlen(extra_headers) : 0;
  int extra_crlf =
      extra_len >= 2 && memcmp(extra_headers + extra_len - 2, "\r\n", 2) == 0;
  const char *conn_hdr = close       ? "Connection: close\r\n"
                         : c->http10 ? "Connection: keep-alive\r\n"
                                     : "";
  size_t send_len = head || bodyless ? 0 : len;
  size_t total =
      128 + strlen(reason) + ct_len + extra_len + strlen(conn_hdr) + send_len;
  write_t *w = write_new(c, total);
  if (!w)
    return;
  char *p = w->data;
  p += sprintf(p, "HTTP/1.1 %d %s\r\n", status, reason);
  if (content_type) {
    p += put(p, "Content-Type: ", 14);
    p += put(p, content_type, ct_len);
    p += put(p, "\r\n", 2);
  }
  if (!bodyless)
    p += sprintf(p, "Content-Length: %zu\r\n", len);
  if (extra_len) {
    p += put(p, extra_headers, extra_len);
    if (!extra_crlf)
      p += put(p, "\r\n", 2);
  }
  p += put(p, conn_hdr, strlen(conn_hdr));
  p += put(p, "\r\n", 2);
  if (send_len)
    p += put(p, body, send_len);
  write_send(c, w, (size_t)(p - w->data));
  if (close)
    conn_finish(c);
}

/* The server's own refusals: a short text, and the connection ends. */
static void reject(conn_t *c, int status, const char *reason) {
  if (c->closing || c->phase == PH_DRAIN)
    return;
  const sg_http_server_opts_t *o = &c->srv->opts;
  char msg[256];
  switch (status) {
  case 400:
    snprintf(msg, sizeof(msg), "bad request: %s", reason ? reason : "malformed");
    break;
  case 408: snprintf(msg, sizeof(msg), "request timeout"); break;
  case 413:
    snprintf(msg, sizeof(msg), "request body exceeds %zu bytes", o->max_body);
    break;
  case 431:
    snprintf(msg, sizeof(msg), "request header fields exceed %zu bytes",
             o->max_header);
    break;
  default: snprintf(msg, sizeof(msg), "%s", reason_phrase(status)); break;
  }
  if (sg_log_enabled(SG_LOG_DEBUG))
    sg_log_msg(SG_LOG_DEBUG, "http.reject", "%d to %s: %s", status, c->peer_ip,
               msg);
  send_response(c, status, "text/plain", msg, strlen(msg), NULL, 0, 1);
}

void sg_http_respond(sg_http_reply_t *r, int status, const char *content_type,
                     const char *body, size_t len, const char *extra_headers) {
  if (r->done) {
    sg_log_msg(SG_LOG_ERROR, "http.respond_twice",
               "a handler answered one request twice (status %d); the "
               "second answer is dropped",
               status);
    return;
  }
  r->done = 1;
  conn_t *c = r->c;
  if (c->closing || c->phase == PH_DRAIN)
    return;
  if (status < 200 || status > 599) {
    sg_log_msg(SG_LOG_ERROR, "http.bad_status",
               "a handler answered with status %d; sending 500", status);
    status = 500;
    content_type = "text/plain";
    body = "invalid status";
    len = strlen(body);
    extra_headers = NULL;
  }
  int close = !c->keep_alive || c->srv->closing;
  send_response(c, status, content_type, body ? body : "", body ? len : 0,
                extra_headers, r->head, close);
}

/* ---- the request being read ---- */

static int hbuf_put(conn_t *c, const char *at, size_t len) {
  size_t max = c->srv->opts.max_header;
  /* Before the end of the headers the raw byte count stops a request
   * first; this bounds trailers after a chunked body. */
  if (len > max - c->hlen) {
    c->fail_status = 431;
    return HPE_USER;
  }
  if (c->hcap - c->hlen < len) {
    size_t ncap = c->hcap ? c->hcap * 2 : 1024;
    if (ncap < c->hlen + len)
      ncap = c->hlen + len;
    if (ncap > max)
      ncap = max;
    char *nb = realloc(c->hbuf, ncap);
    if (!nb) {
      c->fail_status = 500;
      return HPE_USER;
    }
    c->hbuf = nb;
    c->hcap = ncap;
  }
  memcpy(c->hbuf + c->hlen, at, len);
  c->hlen += len;
  return 0;
}

static const char *find_field(const conn_t *c, const char *name, size_t *len) {
  size_t nlen = strlen(name);
  for (size_t i = 0; i < c->nfields; i++) {
    const field_t *f = &c->fields[i];
    if (f->name_len == nlen &&
        strncasecmp(c->hbuf + f->name_off, name, nlen) == 0) {
      if (len)
        *len = f->value_len;
      return c->hbuf + f->value_off;
    }
  }
  return NULL;
}

const char *sg_http_header(const sg_http_request_t *req, const char *name,
                           size_t *len) {
  return find_field(req->internal_, name, len);
}

static void request_reset(conn_t *c) {
  c->head_bytes = 0;
  c->hlen = 0;
  c->url_len = 0;
  c->nfields = 0;
  c->in_field = 0;
  c->in_value = 0;
  c->body_len = 0;
  c->body_want = 0;
  if (c->body_cap > BODY_KEEP_MAX) {
    free(c->body);
    c->body = NULL;
    c->body_cap = 0;
  }
  c->fail_status = 0;
  c->msg_done = 0;
}

/* ---- parser callbacks ---- */

static int on_message_begin(llhttp_t *p) {
  conn_t *c = p->data;
  /* A first request's header deadline runs from the connect. */
  if (c->phase == PH_IDLE)
    timer_set(c, c->srv->opts.header_timeout_ms);
  c->phase = PH_HEAD;
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  return hbuf_put(p->data, at, len);
}

static int on_url_complete(llhttp_t *p) {
  conn_t *c = p->data;
  c->url_len = c->hlen;
  return hbuf_put(c, "", 1);
}

/* Opens the table entry of the header whose name is arriving. */
static int field_open(conn_t *c) {
  if (c->in_field)
    return 0;
  if (c->nfields == c->fcap) {
    size_t ncap = c->fcap ? c->fcap * 2 : 16;
    field_t *nf = realloc(c->fields, ncap * sizeof(*nf));
    if (!nf) {
      c->fail_status = 500;
      return HPE_USER;
    }
    c->fields = nf;
    c->fcap = ncap;
  }
  c->fields[c->nfields].name_off = c->hlen;
  c->in_field = 1;
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  conn_t *c = p->data;
  int rc = field_open(c);
  return rc ? rc : hbuf_put(c, at, len);
}

static int on_header_field_complete(llhttp_t *p) {
  conn_t *c = p->data;
  int rc = field_open(c);
  if (rc)
    return rc;
  field_t *f = &c->fields[c->nfields];
  f->name_len = c->hlen - f->name_off;
  c->in_field = 0;
  rc = hbuf_put(c, "", 1);
  f->value_off = c->hlen;
  c->in_value = 1;
  return rc;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  return hbuf_put(p->data, at, len);
}

static int is_ows(char ch) {
  return ch == ' ' || ch == '\t';
}

static int on_header_value_complete(llhttp_t *p) {
  conn_t *c = p->data;
  if (!c->in_value)
    return HPE_USER;
  c->in_value = 0;
  field_t *f = &c->fields[c->nfields];
  f->value_len = c->hlen - f->value_off;
  int rc = hbuf_put(c, "", 1);
  if (rc)
    return rc;
  while (f->value_len && is_ows(c->hbuf[f->value_off])) {
    f->value_off++;
    f->value_len--;
  }
  while (f->value_len && is_ows(c->hbuf[f->value_off + f->value_len - 1]))
    f->value_len--;
  c->hbuf[f->value_off + f->value_len] = '\0';
  c->nfields++;
  return 0;
}

/* The body buffer grows with what actually arrives, not with what a
 * Content-Length promises: a client that declares a megabyte and stalls
 * holds no more than it sent. */
static int body_reserve(conn_t *c, size_t need) {
  if (need + 1 <= c->body_cap)
    return 0;
  size_t max = c->body_want ? c->body_want : c->srv->opts.max_body;
  size_t ncap = c->body_cap * 2;
  if (ncap > max + 1)
    ncap = max + 1;
  if (ncap < need + 1)
    ncap = need + 1;
  char *nb = realloc(c->body, ncap);
  if (!nb)
    return -1;
  c->body = nb;
  c->body_cap = ncap;
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  conn_t *c = p->data;
  const sg_http_server_opts_t *o = &c->srv->opts;
  c->phase = PH_BODY;
  timer_set(c, o->body_timeout_ms);
  int has_length = (p->flags & F_CONTENT_LENGTH) != 0;
  /* Refused before a byte of it is read (and before 100 Continue). */
  if (has_length && p->content_length > o->max_body) {
    c->fail_status = 413;
    return -1;
  }
  if (!(p->flags & F_CHUNKED) && p->content_length == 0)
    return 0;
  c->body_want = has_length ? (size_t)p->content_length : 0;
  /* Expect means nothing before HTTP/1.1. */
  const char *expect = find_field(c, "Expect", NULL);
  if (expect && (p->http_major > 1 || p->http_minor >= 1) &&
      strcasecmp(expect, "100-continue") == 0) {
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    write_raw(c, cont, sizeof(cont) - 1);
  }
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  conn_t *c = p->data;
  /* A chunked body is counted as it comes: refused at the first byte over,
   * never cut. */
  if (len > c->srv->opts.max_body - c->body_len) {
    c->fail_status = 413;
    return HPE_USER;
  }
  if (body_reserve(c, c->body_len + len) != 0) {
    c->fail_status = 500;
    return HPE_USER;
  }
  memcpy(c->body + c->body_len, at, len);
  c->body_len += len;
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  conn_t *c = p->data;
  /* No protocol switch is offered: after an Upgrade or CONNECT request the
   * bytes that follow are not HTTP, so the connection ends. */
  c->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;
  c->http10 = p->http_major == 1 && p->http_minor == 0;
  c->msg_done = 1;
  /* Parsing stops right after this message, so that it is answered before
   * any request pipelined behind it is read. */
  return HPE_PAUSED;
}

/* ---- one request ---- */

static void dispatch(conn_t *c) {
  sg_http_server_t *s = c->srv;
  if (!c->hbuf && hbuf_put(c, "", 1) != 0) {
    reject(c, 500, NULL);
    return;
  }
  char *path = c->hbuf;
  size_t path_len = c->url_len;
  /* The absolute form ("http://host/path") comes down to its path. */
  if (strncasecmp(path, "http://", 7) == 0 ||
      strncasecmp(path, "https://", 8) == 0) {
    char *slash = strchr(strstr(path, "//") + 2, '/');
    if (slash) {
      path_len -= (size_t)(slash - path);
      path = slash;
    } else {
      path = path + path_len; /* "" for now, "/" below */
      path_len = 0;
    }
  }
  char *query = memchr(path, '?', path_len);
  size_t query_len = 0;
  if (query) {
    *query++ = '\0';
    query_len = path_len - (size_t)(query - path);
    path_len = (size_t)(query - 1 - path);
  }
  if (c->body)
    c->body[c->body_len] = '\0';
  sg_http_request_t req = {
      .method = llhttp_method_name((llhttp_method_t)c->parser.method),
      .path = path_len ? path : "/",
      .path_len = path_len ? path_len : 1,
      .query = query,
      .query_len = query_len,
      .body = c->body ? c->body : "",
      .body_len = c->body_len,
      .client_ip = c->peer_ip,
      .internal_ = c,
  };
  struct sg_http_reply r = {.c = c, .head = c->parser.method == HTTP_HEAD};
  s->opts.handler(s->opts.ctx, &req, &r);
  if (!r.done) {
    sg_log_msg(SG_LOG_ERROR, "http.no_answer",
               "the handler did not answer %s %.*s; sending 500", req.method,
               (int)req.path_len, req.path);
    static const char msg[] = "handler did not respond";
    sg_http_respond(&r, 500, "text/plain", msg, sizeof(msg) - 1, NULL);
  }
  request_reset(c);
  if (c->closing || c->phase == PH_DRAIN)
    return;
  c->phase = PH_IDLE;
  timer_set(c, s->opts.idle_timeout_ms);
}

/* Parses what arrived, answering each complete request in turn. */
static void conn_feed(conn_t *c, const char *data, size_t len) {
  size_t max_header = c->srv->opts.max_header;
  while (len > 0 && !c->closing && c->phase != PH_DRAIN) {
    /* Before the end of the headers, no more than the header limit is
     * handed to the parser, so that a request over it is caught the moment
     * the limit is reached, whatever the headers hold. */
    size_t n = len;
    if (c->phase != PH_BODY && n > max_header - c->head_bytes)
      n = max_header - c->head_bytes;
    llhttp_errno_t e = llhttp_execute(&c->parser, data, n);
    size_t used = n;
    if (e == HPE_PAUSED) {
      used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
      llhttp_resume(&c->parser);
    } else if (e != HPE_OK) {
      if (c->fail_status)
        reject(c, c->fail_status, NULL);
      else
        reject(c, 400, llhttp_get_error_reason(&c->parser));
      return;
    }
    if (c->closing)
      return;
    if (c->msg_done) {
      dispatch(c);
    } else if (c->phase != PH_BODY) {
      c->head_bytes += used;
      if (c->head_bytes >= max_header) {
        reject(c, 431, NULL);
        return;
      }
    }
    data += used;
    len -= used;
  }
}

/* ---- connections ---- */

static void on_timer(uv_timer_t *t) {
  conn_t *c = t->data;
  switch (c->phase) {
  case PH_HEAD:
  case PH_BODY: reject(c, 408, NULL); break;
  default: conn_close(c); break;
  }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  conn_t *c = h->data;
  *buf = uv_buf_init(c->srv->rbuf, READ_BUF);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  conn_t *c = st->data;
  if (nread < 0) {
    /* A client that sent its requests and shut its side down still gets
     * the answers queued for it. */
    if (nread == UV_EOF &&
        uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > 0) {
      c->peer_eof = 1;
      conn_finish(c);
    } else {
      conn_close(c);
    }
    return;
  }
  if (nread == 0 || c->phase == PH_DRAIN)
    return;
  conn_feed(c, buf->base, (size_t)nread);
}

static void on_connection(uv_stream_t *ls, int status) {
  sg_http_server_t *s = ls->data;
  if (status < 0)
    return;
  conn_t *c = calloc(1, sizeof(*c));
  if (!c)
    return;
  c->srv = s;
  uv_tcp_init(s->loop, &c->tcp);
  uv_timer_init(s->loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->handles = 2;
  s->open_handles++; /* a connection holds the server until it is freed */
  c->next = s->conns;
  if (s->conns)
    s->conns->prev = c;
  s->conns = c;
  s->nconns++;
  if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  if (s->nconns > s->opts.max_clients) {
    if (sg_log_enabled(SG_LOG_DEBUG))
      sg_log_msg(SG_LOG_DEBUG, "http.refused", "over %d clients",
                 s->opts.max_clients);
    conn_close(c);
    return;
  }
  struct sockaddr_storage peer;
  int plen = sizeof(peer);
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&peer, &plen) == 0)
    sg_sockaddr_ip((struct sockaddr *)&peer, c->peer_ip, sizeof(c->peer_ip));
  /* Answers are whole and small: send each at once. */
  uv_tcp_nodelay(&c->tcp, 1);
  llhttp_init(&c->parser, HTTP_REQUEST, &s->settings);
  c->parser.data = c;
  c->phase = PH_NEW;
  timer_set(c, s->opts.header_timeout_ms);
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
    conn_close(c);
}

/* ---- start / stop ---- */

int sg_http_server_start(uv_loop_t *loop, const sg_http_server_opts_t *opts,
                         sg_http_server_t **out, char *err, size_t errlen) {
  const struct sockaddr *sa = (const struct sockaddr *)&opts->listen;
  char name[SG_ADDRSTR_MAX];
  sg_sockaddr_str(sa, name, sizeof(name));
  if (!opts->handler) {
    snprintf(err, errlen, "HTTP server on %s: no handler", name);
    return -EINVAL;
  }
  sg_http_server_t *s = calloc(1, sizeof(*s));
  if (!s)
    return -ENOMEM;
  s->loop = loop;
  s->opts = *opts;
  sg_http_server_opts_t *o = &s->opts;
  if (!o->max_body)
    o->max_body = SG_HTTP_DEFAULT_MAX_BODY;
  if (!o->max_header)
    o->max_header = SG_HTTP_DEFAULT_MAX_HEADER;
  if (!o->header_timeout_ms)
    o->header_timeout_ms = SG_HTTP_DEFAULT_HEADER_TIMEOUT_MS;
  if (!o->body_timeout_ms)
    o->body_timeout_ms = SG_HTTP_DEFAULT_BODY_TIMEOUT_MS;
  if (!o->idle_timeout_ms)
    o->idle_timeout_ms = SG_HTTP_DEFAULT_IDLE_TIMEOUT_MS;
  if (o->max_clients <= 0)
    o->max_clients = SG_HTTP_DEFAULT_MAX_CLIENTS;

  llhttp_settings_t *st = &s->settings;
  llhttp_settings_init(st);
  st->on_message_begin = on_message_begin;
  st->on_url = on_url;
  st->on_url_complete = on_url_complete;
  st->on_header_field = on_header_field;
  st->on_header_field_complete = on_header_field_complete;
  st->on_header_value = on_header_value;
  st->on_header_value_complete = on_header_value_complete;
  st->on_headers_complete = on_headers_complete;
  st->on_body = on_body;
  st->on_message_complete = on_message_complete;

  uv_tcp_init(loop, &s->listener);
  s->listener.data = s;
  s->open_handles = 1;
  int rc = uv_tcp_bind(&s->listener, sa, 0);
  if (!rc)
    rc = uv_listen((uv_stream_t *)&s->listener, 128, on_connection);
  if (rc) {
    snprintf(err, errlen, "cannot listen on %s/tcp: %s", name, uv_strerror(rc));
    sg_http_server_close(s);
    return rc;
  }
  *out = s;
  return 0;
}

void sg_http_server_close(sg_http_server_t *s) {
  if (!s || s->closing)
    return;
  s->closing = 1;
  s->open_handles++; /* hold s while closing */
  uv_close((uv_handle_t *)&s->listener, on_listener_closed);
  while (s->conns)
    conn_close(s->conns);
  s->open_handles--;
  maybe_free_server(s);
}

uint16_t sg_http_server_port(const sg_http_server_t *s) {
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  if (uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len) != 0)
    return 0;
  return sg_sockaddr_port((struct sockaddr *)&ss);
}
