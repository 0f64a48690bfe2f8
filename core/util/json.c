#include "util/json.h"

void sg_json_strn(FILE *f, const char *s, size_t len) {
  static const char hex[] = "0123456789abcdef";
  fputc('"', f);
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') {
      fputc('\\', f);
      fputc(c, f);
    } else if (c == '\n') {
      fputs("\\n", f);
    } else if (c == '\t') {
      fputs("\\t", f);
    } else if (c < 0x20 || c == 0x7f) {
      fprintf(f, "\\u00%c%c", hex[c >> 4], hex[c & 15]);
    } else {
      fputc(c, f);
    }
  }
  fputc('"', f);
}

void sg_json_str(FILE *f, const char *s) {
  if (!s) {
    fputs("null", f);
    return;
  }
  size_t n = 0;
  while (s[n])
    n++;
  sg_json_strn(f, s, n);
}

void sg_json_key(FILE *f, int *first, const char *key) {
  if (!*first)
    fputc(',', f);
  *first = 0;
  sg_json_str(f, key);
  fputc(':', f);
}
