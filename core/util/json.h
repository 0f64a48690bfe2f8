/* Writing JSON text to a stdio stream (an open_memstream buffer, usually):
 * strings escaped as RFC 8259 requires, for the answers the admin and policy
 * APIs and the tools build in C. Reading JSON is left to Lua (cjson). */
#ifndef SG_UTIL_JSON_H
#define SG_UTIL_JSON_H

#include <stddef.h>
#include <stdio.h>

/* Writes s (len bytes, any content) as a JSON string literal: quote,
 * backslash and control characters escaped; other bytes as they are. */
void sg_json_strn(FILE *f, const char *s, size_t len);

/* The same for a NUL-terminated string; NULL is written as null. */
void sg_json_str(FILE *f, const char *s);

/* Writes ,"key": (without the comma when first is set, then clears it). */
void sg_json_key(FILE *f, int *first, const char *key);

#endif
