#include "egress/egress.h"

#include <errno.h>
#include <libgen.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <uv.h>

#include "dns/server.h"
#include "dns/upstream.h"
#include "egress/api.h"
#include "egress/explain.h"
#include "egress/webhook.h"
#include "nft/dynset.h"
#include "nft/intercept.h"
#include "script/vm.h"
#include "util/file.h"
#include "util/log.h"
#include "util/sockaddr.h"

/* The most addresses each DNS-learned set holds; an answer whose
 * addresses do not fit gets SERVFAIL. */
#define DYN_SET_SIZE 65536

/* A burst of file events (an editor writing, renaming, touching) becomes
 * one reload after this quiet period. */
#define RELOAD_DEBOUNCE_MS 100

typedef struct {
  uv_loop_t *loop;
  sg_egress_config_t cfg;
  sg_vm_t *vm;       /* the running policy; swapped whole on reload */
  char *policy_json; /* the current policy document (NULL = deny-all) */
  sg_upstream_t *upstream;
  sg_dns_server_t *server;
  sg_egress_api_t *api;
  sg_webhook_t *webhook;
  int intercept_installed;
  sg_nft_filter_opts_t fopts; /* dns+nft: how the filter was built */
  sg_dynset_t *dynset;        /* dns+nft: the DNS-learned allow sets */
  uint64_t nft_updates, nft_update_failures;
  uv_signal_t sighup, sigterm, sigint;
  uv_fs_event_t watch;
  uv_timer_t debounce;
  /* The running script: its source, and the file it came from (NULL for an
   * upload that could not be persisted: SIGHUP rebuilds from the source). */
  char *script_src;
  size_t script_len;
  char *script_path;
  char *script_store; /* where uploads are persisted (next to the policy) */
  char script_dir[4096];
  struct stat script_seen; /* the file the running VM was built from */
  /* The always-lists the running VM was built with (NULL: no such file). */
  char *always_text[3];
  char always_path[3][4096];
  uv_fs_event_t always_watch;
  uv_timer_t always_debounce;
  uint64_t script_errors;
  uint64_t reloads, reload_failures;
  uint64_t by_qtype[2][16]; /* [allowed][qtype slot] */
  int stopping;
} egress_t;

/* Query types with a counter of their own in /metrics; the rest share
 * "other", so a client cannot grow the metrics by asking odd types. */
static const struct {
  uint16_t type;
  const char *name;
} metric_qtypes[] = {
    {1, "A"},   {28, "AAAA"}, {5, "CNAME"}, {65, "HTTPS"}, {64, "SVCB"},
    {15, "MX"}, {16, "TXT"},  {12, "PTR"},  {33, "SRV"},   {2, "NS"},
    {6, "SOA"}, {255, "ANY"}, {0, "other"},
};
#define METRIC_QTYPES (sizeof(metric_qtypes) / sizeof(metric_qtypes[0]))

static unsigned qtype_slot(uint16_t t) {
  for (unsigned i = 0; i + 1 < METRIC_QTYPES; i++)
    if (metric_qtypes[i].type == t)
      return i;
  return METRIC_QTYPES - 1;
}

static int decide(void *ctx, const sg_dns_request_t *r) {
  egress_t *e = ctx;
  sg_vm_query_t q = {
      .name = r->query->name,
      .name_len = r->query->name_len,
      .qtype = r->qtype_name,
      .client = r->client_ip,
      .transport = r->transport,
      .want_rule = e->cfg.log_queries && sg_log_enabled(SG_LOG_INFO),
  };
  sg_vm_verdict_t v;
  sg_vm_status_t st = sg_vm_decide(e->vm, &q, &v);
  e->by_qtype[st == SG_VM_OK && v.allow][qtype_slot(r->query->qtype)]++;
  if (st != SG_VM_OK) {
    /* Fail closed: the verdict is already deny. */
    e->script_errors++;
    sg_logline_t l;
    sg_log_begin(&l, SG_LOG_ERROR, "policy.decide_failed");
    sg_log_strn(&l, "name", q.name, q.name_len);
    sg_log_str(&l, "qtype", q.qtype);
    sg_log_str(&l, "client", q.client);
    sg_log_str(&l, "verdict", "deny");
    sg_log_str(&l, "error", v.error);
    sg_log_end(&l);
    sg_webhook_notify(e->webhook, q.name, q.name_len);
    return SG_DNS_RCODE_NXDOMAIN;
  }
  if (e->cfg.log_queries && !(v.allow && v.quiet) &&
      sg_log_enabled(SG_LOG_INFO)) {
    sg_logline_t l;
    sg_log_begin(&l, SG_LOG_INFO, "dns.query");
    sg_log_strn(&l, "name", q.name, q.name_len);
    sg_log_str(&l, "qtype", q.qtype);
    sg_log_str(&l, "client", q.client);
    sg_log_str(&l, "transport", q.transport);
    sg_log_str(&l, "verdict", v.allow ? "allow" : "deny");
    sg_log_str(&l, "rule", v.rule[0] ? v.rule : NULL);
    if (!v.allow && v.rcode != SG_DNS_RCODE_NXDOMAIN)
      sg_log_int(&l, "rcode", v.rcode);
    sg_log_end(&l);
  }
  if (v.allow)
    return SG_DNS_FORWARD;
  sg_webhook_notify(e->webhook, q.name, q.name_len);
  return v.rcode;
}

/* The most addresses of one answer that go into the sets; an answer with
 * more is refused (SERVFAIL) rather than relayed with addresses the filter
 * would drop. */
#define MAX_ANSWER_ADDRS 256

static void on_addrs_allowed(void *arg, int ok) {
  sg_dns_server_release(arg, ok);
}

/* dns+nft: the addresses of an allowed answer go into the allow sets before
 * the answer is released. */
static int on_answer(void *ctx, const uint8_t *answer, size_t len,
                     sg_dns_held_t *held) {
  egress_t *e = ctx;
  if (!e->dynset)
    return SG_DNS_RELEASE;
  sg_dns_addr_t found[MAX_ANSWER_ADDRS];
  int n = sg_dns_answer_addrs(answer, len, found, MAX_ANSWER_ADDRS);
  if (n == 0)
    return SG_DNS_RELEASE;
  if (n < 0 || n > MAX_ANSWER_ADDRS) {
    sg_log_msg(SG_LOG_WARN, "nft.answer_refused",
               n < 0 ? "an upstream answer could not be read for its "
                       "addresses: SERVFAIL"
                     : "an upstream answer has more than 256 addresses: "
                       "SERVFAIL");
    return SG_DNS_REFUSE;
  }
  sg_dynset_addr_t addrs[MAX_ANSWER_ADDRS];
  for (int i = 0; i < n; i++) {
    addrs[i].family = found[i].family == AF_INET ? 4 : 6;
    memcpy(addrs[i].addr, found[i].addr, sizeof(addrs[i].addr));
    addrs[i].ttl = found[i].ttl;
  }
  int rc = sg_dynset_allow(e->dynset, addrs, (size_t)n, on_addrs_allowed, held);
  if (rc < 0)
    return SG_DNS_REFUSE;
  return rc ? SG_DNS_HOLD : SG_DNS_RELEASE;
}

/* Builds a VM from a script source and a document. */
static int build_vm_from(egress_t *e, const char *src, size_t len,
                         const char *name, const char *policy_json,
                         sg_vm_t **out, char *err, size_t errlen) {
  sg_vm_opts_t o = {
      .always_text = {e->always_text[0], e->always_text[1], e->always_text[2]},
      .always_name = {e->always_path[0], e->always_path[1], e->always_path[2]},
      .data_dir = e->cfg.data_dir,
      .script_path = name,
      .script_src = src,
      .script_len = len,
      .policy_json = policy_json,
      .policy_len = policy_json ? strlen(policy_json) : 0,
      .mem_limit = e->cfg.script_mem,
      .call_budget_ms = e->cfg.script_timeout_ms,
      .want_statics = e->cfg.nft,
  };
  return sg_vm_new_egress(&o, out, err, errlen);
}

/* Builds a VM from the running script's source and the given document:
 * a policy write never picks up an unrelated edit of the script file. */
static int build_vm(egress_t *e, const char *policy_json, sg_vm_t **out,
                    char *err, size_t errlen) {
  return build_vm_from(e, e->script_src, e->script_len,
                       e->script_path ? e->script_path : "uploaded-script.lua",
                       policy_json, out, err, errlen);
}

/* Makes vm the running VM (built from src, now owned by e). */
static void swap_in(egress_t *e, sg_vm_t *vm, char *src, size_t len) {
  sg_vm_t *old = e->vm;
  e->vm = vm;
  sg_vm_unref(old);
  if (src != e->script_src) {
    free(e->script_src);
    e->script_src = src;
    e->script_len = len;
  }
  /* Hand the old VM's pages back: a sidecar in every pod must stay small. */
  malloc_trim(0);
}

/* dns+nft: moves the kernel's static sets and chain policy from what the
 * running VM put there to what vm wants, in one transaction. Returns 0 (also
 * when nothing changed or there is no filter), or a negative errno with err
 * set: the kernel then still enforces the running VM's sets. */
static int nft_follow(egress_t *e, const sg_vm_t *from, const sg_vm_t *to,
                      char *err, size_t errlen) {
  if (!e->cfg.nft || !e->intercept_installed)
    return 0;
  const sg_nft_static_t *a = sg_vm_statics(from), *b = sg_vm_statics(to);
  if (!a || !b || sg_nft_static_equal(a, b))
    return 0;
  int rc = sg_nft_filter_update(&e->fopts, a, b, err, errlen);
  if (rc) {
    e->nft_update_failures++;
    return rc;
  }
  e->nft_updates++;
  return 0;
}

/* Reloads the script with the current document: the file again when the
 * script has one, else the uploaded source. The new VM replaces the old one
 * only when it loaded completely; otherwise nothing changes. */
static void reload(egress_t *e, const char *trigger) {
  char err[1024];
  sg_vm_t *vm;
  char *src = e->script_src;
  size_t len = e->script_len;
  const char *name = e->script_path ? e->script_path : "uploaded-script.lua";
  int rc = 0;
  if (e->script_path)
    rc = sg_file_read(e->script_path, &src, &len, err, sizeof(err));
  if (!rc)
    rc =
        build_vm_from(e, src, len, name, e->policy_json, &vm, err, sizeof(err));
  if (!rc && (rc = nft_follow(e, e->vm, vm, err, sizeof(err))))
    sg_vm_unref(vm);
  if (rc) {
    if (src != e->script_src)
      free(src);
    e->reload_failures++;
    sg_logline_t l;
    sg_log_begin(&l, SG_LOG_ERROR, "policy.reload_failed");
    sg_log_str(&l, "trigger", trigger);
    sg_log_str(&l, "script", name);
    sg_log_str(&l, "error", err);
    sg_log_str(&l, "kept", "previous script");
    sg_log_end(&l);
    return;
  }
  swap_in(e, vm, src, len);
  e->reloads++;
  sg_logline_t l;
  sg_log_begin(&l, SG_LOG_INFO, "policy.reloaded");
  sg_log_str(&l, "trigger", trigger);
  sg_log_str(&l, "script", name);
  sg_log_int(&l, "vm_bytes", (long long)sg_vm_mem_used(vm));
  sg_log_end(&l);
}

/* The script's identity through any symlinks. A Kubernetes ConfigMap
 * updates a mounted file by swapping a `..data` symlink in the directory, so
 * the event names that link, not the script; comparing what the path
 * resolves to catches every way of replacing or editing the file, and
 * ignores events for the directory's other files. */
static int script_changed(egress_t *e) {
  struct stat st;
  /* A missing file is a state of its own (all zero): its disappearance is
   * reported once, by a reload that fails and keeps the running VM. */
  if (!e->script_path || stat(e->script_path, &st) != 0)
    memset(&st, 0, sizeof(st));
  const struct stat *o = &e->script_seen;
  return st.st_ino != o->st_ino || st.st_dev != o->st_dev ||
         st.st_size != o->st_size || st.st_mtim.tv_sec != o->st_mtim.tv_sec ||
         st.st_mtim.tv_nsec != o->st_mtim.tv_nsec;
}

static void remember_script(egress_t *e) {
  if (!e->script_path || stat(e->script_path, &e->script_seen) != 0)
    memset(&e->script_seen, 0, sizeof(e->script_seen));
}

/* dns+nft: the kernel round trips of the learned addresses. */
static void write_nft_metrics(egress_t *e, FILE *f) {
  const sg_dynset_stats_t *d = sg_dynset_stats(e->dynset);
  const sg_dns_stats_t *s = sg_dns_server_stats(e->server);
  fprintf(f,
          "# HELP sandgate_nft_adds_total Batches adding learned addresses "
          "to the allow sets, by outcome.\n"
          "# TYPE sandgate_nft_adds_total counter\n"
          "sandgate_nft_adds_total{result=\"ok\"} %llu\n"
          "sandgate_nft_adds_total{result=\"refused\"} %llu\n"
          "sandgate_nft_adds_total{result=\"timeout\"} %llu\n"
          "# HELP sandgate_nft_elements_total Learned addresses sent to the "
          "kernel.\n"
          "# TYPE sandgate_nft_elements_total counter\n"
          "sandgate_nft_elements_total %llu\n"
          "# HELP sandgate_nft_fresh_total Learned addresses already in a set "
          "with more than half their timeout left (nothing sent).\n"
          "# TYPE sandgate_nft_fresh_total counter\n"
          "sandgate_nft_fresh_total %llu\n"
          "# HELP sandgate_nft_joined_total Addresses that waited for another "
          "answer's add still in flight.\n"
          "# TYPE sandgate_nft_joined_total counter\n"
          "sandgate_nft_joined_total %llu\n"
          "# HELP sandgate_nft_learned Addresses the dynamic sets hold.\n"
          "# TYPE sandgate_nft_learned gauge\n"
          "sandgate_nft_learned %llu\n"
          "# HELP sandgate_nft_servfail_total Answers replaced by SERVFAIL "
          "because the kernel did not confirm their addresses.\n"
          "# TYPE sandgate_nft_servfail_total counter\n"
          "sandgate_nft_servfail_total %llu\n"
          "# HELP sandgate_nft_updates_total Policy changes applied to the "
          "static sets, by result.\n"
          "# TYPE sandgate_nft_updates_total counter\n"
          "sandgate_nft_updates_total{result=\"ok\"} %llu\n"
          "sandgate_nft_updates_total{result=\"failed\"} %llu\n"
          "# HELP sandgate_nft_ack_seconds Time from sending a batch of "
          "learned addresses to the kernel's last acknowledgement.\n"
          "# TYPE sandgate_nft_ack_seconds histogram\n",
          (unsigned long long)d->batches_ok,
          (unsigned long long)d->batches_refused,
          (unsigned long long)d->batches_timeout,
          (unsigned long long)d->elements, (unsigned long long)d->fresh,
          (unsigned long long)d->joined, (unsigned long long)d->entries,
          (unsigned long long)s->refused, (unsigned long long)e->nft_updates,
          (unsigned long long)e->nft_update_failures);
  uint64_t cum = 0;
  for (int i = 0; i < SG_DYNSET_ACK_BUCKETS; i++) {
    cum += d->ack_bucket[i];
    fprintf(f, "sandgate_nft_ack_seconds_bucket{le=\"%g\"} %llu\n",
            sg_dynset_ack_le[i], (unsigned long long)cum);
  }
  fprintf(f,
          "sandgate_nft_ack_seconds_bucket{le=\"+Inf\"} %llu\n"
          "sandgate_nft_ack_seconds_sum %.9f\n"
          "sandgate_nft_ack_seconds_count %llu\n",
          (unsigned long long)d->ack_count, d->ack_sum_seconds,
          (unsigned long long)d->ack_count);
}

/* The plane's part of /metrics, in Prometheus text format. */
static void write_metrics(void *ctx, FILE *f) {
  egress_t *e = ctx;
  fprintf(f, "# HELP sandgate_dns_queries_total DNS queries decided by the "
             "policy, by verdict and query type.\n"
             "# TYPE sandgate_dns_queries_total counter\n");
  for (int allow = 1; allow >= 0; allow--)
    for (unsigned i = 0; i < METRIC_QTYPES; i++)
      fprintf(f,
              "sandgate_dns_queries_total{verdict=\"%s\",qtype=\"%s\"} %llu\n",
              allow ? "allow" : "deny", metric_qtypes[i].name,
              (unsigned long long)e->by_qtype[allow][i]);
  if (e->server) {
    const sg_dns_stats_t *s = sg_dns_server_stats(e->server);
    fprintf(f,
            "# HELP sandgate_dns_malformed_total Packets answered FORMERR or "
            "NOTIMP without reaching the policy.\n"
            "# TYPE sandgate_dns_malformed_total counter\n"
            "sandgate_dns_malformed_total %llu\n"
            "# HELP sandgate_dns_dropped_total Packets dropped unanswered "
            "(shorter than a header, or responses).\n"
            "# TYPE sandgate_dns_dropped_total counter\n"
            "sandgate_dns_dropped_total %llu\n"
            "# HELP sandgate_dns_truncated_total Answers too big for the "
            "client's UDP size, sent with TC set.\n"
            "# TYPE sandgate_dns_truncated_total counter\n"
            "sandgate_dns_truncated_total %llu\n"
            "# HELP sandgate_dns_tcp_refused_total TCP clients closed for "
            "going over the connection cap.\n"
            "# TYPE sandgate_dns_tcp_refused_total counter\n"
            "sandgate_dns_tcp_refused_total %llu\n",
            (unsigned long long)s->malformed, (unsigned long long)s->dropped,
            (unsigned long long)s->truncated,
            (unsigned long long)s->tcp_refused);
  }
  if (e->upstream) {
    const sg_upstream_stats_t *u = sg_upstream_stats(e->upstream);
    fprintf(f, "# HELP sandgate_dns_upstream_duration_seconds Time from "
               "forwarding a query to its upstream answer.\n"
               "# TYPE sandgate_dns_upstream_duration_seconds histogram\n");
    unsigned long long cum = 0;
    for (int i = 0; i < SG_UPSTREAM_BUCKETS; i++) {
      cum += u->bucket[i];
      fprintf(f,
              "sandgate_dns_upstream_duration_seconds_bucket{le=\"%g\"} %llu\n",
              sg_upstream_bucket_le[i], cum);
    }
    fprintf(f,
            "sandgate_dns_upstream_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
            "sandgate_dns_upstream_duration_seconds_sum %.6f\n"
            "sandgate_dns_upstream_duration_seconds_count %llu\n"
            "# HELP sandgate_dns_upstream_failures_total Queries every "
            "upstream failed (answered SERVFAIL).\n"
            "# TYPE sandgate_dns_upstream_failures_total counter\n"
            "sandgate_dns_upstream_failures_total %llu\n"
            "# HELP sandgate_dns_upstream_failovers_total Moves of a query "
            "to the next upstream.\n"
            "# TYPE sandgate_dns_upstream_failovers_total counter\n"
            "sandgate_dns_upstream_failovers_total %llu\n",
            (unsigned long long)u->answered, u->sum_seconds,
            (unsigned long long)u->answered, (unsigned long long)u->failed,
            (unsigned long long)u->failovers);
  }
  if (e->webhook) {
    const sg_webhook_stats_t *w = sg_webhook_stats(e->webhook);
    fprintf(f,
            "# HELP sandgate_webhook_events_total Deny-webhook events, by "
            "outcome.\n"
            "# TYPE sandgate_webhook_events_total counter\n"
            "sandgate_webhook_events_total{outcome=\"sent\"} %llu\n"
            "sandgate_webhook_events_total{outcome=\"failed\"} %llu\n"
            "sandgate_webhook_events_total{outcome=\"dropped\"} %llu\n"
            "sandgate_webhook_events_total{outcome=\"deduplicated\"} %llu\n"
            "# HELP sandgate_webhook_attempts_total Webhook requests made, "
            "retries included.\n"
            "# TYPE sandgate_webhook_attempts_total counter\n"
            "sandgate_webhook_attempts_total %llu\n",
            (unsigned long long)w->sent, (unsigned long long)w->failed,
            (unsigned long long)w->dropped, (unsigned long long)w->deduplicated,
            (unsigned long long)w->attempts);
  }
  fprintf(f,
          "# HELP sandgate_policy_reloads_total Script reloads (SIGHUP, file "
          "change), by result.\n"
          "# TYPE sandgate_policy_reloads_total counter\n"
          "sandgate_policy_reloads_total{result=\"ok\"} %llu\n"
          "sandgate_policy_reloads_total{result=\"failed\"} %llu\n"
          "# HELP sandgate_policy_script_errors_total decide calls that "
          "failed or ran out of budget (the query was denied).\n"
          "# TYPE sandgate_policy_script_errors_total counter\n"
          "sandgate_policy_script_errors_total %llu\n"
          "# HELP sandgate_policy_vm_bytes Memory held by the running policy "
          "VM.\n"
          "# TYPE sandgate_policy_vm_bytes gauge\n"
          "sandgate_policy_vm_bytes %zu\n",
          (unsigned long long)e->reloads,
          (unsigned long long)e->reload_failures,
          (unsigned long long)e->script_errors, sg_vm_mem_used(e->vm));
  if (e->dynset)
    write_nft_metrics(e, f);
}

/* Reads the three always-lists into texts[] (NULL for a file that does not
 * exist). Returns 0, or -1 with err naming the file that cannot be read. */
static int read_always(egress_t *e, char *texts[3], char *err, size_t errlen) {
  for (int i = 0; i < 3; i++) {
    texts[i] = NULL;
    struct stat st;
    if (stat(e->always_path[i], &st) != 0 && errno == ENOENT)
      continue;
    if (sg_file_read(e->always_path[i], &texts[i], NULL, err, errlen)) {
      for (int j = 0; j < i; j++)
        free(texts[j]);
      return -1;
    }
  }
  return 0;
}

/* An always-list changed: build a VM with the new lists (and the running
 * script and document); only a complete build replaces the running one, so
 * a bad line keeps the previous lists. */
static void on_always_debounce(uv_timer_t *t) {
  egress_t *e = t->data;
  char err[1024];
  char *texts[3], *old[3];
  if (read_always(e, texts, err, sizeof(err)) == 0) {
    int same = 1;
    for (int i = 0; i < 3; i++)
      same &= (!texts[i] && !e->always_text[i]) ||
              (texts[i] && e->always_text[i] &&
               strcmp(texts[i], e->always_text[i]) == 0);
    if (same) {
      for (int i = 0; i < 3; i++)
        free(texts[i]);
      return;
    }
    memcpy(old, e->always_text, sizeof(old));
    memcpy(e->always_text, texts, sizeof(texts));
    sg_vm_t *vm;
    int rc = build_vm(e, e->policy_json, &vm, err, sizeof(err));
    if (!rc && (rc = nft_follow(e, e->vm, vm, err, sizeof(err))))
      sg_vm_unref(vm);
    if (rc == 0) {
      for (int i = 0; i < 3; i++)
        free(old[i]);
      swap_in(e, vm, e->script_src, e->script_len);
      sg_logline_t l;
      sg_log_begin(&l, SG_LOG_INFO, "egress.always_updated");
      sg_log_str(&l, "dir", e->cfg.rules_dir);
      sg_log_bool(&l, "deny_always", texts[0] != NULL);
      sg_log_bool(&l, "allow_always", texts[1] != NULL);
      sg_log_bool(&l, "log_skip_always", texts[2] != NULL);
      sg_log_end(&l);
      return;
    }
    memcpy(e->always_text, old, sizeof(old));
    for (int i = 0; i < 3; i++)
      free(texts[i]);
  }
  sg_logline_t l;
  sg_log_begin(&l, SG_LOG_ERROR, "egress.always_failed");
  sg_log_str(&l, "error", err);
  sg_log_str(&l, "kept", "previous always rules");
  sg_log_end(&l);
}

static void on_always_event(uv_fs_event_t *h, const char *filename, int events,
                            int status) {
  (void)events;
  egress_t *e = h->data;
  (void)filename;
  /* Any event: a ConfigMap swaps a `..data` link rather than the files;
   * the debounced handler compares contents and ignores no-op events. */
  if (status < 0)
    return;
  uv_timer_start(&e->always_debounce, on_always_debounce, RELOAD_DEBOUNCE_MS,
                 0);
}

static const char *current_doc(void *ctx) {
  return ((egress_t *)ctx)->policy_json;
}

/* A policy write through the API: a new VM with the new document, then the
 * file, then the swap. Any failure leaves the running VM, the file and the
 * document as they were. */
static int apply_doc(void *ctx, const char *doc, char *err, size_t errlen) {
  egress_t *e = ctx;
  sg_vm_t *vm;
  if (build_vm(e, doc, &vm, err, errlen))
    return -EINVAL;
  char *copy = strdup(doc);
  if (!copy) {
    sg_vm_unref(vm);
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  int rc = nft_follow(e, e->vm, vm, err, errlen);
  if (rc) {
    free(copy);
    sg_vm_unref(vm);
    return -EIO;
  }
  if (e->cfg.policy_file) {
    rc =
        sg_file_write_atomic(e->cfg.policy_file, doc, strlen(doc), err, errlen);
    if (rc) {
      /* Back to the running policy's sets: nothing changed. */
      char nerr[256];
      nft_follow(e, vm, e->vm, nerr, sizeof(nerr));
      free(copy);
      sg_vm_unref(vm);
      return rc == -EINVAL ? -EIO : rc;
    }
  }
  free(e->policy_json);
  e->policy_json = copy;
  swap_in(e, vm, e->script_src, e->script_len);
  sg_logline_t l;
  sg_log_begin(&l, SG_LOG_INFO, "egress.updated");
  sg_log_str(&l, "policy", doc);
  sg_log_bool(&l, "persisted", e->cfg.policy_file != NULL);
  sg_log_end(&l);
  return 0;
}

static void on_debounce(uv_timer_t *t) {
  egress_t *e = t->data;
  if (!script_changed(e))
    return;
  remember_script(e);
  reload(e, "file-change");
}

static void on_script_event(uv_fs_event_t *h, const char *filename, int events,
                            int status) {
  (void)events;
  (void)filename;
  egress_t *e = h->data;
  if (status < 0)
    return;
  uv_timer_start(&e->debounce, on_debounce, RELOAD_DEBOUNCE_MS, 0);
}

static void on_sighup(uv_signal_t *h, int signum) {
  (void)signum;
  egress_t *e = h->data;
  remember_script(e);
  reload(e, "SIGHUP");
}

static void close_handle(uv_handle_t *h) {
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

static void stop(egress_t *e, const char *why) {
  if (e->stopping)
    return;
  e->stopping = 1;
  sg_log_msg(SG_LOG_INFO, "egress.stopping", "%s", why);
  sg_egress_api_close(e->api);
  e->api = NULL;
  sg_webhook_close(e->webhook);
  e->webhook = NULL;
  /* Answers still waiting for the kernel get SERVFAIL: nothing is released
   * that the kernel did not confirm. */
  sg_dynset_close(e->dynset);
  e->dynset = NULL;
  sg_dns_server_close(e->server);
  e->server = NULL;
  sg_upstream_close(e->upstream);
  e->upstream = NULL;
  close_handle((uv_handle_t *)&e->sighup);
  close_handle((uv_handle_t *)&e->sigterm);
  close_handle((uv_handle_t *)&e->sigint);
  close_handle((uv_handle_t *)&e->watch);
  close_handle((uv_handle_t *)&e->debounce);
  close_handle((uv_handle_t *)&e->always_watch);
  close_handle((uv_handle_t *)&e->always_debounce);
  if (e->intercept_installed) {
    char err[512];
    if (!e->cfg.remove_on_exit) {
      sg_log_msg(SG_LOG_INFO, "nft.kept",
                 "table inet %s kept (SANDGATE_EGRESS_ON_EXIT=keep)",
                 SG_NFT_TABLE);
    } else if (sg_nft_intercept_remove(err, sizeof(err))) {
      sg_log_msg(SG_LOG_ERROR, "nft.remove_failed", "%s", err);
    } else {
      sg_log_msg(SG_LOG_INFO, "nft.removed", "table inet %s removed",
                 SG_NFT_TABLE);
    }
  }
}

static void on_stop_signal(uv_signal_t *h, int signum) {
  stop(h->data, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static int blank(const char *s) {
  for (; s && *s; s++)
    if (*s != ' ' && *s != '\n' && *s != '\r' && *s != '\t')
      return 0;
  return 1;
}

/* egress.loaded: the document the plane starts with, and where it came
 * from (OpenSandbox's event, with the rules). */
static void log_loaded(const egress_t *e, const char *source) {
  sg_logline_t l;
  sg_log_begin(&l, SG_LOG_INFO, "egress.loaded");
  sg_log_str(&l, "source", source);
  sg_log_str(&l, "policy", e->policy_json ? e->policy_json : "(deny-all)");
  sg_log_end(&l);
}

/* The initial policy: the policy file when it holds a valid document, else
 * OPENSANDBOX_EGRESS_RULES (which must be valid), else deny-all. */
static int load_initial_policy(egress_t *e) {
  char err[1024];
  const char *file = e->cfg.policy_file;
  if (file) {
    char *text = NULL;
    /* A missing or unreadable file is no policy: fall through. */
    if (sg_file_read(file, &text, NULL, err, sizeof(err)) == 0 &&
        !blank(text)) {
      if (build_vm(e, text, &e->vm, err, sizeof(err)) == 0) {
        e->policy_json = text;
        sg_log_msg(SG_LOG_INFO, "policy.loaded", "from policy file %s", file);
        log_loaded(e, file);
        return 0;
      }
      sg_log_msg(SG_LOG_WARN, "policy.file_invalid",
                 "ignoring policy file %s: %s", file, err);
    }
    free(text);
  }
  if (e->cfg.rules) {
    if (build_vm(e, e->cfg.rules, &e->vm, err, sizeof(err))) {
      /* The document or the script: say which. */
      if (strncmp(err, "invalid policy", 14) == 0)
        sg_log_msg(SG_LOG_ERROR, "egress.start_failed",
                   "invalid OPENSANDBOX_EGRESS_RULES: %s", err);
      else
        sg_log_msg(SG_LOG_ERROR, "egress.start_failed",
                   "cannot load policy script %s: %s", e->script_path, err);
      return -EINVAL;
    }
    /* Keep one copy of the document: take over the flag's file buffer, or
     * copy the (usually small) environment value. */
    if (e->cfg.rules_owned) {
      e->policy_json = e->cfg.rules_owned;
      e->cfg.rules_owned = NULL;
    } else {
      e->policy_json = strdup(e->cfg.rules);
    }
    sg_log_msg(SG_LOG_INFO, "policy.loaded", "from OPENSANDBOX_EGRESS_RULES");
    log_loaded(e, "OPENSANDBOX_EGRESS_RULES");
    return 0;
  }
  if (build_vm(e, NULL, &e->vm, err, sizeof(err))) {
    sg_log_msg(SG_LOG_ERROR, "egress.start_failed",
               "cannot load policy script %s: %s", e->script_path, err);
    return -EINVAL;
  }
  sg_log_msg(SG_LOG_INFO, "policy.loaded", "no policy given: deny-all");
  log_loaded(e, "default");
  return 0;
}

/* Watches the directory of the running script's file (if it has one). */
static void start_watch(egress_t *e) {
  char tmp[4096];
  if (uv_is_active((uv_handle_t *)&e->watch))
    uv_fs_event_stop(&e->watch);
  remember_script(e);
  if (!e->script_path)
    return;
  snprintf(tmp, sizeof(tmp), "%s", e->script_path);
  snprintf(e->script_dir, sizeof(e->script_dir), "%s", dirname(tmp));
  /* The directory, not the file: editors and `mv` replace the file, which
   * would leave a watch on the old inode. */
  int rc = uv_fs_event_start(&e->watch, on_script_event, e->script_dir, 0);
  if (rc)
    sg_log_msg(SG_LOG_WARN, "policy.watch_failed",
               "not watching %s for changes: %s (SIGHUP still reloads)",
               e->script_dir, uv_strerror(rc));
}

/* Where an uploaded script is kept: next to the policy file, named after
 * it ("policy.json" -> "policy.script.lua"). NULL without a policy file. */
static char *script_store_path(const char *policy_file) {
  if (!policy_file)
    return NULL;
  size_t n = strlen(policy_file);
  if (n > 5 && strcmp(policy_file + n - 5, ".json") == 0)
    n -= 5;
  char *p = malloc(n + sizeof(".script.lua"));
  if (p) {
    memcpy(p, policy_file, n);
    memcpy(p + n, ".script.lua", sizeof(".script.lua"));
  }
  return p;
}

/* GET /policy/explain: the running VM, asked as the proxy asks it. */
static int explain(void *ctx, const sg_egress_question_t *q, FILE *f, char *err,
                   size_t errlen) {
  return sg_egress_explain(((egress_t *)ctx)->vm, q, f, err, errlen);
}

static const char *current_script(void *ctx, size_t *len) {
  egress_t *e = ctx;
  *len = e->script_len;
  return e->script_src;
}

/* PUT /policy/script: the upload runs in a new VM with the current
 * document and is swapped in only when it loaded and passed its checks;
 * it is persisted first, so a restart brings it back. */
static int apply_script(void *ctx, const char *src, size_t len, char *err,
                        size_t errlen) {
  egress_t *e = ctx;
  sg_vm_t *vm;
  const char *name = e->script_store ? e->script_store : "uploaded-script.lua";
  if (build_vm_from(e, src, len, name, e->policy_json, &vm, err, errlen))
    return -EINVAL;
  char *copy = malloc(len + 1);
  if (!copy) {
    sg_vm_unref(vm);
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  memcpy(copy, src, len);
  copy[len] = 0;
  int rc = nft_follow(e, e->vm, vm, err, errlen);
  if (rc) {
    free(copy);
    sg_vm_unref(vm);
    return -EIO;
  }
  if (e->script_store) {
    rc = sg_file_write_atomic(e->script_store, src, len, err, errlen);
    if (rc) {
      char nerr[256];
      nft_follow(e, vm, e->vm, nerr, sizeof(nerr));
      free(copy);
      sg_vm_unref(vm);
      return rc == -EINVAL ? -EIO : rc;
    }
  }
  swap_in(e, vm, copy, len);
  free(e->script_path);
  e->script_path = e->script_store ? strdup(e->script_store) : NULL;
  start_watch(e);
  sg_logline_t l;
  sg_log_begin(&l, SG_LOG_INFO, "policy.script_uploaded");
  sg_log_int(&l, "bytes", (long long)len);
  sg_log_str(&l, "persisted", e->script_store);
  sg_log_end(&l);
  return 0;
}

/* Everything the plane owns outside libuv handles; every exit path ends
 * here, whatever it got as far as. */
static void egress_free(egress_t *e) {
  sg_vm_unref(e->vm);
  e->vm = NULL;
  free(e->policy_json);
  free(e->script_src);
  free(e->script_path);
  free(e->script_store);
  for (int i = 0; i < 3; i++)
    free(e->always_text[i]);
  sg_egress_config_free(&e->cfg);
}

/* An upstream whose address is an exempt nameserver. */
static int is_exempt(const sg_egress_config_t *c,
                     const struct sockaddr_storage *ss) {
  char ip[SG_ADDRSTR_MAX];
  return sg_sockaddr_ip((const struct sockaddr *)ss, ip, sizeof(ip)) &&
         sg_ipset_has_ip(c->exempt, ip);
}

int sg_egress_main(int argc, char **argv) {
  egress_t e;
  memset(&e, 0, sizeof(e));
  char err[1024];
  int rc = sg_egress_config_load(&e.cfg, argc, argv, err, sizeof(err));
  if (rc == 1)
    return 0;
  if (rc) {
    sg_log_msg(SG_LOG_ERROR, "egress.bad_config", "%s", err);
    fprintf(stderr, "sandgate egress: %s\n", err);
    sg_egress_config_free(&e.cfg);
    return 2;
  }
  sg_log_set_level((sg_log_level_t)e.cfg.log_level);
  if (e.cfg.nft && !e.cfg.intercept) {
    sg_log_msg(SG_LOG_ERROR, "egress.bad_config",
               "dns+nft installs its filter with the DNS interception: it "
               "cannot run with --no-intercept");
    fprintf(stderr, "sandgate egress: dns+nft cannot run with "
                    "--no-intercept (the filter is installed with the "
                    "interception)\n");
    sg_egress_config_free(&e.cfg);
    return 2;
  }
  e.loop = uv_default_loop();

  /* The script: an upload persisted by an earlier run wins over the
   * configured file, so a restart keeps what an operator uploaded. */
  e.script_store = script_store_path(e.cfg.policy_file);
  /* A kill -9 in the middle of a write leaves its temporary file; the
   * policy file itself is whole either way. */
  if (e.cfg.policy_file) {
    int n = sg_file_remove_stale_temps(e.cfg.policy_file);
    n += sg_file_remove_stale_temps(e.script_store);
    if (n)
      sg_log_msg(SG_LOG_INFO, "policy.stale_temps_removed",
                 "removed %d temporary file(s) of an interrupted write", n);
  }
  struct stat st;
  if (e.script_store && stat(e.script_store, &st) == 0) {
    e.script_path = strdup(e.script_store);
    sg_log_msg(SG_LOG_INFO, "policy.script_restored",
               "using the uploaded script persisted at %s", e.script_store);
  } else {
    e.script_path = strdup(e.cfg.script);
  }
  static const char *const always_files[3] = {"deny.always", "allow.always",
                                              "log_skip.always"};
  for (int i = 0; i < 3; i++)
    snprintf(e.always_path[i], sizeof(e.always_path[i]), "%s/%s",
             e.cfg.rules_dir, always_files[i]);
  /* A list that cannot be read or parsed stops the start: running without
   * an operator's deny.always would fail open. */
  if (read_always(&e, e.always_text, err, sizeof(err)) ||
      sg_file_read(e.script_path, &e.script_src, &e.script_len, err,
                   sizeof(err))) {
    sg_log_msg(SG_LOG_ERROR, "egress.start_failed", "%s", err);
    fprintf(stderr, "sandgate egress: %s\n", err);
    egress_free(&e);
    return 1;
  }
  if (load_initial_policy(&e)) {
    egress_free(&e);
    return 1;
  }
  /* Give back what the start-up loads' garbage left in the heap. */
  malloc_trim(0);

  sg_upstream_opts_t uo = {
      .nservers = e.cfg.nupstreams,
      .timeout_ms = e.cfg.upstream_timeout_ms,
      .mark = e.cfg.intercept ? 0x1 : 0,
  };
  memcpy(uo.servers, e.cfg.upstreams, sizeof(uo.servers));
  for (int i = 0; i < e.cfg.nupstreams; i++)
    uo.no_mark[i] = is_exempt(&e.cfg, &e.cfg.upstreams[i]);
  if ((rc = sg_upstream_new(e.loop, &uo, &e.upstream, err, sizeof(err)))) {
    sg_log_msg(SG_LOG_ERROR, "egress.start_failed", "%s", err);
    goto fail;
  }

  if (e.cfg.deny_webhook) {
    sg_webhook_opts_t wo = {.url = e.cfg.deny_webhook,
                            .sandbox_id = e.cfg.sandbox_id};
    /* The webhook's own name lookups go straight to the upstreams with the
     * bypass mark: through the proxy, the policy could deny the webhook's
     * host itself. */
    memcpy(wo.http.dns_servers, e.cfg.upstreams, sizeof(wo.http.dns_servers));
    wo.http.ndns_servers = e.cfg.nupstreams;
    wo.http.mark = e.cfg.intercept ? 0x1 : 0;
    if ((rc = sg_webhook_new(e.loop, &wo, &e.webhook, err, sizeof(err)))) {
      sg_log_msg(SG_LOG_ERROR, "egress.start_failed",
                 "OPENSANDBOX_EGRESS_DENY_WEBHOOK: %s", err);
      goto fail;
    }
  }

  sg_dns_server_opts_t so = {
      .nlisten = e.cfg.nlisten,
      .tcp_idle_ms = e.cfg.tcp_idle_ms,
      .tcp_max_clients = e.cfg.tcp_max_clients,
      .upstream = e.upstream,
      .decide = decide,
      .decide_ctx = &e,
      .on_answer = e.cfg.nft ? on_answer : NULL,
  };
  memcpy(so.listen, e.cfg.listen, sizeof(so.listen));
  if ((rc = sg_dns_server_start(e.loop, &so, &e.server, err, sizeof(err)))) {
    sg_log_msg(SG_LOG_ERROR, "egress.start_failed", "%s", err);
    goto fail;
  }

  if (e.cfg.intercept) {
    sg_nft_learned_t *learned = NULL;
    size_t nlearned = 0;
    sg_nft_intercept_opts_t no = {
        .redirect_port = sg_sockaddr_port((struct sockaddr *)&e.cfg.listen[0]),
        .bypass_mark = 0x1,
        .exempt = e.cfg.exempt,
        .exempt_uid = e.cfg.exempt_uid,
    };
    if (e.cfg.nft) {
      e.fopts = (sg_nft_filter_opts_t){
          .reject = e.cfg.block_reject,
          .doh_all = e.cfg.doh_all,
          .doh = {e.cfg.doh[0], e.cfg.doh[1]},
          .dyn_size = DYN_SET_SIZE,
      };
      /* A table left by an earlier run: its learned addresses go into the
       * new sets, with what is left of their timeouts, so programs that
       * resolved before the restart keep working. */
      sg_nft_learned_dump(&learned, &nlearned);
      e.fopts.learned = learned;
      e.fopts.nlearned = nlearned;
      no.filter = &e.fopts;
      no.statics = sg_vm_statics(e.vm);
      sg_dynset_opts_t dopts = {
          .grace_s = e.cfg.dyn_grace_s,
          .min_s = e.cfg.dyn_min_s,
          .max_s = e.cfg.dyn_max_s,
          .ack_timeout_ms = e.cfg.nft_timeout_ms,
      };
      if ((rc = sg_dynset_new(e.loop, &dopts, &e.dynset, err, sizeof(err)))) {
        sg_log_msg(SG_LOG_ERROR, "egress.start_failed", "dns+nft: %s", err);
        free(learned);
        goto fail;
      }
    }
    rc = sg_nft_intercept_install(&no, err, sizeof(err));
    size_t carried = 0;
    for (size_t i = 0; !rc && i < nlearned; i++) {
      if (learned[i].left_ms < 1000)
        continue;
      sg_dynset_seed(e.dynset, learned[i].family, learned[i].addr,
                     learned[i].timeout_ms, learned[i].left_ms);
      carried++;
    }
    free(learned);
    e.fopts.learned = NULL;
    e.fopts.nlearned = 0;
    if (rc) {
      sg_log_msg(SG_LOG_ERROR, "egress.start_failed",
                 "cannot intercept DNS: %s", err);
      goto fail;
    }
    e.intercept_installed = 1;
    if (carried)
      sg_log_msg(SG_LOG_INFO, "nft.learned_carried",
                 "%zu learned address(es) carried over from the previous "
                 "table",
                 carried);
  }

  /* The API comes last: /healthz answering means DNS is being served and
   * intercepted. */
  if (e.cfg.api_enabled) {
    sg_egress_api_opts_t ao = {
        .current_doc = current_doc,
        .apply_doc = apply_doc,
        .current_script = current_script,
        .write_metrics = write_metrics,
        .apply_script = apply_script,
        .explain = explain,
        .ctx = &e,
        .listen = e.cfg.api_listen,
        .data_dir = e.cfg.data_dir,
        .token = e.cfg.token,
        .enforcement = e.cfg.enforcement,
        .max_rules = e.cfg.max_rules,
    };
    if ((rc = sg_egress_api_start(e.loop, &ao, &e.api, err, sizeof(err)))) {
      sg_log_msg(SG_LOG_ERROR, "egress.start_failed",
                 "cannot start the policy API: %s", err);
      goto fail;
    }
  }

  uv_signal_init(e.loop, &e.sighup);
  uv_signal_init(e.loop, &e.sigterm);
  uv_signal_init(e.loop, &e.sigint);
  e.sighup.data = e.sigterm.data = e.sigint.data = &e;
  uv_signal_start(&e.sighup, on_sighup, SIGHUP);
  uv_signal_start(&e.sigterm, on_stop_signal, SIGTERM);
  uv_signal_start(&e.sigint, on_stop_signal, SIGINT);
  uv_timer_init(e.loop, &e.debounce);
  e.debounce.data = &e;
  uv_fs_event_init(e.loop, &e.watch);
  e.watch.data = &e;
  start_watch(&e);
  uv_timer_init(e.loop, &e.always_debounce);
  e.always_debounce.data = &e;
  uv_fs_event_init(e.loop, &e.always_watch);
  e.always_watch.data = &e;
  struct stat rst;
  if (stat(e.cfg.rules_dir, &rst) == 0 && S_ISDIR(rst.st_mode)) {
    rc =
        uv_fs_event_start(&e.always_watch, on_always_event, e.cfg.rules_dir, 0);
    if (rc)
      sg_log_msg(SG_LOG_WARN, "egress.always_watch_failed",
                 "not watching %s: %s", e.cfg.rules_dir, uv_strerror(rc));
  } else {
    sg_log_msg(SG_LOG_INFO, "egress.no_always_rules",
               "%s does not exist: no always rules", e.cfg.rules_dir);
  }

  {
    sg_logline_t l;
    char a[SG_ADDRSTR_MAX];
    sg_log_begin(&l, SG_LOG_INFO, "egress.started");
    sg_log_str(
        &l, "listen",
        sg_sockaddr_str((struct sockaddr *)&e.cfg.listen[0], a, sizeof(a)));
    sg_log_str(
        &l, "upstream",
        sg_sockaddr_str((struct sockaddr *)&e.cfg.upstreams[0], a, sizeof(a)));
    sg_log_int(&l, "upstreams", e.cfg.nupstreams);
    sg_log_str(&l, "script", e.script_path ? e.script_path : "(uploaded)");
    sg_log_bool(&l, "intercept", e.cfg.intercept);
    sg_log_str(&l, "mode", e.cfg.enforcement);
    if (e.cfg.api_enabled)
      sg_log_str(
          &l, "api",
          sg_sockaddr_str((struct sockaddr *)&e.cfg.api_listen, a, sizeof(a)));
    sg_log_end(&l);
  }

  uv_run(e.loop, UV_RUN_DEFAULT);
  egress_free(&e);
  uv_loop_close(e.loop);
  return 0;

fail:
  e.stopping = 1;
  sg_dynset_close(e.dynset);
  sg_webhook_close(e.webhook);
  if (e.intercept_installed) {
    /* Never leave a redirect to a proxy that is not there. */
    char nerr[512];
    sg_nft_intercept_remove(nerr, sizeof(nerr));
  }
  sg_dns_server_close(e.server);
  sg_upstream_close(e.upstream);
  uv_run(e.loop, UV_RUN_DEFAULT);
  egress_free(&e);
  return 1;
}
