/* nft/intercept: the table and chain it installs, as `nft` lists them, and
 * the redirect working on real sockets.
 *
 * The whole process runs in a private network namespace (unshare before any
 * case), so it only ever sees and changes its own ruleset, which vanishes
 * with it. Needs root (or CAP_SYS_ADMIN + CAP_NET_ADMIN) and the `nft` and
 * `ip` binaries, which only the test uses; exits 77 when it cannot unshare. */
#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netlink.h>

#include "nft/batch.h"
#include "nft/intercept.h"
#include "sgtest.h"

#define PORT 15353
#define MARK 0x1

static const sg_nft_intercept_opts_t opts = {.redirect_port = PORT,
                                             .bypass_mark = MARK};

/* ---- helpers: they return -1 on failure, the cases assert ---- */

/* Runs a shell command, collecting its stdout (and stderr) into out.
 * Returns the exit status. */
static int capture(const char *cmd, char *out, size_t n) {
  char full[512];
  snprintf(full, sizeof(full), "%s 2>&1", cmd);
  FILE *p = popen(full, "r");
  if (!p)
    return -1;
  size_t len = fread(out, 1, n - 1, p);
  out[len] = '\0';
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int count(const char *hay, const char *needle) {
  int c = 0;
  for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
    c++;
  return c;
}

static char listing[65536];

static int list_table(void) {
  return capture("nft list table inet sandgate", listing, sizeof(listing));
}

static int list_json(void) {
  return capture("nft -j list ruleset", listing, sizeof(listing));
}

static int install(void) {
  char err[512];
  int rc = sg_nft_intercept_install(&opts, err, sizeof(err));
  if (rc < 0)
    fprintf(stderr, "  install: %d %s\n", rc, err);
  return rc;
}

static int remove_table(void) {
  char err[512];
  int rc = sg_nft_intercept_remove(err, sizeof(err));
  if (rc < 0)
    fprintf(stderr, "  remove: %d %s\n", rc, err);
  return rc;
}

static int make_addr(int family, const char *ip, uint16_t port,
                     struct sockaddr_storage *ss, socklen_t *len) {
  memset(ss, 0, sizeof(*ss));
  if (family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    *len = sizeof(*a);
    return inet_pton(AF_INET, ip, &a->sin_addr) == 1 ? 0 : -1;
  }
  struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
  a->sin6_family = AF_INET6;
  a->sin6_port = htons(port);
  *len = sizeof(*a);
  return inet_pton(AF_INET6, ip, &a->sin6_addr) == 1 ? 0 : -1;
}

static uint16_t port_of(const struct sockaddr_storage *ss) {
  return ntohs(ss->ss_family == AF_INET
                   ? ((const struct sockaddr_in *)ss)->sin_port
                   : ((const struct sockaddr_in6 *)ss)->sin6_port);
}

/* A socket with a 2 s receive timeout, bound to ip:port when ip is given. */
static int new_socket(int family, int type, const char *ip, uint16_t port) {
  int fd = socket(family, type | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  struct timeval tv = {.tv_sec = 2};
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (family == AF_INET6)
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (ip) {
    struct sockaddr_storage ss;
    socklen_t len;
    if (make_addr(family, ip, port, &ss, &len) < 0 ||
        bind(fd, (struct sockaddr *)&ss, len) < 0 ||
        (type == SOCK_STREAM && listen(fd, 4) < 0)) {
      close(fd);
      return -1;
    }
  }
  return fd;
}

static int send_to(int fd, int family, const char *ip, uint16_t port,
                   const char *msg) {
  struct sockaddr_storage ss;
  socklen_t len;
  if (make_addr(family, ip, port, &ss, &len) < 0)
    return -1;
  ssize_t n = sendto(fd, msg, strlen(msg), 0, (struct sockaddr *)&ss, len);
  return n == (ssize_t)strlen(msg) ? 0 : -1;
}

/* Receives one datagram and checks it is msg; from gets the sender. */
static int recv_is(int fd, const char *msg, struct sockaddr_storage *from,
                   int flags) {
  char buf[256];
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  ssize_t n =
      recvfrom(fd, buf, sizeof(buf) - 1, flags, (struct sockaddr *)&ss, &len);
  if (n < 0)
    return -1;
  buf[n] = '\0';
  if (from)
    *from = ss;
  return strcmp(buf, msg) == 0 ? 0 : -1;
}

/* Sends msg to ip:53 and checks it lands on the listener at ip:PORT, and
 * that the listener's reply comes back as if from ip:53 (conntrack undoes
 * the redirect), which is what a DNS client checks. */
static int udp_redirected(int family, const char *ip, const char *msg) {
  int rc = -1;
  int lis = new_socket(family, SOCK_DGRAM, ip, PORT);
  int cli = new_socket(family, SOCK_DGRAM, NULL, 0);
  struct sockaddr_storage from;
  if (lis < 0 || cli < 0 || send_to(cli, family, ip, 53, msg) < 0)
    goto out;
  if (recv_is(lis, msg, &from, 0) < 0) {
    fprintf(stderr, "  %s did not reach [%s]:%d\n", msg, ip, PORT);
    goto out;
  }
  socklen_t len = family == AF_INET ? sizeof(struct sockaddr_in)
                                    : sizeof(struct sockaddr_in6);
  if (sendto(lis, "reply", 5, 0, (struct sockaddr *)&from, len) != 5 ||
      recv_is(cli, "reply", &from, 0) < 0 || port_of(&from) != 53) {
    fprintf(stderr, "  the reply did not come back from port 53\n");
    goto out;
  }
  rc = 0;
out:
  if (lis >= 0)
    close(lis);
  if (cli >= 0)
    close(cli);
  return rc;
}

/* ---- cases ---- */

static void install_creates_table_chain_and_rules(void) {
  ASSERT_EQ(remove_table(), 0);
  char err[512] = "untouched";
  ASSERT_EQ(sg_nft_intercept_install(&opts, err, sizeof(err)), 0);
  ASSERT_STREQ(err, "");

  ASSERT_EQ(list_table(), 0);
  ASSERT(strstr(listing, "chain dns_intercept {"));
  /* nft 1.0.6 prints -100, later versions its name, dstnat. */
  ASSERT(
      strstr(listing, "type nat hook output priority -100; policy accept;") ||
      strstr(listing, "type nat hook output priority dstnat; policy accept;"));
  ASSERT(strstr(listing, "meta mark 0x00000001 return"));
  /* nft hides the `meta l4proto` dependency of `udp dport` when listing. */
  ASSERT(strstr(listing, "udp dport 53 redirect to :15353"));
  ASSERT(strstr(listing, "tcp dport 53 redirect to :15353"));
  /* The bypass must come before the redirects. */
  ASSERT(strstr(listing, "meta mark") < strstr(listing, "udp dport"));

  /* The expressions themselves, as the kernel holds them. */
  ASSERT_EQ(capture("nft --debug=netlink list table inet sandgate", listing,
                    sizeof(listing)),
            0);
  ASSERT_EQ(count(listing, "[ meta load mark => reg 1 ]"), 1);
  ASSERT_EQ(count(listing, "[ cmp eq reg 1 0x00000001 ]"), 1);
  ASSERT_EQ(count(listing, "[ immediate reg 0 return ]"), 1);
  ASSERT_EQ(count(listing, "[ meta load l4proto => reg 1 ]"), 2);
  ASSERT_EQ(count(listing, "[ cmp eq reg 1 0x00000011 ]"), 1); /* udp */
  ASSERT_EQ(count(listing, "[ cmp eq reg 1 0x00000006 ]"), 1); /* tcp */
  ASSERT_EQ(
      count(listing, "[ payload load 2b @ transport header + 2 => reg 1 ]"), 2);
  ASSERT_EQ(count(listing, "[ cmp eq reg 1 0x00003500 ]"), 2);    /* 53 */
  ASSERT_EQ(count(listing, "[ immediate reg 1 0x0000f93b ]"), 2); /* 15353 */
  ASSERT_EQ(count(listing, "[ redir proto_min reg 1"), 2);

  ASSERT_EQ(list_json(), 0);
  ASSERT_EQ(count(listing, "{\"table\": {"), 1);
  ASSERT(strstr(listing, "\"family\": \"inet\", \"name\": \"sandgate\""));
  ASSERT_EQ(count(listing, "{\"chain\": {"), 1);
  ASSERT(strstr(listing, "\"name\": \"dns_intercept\""));
  ASSERT(strstr(listing, "\"type\": \"nat\", \"hook\": \"output\", "
                         "\"prio\": -100"));
  ASSERT_EQ(count(listing, "{\"rule\": {"), 3);
}

static void install_twice_replaces(void) {
  ASSERT_EQ(install(), 0);
  sg_nft_intercept_opts_t other = {.redirect_port = 15354, .bypass_mark = 0x2};
  char err[512];
  ASSERT_EQ(sg_nft_intercept_install(&other, err, sizeof(err)), 0);

  ASSERT_EQ(list_json(), 0);
  ASSERT_EQ(count(listing, "{\"table\": {"), 1);
  ASSERT_EQ(count(listing, "{\"chain\": {"), 1);
  ASSERT_EQ(count(listing, "{\"rule\": {"), 3);
  ASSERT_EQ(list_table(), 0);
  ASSERT_EQ(count(listing, "redirect to :15354"), 2);
  ASSERT_EQ(count(listing, "15353"), 0);
  ASSERT(strstr(listing, "meta mark 0x00000002 return"));

  ASSERT_EQ(install(), 0);
  ASSERT_EQ(list_table(), 0);
  ASSERT_EQ(count(listing, "redirect to :15353"), 2);
  ASSERT_EQ(count(listing, "15354"), 0);
}

static void install_replaces_a_stale_table(void) {
  ASSERT_EQ(remove_table(), 0);
  ASSERT_EQ(system("nft add table inet sandgate && "
                   "nft add chain inet sandgate stale "
                   "'{ type filter hook input priority 0; }' && "
                   "nft add rule inet sandgate stale counter && "
                   "nft add chain inet sandgate dns_intercept "
                   "'{ type nat hook output priority -100; }' && "
                   "nft add rule inet sandgate dns_intercept "
                   "udp dport 53 redirect to :9999 && "
                   "nft add set inet sandgate old '{ type ipv4_addr; }' && "
                   "nft add element inet sandgate old '{ 10.0.0.1 }'"),
            0);
  ASSERT_EQ(list_json(), 0);
  ASSERT_EQ(count(listing, "{\"chain\": {"), 2);

  ASSERT_EQ(install(), 0);
  ASSERT_EQ(list_json(), 0);
  ASSERT_EQ(count(listing, "{\"table\": {"), 1);
  ASSERT_EQ(count(listing, "{\"chain\": {"), 1);
  ASSERT_EQ(count(listing, "{\"rule\": {"), 3);
  ASSERT_EQ(count(listing, "{\"set\": {"), 0);
  ASSERT_EQ(count(listing, "stale"), 0);
  ASSERT_EQ(count(listing, "9999"), 0);
}

static void remove_deletes_the_table(void) {
  ASSERT_EQ(install(), 0);
  char err[512] = "untouched";
  ASSERT_EQ(sg_nft_intercept_remove(err, sizeof(err)), 0);
  ASSERT_STREQ(err, "");
  ASSERT(list_table() != 0); /* nft: No such file or directory */
  ASSERT_EQ(list_json(), 0);
  ASSERT_EQ(count(listing, "sandgate"), 0);
}

static void remove_when_absent_succeeds(void) {
  ASSERT_EQ(remove_table(), 0);
  char err[512] = "untouched";
  ASSERT_EQ(sg_nft_intercept_remove(err, sizeof(err)), 0);
  ASSERT_STREQ(err, "");
  ASSERT_EQ(sg_nft_intercept_remove(NULL, 0), 0);
}

static void udp_to_port_53_is_redirected_ipv4(void) {
  ASSERT_EQ(install(), 0);
  ASSERT_EQ(udp_redirected(AF_INET, "127.0.0.1", "query4"), 0);
}

static void udp_to_port_53_is_redirected_ipv6(void) {
  ASSERT_EQ(install(), 0);
  ASSERT_EQ(udp_redirected(AF_INET6, "::1", "query6"), 0);
}

static void tcp_to_port_53_is_redirected(void) {
  ASSERT_EQ(install(), 0);
  const char *ips[] = {"127.0.0.1", "::1"};
  int families[] = {AF_INET, AF_INET6};
  for (int i = 0; i < 2; i++) {
    int lis = new_socket(families[i], SOCK_STREAM, ips[i], PORT);
    int cli = new_socket(families[i], SOCK_STREAM, NULL, 0);
    ASSERT(lis >= 0 && cli >= 0);
    struct sockaddr_storage ss;
    socklen_t len;
    ASSERT_EQ(make_addr(families[i], ips[i], 53, &ss, &len), 0);
    /* Nothing listens on 53: only the redirect makes this connect work. */
    int rc = connect(cli, (struct sockaddr *)&ss, len);
    int acc = accept(lis, NULL, NULL);
    close(cli);
    close(lis);
    ASSERT_EQ(rc, 0);
    ASSERT(acc >= 0);
    close(acc);
  }
}

/* The proxy's own queries carry the mark and must reach the real port 53;
 * unmarked ones are redirected even when something listens on 53. */
static void marked_traffic_is_not_redirected(void) {
  ASSERT_EQ(install(), 0);
  int proxy = new_socket(AF_INET, SOCK_DGRAM, "127.0.0.1", PORT);
  int real = new_socket(AF_INET, SOCK_DGRAM, "127.0.0.1", 53);
  int marked = new_socket(AF_INET, SOCK_DGRAM, NULL, 0);
  int plain = new_socket(AF_INET, SOCK_DGRAM, NULL, 0);
  uint32_t mark = MARK;
  bool ok = proxy >= 0 && real >= 0 && marked >= 0 && plain >= 0 &&
            setsockopt(marked, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) == 0;
  int rc_marked = ok ? send_to(marked, AF_INET, "127.0.0.1", 53, "marked") : -1;
  int got_real = rc_marked == 0 ? recv_is(real, "marked", NULL, 0) : -1;
  int got_proxy_early = recv_is(proxy, "marked", NULL, MSG_DONTWAIT);
  int rc_plain = ok ? send_to(plain, AF_INET, "127.0.0.1", 53, "plain") : -1;
  int got_proxy = rc_plain == 0 ? recv_is(proxy, "plain", NULL, 0) : -1;
  int got_real_late = recv_is(real, "plain", NULL, MSG_DONTWAIT);
  int fds[] = {proxy, real, marked, plain};
  for (int i = 0; i < 4; i++)
    if (fds[i] >= 0)
      close(fds[i]);
  ASSERT(ok);
  ASSERT_EQ(got_real, 0);
  ASSERT_EQ(got_proxy_early, -1);
  ASSERT_EQ(got_proxy, 0);
  ASSERT_EQ(got_real_late, -1);
}

static void after_remove_port_53_is_not_redirected(void) {
  ASSERT_EQ(install(), 0);
  ASSERT_EQ(remove_table(), 0);
  int real = new_socket(AF_INET, SOCK_DGRAM, "127.0.0.1", 53);
  int cli = new_socket(AF_INET, SOCK_DGRAM, NULL, 0);
  int sent = real >= 0 && cli >= 0
                 ? send_to(cli, AF_INET, "127.0.0.1", 53, "direct")
                 : -1;
  int got = sent == 0 ? recv_is(real, "direct", NULL, 0) : -1;
  if (real >= 0)
    close(real);
  if (cli >= 0)
    close(cli);
  ASSERT_EQ(got, 0);
}

/* In a child that gave up root (and so every capability), still in this
 * namespace: install fails with a message naming the missing capability
 * and the way out, remove fails too, and the parent's table is untouched. */
static void without_cap_net_admin_install_fails(void) {
  ASSERT_EQ(install(), 0);
  fflush(NULL);
  pid_t pid = fork();
  ASSERT(pid >= 0);
  if (pid == 0) {
    if (setgroups(0, NULL) < 0 || setresgid(65534, 65534, 65534) < 0 ||
        setresuid(65534, 65534, 65534) < 0)
      _exit(10);
    char err[512];
    int rc = sg_nft_intercept_install(&opts, err, sizeof(err));
    if (rc != -EPERM) {
      fprintf(stderr, "  install as nobody: %d %s\n", rc, err);
      _exit(11);
    }
    if (!strstr(err, "needs CAP_NET_ADMIN in this network namespace") ||
        !strstr(err, "`--no-intercept` runs the DNS proxy without "
                     "interception")) {
      fprintf(stderr, "  message: %s\n", err);
      _exit(12);
    }
    rc = sg_nft_intercept_remove(err, sizeof(err));
    if (rc != -EPERM || !strstr(err, "CAP_NET_ADMIN")) {
      fprintf(stderr, "  remove as nobody: %d %s\n", rc, err);
      _exit(13);
    }
    _exit(0);
  }
  int st;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  ASSERT(WIFEXITED(st));
  ASSERT_EQ(WEXITSTATUS(st), 0);
  ASSERT_EQ(list_json(), 0);
  ASSERT_EQ(count(listing, "{\"chain\": {"), 1);
  ASSERT_EQ(count(listing, "{\"rule\": {"), 3);
}

/* batch.h on its own: the index of the first refused message comes back,
 * and nothing of a refused batch is applied. */
static void batch_reports_the_failing_message(void) {
  ASSERT_EQ(remove_table(), 0);
  struct nftnl_table *t = nftnl_table_alloc();
  struct nftnl_table *missing = nftnl_table_alloc();
  sg_nft_batch_t *b = sg_nft_batch_new();
  ASSERT(t && missing && b);
  nftnl_table_set_u32(t, NFTNL_TABLE_FAMILY, NFPROTO_INET);
  nftnl_table_set_str(t, NFTNL_TABLE_NAME, SG_NFT_TABLE);
  nftnl_table_set_u32(missing, NFTNL_TABLE_FAMILY, NFPROTO_INET);
  nftnl_table_set_str(missing, NFTNL_TABLE_NAME, "sgnft_missing");
  int i0 = sg_nft_batch_add_table(b, NFT_MSG_NEWTABLE, NLM_F_CREATE, t);
  int i1 = sg_nft_batch_add_table(b, NFT_MSG_DELTABLE, 0, missing);
  int i2 = sg_nft_batch_add_table(b, NFT_MSG_DELTABLE, 0, missing);
  int failed = 99;
  int rc = sg_nft_batch_send(b, &failed);
  int again = sg_nft_batch_send(b, NULL);
  sg_nft_batch_free(b);
  nftnl_table_free(t);
  nftnl_table_free(missing);
  ASSERT_EQ(i0, 0);
  ASSERT_EQ(i1, 1);
  ASSERT_EQ(i2, 2);
  ASSERT_EQ(rc, -ENOENT);
  ASSERT_EQ(failed, 1); /* the first refusal, not the second */
  ASSERT_EQ(again, -EINVAL);
  ASSERT(list_table() != 0); /* message 0 was rolled back */
}

/* batch.h with a set and its elements, as the filter part will use it. */
static void batch_adds_a_set_with_elements(void) {
  ASSERT_EQ(remove_table(), 0);
  struct nftnl_table *t = nftnl_table_alloc();
  struct nftnl_set *s = nftnl_set_alloc();
  struct nftnl_set_elem *e = nftnl_set_elem_alloc();
  sg_nft_batch_t *b = sg_nft_batch_new();
  ASSERT(t && s && e && b);
  nftnl_table_set_u32(t, NFTNL_TABLE_FAMILY, NFPROTO_INET);
  nftnl_table_set_str(t, NFTNL_TABLE_NAME, SG_NFT_TABLE);
  nftnl_set_set_u32(s, NFTNL_SET_FAMILY, NFPROTO_INET);
  nftnl_set_set_str(s, NFTNL_SET_TABLE, SG_NFT_TABLE);
  nftnl_set_set_str(s, NFTNL_SET_NAME, "allowed4");
  nftnl_set_set_u32(s, NFTNL_SET_ID, 1);
  nftnl_set_set_u32(s, NFTNL_SET_KEY_TYPE, 7); /* nft's ipv4_addr */
  nftnl_set_set_u32(s, NFTNL_SET_KEY_LEN, 4);
  struct in_addr a;
  inet_pton(AF_INET, "192.0.2.7", &a);
  nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, &a, sizeof(a));
  nftnl_set_elem_add(s, e); /* s owns e now */
  int rc_t = sg_nft_batch_add_table(b, NFT_MSG_NEWTABLE, NLM_F_CREATE, t);
  int rc_s = sg_nft_batch_add_set(b, NFT_MSG_NEWSET, NLM_F_CREATE, s);
  int rc_e = sg_nft_batch_add_setelems(b, NFT_MSG_NEWSETELEM, NLM_F_CREATE, s);
  int failed = 99;
  int rc = sg_nft_batch_send(b, &failed);
  sg_nft_batch_free(b);
  nftnl_set_free(s);
  nftnl_table_free(t);
  ASSERT_EQ(rc_t, 0);
  ASSERT_EQ(rc_s, 1);
  ASSERT_EQ(rc_e, 2);
  ASSERT_EQ(rc, 0);
  ASSERT_EQ(list_table(), 0);
  ASSERT(strstr(listing, "set allowed4 {"));
  ASSERT(strstr(listing, "type ipv4_addr"));
  ASSERT(strstr(listing, "elements = { 192.0.2.7 }"));
  ASSERT_EQ(remove_table(), 0);
}

static void install_rejects_port_zero(void) {
  sg_nft_intercept_opts_t zero = {.redirect_port = 0, .bypass_mark = MARK};
  char err[512];
  ASSERT_EQ(sg_nft_intercept_install(&zero, err, sizeof(err)), -EINVAL);
  ASSERT(err[0] != '\0');
}

int main(void) {
  if (unshare(CLONE_NEWNET) < 0) {
    fprintf(stderr,
            "skipped: cannot unshare a network namespace (%s); run as root\n",
            strerror(errno));
    return 77;
  }
  if (system("ip link set lo up") != 0) {
    fprintf(stderr, "cannot bring lo up in the test namespace\n");
    return 1;
  }
  static const sg_test_case_t cases[] = {
      {"install creates table, chain and rules",
       install_creates_table_chain_and_rules},
      {"install twice replaces", install_twice_replaces},
      {"install replaces a stale table", install_replaces_a_stale_table},
      {"remove deletes the table", remove_deletes_the_table},
      {"remove when absent succeeds", remove_when_absent_succeeds},
      {"udp to port 53 is redirected (ipv4)",
       udp_to_port_53_is_redirected_ipv4},
      {"udp to port 53 is redirected (ipv6)",
       udp_to_port_53_is_redirected_ipv6},
      {"tcp to port 53 is redirected", tcp_to_port_53_is_redirected},
      {"marked traffic is not redirected", marked_traffic_is_not_redirected},
      {"after remove port 53 is not redirected",
       after_remove_port_53_is_not_redirected},
      {"without CAP_NET_ADMIN install fails",
       without_cap_net_admin_install_fails},
      {"batch reports the failing message", batch_reports_the_failing_message},
      {"batch adds a set with elements", batch_adds_a_set_with_elements},
      {"install rejects port 0", install_rejects_port_zero},
      {NULL, NULL},
  };
  return sg_test_run(cases);
}
