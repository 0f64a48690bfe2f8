/* DNS wire format: see message.h. Everything here works on a borrowed buffer
 * and a length; every read is checked against that length first, because
 * the bytes come from whoever can send a UDP packet to the proxy (queries)
 * or from an upstream resolver (answers). */
#include "dns/message.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

/* A name with more pointer hops than this is a loop or an attack: a real
 * name of at most 255 octets never needs more than one hop per label, and
 * has at most 127 labels. Counting hops catches loops whichever way the
 * pointers point, without remembering where we have been. */
#define MAX_POINTER_HOPS 127

/* The CNAME chain from the question's name: the name itself plus at most
 * this many targets. */
#define MAX_CNAME_HOPS 16

#define CLASS_IN 1

/* RR fixed part after the owner name: type, class, ttl, rdlength. */
#define RR_FIXED_LEN 10

static uint16_t rd16(const uint8_t *p) {
  return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static uint32_t rd32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         (uint32_t)p[3];
}

static void wr16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

static uint8_t ascii_lower(uint8_t c) {
  /* Not tolower(): the locale must not decide what a DNS name is. */
  return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + ('a' - 'A')) : c;
}

/* Decodes the possibly compressed name at *off into its uncompressed wire
 * form (length-prefixed labels and the terminating zero, at most 255
 * octets, original case). On success *off is moved past the name as it sits
 * in the packet, i.e. past the first pointer if there is one. */
static sg_dns_status_t read_name(const uint8_t *pkt, size_t len, size_t *off,
                                 uint8_t wire[SG_DNS_WIRE_NAME_MAX],
                                 size_t *wire_len) {
  size_t pos = *off, n = 0, end = 0;
  int hops = 0;

  for (;;) {
    if (pos >= len)
      return SG_DNS_ERR_TRUNCATED;
    uint8_t c = pkt[pos];
    switch (c & 0xC0) {
    case 0x00:
      if (c == 0) {
        /* The check before copying each label kept room for this octet. */
        wire[n++] = 0;
        *wire_len = n;
        *off = hops ? end : pos + 1;
        return SG_DNS_OK;
      }
      if (len - pos - 1 < c)
        return SG_DNS_ERR_TRUNCATED;
      /* Length octet, the label, and the root octet still to come. */
      if (n + 1 + c + 1 > SG_DNS_WIRE_NAME_MAX)
        return SG_DNS_ERR_NAME;
      wire[n++] = c;
      memcpy(wire + n, pkt + pos + 1, c);
      n += c;
      pos += 1 + (size_t)c;
      break;
    case 0xC0: {
      if (len - pos < 2)
        return SG_DNS_ERR_TRUNCATED;
      if (hops == 0)
        end = pos + 2;
      if (++hops > MAX_POINTER_HOPS)
        return SG_DNS_ERR_NAME;
      size_t target = (size_t)(c & 0x3F) << 8 | pkt[pos + 1];
      /* A pointer outside the message is a broken name, not a short packet:
       * more bytes would not make it valid. */
      if (target >= len)
        return SG_DNS_ERR_NAME;
      pos = target;
      break;
    }
    default: /* 0x40 (extended label, RFC 6891 killed it) and 0x80 */
      return SG_DNS_ERR_NAME;
    }
  }
}

static bool name_char_plain(uint8_t c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '*';
}

/* Writes the presentation form of a decoded wire name (see message.h).
 * Worst case: c content octets in k labels with c + k + 1 <= 255 and at
 * most 63 octets per label gives 4c + k - 1 <= 1003 characters, so
 * SG_DNS_NAME_MAX (1024) always holds it and its NUL. */
static size_t present_name(const uint8_t *wire, size_t wire_len,
                           char out[SG_DNS_NAME_MAX]) {
  size_t o = 0, i = 0;
  while (i < wire_len && wire[i] != 0) {
    size_t label_len = wire[i++];
    if (o > 0)
      out[o++] = '.';
    for (size_t j = 0; j < label_len; j++) {
      uint8_t c = ascii_lower(wire[i + j]);
      if (name_char_plain(c)) {
        out[o++] = (char)c;
      } else {
        out[o++] = '\\';
        out[o++] = (char)('0' + c / 100);
        out[o++] = (char)('0' + c / 10 % 10);
        out[o++] = (char)('0' + c % 10);
      }
    }
    i += label_len;
  }
  out[o] = '\0';
  return o;
}

static bool names_equal(const uint8_t *a, size_t a_len, const uint8_t *b,
                        size_t b_len) {
  /* Comparing the whole wire form is safe: length octets are at most 63,
   * below 'A', so lower-casing leaves them alone. */
  if (a_len != b_len)
    return false;
  for (size_t i = 0; i < a_len; i++)
    if (ascii_lower(a[i]) != ascii_lower(b[i]))
      return false;
  return true;
}

/* A resource record as the walkers need it. */
typedef struct {
  uint8_t owner[SG_DNS_WIRE_NAME_MAX];
  size_t owner_len;
  uint16_t type, rclass;
  uint32_t ttl;
  size_t rdata, rdlength; /* offset and length of the RDATA in the packet */
} rr_t;

/* Reads the record at *off and moves *off past it. Checks the owner name and
 * that the RDATA lies inside the packet, nothing about the RDATA itself. */
static sg_dns_status_t read_rr(const uint8_t *pkt, size_t len, size_t *off,
                               rr_t *rr) {
  sg_dns_status_t st = read_name(pkt, len, off, rr->owner, &rr->owner_len);
  if (st != SG_DNS_OK)
    return st;
  if (len - *off < RR_FIXED_LEN)
    return SG_DNS_ERR_TRUNCATED;
  const uint8_t *p = pkt + *off;
  rr->type = rd16(p);
  rr->rclass = rd16(p + 2);
  rr->ttl = rd32(p + 4);
  rr->rdlength = rd16(p + 8);
  rr->rdata = *off + RR_FIXED_LEN;
  if (len - rr->rdata < rr->rdlength)
    return SG_DNS_ERR_TRUNCATED;
  *off = rr->rdata + rr->rdlength;
  return SG_DNS_OK;
}

/* Parses the question at *off into q (name, qwire, qtype, qclass) and moves
 * *off past it. The fields are only set once the whole question is there,
 * so on failure they keep their zeroes (qwire_len 0: nothing to echo). */
static sg_dns_status_t read_question(const uint8_t *pkt, size_t len,
                                     size_t *off, sg_dns_query_t *q) {
  size_t wire_len;
  sg_dns_status_t st = read_name(pkt, len, off, q->qwire, &wire_len);
  if (st != SG_DNS_OK)
    return st;
  if (len - *off < 4)
    return SG_DNS_ERR_TRUNCATED;
  q->qtype = rd16(pkt + *off);
  q->qclass = rd16(pkt + *off + 2);
  memcpy(q->qwire + wire_len, pkt + *off, 4);
  *off += 4;
  q->qwire_len = wire_len + 4;
  q->name_len = present_name(q->qwire, wire_len, q->name);
  return SG_DNS_OK;
}

/* Walks the answer, authority and additional sections after the question,
 * only to find the requester's UDP payload size in an OPT record. */
static sg_dns_status_t read_edns(const uint8_t *pkt, size_t len, size_t off,
                                 sg_dns_query_t *q) {
  unsigned before_additional = (unsigned)q->ancount + q->nscount;
  unsigned total = before_additional + q->arcount;
  rr_t rr;

  for (unsigned i = 0; i < total; i++) {
    sg_dns_status_t st = read_rr(pkt, len, &off, &rr);
    if (st != SG_DNS_OK)
      return st;
    /* Only the first OPT counts; RFC 6891 calls a second one FORMERR, but
     * answering a query beats nitpicking it. The 512 floor is RFC 6891's
     * too: smaller values are treated as 512. */
    if (i >= before_additional && rr.type == SG_DNS_TYPE_OPT &&
        q->edns_udp_size == 0)
      q->edns_udp_size = rr.rclass < 512 ? 512 : rr.rclass;
  }
  /* Bytes after the last counted record are ignored, as resolvers do. */
  return SG_DNS_OK;
}

sg_dns_status_t sg_dns_parse_query(const uint8_t *pkt, size_t len,
                                   sg_dns_query_t *q) {
  memset(q, 0, sizeof(*q));
  if (len < SG_DNS_HEADER_LEN)
    return SG_DNS_ERR_SHORT;

  q->id = rd16(pkt);
  q->flags = rd16(pkt + 2);
  q->qdcount = rd16(pkt + 4);
  q->ancount = rd16(pkt + 6);
  q->nscount = rd16(pkt + 8);
  q->arcount = rd16(pkt + 10);

  if (q->flags & SG_DNS_FLAG_QR)
    return SG_DNS_ERR_RESPONSE;

  size_t off = SG_DNS_HEADER_LEN;

  /* For another opcode, and for several questions, the first question is
   * still parsed when it is well-formed, so that the NOTIMP or FORMERR reply
   * can echo it and the log can name it. The status stays OPCODE / MULTIQ
   * whatever the question looks like; if it is malformed, the question
   * fields stay empty and the reply goes without one. */
  if (SG_DNS_OPCODE(q->flags) != 0 || q->qdcount > 1) {
    if (q->qdcount > 0)
      (void)read_question(pkt, len, &off, q);
    return SG_DNS_OPCODE(q->flags) != 0 ? SG_DNS_ERR_OPCODE : SG_DNS_ERR_MULTIQ;
  }
  if (q->qdcount == 0)
    return SG_DNS_ERR_NOQUESTION;

  sg_dns_status_t st = read_question(pkt, len, &off, q);
  if (st != SG_DNS_OK)
    return st;
  /* A bad record after a good question keeps the question filled in: the
   * FORMERR reply may echo it. */
  return read_edns(pkt, len, off, q);
}

const char *sg_dns_status_str(sg_dns_status_t status) {
  switch (status) {
  case SG_DNS_OK: return "ok";
  case SG_DNS_ERR_SHORT: return "shorter than a header";
  case SG_DNS_ERR_RESPONSE: return "a response, not a query";
  case SG_DNS_ERR_NOQUESTION: return "no question";
  case SG_DNS_ERR_MULTIQ: return "more than one question";
  case SG_DNS_ERR_TRUNCATED: return "truncated";
  case SG_DNS_ERR_NAME: return "malformed name";
  case SG_DNS_ERR_OPCODE: return "not a standard query";
  }
  return "unknown status";
}

size_t sg_dns_build_reply(const sg_dns_query_t *q, int rcode,
                          uint16_t extra_flags, uint8_t *out, size_t cap) {
  size_t qlen = q->qwire_len;
  if (qlen > sizeof(q->qwire) || cap < SG_DNS_HEADER_LEN + qlen)
    return 0;

  uint16_t flags = SG_DNS_FLAG_QR | (q->flags & 0x7800) |
                   (q->flags & (SG_DNS_FLAG_RD | SG_DNS_FLAG_CD)) |
                   SG_DNS_FLAG_RA | extra_flags | (uint16_t)(rcode & 0xF);
  wr16(out, q->id);
  wr16(out + 2, flags);
  wr16(out + 4, qlen > 0 ? 1 : 0);
  wr16(out + 6, 0);
  wr16(out + 8, 0);
  wr16(out + 10, 0);
  memcpy(out + SG_DNS_HEADER_LEN, q->qwire, qlen);
  return SG_DNS_HEADER_LEN + qlen;
}

int sg_dns_rcode(const uint8_t *pkt, size_t len) {
  if (len < SG_DNS_HEADER_LEN)
    return -1;
  return pkt[3] & 0xF;
}

void sg_dns_set_id(uint8_t *pkt, uint16_t id) {
  wr16(pkt, id);
}

static const struct {
  uint16_t type;
  const char *name;
} type_names[] = {
    {1, "A"},      {2, "NS"},      {5, "CNAME"},  {6, "SOA"},   {12, "PTR"},
    {13, "HINFO"}, {15, "MX"},     {16, "TXT"},   {28, "AAAA"}, {33, "SRV"},
    {35, "NAPTR"}, {39, "DNAME"},  {41, "OPT"},   {43, "DS"},   {46, "RRSIG"},
    {47, "NSEC"},  {48, "DNSKEY"}, {50, "NSEC3"}, {52, "TLSA"}, {64, "SVCB"},
    {65, "HTTPS"}, {99, "SPF"},    {252, "AXFR"}, {255, "ANY"}, {257, "CAA"},
};
#define NTYPE_NAMES (sizeof(type_names) / sizeof(type_names[0]))

const char *sg_dns_type_name(uint16_t qtype, char buf[16]) {
  for (size_t i = 0; i < NTYPE_NAMES; i++) {
    if (type_names[i].type == qtype) {
      /* Copied so the caller always gets buf back, as the header says. */
      snprintf(buf, 16, "%s", type_names[i].name);
      return buf;
    }
  }
  snprintf(buf, 16, "TYPE%u", (unsigned)qtype);
  return buf;
}

int sg_dns_type_parse(const char *text, uint16_t *qtype) {
  for (size_t i = 0; i < NTYPE_NAMES; i++) {
    if (strcasecmp(text, type_names[i].name) == 0) {
      *qtype = type_names[i].type;
      return 0;
    }
  }
  if (strncasecmp(text, "TYPE", 4) != 0)
    return -EINVAL;
  const char *d = text + 4;
  unsigned long v = 0;
  if (*d == 0 || (d[0] == '0' && d[1] != 0))
    return -EINVAL;
  for (; *d; d++) {
    if (*d < '0' || *d > '9')
      return -EINVAL;
    v = v * 10 + (unsigned long)(*d - '0');
    if (v > 65535)
      return -EINVAL;
  }
  *qtype = (uint16_t)v;
  return 0;
}

/* Reads one octet of a presentation name at *p: a plain character, \X or
 * \DDD. Returns the octet, or -1 for a bad escape. */
static int presentation_octet(const char **p) {
  const char *s = *p;
  if (*s != '\\') {
    *p = s + 1;
    return (unsigned char)*s;
  }
  if (s[1] >= '0' && s[1] <= '9') {
    if (!(s[2] >= '0' && s[2] <= '9' && s[3] >= '0' && s[3] <= '9'))
      return -1;
    int v = (s[1] - '0') * 100 + (s[2] - '0') * 10 + (s[3] - '0');
    if (v > 255)
      return -1;
    *p = s + 4;
    return v;
  }
  if (s[1] == 0)
    return -1;
  *p = s + 2;
  return (unsigned char)s[1];
}

int sg_dns_build_query(const char *name, uint16_t qtype, uint16_t id,
                       uint8_t *out, size_t cap, char *err, size_t errlen) {
  uint8_t wire[SG_DNS_WIRE_NAME_MAX];
  size_t n = 0;
  const char *p = name;
  /* "" and "." are the root; otherwise one label per (unescaped) dot, and
   * one trailing dot is allowed. */
  if (strcmp(p, ".") == 0)
    p++;
  while (*p) {
    size_t len_at = n++;
    size_t label = 0;
    while (*p && *p != '.') {
      int c = presentation_octet(&p);
      if (c < 0) {
        snprintf(err, errlen,
                 "has a backslash that is not followed by a "
                 "character or three digits up to 255");
        return -EINVAL;
      }
      if (++label > 63) {
        snprintf(err, errlen, "has a label longer than 63 octets");
        return -EINVAL;
      }
      if (n + 1 >= sizeof(wire)) {
        snprintf(err, errlen, "is longer than 255 octets");
        return -EINVAL;
      }
      wire[n++] = (uint8_t)c;
    }
    if (label == 0) {
      snprintf(err, errlen, "has an empty label");
      return -EINVAL;
    }
    wire[len_at] = (uint8_t)label;
    if (*p == '.')
      p++;
  }
  wire[n++] = 0;
  if (cap < SG_DNS_HEADER_LEN + n + 4) {
    snprintf(err, errlen, "does not fit the buffer");
    return -ENOSPC;
  }
  memset(out, 0, SG_DNS_HEADER_LEN);
  wr16(out, id);
  wr16(out + 2, SG_DNS_FLAG_RD);
  wr16(out + 4, 1);
  memcpy(out + SG_DNS_HEADER_LEN, wire, n);
  wr16(out + SG_DNS_HEADER_LEN + n, qtype);
  wr16(out + SG_DNS_HEADER_LEN + n + 2, CLASS_IN);
  return (int)(SG_DNS_HEADER_LEN + n + 4);
}

/* The names whose addresses count: the question's name and the CNAME
 * targets reached from it. */
typedef struct {
  uint8_t name[MAX_CNAME_HOPS + 1][SG_DNS_WIRE_NAME_MAX];
  size_t len[MAX_CNAME_HOPS + 1];
  size_t count;
} chain_t;

static bool chain_has(const chain_t *c, const uint8_t *name, size_t len) {
  for (size_t i = 0; i < c->count; i++)
    if (names_equal(c->name[i], c->len[i], name, len))
      return true;
  return false;
}

/* One pass over the answer section. With `grew` it follows CNAMEs: every
 * CNAME whose owner is in the chain adds its target (until the chain is
 * full) and *grew says whether any did. Without it, it collects the
 * addresses of the chain's names (the first `cap` into `out`) and returns
 * how many there are. Every
 * record is fully checked on every pass, so the first pass alone decides
 * whether the message is malformed. Records of classes other than IN are
 * skipped: their RDATA formats differ. Returns -status on malformed input. */
static int scan_answers(const uint8_t *pkt, size_t len, size_t off,
                        unsigned count, chain_t *chain, bool *grew,
                        sg_dns_addr_t *out, size_t cap) {
  rr_t rr;
  uint8_t target[SG_DNS_WIRE_NAME_MAX];
  size_t target_len;
  int found = 0;

  for (unsigned i = 0; i < count; i++) {
    sg_dns_status_t st = read_rr(pkt, len, &off, &rr);
    if (st != SG_DNS_OK)
      return -(int)st;
    if (rr.rclass != CLASS_IN)
      continue;

    if (rr.type == SG_DNS_TYPE_CNAME) {
      size_t end = rr.rdata;
      st = read_name(pkt, len, &end, target, &target_len);
      if (st != SG_DNS_OK)
        return -(int)st;
      /* The name must fit the RDLENGTH that claims to hold it. */
      if (end > rr.rdata + rr.rdlength)
        return -(int)SG_DNS_ERR_TRUNCATED;
      if (grew && chain->count <= MAX_CNAME_HOPS &&
          chain_has(chain, rr.owner, rr.owner_len) &&
          !chain_has(chain, target, target_len)) {
        memcpy(chain->name[chain->count], target, target_len);
        chain->len[chain->count++] = target_len;
        *grew = true;
      }
    } else if (rr.type == SG_DNS_TYPE_A || rr.type == SG_DNS_TYPE_AAAA) {
      size_t alen = rr.type == SG_DNS_TYPE_A ? 4 : 16;
      if (rr.rdlength != alen)
        return -(int)SG_DNS_ERR_TRUNCATED;
      if (!grew && chain_has(chain, rr.owner, rr.owner_len)) {
        if ((size_t)found < cap) {
          sg_dns_addr_t *a = &out[found];
          memset(a, 0, sizeof(*a));
          a->family = rr.type == SG_DNS_TYPE_A ? AF_INET : AF_INET6;
          memcpy(a->addr, pkt + rr.rdata, alen);
          /* RFC 2181 section 8: a TTL with the top bit set means zero. */
          a->ttl = (rr.ttl & 0x80000000u) ? 0 : rr.ttl;
        }
        found++;
      }
    }
  }
  return found;
}

int sg_dns_answer_addrs(const uint8_t *pkt, size_t len, sg_dns_addr_t *out,
                        size_t cap) {
  if (len < SG_DNS_HEADER_LEN)
    return -(int)SG_DNS_ERR_SHORT;
  uint16_t qdcount = rd16(pkt + 4), ancount = rd16(pkt + 6);
  /* Without exactly one question there is no one name the answer is for. */
  if (qdcount == 0)
    return -(int)SG_DNS_ERR_NOQUESTION;
  if (qdcount > 1)
    return -(int)SG_DNS_ERR_MULTIQ;

  chain_t chain;
  size_t off = SG_DNS_HEADER_LEN;
  sg_dns_status_t st = read_name(pkt, len, &off, chain.name[0], &chain.len[0]);
  if (st != SG_DNS_OK)
    return -(int)st;
  if (len - off < 4)
    return -(int)SG_DNS_ERR_TRUNCATED;
  off += 4;
  chain.count = 1;

  /* Records may come in any order, so passes repeat until one adds no
   * name; each productive pass adds one at least, so there are at most
   * MAX_CNAME_HOPS + 1 of them. */
  bool grew;
  do {
    grew = false;
    int r = scan_answers(pkt, len, off, ancount, &chain, &grew, NULL, 0);
    if (r < 0)
      return r;
  } while (grew && chain.count <= MAX_CNAME_HOPS);

  return scan_answers(pkt, len, off, ancount, &chain, NULL, out, cap);
}
