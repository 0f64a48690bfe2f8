/* JSON-lines logging on stderr: one object per line with a timestamp, a
 * level and an event name, then the fields of that event. Lines are built in
 * a fixed buffer and written with a single write(2), so lines from the C core
 * and from scripts never interleave mid-line. */
#ifndef SG_UTIL_LOG_H
#define SG_UTIL_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

typedef enum {
  SG_LOG_DEBUG = 0,
  SG_LOG_INFO,
  SG_LOG_WARN,
  SG_LOG_ERROR,
} sg_log_level_t;

#define SG_LOG_LINE_MAX 4096

typedef struct {
  char buf[SG_LOG_LINE_MAX];
  size_t len;
  bool overflow;
} sg_logline_t;

void sg_log_set_level(sg_log_level_t level);
bool sg_log_enabled(sg_log_level_t level);
/* Parses "debug", "info", "warn", "error"; returns -1 on anything else. */
int sg_log_parse_level(const char *s);
const char *sg_log_level_name(sg_log_level_t level);

void sg_log_begin(sg_logline_t *l, sg_log_level_t level, const char *event);
void sg_log_str(sg_logline_t *l, const char *key, const char *value);
void sg_log_strn(sg_logline_t *l, const char *key, const char *value,
                 size_t len);
void sg_log_int(sg_logline_t *l, const char *key, long long value);
void sg_log_bool(sg_logline_t *l, const char *key, bool value);
/* Appends a value that already is JSON text (an object from a script). */
void sg_log_json(sg_logline_t *l, const char *key, const char *json,
                 size_t len);
/* Merges the members of a JSON object (text from a script's cjson.encode)
 * into the line, after the fields already there. */
void sg_log_merge(sg_logline_t *l, const char *json_object, size_t len);
void sg_log_end(sg_logline_t *l);

/* A one-field line: {"level":..,"event":..,"msg":"<formatted>"}. */
void sg_log_msg(sg_log_level_t level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
