#include "egress/webhook.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "dns/message.h"
#include "util/log.h"

/* A full queue is reported at most this often: under a flood of denials a
 * line per dropped event would be a flood of its own. */
#define QUEUE_FULL_LOG_MS 10000

typedef struct event {
  struct event *next; /* in the ready queue or the waiting list */
  sg_webhook_t *w;
  uint64_t due; /* loop time of the next attempt, while waiting */
  int attempts; /* made so far */
  size_t name_len, body_len;
  char *name;  /* after the body, for the logs */
  char body[]; /* the JSON document, built once: every attempt sends it */
} event_t;

/* A recently reported name. Entries form an age list, oldest first: a
 * name's entry is made when it is reported and never refreshed, so the
 * list is also ordered by report time and expiry only looks at its head. */
typedef struct dentry {
  struct dentry *hnext;
  struct dentry *older, *newer;
  uint64_t hash;
  uint64_t at;
  size_t len;
  char name[]; /* lower-cased */
} dentry_t;

struct sg_webhook {
  uv_loop_t *loop;
  sg_http_client_t *http;
  uv_timer_t timer; /* the next retry */
  int closing;
  char host[SG_HTTP_HOST_MAX];
  char path[SG_HTTP_PATH_MAX];
  uint16_t port;
  char *sandbox_json; /* the escaped id */
  size_t sandbox_json_len;

  uint32_t delay_ms[SG_WEBHOOK_ATTEMPTS - 1];
  uint32_t window_ms;
  uint32_t timeout_ms;
  int queue_max, max_in_flight, dedup_max;

  event_t *ready, **ready_tail; /* FIFO: due now, waiting for a slot */
  event_t *waiting;             /* between attempts, unordered */
  int in_flight;

  dentry_t **buckets;
  size_t nbuckets; /* a power of two */
  dentry_t *oldest, *newest;
  int ndedup;
  uint64_t seed[2];

  uint64_t full_logged_at;
  int full_logged;
  sg_webhook_stats_t stats;
};

/* ---- the document ---- */

/* Escapes n bytes into out, which has room for 6 * n. Bytes outside
 * printable ASCII are escaped one by one (as in the logs), so the document
 * is valid JSON whatever the name holds. */
static size_t json_escape(char *out, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      out[o++] = (char)c;
      continue;
    }
    out[o++] = '\\';
    switch (c) {
    case '"': out[o++] = '"'; break;
    case '\\': out[o++] = '\\'; break;
    case '\n': out[o++] = 'n'; break;
    case '\r': out[o++] = 'r'; break;
    case '\t': out[o++] = 't'; break;
    case '\b': out[o++] = 'b'; break;
    case '\f': out[o++] = 'f'; break;
    default:
      memcpy(out + o, "u00", 3);
      o += 3;
      out[o++] = hex[c >> 4];
      out[o++] = hex[c & 0xf];
    }
  }
  return o;
}

static event_t *event_new(sg_webhook_t *w, const char *name, size_t len) {
  static const char p1[] = "{\"hostname\":\"", p2[] = "\",\"timestamp\":\"",
                    p3[] = "\",\"source\":\"" SG_WEBHOOK_SOURCE
                           "\",\"sandboxId\":\"",
                    p4[] = "\"}";
  char ts[32];
  struct timespec now;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &now);
  gmtime_r(&now.tv_sec, &tm);
  size_t ts_len = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);

  size_t cap = sizeof(p1) + sizeof(p2) + sizeof(p3) + sizeof(p4) + 6 * len +
               ts_len + w->sandbox_json_len + len + 1;
  event_t *ev = malloc(sizeof(*ev) + cap);
  if (!ev)
    return NULL;
  char *p = ev->body;
#define PUT(s, n) (memcpy(p, (s), (n)), p += (n))
  PUT(p1, sizeof(p1) - 1);
  p += json_escape(p, name, len);
  PUT(p2, sizeof(p2) - 1);
  PUT(ts, ts_len);
  PUT(p3, sizeof(p3) - 1);
  PUT(w->sandbox_json, w->sandbox_json_len);
  PUT(p4, sizeof(p4) - 1);
#undef PUT
  ev->body_len = (size_t)(p - ev->body);
  *p++ = '\0';
  ev->name = p;
  memcpy(ev->name, name, len);
  ev->name[len] = '\0';
  ev->name_len = len;
  ev->next = NULL;
  ev->w = w;
  ev->due = 0;
  ev->attempts = 0;
  return ev;
}

/* ---- de-duplication ---- */

/* SipHash-1-3 with a per-process key: the names come from inside the
 * sandbox, and must not be able to pile up in one bucket. */
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                               \
  do {                                                                         \
    v0 += v1;                                                                  \
    v1 = ROTL(v1, 13);                                                         \
    v1 ^= v0;                                                                  \
    v0 = ROTL(v0, 32);                                                         \
    v2 += v3;                                                                  \
    v3 = ROTL(v3, 16);                                                         \
    v3 ^= v2;                                                                  \
    v0 += v3;                                                                  \
    v3 = ROTL(v3, 21);                                                         \
    v3 ^= v0;                                                                  \
    v2 += v1;                                                                  \
    v1 = ROTL(v1, 17);                                                         \
    v1 ^= v2;                                                                  \
    v2 = ROTL(v2, 32);                                                         \
  } while (0)

static uint64_t siphash13(const uint64_t k[2], const unsigned char *in,
                          size_t len) {
  uint64_t v0 = 0x736f6d6570736575ULL ^ k[0];
  uint64_t v1 = 0x646f72616e646f6dULL ^ k[1];
  uint64_t v2 = 0x6c7967656e657261ULL ^ k[0];
  uint64_t v3 = 0x7465646279746573ULL ^ k[1];
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t m = 0;
    for (int j = 0; j < 8; j++)
      m |= (uint64_t)in[i + j] << (8 * j);
    v3 ^= m;
    SIPROUND;
    v0 ^= m;
  }
  uint64_t b = (uint64_t)len << 56;
  for (int j = 0; i + (size_t)j < len; j++)
    b |= (uint64_t)in[i + (size_t)j] << (8 * j);
  v3 ^= b;
  SIPROUND;
  v0 ^= b;
  v2 ^= 0xff;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

static dentry_t **bucket(sg_webhook_t *w, uint64_t hash) {
  return &w->buckets[hash & (w->nbuckets - 1)];
}

static dentry_t *dedup_find(sg_webhook_t *w, const char *key, size_t len,
                            uint64_t hash) {
  for (dentry_t *d = *bucket(w, hash); d; d = d->hnext)
    if (d->hash == hash && d->len == len && memcmp(d->name, key, len) == 0)
      return d;
  return NULL;
}

static void dedup_remove_oldest(sg_webhook_t *w) {
  dentry_t *d = w->oldest;
  dentry_t **pp = bucket(w, d->hash);
  while (*pp != d)
    pp = &(*pp)->hnext;
  *pp = d->hnext;
  w->oldest = d->newer;
  if (w->oldest)
    w->oldest->older = NULL;
  else
    w->newest = NULL;
  w->ndedup--;
  free(d);
}

static void dedup_expire(sg_webhook_t *w, uint64_t now) {
  while (w->oldest && now - w->oldest->at >= w->window_ms)
    dedup_remove_oldest(w);
}

static void dedup_add(sg_webhook_t *w, const char *key, size_t len,
                      uint64_t hash, uint64_t now) {
  /* Memory stays bounded: past the limit the oldest name is forgotten
   * (and may be reported again before its window ends). */
  if (w->ndedup >= w->dedup_max)
    dedup_remove_oldest(w);
  dentry_t *d = malloc(sizeof(*d) + len);
  if (!d)
    return; /* the name is just not de-duplicated */
  d->hash = hash;
  d->at = now;
  d->len = len;
  memcpy(d->name, key, len);
  dentry_t **b = bucket(w, hash);
  d->hnext = *b;
  *b = d;
  d->newer = NULL;
  d->older = w->newest;
  if (w->newest)
    w->newest->newer = d;
  else
    w->oldest = d;
  w->newest = d;
  w->ndedup++;
}

static void dedup_free(sg_webhook_t *w) {
  while (w->oldest)
    dedup_remove_oldest(w);
  free(w->buckets);
  w->buckets = NULL;
}

/* ---- delivery ---- */

static void pump(sg_webhook_t *w);

static void event_done(sg_webhook_t *w, event_t *ev) {
  free(ev);
  w->stats.pending--;
}

static void log_outcome(sg_log_level_t level, const char *event,
                        const event_t *ev, int status) {
  if (!sg_log_enabled(level))
    return;
  sg_logline_t l;
  sg_log_begin(&l, level, event);
  sg_log_strn(&l, "hostname", ev->name, ev->name_len);
  sg_log_int(&l, "attempts", ev->attempts);
  if (status > 0)
    sg_log_int(&l, "status", status);
  else
    sg_log_str(&l, "error", sg_http_client_strerror(status));
  sg_log_end(&l);
}

/* What one attempt's outcome means: delivered, refused for good, or to be
 * tried again later. */
static void settle(sg_webhook_t *w, event_t *ev, int status) {
  if (status >= 200 && status < 400) {
    w->stats.sent++;
    log_outcome(SG_LOG_DEBUG, "webhook.sent", ev, status);
    event_done(w, ev);
  } else if (status >= 400 && status < 500) {
    /* The receiver refuses this document: sending it again changes
     * nothing. */
    w->stats.failed++;
    log_outcome(SG_LOG_WARN, "webhook.rejected", ev, status);
    event_done(w, ev);
  } else if (ev->attempts < SG_WEBHOOK_ATTEMPTS) {
    log_outcome(SG_LOG_DEBUG, "webhook.retry", ev, status);
    ev->due = uv_now(w->loop) + w->delay_ms[ev->attempts - 1];
    ev->next = w->waiting;
    w->waiting = ev;
  } else {
    w->stats.failed++;
    log_outcome(SG_LOG_WARN, "webhook.failed", ev, status);
    event_done(w, ev);
  }
}

static void on_response(void *arg, int status) {
  event_t *ev = arg;
  sg_webhook_t *w = ev->w;
  w->in_flight--;
  if (w->closing) {
    /* Cancelled by sg_webhook_close. */
    free(ev);
    return;
  }
  settle(w, ev, status);
  pump(w);
}

static void send_attempt(sg_webhook_t *w, event_t *ev) {
  sg_http_client_req_t q = {
      .method = "POST",
      .host = w->host,
      .port = w->port,
      .path = w->path,
      .headers = "Content-Type: application/json\r\n",
      .body = ev->body,
      .body_len = ev->body_len,
      .timeout_ms = w->timeout_ms,
  };
  ev->attempts++;
  w->stats.attempts++;
  int rc = sg_http_client_request(w->http, &q, on_response, ev);
  if (rc == 0)
    w->in_flight++;
  else
    settle(w, ev, rc);
}

static void ready_push(sg_webhook_t *w, event_t *ev) {
  ev->next = NULL;
  *w->ready_tail = ev;
  w->ready_tail = &ev->next;
}

static void on_timer(uv_timer_t *t) {
  pump(t->data);
}

/* Moves what is due to the ready queue, starts what the in-flight limit
 * allows, and arms the timer for the next retry. */
static void pump(sg_webhook_t *w) {
  uint64_t now = uv_now(w->loop);
  event_t **pp = &w->waiting, *ev;
  while ((ev = *pp)) {
    if (ev->due <= now) {
      *pp = ev->next;
      ready_push(w, ev);
    } else {
      pp = &ev->next;
    }
  }
  while (w->in_flight < w->max_in_flight && w->ready) {
    ev = w->ready;
    w->ready = ev->next;
    if (!w->ready)
      w->ready_tail = &w->ready;
    /* A request that cannot even start goes to the waiting list, never
     * back here: this loop ends. */
    send_attempt(w, ev);
  }
  uint64_t next = UINT64_MAX;
  for (ev = w->waiting; ev; ev = ev->next)
    if (ev->due < next)
      next = ev->due;
  if (next == UINT64_MAX)
    uv_timer_stop(&w->timer);
  else
    uv_timer_start(&w->timer, on_timer, next > now ? next - now : 0, 0);
}

void sg_webhook_notify(sg_webhook_t *w, const char *hostname, size_t len) {
  if (!w || w->closing || len == 0)
    return;
  if (len >= SG_DNS_NAME_MAX) {
    w->stats.dropped++;
    return;
  }
  /* Names compare case-insensitively, with or without the root's dot. */
  unsigned char key[SG_DNS_NAME_MAX];
  size_t klen = len;
  if (klen > 1 && hostname[klen - 1] == '.')
    klen--;
  for (size_t i = 0; i < klen; i++) {
    unsigned char c = (unsigned char)hostname[i];
    key[i] = c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
  }
  uint64_t now = uv_now(w->loop);
  dedup_expire(w, now);
  uint64_t hash = siphash13(w->seed, key, klen);
  if (dedup_find(w, (const char *)key, klen, hash)) {
    w->stats.deduplicated++;
    return;
  }
  if (w->stats.pending >= (uint64_t)w->queue_max) {
    w->stats.dropped++;
    if (!w->full_logged || now - w->full_logged_at >= QUEUE_FULL_LOG_MS) {
      w->full_logged = 1;
      w->full_logged_at = now;
      sg_log_msg(SG_LOG_WARN, "webhook.queue_full",
                 "%d deny events are pending (the receiver is slow or "
                 "unreachable); new ones are dropped, %llu so far",
                 w->queue_max, (unsigned long long)w->stats.dropped);
    }
    return;
  }
  event_t *ev = event_new(w, hostname, len);
  if (!ev) {
    w->stats.dropped++;
    return;
  }
  /* Remembered only once queued: a dropped name is reported next time. */
  dedup_add(w, (const char *)key, klen, hash, now);
  w->stats.pending++;
  ready_push(w, ev);
  pump(w);
}

const sg_webhook_stats_t *sg_webhook_stats(const sg_webhook_t *w) {
  return &w->stats;
}

/* ---- new / close ---- */

static void on_closed(uv_handle_t *h) {
  sg_webhook_t *w = h->data;
  free(w->sandbox_json);
  free(w);
}

static void seed_hash(uint64_t seed[2]) {
  if (getrandom(seed, 2 * sizeof(uint64_t), GRND_NONBLOCK) ==
      (ssize_t)(2 * sizeof(uint64_t)))
    return;
  /* No entropy yet (early boot): unpredictable enough for bucket
   * placement. */
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  seed[0] = uv_hrtime() ^ ((uint64_t)getpid() << 32);
  seed[1] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)ts.tv_sec;
}

int sg_webhook_new(uv_loop_t *loop, const sg_webhook_opts_t *opts,
                   sg_webhook_t **out, char *err, size_t errlen) {
  char perr[512];
  char host[SG_HTTP_HOST_MAX], path[SG_HTTP_PATH_MAX];
  uint16_t port;
  if (sg_http_url_parse(opts->url, host, sizeof(host), &port, path,
                        sizeof(path), perr, sizeof(perr)) != 0) {
    snprintf(err, errlen, "deny webhook: %s", perr);
    return -EINVAL;
  }
  sg_webhook_t *w = calloc(1, sizeof(*w));
  if (!w)
    return -ENOMEM;
  w->loop = loop;
  memcpy(w->host, host, sizeof(host));
  memcpy(w->path, path, sizeof(path));
  w->port = port;

  static const uint32_t delays[] = {1000, 2000, 4000};
  for (int i = 0; i < SG_WEBHOOK_ATTEMPTS - 1; i++)
    w->delay_ms[i] =
        opts->retry_delay_ms[i] ? opts->retry_delay_ms[i] : delays[i];
  w->window_ms = opts->dedup_window_ms ? opts->dedup_window_ms
                                       : SG_WEBHOOK_DEFAULT_DEDUP_WINDOW_MS;
  w->timeout_ms = opts->attempt_timeout_ms
                      ? opts->attempt_timeout_ms
                      : SG_WEBHOOK_DEFAULT_ATTEMPT_TIMEOUT_MS;
  w->queue_max =
      opts->queue_max > 0 ? opts->queue_max : SG_WEBHOOK_DEFAULT_QUEUE_MAX;
  w->max_in_flight = opts->max_in_flight > 0 ? opts->max_in_flight
                                             : SG_WEBHOOK_DEFAULT_MAX_IN_FLIGHT;
  w->dedup_max =
      opts->dedup_max > 0 ? opts->dedup_max : SG_WEBHOOK_DEFAULT_DEDUP_MAX;
  w->ready_tail = &w->ready;
  w->nbuckets = 16;
  while (w->nbuckets < (size_t)w->dedup_max)
    w->nbuckets *= 2;
  w->buckets = calloc(w->nbuckets, sizeof(*w->buckets));
  const char *id = opts->sandbox_id ? opts->sandbox_id : "";
  size_t id_len = strlen(id);
  w->sandbox_json = malloc(6 * id_len + 1);
  if (!w->buckets || !w->sandbox_json) {
    free(w->buckets);
    free(w->sandbox_json);
    free(w);
    return -ENOMEM;
  }
  w->sandbox_json_len = json_escape(w->sandbox_json, id, id_len);
  seed_hash(w->seed);

  int rc = sg_http_client_new(loop, &opts->http, &w->http, perr, sizeof(perr));
  if (rc) {
    snprintf(err, errlen, "deny webhook: %s", perr);
    free(w->buckets);
    free(w->sandbox_json);
    free(w);
    return rc;
  }
  uv_timer_init(loop, &w->timer);
  w->timer.data = w;
  *out = w;
  return 0;
}

void sg_webhook_close(sg_webhook_t *w) {
  if (!w || w->closing)
    return;
  w->closing = 1;
  /* The callbacks of the requests in flight run now, with UV_ECANCELED,
   * and free their events. */
  sg_http_client_close(w->http);
  w->http = NULL;
  event_t *ev;
  while ((ev = w->ready)) {
    w->ready = ev->next;
    free(ev);
  }
  while ((ev = w->waiting)) {
    w->waiting = ev->next;
    free(ev);
  }
  w->ready_tail = &w->ready;
  w->stats.pending = 0;
  dedup_free(w);
  uv_close((uv_handle_t *)&w->timer, on_closed);
}
