/* libFuzzer target for core/dns/message.c: every entry point on the same
 * bytes, both as a query and as an answer. Build with
 *   clang -fsanitize=fuzzer,address,undefined -Icore \
 *     core/dns/message.c spec/fuzz/fuzz_dns_message.c
 * and run it with spec/fuzz/run.sh on spec/fuzz/corpus/dns. */
#include "dns/message.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  sg_dns_query_t q;
  sg_dns_status_t st = sg_dns_parse_query(data, size, &q);
  (void)sg_dns_status_str(st);
  if (st == SG_DNS_OK) {
    /* The presentation name must be what name_len says. */
    if (strlen(q.name) != q.name_len || q.qwire_len < 5 ||
        q.qwire_len > sizeof(q.qwire))
      abort();
    uint8_t small[16], large[512];
    size_t n =
        sg_dns_build_reply(&q, SG_DNS_RCODE_NXDOMAIN, 0, small, sizeof(small));
    if (n != 0 && n != SG_DNS_HEADER_LEN + q.qwire_len)
      abort();
    n = sg_dns_build_reply(&q, SG_DNS_RCODE_REFUSED, SG_DNS_FLAG_TC, large,
                           sizeof(large));
    if (n != SG_DNS_HEADER_LEN + q.qwire_len ||
        sg_dns_rcode(large, n) != SG_DNS_RCODE_REFUSED)
      abort();
    char tbuf[16];
    (void)sg_dns_type_name(q.qtype, tbuf);
  }

  sg_dns_addr_t addrs[4];
  int count = sg_dns_answer_addrs(data, size, addrs, 4);
  for (int i = 0; i < count && i < 4; i++)
    if (addrs[i].family != AF_INET && addrs[i].family != AF_INET6)
      abort();
  (void)sg_dns_answer_addrs(data, size, NULL, 0);

  (void)sg_dns_rcode(data, size);
  if (size >= 2) {
    char tbuf[16];
    (void)sg_dns_type_name((uint16_t)(data[0] << 8 | data[1]), tbuf);
  }
  return 0;
}
