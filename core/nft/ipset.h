/* Address sets as sorted, disjoint ranges: what the nftables interval sets
 * are built from.
 *
 * A policy lists addresses and prefixes in any order and with any overlap
 * ("10.0.0.0/8" and "10.1.0.0/16", or the same address twice). The kernel's
 * interval sets refuse overlapping elements, so every list is normalized
 * here first: parsed, sorted, and merged where ranges overlap or touch. The
 * normalized form is also what is compared to decide whether a set changed.
 *
 * One set holds one family. Addresses are kept as 128-bit numbers (IPv4 in
 * the low 32 bits). */
#ifndef SG_NFT_IPSET_H
#define SG_NFT_IPSET_H

#include <stddef.h>
#include <stdint.h>

typedef unsigned __int128 sg_u128;

typedef struct {
  sg_u128 lo, hi; /* inclusive */
} sg_range_t;

typedef struct {
  int family; /* 4 or 6 */
  sg_range_t *r;
  size_t n, cap;
} sg_ipset_t;

void sg_ipset_init(sg_ipset_t *s, int family);
void sg_ipset_free(sg_ipset_t *s);

/* Parses "1.2.3.4", "10.0.0.0/8", "2001:db8::1" or "2001:db8::/32" (host
 * bits are ignored: 10.1.2.3/8 is 10.0.0.0/8). Returns the family (4 or 6)
 * and fills *out, or 0 when the text is none of these. */
int sg_range_parse(const char *text, sg_range_t *out);

/* Appends a range (unsorted until sg_ipset_normalize). Returns 0 or
 * -ENOMEM. */
int sg_ipset_add(sg_ipset_t *s, const sg_range_t *r);

/* Sorts and merges overlapping and adjacent ranges. */
void sg_ipset_normalize(sg_ipset_t *s);

/* s = s minus every range of sub (both normalized; s stays normalized).
 * Returns 0 or -ENOMEM (s unchanged then). */
int sg_ipset_subtract(sg_ipset_t *s, const sg_ipset_t *sub);

/* s = s union add (add normalized). Returns 0 or -ENOMEM. */
int sg_ipset_merge(sg_ipset_t *s, const sg_ipset_t *add);

/* 1 when both hold the same ranges (both normalized). */
int sg_ipset_equal(const sg_ipset_t *a, const sg_ipset_t *b);

/* Copies src into dst (initialized, emptied first). 0 or -ENOMEM. */
int sg_ipset_copy(sg_ipset_t *dst, const sg_ipset_t *src);

/* Parses a comma (or blank) separated list of addresses and CIDRs into
 * out[0] (IPv4) and out[1] (IPv6), both initialized by the caller, and
 * normalizes them. With single_ips, prefixes wider than one address are
 * refused. Returns 0, or a negative errno with a message naming `what` and
 * the bad entry in err. */
int sg_ipset_parse_list(const char *what, const char *list, int single_ips,
                        sg_ipset_t out[2], char *err, size_t errlen);

/* 1 when the address ip (text) lies in sets ([0] IPv4, [1] IPv6; NULL =
 * empty). */
int sg_ipset_has_ip(const sg_ipset_t *sets, const char *ip);

/* Writes the address v of the family in network byte order into out (4 or
 * 16 bytes) and returns the number of bytes. */
size_t sg_addr_bytes(int family, sg_u128 v, uint8_t out[16]);

/* The largest address of the family. */
sg_u128 sg_addr_max(int family);

#endif
