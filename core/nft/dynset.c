#include "nft/dynset.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <libmnl/libmnl.h>
#include <libnftnl/set.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netlink.h>

#include "nft/batch.h"
#include "nft/build.h"
#include "nft/filter.h"
#include "util/log.h"

#ifndef NETLINK_CAP_ACK
#define NETLINK_CAP_ACK 10
#endif

/* Elements per message: a v6 element with a timeout is under 60 bytes. */
#define ELEMS_PER_MSG 800
/* Answers of the kernel queue up in the receive buffer until the loop reads
 * them; a lost answer fails its batch, so leave plenty of room. */
#define RCVBUF_BYTES (4 << 20)
#define RECV_BYTES (64 * 1024)
#define SWEEP_MS 30000
#define INITIAL_BUCKETS 1024

const double sg_dynset_ack_le[SG_DYNSET_ACK_BUCKETS] = {
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.0025,  0.005,    0.01,    0.025,  0.05,    0.1,    0.25};

typedef struct batch batch_t;
typedef struct entry entry_t;

typedef struct {
  entry_t *e;
  uint32_t timeout_ms;
} item_t;

/* One request: an answer waiting for the batches its addresses are in. */
typedef struct {
  sg_dynset_cb cb;
  void *arg;
  int waiting; /* batches not yet complete */
  int failed;
} job_t;

/* One address the sets hold or are about to hold. */
struct entry {
  struct entry *next; /* hash chain */
  uint8_t family;
  uint8_t addr[16];
  uint64_t expires_ms; /* when the kernel drops it; 0 = not in the set */
  uint32_t timeout_ms; /* the timeout last sent */
  batch_t *pending;    /* the latest batch adding it, while there is one */
};

struct batch {
  batch_t *next; /* in flight, oldest first */
  sg_nft_batch_t *nb;
  uint64_t sent_ms, deadline_ms;
  uint64_t sent_ns;
  job_t **jobs;
  size_t njobs, jcap;
  item_t *items; /* the addresses it adds, with their timeouts */
  size_t nentries, icap;
};

struct sg_dynset {
  uv_loop_t *loop;
  sg_dynset_opts_t o;
  struct mnl_socket *nl;
  uv_poll_t poll;
  uv_check_t check;
  uv_idle_t idle; /* active while a batch is open: poll must not block */
  uv_timer_t timeout, sweep;
  int handles;
  int closing;
  uint32_t seq;
  batch_t *open;        /* collecting this iteration's addresses */
  batch_t *head, *tail; /* in flight */
  entry_t **buckets;
  size_t nbuckets, nentries;
  sg_dynset_stats_t stats;
  uint64_t last_refusal_log, refusals_unlogged;
  uint8_t *rbuf;
};

static uint64_t now_ms(const sg_dynset_t *d) {
  return uv_now(d->loop);
}

/* ---- the address table ---- */

static size_t hash_addr(int family, const uint8_t *a, size_t nbuckets) {
  uint32_t h = 2166136261u ^ (uint32_t)family;
  for (int i = 0; i < (family == 4 ? 4 : 16); i++)
    h = (h ^ a[i]) * 16777619u;
  return h & (nbuckets - 1);
}

static entry_t *find(sg_dynset_t *d, int family, const uint8_t *a) {
  size_t n = family == 4 ? 4 : 16;
  for (entry_t *e = d->buckets[hash_addr(family, a, d->nbuckets)]; e;
       e = e->next)
    if (e->family == family && memcmp(e->addr, a, n) == 0)
      return e;
  return NULL;
}

static void grow(sg_dynset_t *d) {
  size_t nb = d->nbuckets * 2;
  entry_t **b = calloc(nb, sizeof(*b));
  if (!b)
    return; /* longer chains, still correct */
  for (size_t i = 0; i < d->nbuckets; i++) {
    entry_t *e = d->buckets[i];
    while (e) {
      entry_t *next = e->next;
      size_t h = hash_addr(e->family, e->addr, nb);
      e->next = b[h];
      b[h] = e;
      e = next;
    }
  }
  free(d->buckets);
  d->buckets = b;
  d->nbuckets = nb;
}

static entry_t *insert(sg_dynset_t *d, int family, const uint8_t *a) {
  if (d->nentries >= d->nbuckets)
    grow(d);
  entry_t *e = calloc(1, sizeof(*e));
  if (!e)
    return NULL;
  e->family = (uint8_t)family;
  memcpy(e->addr, a, family == 4 ? 4 : 16);
  size_t h = hash_addr(family, a, d->nbuckets);
  e->next = d->buckets[h];
  d->buckets[h] = e;
  d->nentries++;
  return e;
}

/* Drops the entries the kernel has expired (and that nothing waits for). */
static void on_sweep(uv_timer_t *t) {
  sg_dynset_t *d = t->data;
  uint64_t now = now_ms(d);
  for (size_t i = 0; i < d->nbuckets; i++) {
    entry_t **pp = &d->buckets[i];
    while (*pp) {
      entry_t *e = *pp;
      if (!e->pending && e->expires_ms <= now) {
        *pp = e->next;
        free(e);
        d->nentries--;
      } else {
        pp = &e->next;
      }
    }
  }
}

/* ---- batches ---- */

static void batch_free(batch_t *b) {
  sg_nft_batch_free(b->nb);
  free(b->jobs);
  free(b->items);
  free(b);
}

static void remove_entry(sg_dynset_t *d, entry_t *e) {
  entry_t **pp = &d->buckets[hash_addr(e->family, e->addr, d->nbuckets)];
  while (*pp && *pp != e)
    pp = &(*pp)->next;
  if (*pp) {
    *pp = e->next;
    free(e);
    d->nentries--;
  }
}

/* A batch is over: record the outcome in its entries and tell its jobs. */
static void batch_done(sg_dynset_t *d, batch_t *b, int ok) {
  for (size_t i = 0; i < b->nentries; i++) {
    entry_t *e = b->items[i].e;
    /* From the send: the kernel started the timeout no earlier. A later
     * batch may be refreshing the same address with a longer timeout. */
    uint64_t until = b->sent_ms + b->items[i].timeout_ms;
    if (ok && until > e->expires_ms)
      e->expires_ms = until;
    if (e->pending == b) {
      e->pending = NULL;
      if (ok)
        e->timeout_ms = b->items[i].timeout_ms;
      else if (e->expires_ms <= now_ms(d))
        remove_entry(d, e); /* not in the set: forget it */
    }
  }
  for (size_t i = 0; i < b->njobs; i++) {
    job_t *j = b->jobs[i];
    if (!ok)
      j->failed = 1;
    if (--j->waiting == 0) {
      j->cb(j->arg, !j->failed);
      free(j);
    }
  }
  batch_free(b);
}

/* Removes b from the in-flight list. */
static void unlink_batch(sg_dynset_t *d, batch_t *b) {
  batch_t **pp = &d->head;
  d->tail = NULL;
  while (*pp) {
    if (*pp == b) {
      *pp = b->next;
      continue;
    }
    d->tail = *pp;
    pp = &(*pp)->next;
  }
}

static void on_timeout(uv_timer_t *t);

static void arm_timeout(sg_dynset_t *d) {
  if (!d->head) {
    uv_timer_stop(&d->timeout);
    return;
  }
  uint64_t now = now_ms(d);
  uint64_t due = d->head->deadline_ms > now ? d->head->deadline_ms - now : 0;
  uv_timer_start(&d->timeout, on_timeout, due, 0);
}

static void complete(sg_dynset_t *d, batch_t *b) {
  int where;
  int rc = sg_nft_batch_result(b->nb, &where);
  unlink_batch(d, b);
  if (rc == 0) {
    d->stats.batches_ok++;
    double secs = (double)(uv_hrtime() - b->sent_ns) / 1e9;
    d->stats.ack_count++;
    d->stats.ack_sum_seconds += secs;
    int i = 0;
    while (i < SG_DYNSET_ACK_BUCKETS - 1 && secs > sg_dynset_ack_le[i])
      i++;
    /* Slower than the last bound: only in +Inf (ack_count). */
    if (secs <= sg_dynset_ack_le[i])
      d->stats.ack_bucket[i]++;
  } else {
    d->stats.batches_refused++;
    /* One line a second at most: a full set refuses every add. */
    uint64_t now = now_ms(d);
    if (now - d->last_refusal_log >= 1000 || d->last_refusal_log == 0) {
      sg_log_msg(SG_LOG_ERROR, "nft.add_refused",
                 "the kernel refused adding %zu learned address(es) to the "
                 "allow sets (%s): their answers get SERVFAIL (%llu more "
                 "refusals since the last line)",
                 b->nentries,
                 rc == -ENFILE ? "the set is full" : strerror(-rc),
                 (unsigned long long)d->refusals_unlogged);
      d->last_refusal_log = now;
      d->refusals_unlogged = 0;
    } else {
      d->refusals_unlogged++;
    }
  }
  batch_done(d, b, rc == 0);
  arm_timeout(d);
}

static void on_timeout(uv_timer_t *t) {
  sg_dynset_t *d = t->data;
  uint64_t now = now_ms(d);
  while (d->head && d->head->deadline_ms <= now) {
    batch_t *b = d->head;
    unlink_batch(d, b);
    d->stats.batches_timeout++;
    sg_log_msg(SG_LOG_ERROR, "nft.add_timeout",
               "the kernel did not acknowledge adding %zu learned address(es) "
               "within %u ms: their answers get SERVFAIL",
               b->nentries, d->o.ack_timeout_ms);
    batch_done(d, b, 0);
  }
  arm_timeout(d);
}

/* Fails everything in flight: the answers were lost. */
static void fail_in_flight(sg_dynset_t *d, const char *why) {
  if (d->head)
    sg_log_msg(SG_LOG_ERROR, "nft.ack_lost",
               "lost the kernel's answers to the allow-set updates (%s): "
               "their answers get SERVFAIL",
               why);
  while (d->head) {
    batch_t *b = d->head;
    unlink_batch(d, b);
    d->stats.batches_refused++;
    batch_done(d, b, 0);
  }
  arm_timeout(d);
}

static batch_t *owner(sg_dynset_t *d, uint32_t seq) {
  for (batch_t *b = d->head; b; b = b->next) {
    uint32_t end = sg_nft_batch_seq_end(b->nb);
    uint32_t count = (uint32_t)sg_nft_batch_count(b->nb) + 2;
    if (seq - (end + 1 - count) < count)
      return b;
  }
  return NULL;
}

static void read_answers(sg_dynset_t *d) {
  int fd = mnl_socket_get_fd(d->nl);
  for (;;) {
    ssize_t n = recv(fd, d->rbuf, RECV_BYTES, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == ENOBUFS) {
        fail_in_flight(d, "receive buffer overrun");
        continue;
      }
      return; /* EAGAIN, or an error poll will report again */
    }
    const struct nlmsghdr *nlh = (const struct nlmsghdr *)d->rbuf;
    int len = (int)n;
    for (; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
      if (nlh->nlmsg_type != NLMSG_ERROR ||
          mnl_nlmsg_get_payload_len(nlh) < sizeof(struct nlmsgerr))
        continue;
      const struct nlmsgerr *e = mnl_nlmsg_get_payload(nlh);
      batch_t *b = owner(d, nlh->nlmsg_seq);
      if (b && sg_nft_batch_feed(b->nb, nlh->nlmsg_seq, e->error))
        complete(d, b);
    }
  }
}

static void on_readable(uv_poll_t *p, int status, int events) {
  (void)events;
  sg_dynset_t *d = p->data;
  if (status < 0) {
    fail_in_flight(d, uv_strerror(status));
    return;
  }
  read_answers(d);
}

/* Adds the open batch's entries to a netlink batch. */
static int build(sg_dynset_t *d, batch_t *b) {
  for (int f = 0; f < 2; f++) {
    int fam = f ? 6 : 4;
    struct nftnl_set *s = NULL;
    int in_msg = 0;
    for (size_t i = 0; i <= b->nentries; i++) {
      const item_t *it = i < b->nentries ? &b->items[i] : NULL;
      const entry_t *e = it ? it->e : NULL;
      if (s && (!e || in_msg == ELEMS_PER_MSG)) {
        int rc = sg_nft_batch_add_setelems(b->nb, NFT_MSG_NEWSETELEM,
                                           NLM_F_CREATE, s);
        nftnl_set_free(s);
        s = NULL;
        in_msg = 0;
        if (rc < 0)
          return rc;
      }
      if (!e || e->family != fam)
        continue;
      if (!s && !(s = sg_nft_set_ref(sg_nft_dyn_set[f], fam)))
        return -ENOMEM;
      if (!sg_nft_add_addr_elem(s, fam, e->addr, it->timeout_ms)) {
        nftnl_set_free(s);
        return -ENOMEM;
      }
      in_msg++;
    }
  }
  return 0;
}

static void on_idle(uv_idle_t *h) { (void)h; }

/* End of a loop iteration: send what the iteration's answers collected. */
static void on_check(uv_check_t *c) {
  sg_dynset_t *d = c->data;
  uv_check_stop(c);
  uv_idle_stop(&d->idle);
  batch_t *b = d->open;
  d->open = NULL;
  if (!b)
    return;
  int rc = -ENOMEM;
  b->nb = sg_nft_batch_new_at(d->seq);
  if (b->nb && (rc = build(d, b)) == 0) {
    d->seq += (uint32_t)sg_nft_batch_count(b->nb) + 2;
    b->sent_ms = now_ms(d);
    b->sent_ns = uv_hrtime();
    b->deadline_ms = b->sent_ms + d->o.ack_timeout_ms;
    rc = sg_nft_batch_send_on(b->nb, mnl_socket_get_fd(d->nl));
  }
  if (rc < 0) {
    d->stats.batches_refused++;
    sg_log_msg(SG_LOG_ERROR, "nft.add_failed",
               "could not send %zu learned address(es) to the kernel (%s): "
               "their answers get SERVFAIL",
               b->nentries, strerror(-rc));
    batch_done(d, b, 0);
    return;
  }
  d->stats.elements += b->nentries;
  if (d->tail)
    d->tail->next = b;
  else
    d->head = b;
  d->tail = b;
  if (d->head == b)
    arm_timeout(d);
  /* The kernel processed the batch within sendmsg: the answers are usually
   * there already. */
  read_answers(d);
}

static uint64_t timeout_ms_for(const sg_dynset_t *d, uint32_t ttl) {
  return (uint64_t)sg_dynset_timeout_s(d, ttl) * 1000;
}

uint32_t sg_dynset_timeout_s(const sg_dynset_t *d, uint32_t ttl) {
  uint64_t t = (uint64_t)ttl + d->o.grace_s;
  if (t < d->o.min_s)
    t = d->o.min_s;
  if (t > d->o.max_s)
    t = d->o.max_s;
  return (uint32_t)t;
}

/* Makes job wait for batch b (once per batch). */
static bool join(batch_t *b, job_t *j) {
  if (b->njobs && b->jobs[b->njobs - 1] == j)
    return true;
  if (b->njobs == b->jcap) {
    size_t cap = b->jcap ? b->jcap * 2 : 8;
    job_t **jobs = realloc(b->jobs, cap * sizeof(*jobs));
    if (!jobs)
      return false;
    b->jobs = jobs;
    b->jcap = cap;
  }
  b->jobs[b->njobs++] = j;
  j->waiting++;
  return true;
}

int sg_dynset_allow(sg_dynset_t *d, const sg_dynset_addr_t *addrs, size_t n,
                    sg_dynset_cb cb, void *arg) {
  if (d->closing)
    return -ECANCELED;
  job_t *j = calloc(1, sizeof(*j));
  if (!j)
    return -ENOMEM;
  j->cb = cb;
  j->arg = arg;
  uint64_t now = now_ms(d);
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    const sg_dynset_addr_t *a = &addrs[i];
    uint32_t want = (uint32_t)timeout_ms_for(d, a->ttl);
    /* What the app may do with this answer: use it for its TTL (as far as
     * the clamp lets any element live), give or take the grace, so that an
     * answer whose TTL exceeds the maximum does not refresh every time. */
    uint64_t ttl_ms = (uint64_t)a->ttl * 1000;
    uint64_t grace_ms = (uint64_t)d->o.grace_s * 1000;
    uint64_t need = ttl_ms < want ? ttl_ms : want;
    need = need > grace_ms ? need - grace_ms : 0;
    entry_t *e = find(d, a->family, a->addr);
    if (e && e->pending) {
      d->stats.joined++;
      if (!join(e->pending, j)) {
        rc = -ENOMEM;
        break;
      }
      if (e->pending == d->open) {
        /* Not sent yet: the longest timeout asked for goes. */
        item_t *it = &d->open->items[d->open->nentries - 1];
        for (size_t k = 0; k < d->open->nentries; k++)
          if (d->open->items[k].e == e)
            it = &d->open->items[k];
        if (want > it->timeout_ms)
          it->timeout_ms = want;
        continue;
      }
      /* In flight with a shorter timeout: wait for it, and refresh. */
      uint64_t pending_until = now + e->timeout_ms;
      for (size_t k = 0; k < e->pending->nentries; k++)
        if (e->pending->items[k].e == e)
          pending_until = e->pending->sent_ms + e->pending->items[k].timeout_ms;
      if (pending_until >= now + want)
        continue;
    } else if (e && e->expires_ms > now) {
      uint64_t left = e->expires_ms - now;
      /* More than half its timeout left, and enough for this answer. */
      if (left > e->timeout_ms / 2 && left >= need) {
        d->stats.fresh++;
        continue;
      }
    }
    if (!e && !(e = insert(d, a->family, a->addr))) {
      rc = -ENOMEM;
      break;
    }
    if (!d->open && !(d->open = calloc(1, sizeof(*d->open)))) {
      rc = -ENOMEM;
      break;
    }
    batch_t *o = d->open;
    if (o->nentries == o->icap) {
      size_t cap = o->icap ? o->icap * 2 : 8;
      item_t *items = realloc(o->items, cap * sizeof(*items));
      if (!items) {
        rc = -ENOMEM;
        break;
      }
      o->items = items;
      o->icap = cap;
    }
    if (!join(o, j)) {
      rc = -ENOMEM;
      break;
    }
    o->items[o->nentries++] = (item_t){e, want};
    e->pending = o;
    uv_check_start(&d->check, on_check);
    uv_idle_start(&d->idle, on_idle);
  }
  if (j->waiting == 0) {
    free(j);
    return rc;
  }
  if (rc < 0) {
    /* Already queued where it waits: it fails there. */
    j->failed = 1;
  }
  return 1;
}

void sg_dynset_seed(sg_dynset_t *d, int family, const uint8_t *addr,
                    uint64_t timeout_ms, uint64_t left_ms) {
  entry_t *e = find(d, family, addr);
  if (!e && !(e = insert(d, family, addr)))
    return;
  e->expires_ms = now_ms(d) + left_ms;
  e->timeout_ms = (uint32_t)(timeout_ms > left_ms ? timeout_ms : left_ms);
}

const sg_dynset_stats_t *sg_dynset_stats(const sg_dynset_t *d) {
  ((sg_dynset_t *)d)->stats.entries = d->nentries;
  return &d->stats;
}

int sg_dynset_new(uv_loop_t *loop, const sg_dynset_opts_t *opts,
                  sg_dynset_t **out, char *err, size_t errlen) {
  sg_dynset_t *d = calloc(1, sizeof(*d));
  if (!d || !(d->buckets = calloc(INITIAL_BUCKETS, sizeof(*d->buckets))) ||
      !(d->rbuf = malloc(RECV_BYTES))) {
    if (d)
      free(d->buckets);
    free(d);
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  d->nbuckets = INITIAL_BUCKETS;
  d->loop = loop;
  d->o = *opts;
  d->seq = (uint32_t)time(NULL) << 8;
  d->nl = mnl_socket_open2(NETLINK_NETFILTER, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (!d->nl || mnl_socket_bind(d->nl, 0, MNL_SOCKET_AUTOPID) < 0) {
    int rc = errno ? -errno : -EIO;
    snprintf(err, errlen, "cannot open a netfilter netlink socket: %s",
             strerror(-rc));
    if (d->nl)
      mnl_socket_close(d->nl);
    free(d->rbuf);
    free(d->buckets);
    free(d);
    return rc;
  }
  int fd = mnl_socket_get_fd(d->nl);
  int one = 1, size = RCVBUF_BYTES;
  (void)setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) < 0)
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
  uv_poll_init(loop, &d->poll, fd);
  uv_check_init(loop, &d->check);
  uv_idle_init(loop, &d->idle);
  uv_timer_init(loop, &d->timeout);
  uv_timer_init(loop, &d->sweep);
  d->poll.data = d->check.data = d->timeout.data = d->sweep.data = d;
  d->idle.data = d;
  d->handles = 5;
  uv_poll_start(&d->poll, UV_READABLE, on_readable);
  uv_timer_start(&d->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
  uv_unref((uv_handle_t *)&d->sweep);
  *out = d;
  return 0;
}

static void on_closed(uv_handle_t *h) {
  sg_dynset_t *d = h->data;
  if (--d->handles > 0)
    return;
  mnl_socket_close(d->nl);
  for (size_t i = 0; i < d->nbuckets; i++) {
    entry_t *e = d->buckets[i];
    while (e) {
      entry_t *next = e->next;
      free(e);
      e = next;
    }
  }
  free(d->buckets);
  free(d->rbuf);
  free(d);
}

void sg_dynset_close(sg_dynset_t *d) {
  if (!d || d->closing)
    return;
  d->closing = 1;
  if (d->open) {
    batch_t *b = d->open;
    d->open = NULL;
    batch_done(d, b, 0);
  }
  while (d->head) {
    batch_t *b = d->head;
    unlink_batch(d, b);
    batch_done(d, b, 0);
  }
  uv_close((uv_handle_t *)&d->poll, on_closed);
  uv_close((uv_handle_t *)&d->check, on_closed);
  uv_close((uv_handle_t *)&d->idle, on_closed);
  uv_close((uv_handle_t *)&d->timeout, on_closed);
  uv_close((uv_handle_t *)&d->sweep, on_closed);
}
