/* The deny webhook (OpenSandbox's OPENSANDBOX_EGRESS_DENY_WEBHOOK): when a
 * DNS query is denied, POST
 *
 *   {"hostname":"<name>","timestamp":"<RFC 3339 UTC>",
 *    "source":"opensandbox-egress","sandboxId":"<id or empty>"}
 *
 * with Content-Type: application/json to the configured http:// URL.
 *
 * Reporting never holds up DNS: sg_webhook_notify only records the event in
 * a bounded queue (an event that does not fit is dropped and counted), and
 * the requests run on the loop, a few at a time. A name is reported at most
 * once per window (A and AAAA for one name are one event). A delivery is
 * tried up to 4 times, after 1, 2 and 4 s, while the receiver answers 5xx
 * or cannot be reached; any 2xx, 3xx or 4xx answer ends it. */
#ifndef SG_EGRESS_WEBHOOK_H
#define SG_EGRESS_WEBHOOK_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "http/client.h"

#define SG_WEBHOOK_ATTEMPTS 4
#define SG_WEBHOOK_SOURCE "opensandbox-egress"

#define SG_WEBHOOK_DEFAULT_DEDUP_WINDOW_MS 10000
#define SG_WEBHOOK_DEFAULT_ATTEMPT_TIMEOUT_MS 5000
#define SG_WEBHOOK_DEFAULT_QUEUE_MAX 256
#define SG_WEBHOOK_DEFAULT_MAX_IN_FLIGHT 4
#define SG_WEBHOOK_DEFAULT_DEDUP_MAX 4096

typedef struct sg_webhook sg_webhook_t;

/* Zero in a delay, a window, a timeout or a limit means its default; only
 * tests change them. */
typedef struct {
  const char *url;        /* http://host[:port][/path] */
  const char *sandbox_id; /* OPENSANDBOX_EGRESS_SANDBOX_ID; NULL = "" */
  /* How the URL's host is resolved, and the mark on the webhook's sockets
   * (see sg_http_client_opts_t). */
  sg_http_client_opts_t http;
  uint32_t retry_delay_ms[SG_WEBHOOK_ATTEMPTS - 1]; /* 1000, 2000, 4000 */
  uint32_t dedup_window_ms;
  uint32_t attempt_timeout_ms;
  int queue_max;     /* events waiting, in flight or between attempts */
  int max_in_flight; /* requests at once */
  int dedup_max;     /* names remembered; the oldest goes first */
} sg_webhook_opts_t;

/* For /metrics. */
typedef struct {
  uint64_t sent;         /* answered 2xx or 3xx */
  uint64_t failed;       /* 4xx, or no success after every attempt */
  uint64_t dropped;      /* not queued: the queue was full */
  uint64_t deduplicated; /* the name was reported within the window */
  uint64_t attempts;     /* requests made, retries included */
  uint64_t pending;      /* events not yet settled (a gauge) */
} sg_webhook_stats_t;

/* Checks the URL (https:// is refused: there is no TLS library here) and
 * sets up the client. Returns 0, or a negative errno with a message in
 * err. */
int sg_webhook_new(uv_loop_t *loop, const sg_webhook_opts_t *opts,
                   sg_webhook_t **out, char *err, size_t errlen);

/* Reports a denied name (presentation form, as the DNS server has it).
 * Returns at once: no I/O happens here. NULL w is a no-op. */
void sg_webhook_notify(sg_webhook_t *w, const char *hostname, size_t len);

const sg_webhook_stats_t *sg_webhook_stats(const sg_webhook_t *w);

/* Cancels the timers and the requests in flight and drops what is queued;
 * frees everything once libuv released its handles. NULL is a no-op. */
void sg_webhook_close(sg_webhook_t *w);

#endif
