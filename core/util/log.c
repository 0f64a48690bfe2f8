#include "util/log.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static sg_log_level_t min_level = SG_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void sg_log_set_level(sg_log_level_t level) {
  min_level = level;
}

bool sg_log_enabled(sg_log_level_t level) {
  return level >= min_level;
}

int sg_log_parse_level(const char *s) {
  for (int i = 0; i < 4; i++)
    if (strcmp(s, level_names[i]) == 0)
      return i;
  return -1;
}

const char *sg_log_level_name(sg_log_level_t level) {
  return level_names[level];
}

static void put(sg_logline_t *l, const char *s, size_t n) {
  /* Keep room for the closing "}\n"; a line that does not fit is cut at a
   * field boundary and marked, never written half-escaped. */
  if (l->overflow || l->len + n + 2 > sizeof(l->buf)) {
    l->overflow = true;
    return;
  }
  memcpy(l->buf + l->len, s, n);
  l->len += n;
}

static void put_escaped(sg_logline_t *l, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  char tmp[8];
  put(l, "\"", 1);
  size_t start = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c != '"' && c != '\\' && c < 0x7f)
      continue;
    put(l, s + start, i - start);
    start = i + 1;
    switch (c) {
    case '"': put(l, "\\\"", 2); break;
    case '\\': put(l, "\\\\", 2); break;
    case '\n': put(l, "\\n", 2); break;
    case '\t': put(l, "\\t", 2); break;
    default:
      /* Bytes outside printable ASCII are escaped one by one, so a line is
       * valid JSON whatever a packet or a script put into it. */
      memcpy(tmp, "\\u00", 4);
      tmp[4] = hex[c >> 4];
      tmp[5] = hex[c & 0xf];
      put(l, tmp, 6);
    }
  }
  put(l, s + start, n - start);
  put(l, "\"", 1);
}

static void put_key(sg_logline_t *l, const char *key) {
  put(l, ",", 1);
  put_escaped(l, key, strlen(key));
  put(l, ":", 1);
}

void sg_log_begin(sg_logline_t *l, sg_log_level_t level, const char *event) {
  struct timeval tv;
  struct tm tm;
  char ts[64];
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
  n += (size_t)snprintf(ts + n, sizeof(ts) - n, ".%03ldZ",
                        (long)(tv.tv_usec / 1000));
  l->len = 0;
  l->overflow = false;
  put(l, "{\"ts\":\"", 7);
  put(l, ts, n);
  put(l, "\",\"level\":\"", 11);
  put(l, level_names[level], strlen(level_names[level]));
  put(l, "\",\"event\":", 10);
  put_escaped(l, event, strlen(event));
}

void sg_log_strn(sg_logline_t *l, const char *key, const char *value,
                 size_t len) {
  put_key(l, key);
  if (value)
    put_escaped(l, value, len);
  else
    put(l, "null", 4);
}

void sg_log_str(sg_logline_t *l, const char *key, const char *value) {
  sg_log_strn(l, key, value, value ? strlen(value) : 0);
}

void sg_log_int(sg_logline_t *l, const char *key, long long value) {
  char tmp[32];
  int n = snprintf(tmp, sizeof(tmp), "%lld", value);
  put_key(l, key);
  put(l, tmp, (size_t)n);
}

void sg_log_bool(sg_logline_t *l, const char *key, bool value) {
  put_key(l, key);
  put(l, value ? "true" : "false", value ? 4 : 5);
}

void sg_log_json(sg_logline_t *l, const char *key, const char *json,
                 size_t len) {
  put_key(l, key);
  put(l, json, len);
}

void sg_log_merge(sg_logline_t *l, const char *json_object, size_t len) {
  /* "{}" and anything that is not an object add nothing. */
  if (len < 3 || json_object[0] != '{' || json_object[len - 1] != '}')
    return;
  put(l, ",", 1);
  put(l, json_object + 1, len - 2);
}

void sg_log_end(sg_logline_t *l) {
  if (l->overflow) {
    /* The fields that fit are kept; the marker tells a reader the rest was
     * dropped. There is always room for it: put() keeps 2 bytes spare and the
     * marker replaces the tail if needed. */
    static const char mark[] = ",\"truncated\":true";
    if (l->len + sizeof(mark) - 1 + 2 > sizeof(l->buf))
      l->len = sizeof(l->buf) - (sizeof(mark) - 1) - 2;
    memcpy(l->buf + l->len, mark, sizeof(mark) - 1);
    l->len += sizeof(mark) - 1;
  }
  l->buf[l->len++] = '}';
  l->buf[l->len++] = '\n';
  ssize_t off = 0;
  while ((size_t)off < l->len) {
    ssize_t w = write(STDERR_FILENO, l->buf + off, l->len - (size_t)off);
    if (w <= 0)
      break;
    off += w;
  }
}

void sg_log_msg(sg_log_level_t level, const char *event, const char *fmt, ...) {
  if (!sg_log_enabled(level))
    return;
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  sg_logline_t l;
  sg_log_begin(&l, level, event);
  sg_log_str(&l, "msg", msg);
  sg_log_end(&l);
}
