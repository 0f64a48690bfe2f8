#include "dns/upstream.h"

#include <ares.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dns/ares_uv.h"
#include "dns/message.h"
#include "util/common.h"
#include "util/sockaddr.h"

/* How often in-flight queries are checked for their timeout. c-ares only
 * notices a timeout when it is asked to process; a coarse periodic tick is
 * far cheaper than recomputing the next deadline after every send (which is
 * linear in the number of queries in c-ares 1.18). */
#define TICK_MS 50
/* Room for a burst of answers on one upstream socket. */
#define UPSTREAM_RCVBUF (4 << 20)

typedef struct chan {
  sg_upstream_t *up;
  uint32_t mark;   /* SO_MARK of this server's sockets; 0 = none */
  sg_ares_uv_t io; /* the channel and its sockets on the loop */
  int index;
  char name[SG_ADDRSTR_MAX];
  uv_timer_t tick;
  int pending;
} chan_t;

const double sg_upstream_bucket_le[SG_UPSTREAM_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};

struct sg_upstream {
  sg_upstream_stats_t stats;
  uv_loop_t *loop;
  chan_t chans[SG_UPSTREAM_MAX];
  int n;
  uint32_t mark;
  unsigned char no_mark[SG_UPSTREAM_MAX];
  int closing;
  int open_handles;
};

typedef struct {
  sg_upstream_t *up;
  int server;
  sg_upstream_cb cb;
  void *arg;
  uint64_t started_ns;
  char error[160];
  size_t len;
  uint8_t pkt[];
} query_t;

static void maybe_free(sg_upstream_t *up) {
  if (up->closing && up->open_handles == 0)
    free(up);
}

static void on_handle_closed(uv_handle_t *h) {
  sg_upstream_t *up = h->data;
  up->open_handles--;
  maybe_free(up);
}

/* The pollers of every channel count as open handles of the upstream. */
static void hold(void *owner, int delta) {
  sg_upstream_t *up = owner;
  up->open_handles += delta;
  if (delta < 0)
    maybe_free(up);
}

static int on_sock_config(ares_socket_t fd, int type, void *data) {
  chan_t *c = data;
  if (type == SOCK_DGRAM)
    sg_socket_grow_rcvbuf(fd, UPSTREAM_RCVBUF);
  if (c->mark == 0)
    return 0;
  /* Without the mark the interception rule would send our own upstream
   * query straight back to us: refuse the socket instead. */
  return setsockopt(fd, SOL_SOCKET, SO_MARK, &c->mark, sizeof(c->mark));
}

static void on_tick(uv_timer_t *t) {
  chan_t *c = container_of(t, chan_t, tick);
  ares_process_fd(c->io.ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  if (c->pending == 0)
    uv_timer_stop(t);
}

static void send_to_server(query_t *q);

static void record_answer(sg_upstream_t *up, const query_t *q) {
  double s = (double)(uv_hrtime() - q->started_ns) / 1e9;
  int i = 0;
  while (i < SG_UPSTREAM_BUCKETS - 1 && s > sg_upstream_bucket_le[i])
    i++;
  /* Slower than the last bound: counted only in +Inf (answered). */
  if (s <= sg_upstream_bucket_le[i])
    up->stats.bucket[i]++;
  up->stats.answered++;
  up->stats.sum_seconds += s;
}

const sg_upstream_stats_t *sg_upstream_stats(const sg_upstream_t *up) {
  return &up->stats;
}

static void on_answer(void *arg, int status, int timeouts, unsigned char *abuf,
                      int alen) {
  (void)timeouts;
  query_t *q = arg;
  sg_upstream_t *up = q->up;
  chan_t *c = &up->chans[q->server];
  c->pending--;

  if (status == ARES_SUCCESS && abuf) {
    int rcode = sg_dns_rcode(abuf, (size_t)alen);
    if (rcode == SG_DNS_RCODE_NOERROR || rcode == SG_DNS_RCODE_NXDOMAIN) {
      record_answer(up, q);
      q->cb(q->arg, abuf, (size_t)alen, NULL);
      free(q);
      return;
    }
    snprintf(q->error, sizeof(q->error), "%s answered rcode %d", c->name,
             rcode);
  } else {
    snprintf(q->error, sizeof(q->error), "%s: %s", c->name,
             ares_strerror(status));
  }
  if (!up->closing && status != ARES_EDESTRUCTION && q->server + 1 < up->n) {
    q->server++;
    up->stats.failovers++;
    send_to_server(q);
    return;
  }
  if (!up->closing)
    up->stats.failed++;
  q->cb(q->arg, NULL, 0, q->error);
  free(q);
}

static void send_to_server(query_t *q) {
  chan_t *c = &q->up->chans[q->server];
  c->pending++;
  if (!uv_is_active((uv_handle_t *)&c->tick))
    uv_timer_start(&c->tick, on_tick, TICK_MS, TICK_MS);
  ares_send(c->io.ch, q->pkt, (int)q->len, on_answer, q);
}

int sg_upstream_query(sg_upstream_t *up, const uint8_t *pkt, size_t len,
                      sg_upstream_cb cb, void *arg) {
  if (up->closing)
    return -ECANCELED;
  if (len < SG_DNS_HEADER_LEN || len > 65535)
    return -EINVAL;
  query_t *q = malloc(sizeof(*q) + len);
  if (!q)
    return -ENOMEM;
  q->up = up;
  q->server = 0;
  q->cb = cb;
  q->arg = arg;
  q->error[0] = 0;
  q->started_ns = uv_hrtime();
  q->len = len;
  memcpy(q->pkt, pkt, len);
  send_to_server(q);
  return 0;
}

static int init_chan(sg_upstream_t *up, int i, const struct sockaddr *sa,
                     uint32_t timeout_ms, char *err, size_t errlen) {
  chan_t *c = &up->chans[i];
  c->up = up;
  c->mark = up->no_mark[i] ? 0 : up->mark;
  c->index = i;
  sg_sockaddr_str(sa, c->name, sizeof(c->name));

  struct ares_options o;
  memset(&o, 0, sizeof(o));
  /* One server per channel: failover is done above, across channels.
   * NOCHECKRESP hands us SERVFAIL/REFUSED answers so that every rcode other
   * than NOERROR/NXDOMAIN fails over the same way. Within one exchange the
   * query is sent twice: c-ares doubles the wait for the second try, so a
   * first wait of a third of the budget makes the two tries take exactly
   * the configured timeout, and one lost datagram costs a resend, not a
   * SERVFAIL. */
  o.flags = ARES_FLAG_NOCHECKRESP | ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES |
            ARES_FLAG_STAYOPEN;
  o.timeout = (int)(timeout_ms / 3 ? timeout_ms / 3 : 1);
  o.tries = 2;
  sg_ares_uv_init(&c->io, up->loop, hold, up);
  o.sock_state_cb = sg_ares_uv_sock_state;
  o.sock_state_cb_data = &c->io;
  int mask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
             ARES_OPT_SOCK_STATE_CB | ARES_OPT_NOROTATE;
  int rc = ares_init_options(&c->io.ch, &o, mask);
  if (rc != ARES_SUCCESS) {
    snprintf(err, errlen, "c-ares init failed: %s", ares_strerror(rc));
    return -ENOMEM;
  }
  struct ares_addr_port_node node;
  memset(&node, 0, sizeof(node));
  node.family = sa->sa_family;
  if (sa->sa_family == AF_INET)
    memcpy(&node.addr.addr4, &((const struct sockaddr_in *)sa)->sin_addr, 4);
  else
    memcpy(&node.addr.addr6, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
  node.udp_port = node.tcp_port = sg_sockaddr_port(sa);
  rc = ares_set_servers_ports(c->io.ch, &node);
  if (rc != ARES_SUCCESS) {
    ares_destroy(c->io.ch);
    snprintf(err, errlen, "c-ares cannot use server %s: %s", c->name,
             ares_strerror(rc));
    return -EINVAL;
  }
  ares_set_socket_configure_callback(c->io.ch, on_sock_config, c);
  uv_timer_init(up->loop, &c->tick);
  c->tick.data = up;
  up->open_handles++;
  return 0;
}

int sg_upstream_new(uv_loop_t *loop, const sg_upstream_opts_t *opts,
                    sg_upstream_t **out, char *err, size_t errlen) {
  int lrc = sg_ares_uv_library_init(err, errlen);
  if (lrc)
    return lrc;
  if (opts->nservers < 1 || opts->nservers > SG_UPSTREAM_MAX) {
    snprintf(err, errlen, "between 1 and %d upstream nameservers are needed",
             SG_UPSTREAM_MAX);
    return -EINVAL;
  }
  sg_upstream_t *up = calloc(1, sizeof(*up));
  if (!up)
    return -ENOMEM;
  up->loop = loop;
  up->mark = opts->mark;
  memcpy(up->no_mark, opts->no_mark, sizeof(up->no_mark));
  for (int i = 0; i < opts->nservers; i++) {
    int rc = init_chan(up, i, (const struct sockaddr *)&opts->servers[i],
                       opts->timeout_ms, err, errlen);
    if (rc) {
      up->n = i;
      sg_upstream_close(up);
      return rc;
    }
  }
  up->n = opts->nservers;
  *out = up;
  return 0;
}

void sg_upstream_close(sg_upstream_t *up) {
  if (!up || up->closing)
    return;
  up->closing = 1;
  /* ares_destroy fails every query in flight (callbacks run with
   * ARES_EDESTRUCTION, and do not fail over) and reports every socket as no
   * longer watched, which closes the pollers. */
  up->open_handles++; /* hold the struct while tearing down */
  for (int i = 0; i < up->n; i++) {
    ares_destroy(up->chans[i].io.ch);
    uv_close((uv_handle_t *)&up->chans[i].tick, on_handle_closed);
  }
  up->open_handles--;
  maybe_free(up);
}

int sg_upstream_from_resolv_conf(const char *path, struct sockaddr_storage *out,
                                 int max, char *err, size_t errlen) {
  FILE *f = fopen(path, "r");
  if (!f) {
    int e = errno;
    snprintf(err, errlen, "cannot read %s: %s", path, strerror(e));
    return -e;
  }
  struct sockaddr_storage all[32];
  int n = 0;
  char line[512];
  while (fgets(line, sizeof(line), f) && n < 32) {
    char word[32], addr[256];
    if (sscanf(line, " %31s %255s", word, addr) != 2 ||
        strcmp(word, "nameserver") != 0)
      continue;
    char perr[256];
    if (sg_sockaddr_parse(addr, 53, &all[n], perr, sizeof(perr)) == 0)
      n++;
  }
  fclose(f);

  /* Non-loopback servers first: inside a sandbox a loopback nameserver is
   * usually a local stub that itself gets intercepted. */
  int k = 0;
  for (int pass = 0; pass < 2; pass++) {
    for (int i = 0; i < n && k < max; i++) {
      const struct sockaddr *sa = (const struct sockaddr *)&all[i];
      int loop = 0;
      if (sa->sa_family == AF_INET)
        loop = (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >>
                24) == 127;
      else
        loop =
            IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
      if (loop == pass)
        out[k++] = all[i];
    }
  }
  if (k == 0) {
    snprintf(err, errlen, "no nameserver found in %s", path);
    return -ENOENT;
  }
  return k;
}
