/* DNS wire format: parsing queries, building the replies the proxy makes
 * itself, and reading the addresses out of an upstream answer.
 *
 * Nothing here allocates or keeps a pointer into the packet after it
 * returns; every function is bounded by the length it is given and never
 * reads past it, whatever the bytes are (the parser is fuzzed). */
#ifndef SG_DNS_MESSAGE_H
#define SG_DNS_MESSAGE_H

#include <stddef.h>
#include <stdint.h>

#define SG_DNS_HEADER_LEN 12
/* A name is at most 255 octets on the wire. In presentation form every octet
 * may become a 4-character escape (\DDD), plus dots and the NUL. */
#define SG_DNS_NAME_MAX 1024
#define SG_DNS_WIRE_NAME_MAX 255

enum {
  SG_DNS_RCODE_NOERROR = 0,
  SG_DNS_RCODE_FORMERR = 1,
  SG_DNS_RCODE_SERVFAIL = 2,
  SG_DNS_RCODE_NXDOMAIN = 3,
  SG_DNS_RCODE_NOTIMP = 4,
  SG_DNS_RCODE_REFUSED = 5,
};

enum {
  SG_DNS_TYPE_A = 1,
  SG_DNS_TYPE_CNAME = 5,
  SG_DNS_TYPE_AAAA = 28,
  SG_DNS_TYPE_OPT = 41,
};

/* Header flag bits (the 16-bit word after the ID). */
#define SG_DNS_FLAG_QR 0x8000
#define SG_DNS_FLAG_AA 0x0400
#define SG_DNS_FLAG_TC 0x0200
#define SG_DNS_FLAG_RD 0x0100
#define SG_DNS_FLAG_RA 0x0080
#define SG_DNS_FLAG_CD 0x0010
#define SG_DNS_OPCODE(flags) (((flags) >> 11) & 0xF)

typedef enum {
  SG_DNS_OK = 0,
  SG_DNS_ERR_SHORT,      /* shorter than a header: nothing can be answered */
  SG_DNS_ERR_RESPONSE,   /* QR is set: a response, never answered (no loops) */
  SG_DNS_ERR_NOQUESTION, /* QDCOUNT is 0 */
  SG_DNS_ERR_MULTIQ,     /* QDCOUNT > 1: the policy could only see the first */
  SG_DNS_ERR_TRUNCATED,  /* a count or length points past the end */
  SG_DNS_ERR_NAME,       /* bad label type, pointer loop, name over 255 */
  SG_DNS_ERR_OPCODE,     /* not a standard QUERY */
} sg_dns_status_t;

/* A parsed query. Only the first question is kept; it is enough for the
 * policy and for echoing the question in replies the proxy builds. */
typedef struct {
  uint16_t id;
  uint16_t flags;
  uint16_t qdcount, ancount, nscount, arcount;
  uint16_t qtype, qclass;
  /* Presentation form for the policy: lower-case ASCII, no trailing dot, the
   * root as "". Octets that are not [a-z0-9-_*] (after lower-casing), and a
   * '.' or '\' inside a label, are escaped as \DDD (a dot inside a label as
   * "\046"), so a crafted label like "evil.com" can never look like two
   * labels to the policy. */
  char name[SG_DNS_NAME_MAX];
  size_t name_len;
  /* The question as it goes back in a reply: the name uncompressed, in its
   * original case (0x20-randomising clients check it), then type and class. */
  uint8_t qwire[SG_DNS_WIRE_NAME_MAX + 4];
  size_t qwire_len;
  /* The requester's UDP payload size from an OPT record, 0 without one. */
  uint16_t edns_udp_size;
} sg_dns_query_t;

/* Parses the header and first question of a query. The header fields (id,
 * flags, counts) are filled in as soon as there are 12 bytes, even when a
 * later step fails, so the caller can still answer FORMERR with the ID.
 * Sections after the question are walked (bounded) only to find an OPT
 * record; a malformed record there yields SG_DNS_ERR_TRUNCATED or _NAME.
 * For SG_DNS_ERR_OPCODE and _MULTIQ the first question is still parsed
 * when well-formed (qwire_len stays 0 when it is not), so the NOTIMP or
 * FORMERR reply can echo it; a bad record after a good question keeps the
 * question too. A compression pointer outside the message is _NAME. */
sg_dns_status_t sg_dns_parse_query(const uint8_t *pkt, size_t len,
                                   sg_dns_query_t *q);

/* A short English description of a status, for logs ("no question"). */
const char *sg_dns_status_str(sg_dns_status_t status);

/* Builds a reply made by the proxy itself: the client's ID, QR set, opcode,
 * RD and CD copied from the query, RA set, the given rcode, the question
 * echoed (qwire) when q->qwire_len > 0, no records. `extra_flags` is OR-ed
 * into the flags (SG_DNS_FLAG_TC for a truncated reply). Returns the length
 * written, or 0 when `cap` is too small. */
size_t sg_dns_build_reply(const sg_dns_query_t *q, int rcode,
                          uint16_t extra_flags, uint8_t *out, size_t cap);

/* The rcode of a message (low 4 bits of the flags), or -1 when shorter than
 * a header. */
int sg_dns_rcode(const uint8_t *pkt, size_t len);

/* Overwrites the ID of a message of at least 12 bytes. */
void sg_dns_set_id(uint8_t *pkt, uint16_t id);

/* Writes the mnemonic of a type ("A", "AAAA", "CNAME", "MX", "TXT", "PTR",
 * "SRV", "NS", "SOA", "HTTPS", "SVCB", "CAA", "ANY", ...) or "TYPE<n>" into
 * buf and returns buf. */
const char *sg_dns_type_name(uint16_t qtype, char buf[16]);

/* Parses a type as sg_dns_type_name writes it ("AAAA", "https", any case)
 * or "TYPE<n>" (0-65535). Returns 0, or -EINVAL for anything else. */
int sg_dns_type_parse(const char *text, uint16_t *qtype);

/* Builds a standard query (RD set, one question of class IN) for a name in
 * presentation form as people write it: "Files.PyPI.org", "pypi.org." (one
 * trailing dot allowed), "" or "." for the root, with \DDD (decimal) and \X
 * escapes ("a\.b.example" is one label "a.b" under example). Parsing the
 * result with sg_dns_parse_query gives the name exactly as the proxy hands
 * a real query for it to the policy. Returns the length, or a negative errno
 * with err saying what is wrong with the name, to follow it in a message
 * ("has an empty label", "is longer than 255 octets", ...). */
int sg_dns_build_query(const char *name, uint16_t qtype, uint16_t id,
                       uint8_t *out, size_t cap, char *err, size_t errlen);

/* An address found in an answer. */
typedef struct {
  int family; /* AF_INET or AF_INET6 */
  uint8_t addr[16];
  uint32_t ttl;
} sg_dns_addr_t;

/* Collects the A and AAAA records of an answer that belong to the question's
 * name or to a name reached from it through the CNAME records of the answer
 * section (in any order, at most 16 hops; names compared case-insensitively).
 * Records for unrelated owners are ignored. Writes at most `cap` addresses
 * and returns how many there were in total (which may exceed cap), or a
 * negative sg_dns_status_t-style value (-SG_DNS_ERR_...) on a malformed
 * message (including QDCOUNT other than 1). Only class IN records count;
 * a TTL with the top bit set reads as 0 (RFC 2181). */
int sg_dns_answer_addrs(const uint8_t *pkt, size_t len, sg_dns_addr_t *out,
                        size_t cap);

#endif
