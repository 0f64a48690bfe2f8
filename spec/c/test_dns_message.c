/* Unit tests for core/dns/message.c: query parsing, reply building and
 * reading addresses out of answers, plus garbage that must not crash (run
 * under ASan/UBSan so that any read past the end fails loudly). */
#include "dns/message.h"

#include <sys/socket.h>

#include "sgtest.h"

/* A tiny packet writer: tests build their packets byte by byte so that each
 * one says exactly what is on the wire. */
typedef struct {
  uint8_t b[4096];
  size_t n;
} pkt_t;

static void put8(pkt_t *p, unsigned v) {
  p->b[p->n++] = (uint8_t)v;
}

static void put16(pkt_t *p, unsigned v) {
  put8(p, v >> 8);
  put8(p, v & 0xFF);
}

static void put32(pkt_t *p, uint32_t v) {
  put16(p, v >> 16);
  put16(p, v & 0xFFFF);
}

static void put_bytes(pkt_t *p, const void *src, size_t len) {
  memcpy(p->b + p->n, src, len);
  p->n += len;
}

/* Writes a dotted name as labels, with the terminating zero ("" = root). */
static void put_name(pkt_t *p, const char *dotted) {
  while (*dotted) {
    const char *dot = strchr(dotted, '.');
    size_t len = dot ? (size_t)(dot - dotted) : strlen(dotted);
    put8(p, (unsigned)len);
    put_bytes(p, dotted, len);
    dotted += len;
    if (*dotted == '.')
      dotted++;
  }
  put8(p, 0);
}

static void put_ptr(pkt_t *p, size_t target) {
  put16(p, 0xC000 | target);
}

static void put_header(pkt_t *p, unsigned id, unsigned flags, unsigned qd,
                       unsigned an, unsigned ns, unsigned ar) {
  p->n = 0;
  put16(p, id);
  put16(p, flags);
  put16(p, qd);
  put16(p, an);
  put16(p, ns);
  put16(p, ar);
}

/* The fixed part of a record after its owner name. */
static void put_rr_fixed(pkt_t *p, unsigned type, unsigned rclass, uint32_t ttl,
                         unsigned rdlength) {
  put16(p, type);
  put16(p, rclass);
  put32(p, ttl);
  put16(p, rdlength);
}

static void put_opt(pkt_t *p, unsigned udp_size) {
  put8(p, 0); /* root owner */
  put_rr_fixed(p, SG_DNS_TYPE_OPT, udp_size, 0, 0);
}

/* id 0xBEEF, RD, "WWW.Example.COM." A IN, OPT with 1232. */
static void edns_query(pkt_t *p) {
  put_header(p, 0xBEEF, SG_DNS_FLAG_RD, 1, 0, 0, 1);
  put_name(p, "WWW.Example.COM");
  put16(p, SG_DNS_TYPE_A);
  put16(p, 1);
  put_opt(p, 1232);
}

static void test_parse_normal(void) {
  pkt_t p;
  put_header(&p, 0x1234, SG_DNS_FLAG_RD, 1, 0, 0, 0);
  size_t qstart = p.n;
  put_name(&p, "WWW.Example.COM");
  put16(&p, SG_DNS_TYPE_AAAA);
  put16(&p, 1);

  sg_dns_query_t q;
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_OK);
  ASSERT_EQ(q.id, 0x1234);
  ASSERT_EQ(q.flags, SG_DNS_FLAG_RD);
  ASSERT_EQ(q.qdcount, 1);
  ASSERT_EQ(q.ancount + q.nscount + q.arcount, 0);
  ASSERT_STREQ(q.name, "www.example.com");
  ASSERT_EQ(q.name_len, strlen("www.example.com"));
  ASSERT_EQ(q.qtype, SG_DNS_TYPE_AAAA);
  ASSERT_EQ(q.qclass, 1);
  ASSERT_EQ(q.edns_udp_size, 0);
  ASSERT_EQ(q.qwire_len, p.n - qstart);
  ASSERT(memcmp(q.qwire, p.b + qstart, q.qwire_len) == 0);
  ASSERT(memcmp(q.qwire, "\3WWW\7Example\3COM\0", 17) == 0);
}

static void test_parse_root(void) {
  pkt_t p;
  put_header(&p, 7, 0, 1, 0, 0, 0);
  put_name(&p, "");
  put16(&p, 2); /* NS */
  put16(&p, 1);

  sg_dns_query_t q;
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_OK);
  ASSERT_STREQ(q.name, "");
  ASSERT_EQ(q.name_len, 0);
  ASSERT_EQ(q.qtype, 2);
  ASSERT_EQ(q.qwire_len, 5);
  ASSERT(memcmp(q.qwire, "\0\0\2\0\1", 5) == 0);
}

static void test_parse_edns(void) {
  pkt_t p;
  sg_dns_query_t q;
  edns_query(&p);
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_OK);
  ASSERT_EQ(q.edns_udp_size, 1232);
  ASSERT_EQ(q.arcount, 1);

  /* Below 512 counts as 512. */
  put_header(&p, 1, 0, 1, 0, 0, 1);
  put_name(&p, "a");
  put16(&p, 1);
  put16(&p, 1);
  put_opt(&p, 100);
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_OK);
  ASSERT_EQ(q.edns_udp_size, 512);
}

static void test_parse_edns_after_other_records(void) {
  /* An OPT-typed record in the answer section is not EDNS; the one in the
   * additional section, after another record, is. Owners use pointers. */
  pkt_t p;
  put_header(&p, 1, 0, 1, 1, 1, 2);
  put_name(&p, "example.com");
  put16(&p, 1);
  put16(&p, 1);
  put_ptr(&p, 12);
  put_rr_fixed(&p, SG_DNS_TYPE_OPT, 9000, 0, 0);
  put_ptr(&p, 12);
  put_rr_fixed(&p, 16, 1, 60, 3);
  put_bytes(&p, "\2hi", 3);
  put_ptr(&p, 12);
  put_rr_fixed(&p, 1, 1, 60, 4);
  put32(&p, 0x01020304);
  put_opt(&p, 4096);

  sg_dns_query_t q;
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_OK);
  ASSERT_EQ(q.edns_udp_size, 4096);
  ASSERT_STREQ(q.name, "example.com");
}

static void test_parse_short(void) {
  uint8_t b[11] = {0x12, 0x34};
  sg_dns_query_t q;
  for (size_t n = 0; n < sizeof(b); n++) {
    ASSERT_EQ(sg_dns_parse_query(b, n, &q), SG_DNS_ERR_SHORT);
    ASSERT_EQ(q.qwire_len, 0);
  }
}

static void test_parse_noquestion(void) {
  pkt_t p;
  put_header(&p, 0xABCD, SG_DNS_FLAG_RD, 0, 0, 0, 0);
  sg_dns_query_t q;
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_ERR_NOQUESTION);
  ASSERT_EQ(q.id, 0xABCD);
  ASSERT_EQ(q.flags, SG_DNS_FLAG_RD);
  ASSERT_EQ(q.qwire_len, 0);
}

static void test_parse_response(void) {
  pkt_t p;
  put_header(&p, 0x4242, SG_DNS_FLAG_QR | SG_DNS_FLAG_RD, 1, 0, 0, 0);
  put_name(&p, "example.com");
  put16(&p, 1);
  put16(&p, 1);
  sg_dns_query_t q;
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_ERR_RESPONSE);
  ASSERT_EQ(q.id, 0x4242);
}

static void test_parse_multiq(void) {
  pkt_t p;
  put_header(&p, 0x0102, 0, 2, 0, 0, 0);
  put_name(&p, "one.example");
  put16(&p, 1);
  put16(&p, 1);
  put_name(&p, "two.example");
  put16(&p, 1);
  put16(&p, 1);
  sg_dns_query_t q;
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_ERR_MULTIQ);
  ASSERT_EQ(q.id, 0x0102);
  ASSERT_EQ(q.qdcount, 2);
  /* The first question is kept for the FORMERR reply and the log. */
  ASSERT_STREQ(q.name, "one.example");
}

static void test_parse_opcode(void) {
  pkt_t p;
  put_header(&p, 0x0303, (2u << 11) | SG_DNS_FLAG_RD, 1, 0, 0, 0);
  put_name(&p, "Status.Example");
  put16(&p, 1);
  put16(&p, 1);
  sg_dns_query_t q;
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_ERR_OPCODE);
  ASSERT_EQ(q.id, 0x0303);
  ASSERT_STREQ(q.name, "status.example");
  ASSERT_EQ(q.qwire_len, 20);

  /* The NOTIMP reply keeps the opcode and echoes the question. */
  uint8_t out[512];
  size_t n = sg_dns_build_reply(&q, SG_DNS_RCODE_NOTIMP, 0, out, sizeof(out));
  ASSERT_EQ(n, 12 + 20);
  ASSERT_EQ(out[2], 0x80 | (2 << 3) | 0x01);
  ASSERT_EQ(out[3], 0x80 | SG_DNS_RCODE_NOTIMP);
  ASSERT_EQ(out[5], 1);
  ASSERT(memcmp(out + 12, p.b + 12, 20) == 0);

  /* A malformed question under another opcode: still OPCODE, no echo. */
  put_header(&p, 0x0303, 5u << 11, 1, 0, 0, 0);
  put8(&p, 0x40);
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_ERR_OPCODE);
  ASSERT_EQ(q.qwire_len, 0);
  ASSERT_STREQ(q.name, "");
}

static void test_parse_every_truncation(void) {
  pkt_t p;
  edns_query(&p);
  sg_dns_query_t q;
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_OK);
  for (size_t n = 0; n < p.n; n++) {
    sg_dns_status_t st = sg_dns_parse_query(p.b, n, &q);
    if (n < SG_DNS_HEADER_LEN) {
      ASSERT_EQ(st, SG_DNS_ERR_SHORT);
    } else {
      /* Cut in the question or inside the OPT record alike. */
      ASSERT_EQ(st, SG_DNS_ERR_TRUNCATED);
      ASSERT_EQ(q.id, 0xBEEF);
    }
  }
}

static void test_parse_truncated_keeps_question(void) {
  /* A bad record after the question still leaves the question to echo. */
  pkt_t p;
  edns_query(&p);
  sg_dns_query_t q;
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n - 1, &q), SG_DNS_ERR_TRUNCATED);
  ASSERT_STREQ(q.name, "www.example.com");
  ASSERT_EQ(q.qwire_len, 21);
  ASSERT_EQ(q.edns_udp_size, 0);
}

static void test_parse_pointer_self_loop(void) {
  pkt_t p;
  put_header(&p, 1, 0, 1, 0, 0, 0);
  put_ptr(&p, 12);
  put16(&p, 1);
  put16(&p, 1);
  sg_dns_query_t q;
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_ERR_NAME);
  ASSERT_EQ(q.qwire_len, 0);
}

static void test_parse_pointer_mutual_loop(void) {
  pkt_t p;
  put_header(&p, 1, 0, 1, 0, 0, 0);
  put_ptr(&p, 14);
  put_ptr(&p, 12);
  put16(&p, 1);
  put16(&p, 1);
  sg_dns_query_t q;
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_ERR_NAME);
}

static void test_parse_pointer_label_loop(void) {
  /* "\1a" then a pointer back to it: an endless name that grows. */
  pkt_t p;
  put_header(&p, 1, 0, 1, 0, 0, 0);
  put8(&p, 1);
  put8(&p, 'a');
  put_ptr(&p, 12);
  put16(&p, 1);
  put16(&p, 1);
  sg_dns_query_t q;
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_ERR_NAME);
}

static void test_parse_pointer_forward(void) {
  sg_dns_query_t q;
  pkt_t p;

  /* Past the end of the message. */
  put_header(&p, 1, 0, 1, 0, 0, 0);
  put_ptr(&p, 0x3FF);
  put16(&p, 1);
  put16(&p, 1);
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_ERR_NAME);

  /* Exactly at the end. */
  put_header(&p, 1, 0, 1, 0, 0, 0);
  put_ptr(&p, 18);
  put16(&p, 1);
  put16(&p, 1);
  ASSERT_EQ(p.n, 18);
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_ERR_NAME);

  /* Forward but inside the message: odd, yet a well-defined name. */
  put_header(&p, 1, 0, 1, 0, 0, 0);
  put_ptr(&p, 18);
  put16(&p, 1);
  put16(&p, 1);
  put_name(&p, "Com");
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_OK);
  ASSERT_STREQ(q.name, "com");
  ASSERT_EQ(q.qwire_len, 5 + 4);
  ASSERT(memcmp(q.qwire, "\3Com\0\0\1\0\1", 9) == 0);
}

static void put_labels(pkt_t *p, int count, int len) {
  for (int i = 0; i < count; i++) {
    put8(p, (unsigned)len);
    for (int j = 0; j < len; j++)
      put8(p, 'a' + j % 26);
  }
}

static void test_parse_long_names(void) {
  sg_dns_query_t q;
  pkt_t p;

  /* 3 * 64 + 62 + 1 = 255 octets: the longest legal name. */
  put_header(&p, 1, 0, 1, 0, 0, 0);
  put_labels(&p, 3, 63);
  put_labels(&p, 1, 61);
  put8(&p, 0);
  put16(&p, 1);
  put16(&p, 1);
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_OK);
  ASSERT_EQ(q.qwire_len, 255 + 4);
  ASSERT_EQ(q.name_len, 3 * 63 + 61 + 3); /* three dots */

  /* 256 octets. */
  put_header(&p, 1, 0, 1, 0, 0, 0);
  put_labels(&p, 3, 63);
  put_labels(&p, 1, 62);
  put8(&p, 0);
  put16(&p, 1);
  put16(&p, 1);
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_ERR_NAME);

  /* Far over, and over only through a pointer. */
  put_header(&p, 1, 0, 1, 0, 0, 0);
  put_labels(&p, 5, 63);
  put8(&p, 0);
  put16(&p, 1);
  put16(&p, 1);
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_ERR_NAME);

  put_header(&p, 1, 0, 1, 0, 0, 1);
  put_labels(&p, 2, 63);
  put8(&p, 0);
  put16(&p, 1);
  put16(&p, 1);
  put_labels(&p, 2, 63);
  put_ptr(&p, 12);
  put_rr_fixed(&p, SG_DNS_TYPE_OPT, 512, 0, 0);
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_ERR_NAME);
}

static void test_parse_label_types(void) {
  static const uint8_t bad[] = {0x40, 0x41, 0x80, 0xBF};
  sg_dns_query_t q;
  for (size_t i = 0; i < sizeof(bad); i++) {
    pkt_t p;
    put_header(&p, 1, 0, 1, 0, 0, 0);
    put8(&p, 3);
    put_bytes(&p, "abc", 3);
    put8(&p, bad[i]);
    put8(&p, 0);
    put8(&p, 0);
    put16(&p, 1);
    put16(&p, 1);
    ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_ERR_NAME);
  }
}

static void test_parse_escaping(void) {
  pkt_t p;
  put_header(&p, 1, 0, 1, 0, 0, 0);
  size_t qstart = p.n;
  put_bytes(&p, "\3A.B", 4);
  put_bytes(&p, "\3x\0y", 4);
  put_bytes(&p, "\5a\\b c", 6);
  put_bytes(&p, "\7_S-*\xff\x7f~", 8);
  put_bytes(&p, "\3COM\0", 5);
  put16(&p, 1);
  put16(&p, 1);

  sg_dns_query_t q;
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_OK);
  ASSERT_STREQ(q.name, "a\\046b.x\\000y.a\\092b\\032c._s-*\\255\\127\\126.com");
  ASSERT_EQ(q.name_len, strlen(q.name));
  /* The echo keeps every byte as it came, upper case included. */
  ASSERT_EQ(q.qwire_len, p.n - qstart);
  ASSERT(memcmp(q.qwire, p.b + qstart, q.qwire_len) == 0);
}

static void test_build_reply_nxdomain(void) {
  pkt_t p;
  put_header(&p, 0xCAFE, SG_DNS_FLAG_RD | SG_DNS_FLAG_CD | SG_DNS_FLAG_AA, 1, 0,
             0, 1);
  put_name(&p, "Ads.Tracker.EXAMPLE");
  put16(&p, SG_DNS_TYPE_A);
  put16(&p, 1);
  size_t qend = p.n;
  put_opt(&p, 4096);

  sg_dns_query_t q;
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_OK);
  uint8_t out[512];
  memset(out, 0xEE, sizeof(out));
  size_t n = sg_dns_build_reply(&q, SG_DNS_RCODE_NXDOMAIN, 0, out, sizeof(out));
  ASSERT_EQ(n, qend);
  ASSERT_EQ(out[0], 0xCA);
  ASSERT_EQ(out[1], 0xFE);
  ASSERT_EQ(out[2], 0x81); /* QR, opcode 0, RD (AA not copied) */
  ASSERT_EQ(out[3], 0x93); /* RA, CD, NXDOMAIN */
  static const uint8_t counts[8] = {0, 1, 0, 0, 0, 0, 0, 0};
  ASSERT(memcmp(out + 4, counts, 8) == 0);
  ASSERT(memcmp(out + 12, p.b + 12, qend - 12) == 0);
  ASSERT_EQ(out[n], 0xEE);
  ASSERT_EQ(sg_dns_rcode(out, n), SG_DNS_RCODE_NXDOMAIN);

  /* RD clear in the query stays clear in the reply. */
  p.b[2] = 0;
  p.b[3] = 0;
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_OK);
  n = sg_dns_build_reply(&q, SG_DNS_RCODE_REFUSED, 0, out, sizeof(out));
  ASSERT_EQ(n, qend);
  ASSERT_EQ(out[2], 0x80);
  ASSERT_EQ(out[3], 0x85);
}

static void test_build_reply_formerr_without_question(void) {
  pkt_t p;
  put_header(&p, 0x0F0F, SG_DNS_FLAG_RD, 0, 0, 0, 0);
  sg_dns_query_t q;
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_ERR_NOQUESTION);
  uint8_t out[64];
  size_t n = sg_dns_build_reply(&q, SG_DNS_RCODE_FORMERR, 0, out, sizeof(out));
  static const uint8_t want[12] = {0x0F, 0x0F, 0x81, 0x81, 0, 0,
                                   0,    0,    0,    0,    0, 0};
  ASSERT_EQ(n, 12);
  ASSERT(memcmp(out, want, 12) == 0);
}

static void test_build_reply_cap(void) {
  pkt_t p;
  edns_query(&p);
  sg_dns_query_t q;
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_OK);
  uint8_t out[64];
  size_t need = 12 + q.qwire_len;
  ASSERT_EQ(sg_dns_build_reply(&q, 0, 0, out, need - 1), 0);
  ASSERT_EQ(sg_dns_build_reply(&q, 0, 0, out, 0), 0);
  ASSERT_EQ(sg_dns_build_reply(&q, 0, 0, out, need), need);

  sg_dns_query_t empty;
  memset(&empty, 0, sizeof(empty));
  ASSERT_EQ(sg_dns_build_reply(&empty, 2, 0, out, 11), 0);
  ASSERT_EQ(sg_dns_build_reply(&empty, 2, 0, out, 12), 12);
}

static void test_build_reply_tc(void) {
  pkt_t p;
  edns_query(&p);
  sg_dns_query_t q;
  ASSERT_EQ(sg_dns_parse_query(p.b, p.n, &q), SG_DNS_OK);
  uint8_t out[512];
  size_t n = sg_dns_build_reply(&q, SG_DNS_RCODE_NOERROR, SG_DNS_FLAG_TC, out,
                                sizeof(out));
  ASSERT_EQ(n, 12 + q.qwire_len);
  ASSERT_EQ(out[2], 0x80 | 0x02 | 0x01); /* QR, TC, RD */
  ASSERT_EQ(out[3], 0x80);
  ASSERT_EQ(sg_dns_rcode(out, n), 0);
}

/* An answer for "www.Example.com" A: a CNAME to cdn.example.net that comes
 * after the A record it leads to, an AAAA for the target, and an A for an
 * unrelated name. */
static void chain_answer(pkt_t *p) {
  put_header(p, 0x1111, SG_DNS_FLAG_QR | SG_DNS_FLAG_RD | SG_DNS_FLAG_RA, 1, 4,
             0, 0);
  put_name(p, "www.Example.com");
  put16(p, SG_DNS_TYPE_A);
  put16(p, 1);

  size_t cdn = p->n;
  put_name(p, "CDN.example.NET");
  put_rr_fixed(p, SG_DNS_TYPE_A, 1, 300, 4);
  put32(p, 0xC0000201); /* 192.0.2.1 */

  put_name(p, "WWW.EXAMPLE.COM");
  put_rr_fixed(p, SG_DNS_TYPE_CNAME, 1, 60, 2);
  put_ptr(p, cdn);

  put8(p, 3);
  put_bytes(p, "cdn", 3);
  put_ptr(p, cdn + 4); /* example.NET */
  put_rr_fixed(p, SG_DNS_TYPE_AAAA, 1, 0x80000000u, 16);
  put_bytes(p, "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01", 16);

  put_name(p, "other.org");
  put_rr_fixed(p, SG_DNS_TYPE_A, 1, 5, 4);
  put32(p, 0x09090909);
}

static void test_addrs_chain_out_of_order(void) {
  pkt_t p;
  chain_answer(&p);
  sg_dns_addr_t out[8];
  ASSERT_EQ(sg_dns_answer_addrs(p.b, p.n, out, 8), 2);
  ASSERT_EQ(out[0].family, AF_INET);
  ASSERT(memcmp(out[0].addr, "\xc0\x00\x02\x01", 4) == 0);
  ASSERT_EQ(out[0].ttl, 300);
  ASSERT_EQ(out[1].family, AF_INET6);
  ASSERT(memcmp(out[1].addr, "\x20\x01\x0d\xb8", 4) == 0);
  ASSERT_EQ(out[1].addr[15], 1);
  ASSERT_EQ(out[1].ttl, 0); /* top bit set: RFC 2181 says zero */
}

static void test_addrs_every_truncation(void) {
  pkt_t p;
  chain_answer(&p);
  sg_dns_addr_t out[8];
  for (size_t n = 0; n < p.n; n++)
    ASSERT(sg_dns_answer_addrs(p.b, n, out, 8) < 0);
}

static void test_addrs_unrelated_only(void) {
  pkt_t p;
  put_header(&p, 1, SG_DNS_FLAG_QR, 1, 2, 0, 0);
  put_name(&p, "asked.example");
  put16(&p, 1);
  put16(&p, 1);
  put_name(&p, "other.example");
  put_rr_fixed(&p, SG_DNS_TYPE_A, 1, 5, 4);
  put32(&p, 0x01010101);
  /* A CNAME from an unrelated owner leads nowhere either. */
  put_name(&p, "other.example");
  put_rr_fixed(&p, SG_DNS_TYPE_CNAME, 1, 5, 2);
  put_ptr(&p, 12);
  sg_dns_addr_t out[4];
  ASSERT_EQ(sg_dns_answer_addrs(p.b, p.n, out, 4), 0);
}

static void test_addrs_cname_loop(void) {
  pkt_t p;
  put_header(&p, 1, SG_DNS_FLAG_QR, 1, 3, 0, 0);
  size_t a = p.n;
  put_name(&p, "a.example");
  put16(&p, 1);
  put16(&p, 1);
  size_t b = p.n;
  put_name(&p, "b.example");
  put_rr_fixed(&p, SG_DNS_TYPE_CNAME, 1, 5, 2);
  put_ptr(&p, a);
  put_ptr(&p, a);
  put_rr_fixed(&p, SG_DNS_TYPE_CNAME, 1, 5, 2);
  put_ptr(&p, b);
  put_ptr(&p, b);
  put_rr_fixed(&p, SG_DNS_TYPE_A, 1, 5, 4);
  put32(&p, 0x0A000001);
  sg_dns_addr_t out[4];
  ASSERT_EQ(sg_dns_answer_addrs(p.b, p.n, out, 4), 1);
  ASSERT_EQ(out[0].addr[0], 10);
}

static void test_addrs_hop_limit(void) {
  /* q -> n1 -> n2 ... -> n20, written backwards so that every pass finds
   * just one more; an A on n16 counts, one on n17 does not. */
  pkt_t p;
  put_header(&p, 1, SG_DNS_FLAG_QR, 1, 22, 0, 0);
  put_name(&p, "n0.example");
  put16(&p, 1);
  put16(&p, 1);
  char from[32], to[32];
  for (int i = 19; i >= 0; i--) {
    snprintf(from, sizeof(from), "n%d.example", i);
    snprintf(to, sizeof(to), "n%d.example", i + 1);
    put_name(&p, from);
    put_rr_fixed(&p, SG_DNS_TYPE_CNAME, 1, 5, (unsigned)strlen(to) + 2);
    put_name(&p, to);
  }
  put_name(&p, "n16.example");
  put_rr_fixed(&p, SG_DNS_TYPE_A, 1, 5, 4);
  put32(&p, 0x10101010);
  put_name(&p, "n17.example");
  put_rr_fixed(&p, SG_DNS_TYPE_A, 1, 5, 4);
  put32(&p, 0x11111111);
  sg_dns_addr_t out[4];
  ASSERT_EQ(sg_dns_answer_addrs(p.b, p.n, out, 4), 1);
  ASSERT_EQ(out[0].addr[0], 0x10);
}

static void test_addrs_bad_rdlength(void) {
  pkt_t p;
  sg_dns_addr_t out[4];

  put_header(&p, 1, SG_DNS_FLAG_QR, 1, 1, 0, 0);
  put_name(&p, "a.example");
  put16(&p, 1);
  put16(&p, 1);
  put_ptr(&p, 12);
  put_rr_fixed(&p, SG_DNS_TYPE_A, 1, 5, 5);
  put_bytes(&p, "\1\2\3\4\5", 5);
  ASSERT(sg_dns_answer_addrs(p.b, p.n, out, 4) < 0);

  put_header(&p, 1, SG_DNS_FLAG_QR, 1, 1, 0, 0);
  put_name(&p, "a.example");
  put16(&p, 28);
  put16(&p, 1);
  put_ptr(&p, 12);
  put_rr_fixed(&p, SG_DNS_TYPE_AAAA, 1, 5, 4);
  put32(&p, 0x01020304);
  ASSERT(sg_dns_answer_addrs(p.b, p.n, out, 4) < 0);

  /* A CNAME whose name runs past its RDLENGTH. */
  put_header(&p, 1, SG_DNS_FLAG_QR, 1, 1, 0, 0);
  put_name(&p, "a.example");
  put16(&p, 1);
  put16(&p, 1);
  put_ptr(&p, 12);
  put_rr_fixed(&p, SG_DNS_TYPE_CNAME, 1, 5, 1);
  put_name(&p, "b");
  ASSERT(sg_dns_answer_addrs(p.b, p.n, out, 4) < 0);
}

static void test_addrs_cap(void) {
  pkt_t p;
  put_header(&p, 1, SG_DNS_FLAG_QR, 1, 3, 0, 0);
  put_name(&p, "a.example");
  put16(&p, 1);
  put16(&p, 1);
  for (unsigned i = 1; i <= 3; i++) {
    put_ptr(&p, 12);
    put_rr_fixed(&p, SG_DNS_TYPE_A, 1, 5, 4);
    put32(&p, i);
  }
  sg_dns_addr_t out[3];
  memset(out, 0x5A, sizeof(out));
  ASSERT_EQ(sg_dns_answer_addrs(p.b, p.n, out, 1), 3);
  ASSERT_EQ(out[0].addr[3], 1);
  ASSERT_EQ(out[1].addr[3], 0x5A);
  ASSERT_EQ(sg_dns_answer_addrs(p.b, p.n, NULL, 0), 3);
}

static void test_addrs_question_errors(void) {
  pkt_t p;
  sg_dns_addr_t out[1];
  put_header(&p, 1, SG_DNS_FLAG_QR, 0, 0, 0, 0);
  ASSERT_EQ(sg_dns_answer_addrs(p.b, p.n, out, 1), -SG_DNS_ERR_NOQUESTION);
  ASSERT_EQ(sg_dns_answer_addrs(p.b, 5, out, 1), -SG_DNS_ERR_SHORT);
  put_header(&p, 1, SG_DNS_FLAG_QR, 1, 0, 0, 0);
  put_ptr(&p, 12);
  put16(&p, 1);
  put16(&p, 1);
  ASSERT_EQ(sg_dns_answer_addrs(p.b, p.n, out, 1), -SG_DNS_ERR_NAME);
}

static void test_rcode_and_set_id(void) {
  uint8_t b[12] = {0x12, 0x34, 0x81, 0x85};
  ASSERT_EQ(sg_dns_rcode(b, 12), 5);
  ASSERT_EQ(sg_dns_rcode(b, 11), -1);
  ASSERT_EQ(sg_dns_rcode(b, 0), -1);
  b[3] = 0x8F;
  ASSERT_EQ(sg_dns_rcode(b, 12), 15);
  sg_dns_set_id(b, 0xA1B2);
  ASSERT_EQ(b[0], 0xA1);
  ASSERT_EQ(b[1], 0xB2);
  ASSERT_EQ(b[2], 0x81);
}

static void test_type_name(void) {
  char buf[16];
  ASSERT_STREQ(sg_dns_type_name(1, buf), "A");
  ASSERT_STREQ(sg_dns_type_name(28, buf), "AAAA");
  ASSERT_STREQ(sg_dns_type_name(5, buf), "CNAME");
  ASSERT_STREQ(sg_dns_type_name(65, buf), "HTTPS");
  ASSERT_STREQ(sg_dns_type_name(64, buf), "SVCB");
  ASSERT_STREQ(sg_dns_type_name(255, buf), "ANY");
  ASSERT_STREQ(sg_dns_type_name(257, buf), "CAA");
  ASSERT_STREQ(sg_dns_type_name(41, buf), "OPT");
  ASSERT(sg_dns_type_name(1234, buf) == buf);
  ASSERT_STREQ(buf, "TYPE1234");
  ASSERT_STREQ(sg_dns_type_name(0, buf), "TYPE0");
  ASSERT_STREQ(sg_dns_type_name(65535, buf), "TYPE65535");
}

static void test_status_str(void) {
  for (int s = SG_DNS_OK; s <= SG_DNS_ERR_OPCODE; s++)
    ASSERT(strlen(sg_dns_status_str((sg_dns_status_t)s)) > 0);
  ASSERT_STREQ(sg_dns_status_str(SG_DNS_ERR_NOQUESTION), "no question");
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t xorshift(void) {
  uint64_t x = rng_state;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return rng_state = x;
}

/* Runs everything on one input. The copy is exactly `len` bytes on the heap
 * so ASan sees any read past the end. */
static int exercise(const uint8_t *data, size_t len) {
  uint8_t *copy = malloc(len ? len : 1);
  memcpy(copy, data, len);
  sg_dns_query_t q;
  int parsed = sg_dns_parse_query(copy, len, &q) == SG_DNS_OK;
  if (parsed) {
    uint8_t out[512];
    size_t n = sg_dns_build_reply(&q, SG_DNS_RCODE_REFUSED, 0, out, 20);
    if (n)
      (void)sg_dns_rcode(out, n);
    (void)sg_dns_build_reply(&q, SG_DNS_RCODE_REFUSED, 0, out, sizeof(out));
  }
  sg_dns_addr_t addrs[4];
  (void)sg_dns_answer_addrs(copy, len, addrs, 4);
  (void)sg_dns_rcode(copy, len);
  free(copy);
  return parsed;
}

static void test_random_garbage(void) {
  uint8_t buf[600];
  for (int i = 0; i < 200000; i++) {
    size_t len = xorshift() % sizeof(buf);
    for (size_t j = 0; j < len; j++)
      buf[j] = (uint8_t)xorshift();
    /* Plausible counts and pointers reach deeper than pure noise. */
    if (len >= 12 && (i & 1)) {
      buf[2] &= 0x7F;
      buf[4] = 0;
      buf[5] = 1;
      buf[6] = buf[8] = buf[10] = 0;
    }
    if (i & 2)
      for (size_t j = 12; j < len; j += 1 + xorshift() % 16)
        buf[j] = 0xC0 | (buf[j] & 1);
    (void)exercise(buf, len);
  }
}

static void test_mutated_valid_packets(void) {
  pkt_t query, answer;
  edns_query(&query);
  chain_answer(&answer);
  const pkt_t *seeds[2] = {&query, &answer};
  uint8_t buf[1024];
  int parsed = 0;
  for (int i = 0; i < 200000; i++) {
    const pkt_t *s = seeds[i & 1];
    size_t len = s->n;
    memcpy(buf, s->b, len);
    int flips = 1 + (int)(xorshift() % 4);
    for (int f = 0; f < flips; f++)
      buf[xorshift() % len] = (uint8_t)xorshift();
    if (xorshift() % 4 == 0)
      len = xorshift() % (len + 1);
    parsed += exercise(buf, len);
  }
  /* Some mutants must still parse, or the loop tested only the rejects. */
  ASSERT(parsed > 1000);
}

/* A query built from a presentation name parses back to the name the
 * policy would see for a real query. */
static void test_build_query_roundtrip(void) {
  static const struct {
    const char *in, *want;
  } cases[] = {
      {"Files.PyPI.org.", "files.pypi.org"},
      {"files.pypi.org", "files.pypi.org"},
      {"", ""},
      {".", ""},
      {"a\\.b.example", "a\\046b.example"},
      {"\\065\\066.example", "ab.example"},
      {"x\\ y", "x\\032y"},
      {"*.Wild", "*.wild"},
  };
  char err[256];
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    uint8_t pkt[512];
    int n = sg_dns_build_query(cases[i].in, 28, 0x1234, pkt, sizeof(pkt), err,
                               sizeof(err));
    ASSERT(n > 0);
    sg_dns_query_t q;
    ASSERT_EQ(sg_dns_parse_query(pkt, (size_t)n, &q), SG_DNS_OK);
    ASSERT_STREQ(q.name, cases[i].want);
    ASSERT_EQ(q.qtype, 28);
    ASSERT_EQ(q.id, 0x1234);
    ASSERT_EQ(q.flags, SG_DNS_FLAG_RD);
  }
}

static void test_build_query_errors(void) {
  char err[256];
  uint8_t pkt[600];
  char label64[80], long_name[300];
  memset(label64, 'a', 64);
  label64[64] = 0;
  /* 63-octet labels: four of them make 257 octets on the wire. */
  long_name[0] = 0;
  for (int i = 0; i < 4; i++) {
    size_t n = strlen(long_name);
    memset(long_name + n, 'b', 63);
    long_name[n + 63] = i < 3 ? '.' : 0;
    long_name[n + 64] = 0;
  }
  ASSERT(sg_dns_build_query("a..b", 1, 0, pkt, sizeof(pkt), err, sizeof(err)) <
         0);
  ASSERT(strstr(err, "empty label") != NULL);
  ASSERT(sg_dns_build_query(".a", 1, 0, pkt, sizeof(pkt), err, sizeof(err)) <
         0);
  ASSERT(sg_dns_build_query(label64, 1, 0, pkt, sizeof(pkt), err, sizeof(err)) <
         0);
  ASSERT(strstr(err, "label longer than 63") != NULL);
  ASSERT(sg_dns_build_query(long_name, 1, 0, pkt, sizeof(pkt), err,
                            sizeof(err)) < 0);
  ASSERT(strstr(err, "longer than 255") != NULL);
  ASSERT(sg_dns_build_query("a\\256", 1, 0, pkt, sizeof(pkt), err,
                            sizeof(err)) < 0);
  ASSERT(strstr(err, "backslash") != NULL);
  ASSERT(sg_dns_build_query("a\\", 1, 0, pkt, sizeof(pkt), err, sizeof(err)) <
         0);
  ASSERT(sg_dns_build_query("a\\12", 1, 0, pkt, sizeof(pkt), err, sizeof(err)) <
         0);
  ASSERT(sg_dns_build_query("example.com", 1, 0, pkt, 20, err, sizeof(err)) <
         0);
}

static void test_type_parse(void) {
  uint16_t t = 0;
  ASSERT_EQ(sg_dns_type_parse("AAAA", &t), 0);
  ASSERT_EQ(t, 28);
  ASSERT_EQ(sg_dns_type_parse("https", &t), 0);
  ASSERT_EQ(t, 65);
  ASSERT_EQ(sg_dns_type_parse("TYPE65535", &t), 0);
  ASSERT_EQ(t, 65535);
  ASSERT_EQ(sg_dns_type_parse("type0", &t), 0);
  ASSERT_EQ(t, 0);
  ASSERT(sg_dns_type_parse("TYPE65536", &t) < 0);
  ASSERT(sg_dns_type_parse("TYPE", &t) < 0);
  ASSERT(sg_dns_type_parse("TYPE01", &t) < 0);
  ASSERT(sg_dns_type_parse("TYPE1x", &t) < 0);
  ASSERT(sg_dns_type_parse("FOO", &t) < 0);
  ASSERT(sg_dns_type_parse("", &t) < 0);
  /* Every name the formatter writes parses back to its number. */
  for (unsigned v = 0; v < 300; v++) {
    char buf[16];
    ASSERT_EQ(sg_dns_type_parse(sg_dns_type_name((uint16_t)v, buf), &t), 0);
    ASSERT_EQ(t, v);
  }
}

static const sg_test_case_t cases[] = {
    {"parse_normal", test_parse_normal},
    {"parse_root", test_parse_root},
    {"parse_edns", test_parse_edns},
    {"parse_edns_after_other_records", test_parse_edns_after_other_records},
    {"parse_short", test_parse_short},
    {"parse_noquestion", test_parse_noquestion},
    {"parse_response", test_parse_response},
    {"parse_multiq", test_parse_multiq},
    {"parse_opcode", test_parse_opcode},
    {"parse_every_truncation", test_parse_every_truncation},
    {"parse_truncated_keeps_question", test_parse_truncated_keeps_question},
    {"parse_pointer_self_loop", test_parse_pointer_self_loop},
    {"parse_pointer_mutual_loop", test_parse_pointer_mutual_loop},
    {"parse_pointer_label_loop", test_parse_pointer_label_loop},
    {"parse_pointer_forward", test_parse_pointer_forward},
    {"parse_long_names", test_parse_long_names},
    {"parse_label_types", test_parse_label_types},
    {"parse_escaping", test_parse_escaping},
    {"build_reply_nxdomain", test_build_reply_nxdomain},
    {"build_reply_formerr_without_question",
     test_build_reply_formerr_without_question},
    {"build_reply_cap", test_build_reply_cap},
    {"build_reply_tc", test_build_reply_tc},
    {"addrs_chain_out_of_order", test_addrs_chain_out_of_order},
    {"addrs_every_truncation", test_addrs_every_truncation},
    {"addrs_unrelated_only", test_addrs_unrelated_only},
    {"addrs_cname_loop", test_addrs_cname_loop},
    {"addrs_hop_limit", test_addrs_hop_limit},
    {"addrs_bad_rdlength", test_addrs_bad_rdlength},
    {"addrs_cap", test_addrs_cap},
    {"addrs_question_errors", test_addrs_question_errors},
    {"rcode_and_set_id", test_rcode_and_set_id},
    {"type_name", test_type_name},
    {"type_parse", test_type_parse},
    {"build_query_roundtrip", test_build_query_roundtrip},
    {"build_query_errors", test_build_query_errors},
    {"status_str", test_status_str},
    {"random_garbage", test_random_garbage},
    {"mutated_valid_packets", test_mutated_valid_packets},
    {NULL, NULL},
};

int main(void) {
  return sg_test_run(cases);
}
