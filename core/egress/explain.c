#include "egress/explain.h"

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

#include "dns/message.h"
#include "util/json.h"

static const char *rcode_name(int rcode) {
  switch (rcode) {
  case SG_DNS_RCODE_NOERROR: return "NOERROR";
  case SG_DNS_RCODE_SERVFAIL: return "SERVFAIL";
  case SG_DNS_RCODE_NXDOMAIN: return "NXDOMAIN";
  case SG_DNS_RCODE_REFUSED: return "REFUSED";
  default: return "NXDOMAIN";
  }
}

static const char *source_name(sg_vm_source_t s) {
  switch (s) {
  case SG_VM_SOURCE_ALLOW_ALWAYS: return "allow.always";
  case SG_VM_SOURCE_DENY_ALWAYS: return "deny.always";
  default: return "policy";
  }
}

/* The client address in the form the DNS server gives it (inet_ntop). */
static int canonical_ip(const char *in, char *out, size_t cap) {
  unsigned char buf[16];
  if (inet_pton(AF_INET, in, buf) == 1)
    return inet_ntop(AF_INET, buf, out, (socklen_t)cap) ? 0 : -EINVAL;
  if (inet_pton(AF_INET6, in, buf) == 1)
    return inet_ntop(AF_INET6, buf, out, (socklen_t)cap) ? 0 : -EINVAL;
  return -EINVAL;
}

int sg_egress_explain(sg_vm_t *vm, const sg_egress_question_t *in, FILE *f,
                      char *err, size_t errlen) {
  const char *tname = in->qtype ? in->qtype : "A";
  const char *transport = in->transport ? in->transport : "udp";
  uint16_t qtype;
  if (sg_dns_type_parse(tname, &qtype)) {
    snprintf(err, errlen,
             "qtype \"%s\" is not a DNS type (A, AAAA, TXT, HTTPS, ... or "
             "TYPE<n>)",
             tname);
    return -EINVAL;
  }
  if (strcmp(transport, "udp") != 0 && strcmp(transport, "tcp") != 0) {
    snprintf(err, errlen, "transport \"%s\" is not udp or tcp", transport);
    return -EINVAL;
  }
  char client[64];
  const char *cin = in->client ? in->client : "127.0.0.1";
  if (canonical_ip(cin, client, sizeof(client))) {
    snprintf(err, errlen, "client \"%s\" is not an IP address", cin);
    return -EINVAL;
  }
  /* The name takes the path of a real query: wire format, then the
   * proxy's parser, which lower-cases it and escapes odd octets. */
  uint8_t pkt[SG_DNS_HEADER_LEN + SG_DNS_WIRE_NAME_MAX + 4];
  char nerr[512];
  int len = sg_dns_build_query(in->name ? in->name : "", qtype, 0, pkt,
                               sizeof(pkt), nerr, sizeof(nerr));
  sg_dns_query_t parsed;
  if (len < 0 || sg_dns_parse_query(pkt, (size_t)len, &parsed) != SG_DNS_OK) {
    /* A name may be long: the message shows its start. */
    snprintf(err, errlen, "name \"%.200s%s\" %s", in->name ? in->name : "",
             in->name && strlen(in->name) > 200 ? "..." : "",
             len < 0 ? nerr : "is not a DNS name");
    return -EINVAL;
  }
  char qtype_name[16];
  sg_dns_type_name(qtype, qtype_name);
  sg_vm_query_t q = {
      .name = parsed.name,
      .name_len = parsed.name_len,
      .qtype = qtype_name,
      .client = client,
      .transport = transport,
      .want_rule = 1,
  };
  sg_vm_verdict_t v;
  sg_vm_status_t st = sg_vm_decide(vm, &q, &v);

  int first = 1;
  fputc('{', f);
  sg_json_key(f, &first, "name");
  sg_json_strn(f, parsed.name, parsed.name_len);
  sg_json_key(f, &first, "qtype");
  sg_json_str(f, qtype_name);
  sg_json_key(f, &first, "client");
  sg_json_str(f, client);
  sg_json_key(f, &first, "transport");
  sg_json_str(f, transport);
  sg_json_key(f, &first, "verdict");
  /* A failed call denies with NXDOMAIN, as the proxy answers it. */
  sg_json_str(f, st == SG_VM_OK && v.allow ? "allow" : "deny");
  if (st != SG_VM_OK || !v.allow) {
    sg_json_key(f, &first, "rcode");
    sg_json_str(f, st == SG_VM_OK ? rcode_name(v.rcode) : "NXDOMAIN");
  }
  if (st != SG_VM_OK) {
    sg_json_key(f, &first, "error");
    sg_json_str(f, v.error);
    fputc('}', f);
    return 0;
  }
  sg_json_key(f, &first, "source");
  sg_json_str(f, source_name(v.source));
  sg_json_key(f, &first, "rule");
  sg_json_str(f, v.rule[0] ? v.rule : NULL);
  if (v.index >= 0) {
    sg_json_key(f, &first, "index");
    fprintf(f, "%d", v.index);
    sg_json_key(f, &first, "action");
    sg_json_str(f, v.allow ? "allow" : "deny");
    sg_json_key(f, &first, "target");
    sg_json_str(f, v.target);
  }
  if (v.source == SG_VM_SOURCE_POLICY && strcmp(v.rule, "default") == 0) {
    sg_json_key(f, &first, "default");
    fputs("true", f);
  }
  if (v.allow && v.quiet) {
    sg_json_key(f, &first, "log_skip");
    fputs("true", f);
  }
  fputc('}', f);
  return 0;
}
