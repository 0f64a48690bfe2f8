#include "dns/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/common.h"
#include "util/log.h"
#include "util/sockaddr.h"

/* A client may have this many queries waiting upstream before we stop
 * reading from it (backpressure instead of unbounded memory). */
#define TCP_MAX_INFLIGHT 128
/* Unread replies beyond this mean the client does not read: drop it. */
#define TCP_MAX_WRITE_QUEUE (1u << 20)
#define TCP_BUF_MAX (2 + 65535 + 4096)
/* UDP reads use recvmmsg: libuv splits the buffer into 64 KiB slots, one
 * datagram each, so this many datagrams come in with one system call. Only
 * the first page of a slot is touched by a typical query. */
#define UDP_BATCH 16
#define UDP_SLOT (64 * 1024)
/* Room for a burst of client queries while the loop is busy. */
#define UDP_LISTEN_RCVBUF (4 << 20)

typedef struct udp_listener {
  uv_udp_t udp;
  sg_dns_server_t *srv;
} udp_listener_t;

typedef struct tcp_conn {
  uv_tcp_t tcp;
  uv_timer_t idle;
  sg_dns_server_t *srv;
  struct tcp_conn *prev, *next;
  char peer_ip[INET6_ADDRSTRLEN];
  uint8_t *buf;
  size_t len, cap;
  int inflight;
  int handles;
  int closing;
  int reading;
} tcp_conn_t;

struct sg_dns_server {
  uv_loop_t *loop;
  sg_dns_server_opts_t opts;
  udp_listener_t udp[SG_DNS_SERVER_MAX_LISTEN];
  uv_tcp_t tcp[SG_DNS_SERVER_MAX_LISTEN];
  int nudp, ntcp;
  tcp_conn_t *conns;
  int nconns;
  int open_handles;
  int inflight;
  int closing;
  sg_dns_stats_t stats;
  uint8_t *rbuf; /* UDP_BATCH * UDP_SLOT, shared by all UDP listeners */
};

/* Where a query came from, and so where its answer goes. */
typedef struct {
  udp_listener_t *ul; /* UDP: the listener it arrived on */
  struct sockaddr_storage addr;
  tcp_conn_t *conn; /* TCP: the connection */
} origin_t;

/* A query waiting for its upstream answer: just enough of it to restore the
 * ID and to build a SERVFAIL or truncated reply ourselves. */
typedef struct sg_dns_held {
  sg_dns_server_t *srv;
  origin_t from;
  uint16_t id, flags, max_udp;
  uint16_t qwire_len;
  uint8_t qwire[SG_DNS_WIRE_NAME_MAX + 4];
  uint8_t *answer; /* a held answer (on_answer returned SG_DNS_HOLD) */
  size_t answer_len;
} pending_t;

typedef struct {
  uv_udp_send_t req;
  uint8_t data[];
} udp_send_t;

typedef struct {
  uv_write_t req;
  uint8_t data[];
} tcp_write_t;

static void conn_resume(tcp_conn_t *c);

static void maybe_free_server(sg_dns_server_t *srv) {
  if (srv->closing && srv->open_handles == 0 && srv->inflight == 0) {
    free(srv->rbuf);
    free(srv);
  }
}

static void on_server_handle_closed(uv_handle_t *h) {
  sg_dns_server_t *srv = h->data;
  srv->open_handles--;
  maybe_free_server(srv);
}

/* ---- TCP connection lifetime ---- */

static void maybe_free_conn(tcp_conn_t *c) {
  if (!c->closing || c->handles > 0 || c->inflight > 0)
    return;
  sg_dns_server_t *srv = c->srv;
  free(c->buf);
  free(c);
  srv->open_handles--;
  maybe_free_server(srv);
}

static void on_conn_handle_closed(uv_handle_t *h) {
  tcp_conn_t *c = h->data;
  c->handles--;
  maybe_free_conn(c);
}

static void conn_close(tcp_conn_t *c) {
  if (c->closing)
    return;
  c->closing = 1;
  sg_dns_server_t *srv = c->srv;
  if (c->prev)
    c->prev->next = c->next;
  else
    srv->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  srv->nconns--;
  uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
  uv_close((uv_handle_t *)&c->idle, on_conn_handle_closed);
}

/* ---- sending replies ---- */

static void on_udp_sent(uv_udp_send_t *req, int status) {
  (void)status;
  free(container_of(req, udp_send_t, req));
}

static void on_tcp_written(uv_write_t *req, int status) {
  tcp_write_t *w = container_of(req, tcp_write_t, req);
  tcp_conn_t *c = req->handle->data;
  free(w);
  if (status < 0 && !c->closing)
    conn_close(c);
}

static void send_reply(sg_dns_server_t *srv, origin_t *from, const uint8_t *msg,
                       size_t len) {
  if (from->conn) {
    tcp_conn_t *c = from->conn;
    if (c->closing)
      return;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) >
        TCP_MAX_WRITE_QUEUE) {
      conn_close(c);
      return;
    }
    tcp_write_t *w = malloc(sizeof(*w) + 2 + len);
    if (!w)
      return;
    w->data[0] = (uint8_t)(len >> 8);
    w->data[1] = (uint8_t)len;
    memcpy(w->data + 2, msg, len);
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)(len + 2));
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_tcp_written)) {
      free(w);
      conn_close(c);
    }
    uv_timer_again(&c->idle);
    return;
  }
  if (srv->closing)
    return;
  uv_buf_t b = uv_buf_init((char *)msg, (unsigned)len);
  const struct sockaddr *to = (const struct sockaddr *)&from->addr;
  int rc = uv_udp_try_send(&from->ul->udp, &b, 1, to);
  if (rc != UV_EAGAIN)
    return;
  /* The socket buffer is full: queue a copy rather than drop the answer. */
  udp_send_t *s = malloc(sizeof(*s) + len);
  if (!s)
    return;
  memcpy(s->data, msg, len);
  b = uv_buf_init((char *)s->data, (unsigned)len);
  if (uv_udp_send(&s->req, &from->ul->udp, &b, 1, to, on_udp_sent))
    free(s);
}

static void reply_code(sg_dns_server_t *srv, origin_t *from,
                       const sg_dns_query_t *q, int rcode, uint16_t flags) {
  uint8_t out[SG_DNS_HEADER_LEN + SG_DNS_WIRE_NAME_MAX + 4];
  size_t n = sg_dns_build_reply(q, rcode, flags, out, sizeof(out));
  if (n)
    send_reply(srv, from, out, n);
}

/* ---- the upstream answer ---- */

static void pending_done(pending_t *p) {
  sg_dns_server_t *srv = p->srv;
  tcp_conn_t *c = p->from.conn;
  free(p->answer);
  free(p);
  srv->inflight--;
  if (c) {
    c->inflight--;
    if (!c->closing && !c->reading && c->inflight < TCP_MAX_INFLIGHT / 2)
      conn_resume(c);
    maybe_free_conn(c);
  } else {
    maybe_free_server(srv);
  }
}

static void reply_from_pending(pending_t *p, int rcode, uint16_t flags) {
  sg_dns_query_t q;
  q.id = p->id;
  q.flags = p->flags;
  q.qwire_len = p->qwire_len;
  memcpy(q.qwire, p->qwire, p->qwire_len);
  reply_code(p->srv, &p->from, &q, rcode, flags);
}

static void on_upstream_answer(void *arg, const uint8_t *answer, size_t len,
                               const char *error) {
  pending_t *p = arg;
  sg_dns_server_t *srv = p->srv;
  if (srv->closing || (p->from.conn && p->from.conn->closing)) {
    pending_done(p);
    return;
  }
  if (!answer) {
    srv->stats.upstream_failed++;
    sg_log_msg(SG_LOG_WARN, "dns.upstream_failed",
               "every upstream failed, answering SERVFAIL (last: %s)", error);
    reply_from_pending(p, SG_DNS_RCODE_SERVFAIL, 0);
    pending_done(p);
    return;
  }
  if (!p->from.conn && len > p->max_udp) {
    /* Bigger than the client said it can take over UDP (the upstream answer
     * may have come over TCP): tell it to ask again over TCP. */
    srv->stats.truncated++;
    reply_from_pending(p, SG_DNS_RCODE_NOERROR, SG_DNS_FLAG_TC);
    pending_done(p);
    return;
  }
  /* The answer is relayed as is; only the ID goes back to the client's. */
  uint8_t *copy = malloc(len);
  if (!copy) {
    reply_from_pending(p, SG_DNS_RCODE_SERVFAIL, 0);
    pending_done(p);
    return;
  }
  memcpy(copy, answer, len);
  sg_dns_set_id(copy, p->id);
  p->answer = copy;
  p->answer_len = len;
  int what = SG_DNS_RELEASE;
  if (srv->opts.on_answer)
    what = srv->opts.on_answer(srv->opts.decide_ctx, answer, len, p);
  if (what == SG_DNS_HOLD) {
    srv->stats.held++;
    return;
  }
  sg_dns_server_release(p, what == SG_DNS_RELEASE);
}

void sg_dns_server_release(sg_dns_held_t *p, int ok) {
  sg_dns_server_t *srv = p->srv;
  if (srv->closing || (p->from.conn && p->from.conn->closing)) {
    pending_done(p);
    return;
  }
  if (ok) {
    send_reply(srv, &p->from, p->answer, p->answer_len);
  } else {
    srv->stats.refused++;
    reply_from_pending(p, SG_DNS_RCODE_SERVFAIL, 0);
  }
  pending_done(p);
}

/* ---- one query ---- */

static void handle_query(sg_dns_server_t *srv, origin_t *from,
                         const char *client_ip, const uint8_t *pkt,
                         size_t len) {
  sg_dns_query_t q;
  sg_dns_status_t st = sg_dns_parse_query(pkt, len, &q);
  switch (st) {
  case SG_DNS_OK: break;
  case SG_DNS_ERR_SHORT:
  case SG_DNS_ERR_RESPONSE:
    /* Nothing to answer: too short for an ID, or a response (answering
     * those could start a loop between two resolvers). */
    srv->stats.dropped++;
    return;
  case SG_DNS_ERR_OPCODE:
    srv->stats.malformed++;
    q.qwire_len = 0;
    reply_code(srv, from, &q, SG_DNS_RCODE_NOTIMP, 0);
    return;
  default:
    srv->stats.malformed++;
    if (sg_log_enabled(SG_LOG_DEBUG))
      sg_log_msg(SG_LOG_DEBUG, "dns.malformed", "from %s: %s", client_ip,
                 sg_dns_status_str(st));
    q.qwire_len = 0;
    reply_code(srv, from, &q, SG_DNS_RCODE_FORMERR, 0);
    return;
  }

  char tname[16];
  sg_dns_request_t req = {
      .query = &q,
      .qtype_name = sg_dns_type_name(q.qtype, tname),
      .client_ip = client_ip,
      .transport = from->conn ? "tcp" : "udp",
  };
  srv->stats.queries++;
  int verdict = srv->opts.decide(srv->opts.decide_ctx, &req);
  if (verdict != SG_DNS_FORWARD) {
    srv->stats.denied++;
    reply_code(srv, from, &q, verdict, 0);
    return;
  }
  srv->stats.allowed++;

  pending_t *p = malloc(sizeof(*p));
  if (!p) {
    reply_code(srv, from, &q, SG_DNS_RCODE_SERVFAIL, 0);
    return;
  }
  p->srv = srv;
  p->answer = NULL;
  p->from = *from;
  p->id = q.id;
  p->flags = q.flags;
  /* Without EDNS a UDP client takes 512 bytes. */
  p->max_udp = q.edns_udp_size ? q.edns_udp_size : 512;
  p->qwire_len = (uint16_t)q.qwire_len;
  memcpy(p->qwire, q.qwire, q.qwire_len);
  srv->inflight++;
  if (from->conn)
    from->conn->inflight++;
  /* The callback may run before this returns (c-ares fails some queries
   * synchronously); p is not touched after the call. */
  int rc =
      sg_upstream_query(srv->opts.upstream, pkt, len, on_upstream_answer, p);
  if (rc)
    on_upstream_answer(p, NULL, 0, strerror(-rc));
}

/* ---- UDP ---- */

static void on_udp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  sg_dns_server_t *srv = ((udp_listener_t *)h->data)->srv;
  /* One buffer for all listeners: every datagram of a batch is handled
   * completely (parsed, decided, copied if forwarded) before the next read. */
  *buf = uv_buf_init((char *)srv->rbuf, UDP_BATCH * UDP_SLOT);
}

static void on_udp_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                        const struct sockaddr *addr, unsigned flags) {
  /* nread == 0 with UV_UDP_MMSG_FREE ends a batch: the buffer is ours and
   * stays allocated. */
  if (nread <= 0 || !addr || (flags & UV_UDP_PARTIAL))
    return;
  udp_listener_t *ul = h->data;
  origin_t from = {.ul = ul, .conn = NULL};
  memcpy(&from.addr, addr, sg_sockaddr_len(addr));
  char ip[INET6_ADDRSTRLEN];
  sg_sockaddr_ip(addr, ip, sizeof(ip));
  handle_query(ul->srv, &from, ip, (const uint8_t *)buf->base, (size_t)nread);
}

/* ---- TCP ---- */

static void on_idle(uv_timer_t *t) {
  tcp_conn_t *c = t->data;
  /* Queries still waiting upstream keep the connection; their own timeout
   * bounds how long. */
  if (c->inflight == 0)
    conn_close(c);
}

static void on_tcp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  tcp_conn_t *c = h->data;
  if (c->cap - c->len < 4096 && c->cap < TCP_BUF_MAX) {
    size_t ncap = c->cap ? c->cap * 2 : 4096;
    if (ncap > TCP_BUF_MAX)
      ncap = TCP_BUF_MAX;
    uint8_t *nb = realloc(c->buf, ncap);
    if (nb) {
      c->buf = nb;
      c->cap = ncap;
    }
  }
  *buf = uv_buf_init((char *)c->buf + c->len, (unsigned)(c->cap - c->len));
}

static void on_tcp_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void conn_resume(tcp_conn_t *c) {
  if (uv_read_start((uv_stream_t *)&c->tcp, on_tcp_alloc, on_tcp_read) == 0)
    c->reading = 1;
}

static void on_tcp_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  tcp_conn_t *c = s->data;
  if (nread < 0) {
    conn_close(c);
    return;
  }
  if (nread == 0)
    return;
  c->len += (size_t)nread;
  uv_timer_again(&c->idle);

  size_t off = 0;
  while (!c->closing && c->len - off >= 2) {
    size_t flen = ((size_t)c->buf[off] << 8) | c->buf[off + 1];
    if (flen == 0) {
      conn_close(c);
      return;
    }
    if (c->len - off < 2 + flen)
      break;
    origin_t from = {.ul = NULL, .conn = c};
    handle_query(c->srv, &from, c->peer_ip, c->buf + off + 2, flen);
    off += 2 + flen;
  }
  if (c->closing)
    return;
  memmove(c->buf, c->buf + off, c->len - off);
  c->len -= off;
  if (c->inflight >= TCP_MAX_INFLIGHT && c->reading) {
    uv_read_stop(s);
    c->reading = 0;
  }
}

static void on_tcp_connection(uv_stream_t *server, int status) {
  sg_dns_server_t *srv = server->data;
  if (status < 0)
    return;
  tcp_conn_t *c = calloc(1, sizeof(*c));
  if (!c)
    return;
  c->srv = srv;
  uv_tcp_init(srv->loop, &c->tcp);
  uv_timer_init(srv->loop, &c->idle);
  c->tcp.data = c->idle.data = c;
  c->handles = 2;
  srv->open_handles++; /* a connection holds the server until it is freed */
  c->next = srv->conns;
  if (srv->conns)
    srv->conns->prev = c;
  srv->conns = c;
  srv->nconns++;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  if (srv->nconns > srv->opts.tcp_max_clients) {
    srv->stats.tcp_refused++;
    conn_close(c);
    return;
  }
  struct sockaddr_storage peer;
  int plen = sizeof(peer);
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&peer, &plen) == 0)
    sg_sockaddr_ip((struct sockaddr *)&peer, c->peer_ip, sizeof(c->peer_ip));
  uv_timer_start(&c->idle, on_idle, srv->opts.tcp_idle_ms,
                 srv->opts.tcp_idle_ms);
  conn_resume(c);
}

/* ---- start / stop ---- */

int sg_dns_server_start(uv_loop_t *loop, const sg_dns_server_opts_t *opts,
                        sg_dns_server_t **out, char *err, size_t errlen) {
  sg_dns_server_t *srv = calloc(1, sizeof(*srv));
  if (!srv)
    return -ENOMEM;
  srv->loop = loop;
  srv->opts = *opts;
  srv->rbuf = malloc(UDP_BATCH * UDP_SLOT);
  if (!srv->rbuf) {
    free(srv);
    return -ENOMEM;
  }
  char name[SG_ADDRSTR_MAX];
  int rc = 0;
  for (int i = 0; i < opts->nlisten; i++) {
    const struct sockaddr *sa = (const struct sockaddr *)&opts->listen[i];
    sg_sockaddr_str(sa, name, sizeof(name));

    udp_listener_t *ul = &srv->udp[srv->nudp];
    ul->srv = srv;
    uv_udp_init_ex(loop, &ul->udp, AF_UNSPEC | UV_UDP_RECVMMSG);
    ul->udp.data = ul;
    srv->open_handles++;
    srv->nudp++;
    rc = uv_udp_bind(&ul->udp, sa, 0);
    if (!rc) {
      uv_os_fd_t fd;
      if (uv_fileno((uv_handle_t *)&ul->udp, &fd) == 0)
        sg_socket_grow_rcvbuf(fd, UDP_LISTEN_RCVBUF);
      rc = uv_udp_recv_start(&ul->udp, on_udp_alloc, on_udp_recv);
    }
    if (rc) {
      snprintf(err, errlen, "cannot listen on %s/udp: %s", name,
               uv_strerror(rc));
      break;
    }

    uv_tcp_t *t = &srv->tcp[srv->ntcp];
    uv_tcp_init(loop, t);
    t->data = srv;
    srv->open_handles++;
    srv->ntcp++;
    rc = uv_tcp_bind(t, sa, 0);
    if (!rc)
      rc = uv_listen((uv_stream_t *)t, 128, on_tcp_connection);
    if (rc) {
      snprintf(err, errlen, "cannot listen on %s/tcp: %s", name,
               uv_strerror(rc));
      break;
    }
  }
  if (rc) {
    sg_dns_server_close(srv);
    return rc;
  }
  *out = srv;
  return 0;
}

void sg_dns_server_close(sg_dns_server_t *srv) {
  if (!srv || srv->closing)
    return;
  srv->closing = 1;
  srv->open_handles++; /* hold srv while closing */
  for (int i = 0; i < srv->nudp; i++) {
    srv->udp[i].udp.data = srv;
    uv_close((uv_handle_t *)&srv->udp[i].udp, on_server_handle_closed);
  }
  for (int i = 0; i < srv->ntcp; i++)
    uv_close((uv_handle_t *)&srv->tcp[i], on_server_handle_closed);
  while (srv->conns)
    conn_close(srv->conns);
  srv->open_handles--;
  maybe_free_server(srv);
}

const sg_dns_stats_t *sg_dns_server_stats(const sg_dns_server_t *srv) {
  return &srv->stats;
}
