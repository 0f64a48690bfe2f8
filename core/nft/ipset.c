#include "nft/ipset.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sg_ipset_init(sg_ipset_t *s, int family) {
  memset(s, 0, sizeof(*s));
  s->family = family;
}

void sg_ipset_free(sg_ipset_t *s) {
  free(s->r);
  s->r = NULL;
  s->n = s->cap = 0;
}

sg_u128 sg_addr_max(int family) {
  return family == 4 ? (sg_u128)0xffffffffu : ~(sg_u128)0;
}

size_t sg_addr_bytes(int family, sg_u128 v, uint8_t out[16]) {
  size_t n = family == 4 ? 4 : 16;
  for (size_t i = 0; i < n; i++)
    out[n - 1 - i] = (uint8_t)(v >> (8 * i));
  return n;
}

static sg_u128 from_bytes(const uint8_t *b, size_t n) {
  sg_u128 v = 0;
  for (size_t i = 0; i < n; i++)
    v = (v << 8) | b[i];
  return v;
}

int sg_range_parse(const char *text, sg_range_t *out) {
  char buf[64];
  size_t len = strlen(text);
  if (len == 0 || len >= sizeof(buf))
    return 0;
  memcpy(buf, text, len + 1);
  char *slash = strchr(buf, '/');
  long prefix = -1;
  if (slash) {
    *slash = 0;
    char *end;
    errno = 0;
    prefix = strtol(slash + 1, &end, 10);
    if (errno || end == slash + 1 || *end || prefix < 0)
      return 0;
  }
  uint8_t b[16];
  int family, bits;
  if (inet_pton(AF_INET, buf, b) == 1) {
    family = 4;
    bits = 32;
  } else if (inet_pton(AF_INET6, buf, b) == 1) {
    family = 6;
    bits = 128;
  } else {
    return 0;
  }
  if (prefix > bits)
    return 0;
  if (prefix < 0)
    prefix = bits;
  sg_u128 v = from_bytes(b, (size_t)bits / 8);
  sg_u128 host = 0;
  if (bits - prefix == 128)
    host = ~(sg_u128)0;
  else if (prefix < bits)
    host = ((sg_u128)1 << (bits - prefix)) - 1;
  out->lo = v & ~host;
  out->hi = out->lo | host;
  if (family == 4) {
    out->lo &= 0xffffffffu;
    out->hi &= 0xffffffffu;
  }
  return family;
}

int sg_ipset_add(sg_ipset_t *s, const sg_range_t *r) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 16;
    sg_range_t *nr = realloc(s->r, cap * sizeof(*nr));
    if (!nr)
      return -ENOMEM;
    s->r = nr;
    s->cap = cap;
  }
  s->r[s->n++] = *r;
  return 0;
}

static int cmp_range(const void *a, const void *b) {
  const sg_range_t *x = a, *y = b;
  if (x->lo != y->lo)
    return x->lo < y->lo ? -1 : 1;
  return x->hi < y->hi ? -1 : x->hi > y->hi;
}

void sg_ipset_normalize(sg_ipset_t *s) {
  if (s->n < 2)
    return;
  qsort(s->r, s->n, sizeof(*s->r), cmp_range);
  size_t w = 0;
  for (size_t i = 1; i < s->n; i++) {
    sg_range_t *cur = &s->r[w];
    /* Overlapping or adjacent (hi + 1 == lo, unless hi is the maximum). */
    if (s->r[i].lo <= cur->hi ||
        (cur->hi != sg_addr_max(s->family) && s->r[i].lo == cur->hi + 1)) {
      if (s->r[i].hi > cur->hi)
        cur->hi = s->r[i].hi;
    } else {
      s->r[++w] = s->r[i];
    }
  }
  s->n = w + 1;
}

int sg_ipset_subtract(sg_ipset_t *s, const sg_ipset_t *sub) {
  if (s->n == 0 || sub->n == 0)
    return 0;
  sg_ipset_t out;
  sg_ipset_init(&out, s->family);
  size_t j = 0;
  for (size_t i = 0; i < s->n; i++) {
    sg_u128 lo = s->r[i].lo, hi = s->r[i].hi;
    int gone = 0;
    while (j < sub->n && sub->r[j].hi < lo)
      j++;
    for (size_t k = j; k < sub->n && sub->r[k].lo <= hi; k++) {
      if (sub->r[k].lo > lo) {
        sg_range_t piece = {lo, sub->r[k].lo - 1};
        if (sg_ipset_add(&out, &piece)) {
          sg_ipset_free(&out);
          return -ENOMEM;
        }
      }
      if (sub->r[k].hi >= hi) {
        gone = 1;
        break;
      }
      lo = sub->r[k].hi + 1;
    }
    if (!gone) {
      sg_range_t piece = {lo, hi};
      if (sg_ipset_add(&out, &piece)) {
        sg_ipset_free(&out);
        return -ENOMEM;
      }
    }
  }
  sg_ipset_free(s);
  *s = out;
  return 0;
}

int sg_ipset_merge(sg_ipset_t *s, const sg_ipset_t *add) {
  for (size_t i = 0; i < add->n; i++)
    if (sg_ipset_add(s, &add->r[i]))
      return -ENOMEM;
  sg_ipset_normalize(s);
  return 0;
}

int sg_ipset_equal(const sg_ipset_t *a, const sg_ipset_t *b) {
  return a->n == b->n &&
         (a->n == 0 || memcmp(a->r, b->r, a->n * sizeof(*a->r)) == 0);
}

int sg_ipset_copy(sg_ipset_t *dst, const sg_ipset_t *src) {
  dst->n = 0;
  dst->family = src->family;
  for (size_t i = 0; i < src->n; i++)
    if (sg_ipset_add(dst, &src->r[i]))
      return -ENOMEM;
  return 0;
}

int sg_ipset_parse_list(const char *what, const char *list, int single_ips,
                        sg_ipset_t out[2], char *err, size_t errlen) {
  char *copy = strdup(list), *save = NULL;
  if (!copy)
    return -ENOMEM;
  int rc = 0;
  for (char *t = strtok_r(copy, ", ", &save); t && !rc;
       t = strtok_r(NULL, ", ", &save)) {
    sg_range_t r;
    int fam = sg_range_parse(t, &r);
    if (!fam || (single_ips && r.lo != r.hi)) {
      snprintf(err, errlen, "%s: \"%s\" is not an IP address%s", what, t,
               single_ips ? "" : " or CIDR");
      rc = -EINVAL;
    } else if (sg_ipset_add(&out[fam == 6], &r)) {
      rc = -ENOMEM;
    }
  }
  free(copy);
  sg_ipset_normalize(&out[0]);
  sg_ipset_normalize(&out[1]);
  return rc;
}

int sg_ipset_has_ip(const sg_ipset_t *sets, const char *ip) {
  sg_range_t r;
  int fam = sets ? sg_range_parse(ip, &r) : 0;
  if (!fam)
    return 0;
  const sg_ipset_t *s = &sets[fam == 6];
  for (size_t i = 0; i < s->n; i++)
    if (r.lo >= s->r[i].lo && r.lo <= s->r[i].hi)
      return 1;
  return 0;
}
