/* `sandgate run`: a command in a fresh network namespace whose egress goes
 * through sandgate's egress plane, on any Linux box.
 *
 *   host netns                            sandbox netns sgrun-<n>
 *   sgr<n>h 10.200.<n>.1/30  <-- veth -->  sgr<n>s 10.200.<n>.2/30
 *   table inet sandgate_run_<n>:           sandgate egress (dns or dns+nft)
 *     masquerade 10.200.<n>.0/30            [sandgate portproxy :44772]
 *                                          CMD, as the invoking user, with
 *                                          its own /etc/resolv.conf
 *
 * Everything created carries the index n, chosen so that concurrent runs
 * and the host's own addresses do not collide, and is removed again when
 * CMD ends, on Ctrl-C, on SIGTERM and on failure. A run killed with SIGKILL
 * leaves its namespace, which the next run removes (its supervisor PID is
 * recorded in /run/sandgate/sgrun-<n>/pid). */
#include "run/run.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <ifaddrs.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <libnftnl/chain.h>
#include <libnftnl/rule.h>
#include <libnftnl/table.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netlink.h>

#include "dns/upstream.h"
#include "nft/batch.h"
#include "nft/build.h"
#include "proxy/proxy.h"
#include "util/file.h"
#include "util/json.h"
#include "util/log.h"
#include "util/sockaddr.h"

#define RUN_DIR "/run/sandgate"
#define MAX_RULES 256
#define MAX_PUBLISH 16
#define API_PORT 18080
#define PORTPROXY_PORT 44772
#define READY_TIMEOUT_MS 10000

extern char **environ;

/* clang-format off */
static const char usage[] =
    "usage: sandgate run [flags] -- CMD [ARGS...]\n"
    "\n"
    "Runs CMD in a fresh network namespace whose egress goes through sandgate's\n"
    "egress plane with the given policy, then removes everything it created.\n"
    "Needs root; CMD runs as the invoking user (SUDO_UID/SUDO_GID under sudo).\n"
    "\n"
    "flags:\n"
    "  --policy FILE        the policy document (OpenSandbox JSON)\n"
    "  --allow TARGET       allow a name, *.suffix, IP or CIDR (repeatable)\n"
    "  --deny TARGET        deny one (repeatable; rules apply in order)\n"
    "  --mode MODE          dns or dns+nft (dns+nft: IP literals are blocked too)\n"
    "  --publish PORT       reach CMD's PORT from the host through the port proxy\n"
    "  --policy-api ADDR    expose the policy API on the host (e.g. 127.0.0.1:18080)\n"
    "  --upstream LIST      nameservers the egress plane forwards to (default: the\n"
    "                       host's non-loopback resolv.conf nameservers)\n"
    "  --subnet A.B.0.0     where the /30 of each run comes from (10.200.0.0)\n"
    "  --keep-logs          keep the egress log after the run\n";
/* clang-format on */

typedef struct {
  const char *policy_file;
  const char *rule_action[MAX_RULES];
  const char *rule_target[MAX_RULES];
  int nrules;
  const char *mode;
  uint16_t publish[MAX_PUBLISH];
  int npublish;
  const char *policy_api;
  const char *upstream;
  uint8_t net_a, net_b;
  int keep_logs;
  char **cmd;
} opts_t;

typedef struct {
  opts_t o;
  int n; /* the index: sgrun-<n>, 10.200.<n>.0/30 */
  char ns[32], host_if[16], sb_if[16], table[40];
  char host_ip[16], sb_ip[16], dir[64];
  char token[65];
  int netns_made, nat_made, forward_changed;
  unsigned long ns_ino; /* the namespace's inode, to find its processes */
  pid_t egress, portproxy, cmd;
  int cmd_status;
  uv_loop_t *loop;
  sg_proxy_t *api_fwd;
  uv_signal_t sigchld, sigint, sigterm, sighup;
  int stopping;
} run_t;

/* ---- small helpers ---- */

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("sandgate run: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

/* Runs `ip ARGS...` and waits. Returns its exit status (or -1). Output is
 * discarded unless the command fails and verbose is set. */
static int ip_cmd(bool quiet, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int ip_cmd(bool quiet, const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  char *argv[32];
  int argc = 0;
  argv[argc++] = "ip";
  for (char *save = NULL, *t = strtok_r(line, " ", &save); t && argc < 31;
       t = strtok_r(NULL, " ", &save))
    argv[argc++] = t;
  argv[argc] = NULL;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (quiet) {
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  }
  pid_t pid;
  int rc = posix_spawnp(&pid, "ip", &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0)
    return -1;
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
    ;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The policy document: the file, or the --allow/--deny rules in order
 * (default deny). NULL on error (said). */
static char *policy_doc(const opts_t *o) {
  if (o->policy_file) {
    char *text = NULL, err[512];
    if (sg_file_read(o->policy_file, &text, NULL, err, sizeof(err))) {
      say("%s", err);
      return NULL;
    }
    return text;
  }
  char *out = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&out, &len);
  if (!f)
    return NULL;
  fputs("{\"defaultAction\":\"deny\",\"egress\":[", f);
  for (int i = 0; i < o->nrules; i++) {
    fprintf(f, "%s{\"action\":\"%s\",\"target\":", i ? "," : "",
            o->rule_action[i]);
    sg_json_str(f, o->rule_target[i]);
    fputc('}', f);
  }
  fputs("]}", f);
  fclose(f);
  return out;
}

/* ---- choosing the index ---- */

static bool addr_in_use(const run_t *r, int n) {
  struct ifaddrs *ifs;
  if (getifaddrs(&ifs) != 0)
    return false;
  uint32_t net = ((uint32_t)r->o.net_a << 24) | ((uint32_t)r->o.net_b << 16) |
                 ((uint32_t)n << 8);
  bool used = false;
  for (struct ifaddrs *i = ifs; i && !used; i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET)
      continue;
    uint32_t a = ntohl(((struct sockaddr_in *)i->ifa_addr)->sin_addr.s_addr);
    used = (a & 0xffffff00u) == net;
  }
  freeifaddrs(ifs);
  return used;
}

static bool pid_alive(pid_t pid) {
  return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}

static void remove_nat(const char *table);

/* Ends every process still in the network namespace with inode ino (the
 * orphans of a killed run: its egress plane, its port proxy, CMD). The
 * inode comes from the run's pid file: /run/netns/<name> may not show the
 * namespace in this mount namespace (`ip netns exec` makes / a slave). */
static void kill_netns_procs(unsigned long ino) {
  char path[300];
  struct stat st;
  if (!ino)
    return;
  DIR *d = opendir("/proc");
  if (!d)
    return;
  struct dirent *e;
  while ((e = readdir(d))) {
    char *end;
    long pid = strtol(e->d_name, &end, 10);
    if (*end || pid <= 1 || pid == (long)getpid())
      continue;
    snprintf(path, sizeof(path), "/proc/%ld/ns/net", pid);
    if (stat(path, &st) == 0 && st.st_ino == ino)
      kill((pid_t)pid, SIGKILL);
  }
  closedir(d);
}

/* Removes a run's directory and what it holds. */
static void remove_run_dir(const char *dir, bool keep_logs) {
  char path[128];
  static const char *const files[] = {"pid", "resolv.conf", "portproxy.log",
                                      NULL};
  for (int i = 0; files[i]; i++) {
    snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
    unlink(path);
  }
  snprintf(path, sizeof(path), "%s/rules", dir);
  rmdir(path);
  if (!keep_logs) {
    snprintf(path, sizeof(path), "%s/egress.log", dir);
    unlink(path);
  }
  rmdir(dir);
}

/* A namespace of a run whose supervisor is gone (killed with SIGKILL). */
static void remove_stale(int n) {
  char path[96], ns[32], table[40];
  snprintf(path, sizeof(path), RUN_DIR "/sgrun-%d/pid", n);
  char *text = NULL, err[128];
  if (sg_file_read(path, &text, NULL, err, sizeof(err)) != 0)
    return;
  long pid_l = 0;
  unsigned long ino = 0;
  sscanf(text, "%ld %lu", &pid_l, &ino);
  pid_t pid = (pid_t)pid_l;
  free(text);
  if (pid_alive(pid))
    return;
  snprintf(ns, sizeof(ns), "sgrun-%d", n);
  snprintf(table, sizeof(table), "sandgate_run_%d", n);
  kill_netns_procs(ino);
  ip_cmd(true, "netns del %s", ns);
  remove_nat(table);
  snprintf(path, sizeof(path), RUN_DIR "/sgrun-%d", n);
  remove_run_dir(path, false);
  say("removed sgrun-%d, left by a run that was killed (pid %ld)", n,
      (long)pid);
}

/* Takes the first free index by creating its namespace (`ip netns add`
 * fails when it exists, so two runs never get the same one). */
static int claim_index(run_t *r) {
  mkdir(RUN_DIR, 0755);
  for (int n = 0; n < 256; n++) {
    remove_stale(n);
    if (addr_in_use(r, n))
      continue;
    char ns[32];
    snprintf(ns, sizeof(ns), "sgrun-%d", n);
    if (ip_cmd(true, "netns add %s", ns) != 0)
      continue;
    r->n = n;
    r->netns_made = 1;
    snprintf(r->ns, sizeof(r->ns), "%s", ns);
    snprintf(r->host_if, sizeof(r->host_if), "sgr%dh", n);
    snprintf(r->sb_if, sizeof(r->sb_if), "sgr%ds", n);
    snprintf(r->table, sizeof(r->table), "sandgate_run_%d", n);
    snprintf(r->host_ip, sizeof(r->host_ip), "%u.%u.%d.1", r->o.net_a,
             r->o.net_b, n);
    snprintf(r->sb_ip, sizeof(r->sb_ip), "%u.%u.%d.2", r->o.net_a, r->o.net_b,
             n);
    snprintf(r->dir, sizeof(r->dir), RUN_DIR "/%s", ns);
    mkdir(r->dir, 0755);
    char path[96], pid[64];
    struct stat st;
    snprintf(path, sizeof(path), "/run/netns/%s", ns);
    unsigned long ino = stat(path, &st) == 0 ? (unsigned long)st.st_ino : 0;
    r->ns_ino = ino;
    snprintf(path, sizeof(path), "%s/pid", r->dir);
    int len = snprintf(pid, sizeof(pid), "%ld %lu\n", (long)getpid(), ino);
    char err[128];
    sg_file_write_atomic(path, pid, (size_t)len, err, sizeof(err));
    return 0;
  }
  say("no free namespace index: 256 runs at once, or every "
      "%u.%u.<n>.0/30 is in use on this host (--subnet picks another range)",
      r->o.net_a, r->o.net_b);
  return -1;
}

/* ---- the host side: veth and NAT ---- */

static int setup_link(run_t *r) {
  if (ip_cmd(false, "link add %s type veth peer name %s netns %s", r->host_if,
             r->sb_if, r->ns) ||
      ip_cmd(false, "addr add %s/30 dev %s", r->host_ip, r->host_if) ||
      ip_cmd(false, "link set %s up", r->host_if) ||
      ip_cmd(false, "-n %s addr add %s/30 dev %s", r->ns, r->sb_ip, r->sb_if) ||
      ip_cmd(false, "-n %s link set %s up", r->ns, r->sb_if) ||
      ip_cmd(false, "-n %s link set lo up", r->ns) ||
      ip_cmd(false, "-n %s route add default via %s", r->ns, r->host_ip)) {
    say("could not set up the veth pair %s/%s (see the ip error above)",
        r->host_if, r->sb_if);
    return -1;
  }
  return 0;
}

/* table inet sandgate_run_<n> { chain postrouting { type nat hook
 * postrouting priority srcnat; ip saddr <net>/30 oifname != "<host_if>"
 * masquerade } } */
static int setup_nat(run_t *r) {
  char err[256] = "";
  sg_nft_batch_t *b = sg_nft_batch_new();
  struct nftnl_table *t = sg_nft_table_named(r->table);
  struct nftnl_chain *c = sg_nft_base_chain_in(r->table, "postrouting", "nat",
                                               NF_INET_POST_ROUTING, 100, -1);
  struct nftnl_rule *rule = sg_nft_rule_in(r->table, "postrouting");
  uint32_t net = htonl(((uint32_t)r->o.net_a << 24) |
                       ((uint32_t)r->o.net_b << 16) | ((uint32_t)r->n << 8));
  uint32_t mask = htonl(0xfffffffcu);
  char ifname[16] = {0};
  snprintf(ifname, sizeof(ifname), "%s", r->host_if);
  int rc = -1;
  if (b && t && c && rule && sg_nft_match_nfproto(rule, 4) &&
      sg_nft_payload(rule, NFT_PAYLOAD_NETWORK_HEADER, 12, 4) &&
      sg_nft_bitwise_mask(rule, &mask, 4) &&
      sg_nft_cmp(rule, NFT_CMP_EQ, &net, 4) &&
      sg_nft_meta(rule, NFT_META_OIFNAME) &&
      sg_nft_cmp(rule, NFT_CMP_NEQ, ifname, sizeof(ifname)) &&
      sg_nft_masquerade(rule) &&
      sg_nft_batch_add_table(b, NFT_MSG_NEWTABLE, NLM_F_CREATE, t) >= 0 &&
      sg_nft_batch_add_chain(b, NFT_MSG_NEWCHAIN, NLM_F_CREATE, c) >= 0 &&
      sg_nft_batch_add_rule(b, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND,
                            rule) >= 0)
    rc = sg_nft_batch_send(b, NULL);
  if (rc < 0)
    snprintf(err, sizeof(err), "%s", strerror(rc < -1 ? -rc : EINVAL));
  sg_nft_batch_free(b);
  if (t)
    nftnl_table_free(t);
  if (c)
    nftnl_chain_free(c);
  if (rule)
    nftnl_rule_free(rule);
  if (rc < 0) {
    say("could not install the NAT table inet %s: %s", r->table, err);
    return -1;
  }
  r->nat_made = 1;
  /* Forwarding, so the namespace's packets can leave through the host. */
  char *cur = NULL, ferr[128];
  if (sg_file_read("/proc/sys/net/ipv4/ip_forward", &cur, NULL, ferr,
                   sizeof(ferr)) == 0 &&
      cur[0] == '0') {
    FILE *f = fopen("/proc/sys/net/ipv4/ip_forward", "w");
    if (f) {
      fputs("1\n", f);
      if (fclose(f) == 0)
        r->forward_changed = 1;
    }
  }
  free(cur);
  return 0;
}

static void remove_nat(const char *table) {
  sg_nft_batch_t *b = sg_nft_batch_new();
  struct nftnl_table *t = sg_nft_table_named(table);
  if (b && t && sg_nft_batch_add_table(b, NFT_MSG_DELTABLE, 0, t) >= 0)
    sg_nft_batch_send(b, NULL);
  sg_nft_batch_free(b);
  if (t)
    nftnl_table_free(t);
}

/* ---- processes in the namespace ---- */

static int enter_netns(const char *ns) {
  char path[96];
  snprintf(path, sizeof(path), "/run/netns/%s", ns);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  int rc = setns(fd, CLONE_NEWNET);
  close(fd);
  return rc;
}

/* Starts `sandgate <argv...>` in the namespace, stdout/stderr to log. */
static pid_t spawn_self(run_t *r, char *const argv[], const char *log,
                        char *const envp[]) {
  pid_t pid = fork();
  if (pid != 0)
    return pid;
  setpgid(0, 0); /* Ctrl-C goes to CMD; the run stops these itself */
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  if (enter_netns(r->ns) != 0)
    _exit(126);
  int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd >= 0) {
    dup2(fd, 1);
    dup2(fd, 2);
  }
  execve("/proc/self/exe", argv, envp);
  _exit(127);
}

/* An HTTP GET /healthz on the egress API: 1 when it answers 200. */
static int healthy(const run_t *r) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(API_PORT)};
  inet_pton(AF_INET, r->sb_ip, &sa.sin_addr);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return 0;
  struct timeval tv = {.tv_sec = 1};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  int ok = 0;
  char buf[64];
  static const char req[] =
      "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
      write(fd, req, sizeof(req) - 1) == (ssize_t)(sizeof(req) - 1) &&
      read(fd, buf, sizeof(buf) - 1) > 12)
    ok = strncmp(buf, "HTTP/1.1 200", 12) == 0;
  close(fd);
  return ok;
}

static void random_token(char out[65]) {
  unsigned char b[32];
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0 || read(fd, b, sizeof(b)) != (ssize_t)sizeof(b)) {
    for (size_t i = 0; i < sizeof(b); i++)
      b[i] = (unsigned char)(rand() ^ (int)time(NULL));
  }
  if (fd >= 0)
    close(fd);
  for (size_t i = 0; i < sizeof(b); i++)
    sprintf(out + 2 * i, "%02x", b[i]);
}

/* The host's non-loopback nameservers, comma-separated. */
static int host_upstreams(char *out, size_t n) {
  struct sockaddr_storage ss[SG_UPSTREAM_MAX];
  char err[256];
  int k = sg_upstream_from_resolv_conf("/etc/resolv.conf", ss, SG_UPSTREAM_MAX,
                                       err, sizeof(err));
  out[0] = 0;
  size_t used = 0;
  for (int i = 0; i < k; i++) {
    char ip[SG_ADDRSTR_MAX];
    const struct sockaddr *sa = (const struct sockaddr *)&ss[i];
    if (!sg_sockaddr_ip(sa, ip, sizeof(ip)) || strncmp(ip, "127.", 4) == 0 ||
        strcmp(ip, "::1") == 0)
      continue;
    used += (size_t)snprintf(out + used, n - used, "%s%s", used ? "," : "", ip);
  }
  return used ? 0 : -1;
}

static int start_egress(run_t *r) {
  char *doc = policy_doc(&r->o);
  if (!doc)
    return -1;
  char upstream[512];
  if (r->o.upstream)
    snprintf(upstream, sizeof(upstream), "%s", r->o.upstream);
  else if (host_upstreams(upstream, sizeof(upstream))) {
    say("the host's /etc/resolv.conf has no nameserver the namespace can "
        "reach (only loopback ones, e.g. systemd-resolved): pass --upstream");
    free(doc);
    return -1;
  }
  random_token(r->token);
  char api[64], rules_dir[96], log[96];
  snprintf(api, sizeof(api), "%s:%d", r->sb_ip, API_PORT);
  snprintf(rules_dir, sizeof(rules_dir), "%s/rules", r->dir);
  snprintf(log, sizeof(log), "%s/egress.log", r->dir);
  mkdir(rules_dir, 0755);
  char *argv[] = {"sandgate",    "egress",
                  "--mode",      (char *)(r->o.mode ? r->o.mode : "dns+nft"),
                  "--upstream",  upstream,
                  "--http-addr", api,
                  "--rules-dir", rules_dir,
                  "--cleanup",   NULL};
  /* The document and the token go through the environment: a command line
   * is readable by every user, the sandboxed one included. */
  size_t ne = 0;
  while (environ[ne])
    ne++;
  char **envp = calloc(ne + 3, sizeof(char *));
  char *e_rules = malloc(strlen(doc) + 32), e_token[128];
  if (!envp || !e_rules) {
    free(envp);
    free(e_rules);
    free(doc);
    return -1;
  }
  size_t k = 0;
  for (size_t i = 0; i < ne; i++)
    if (strncmp(environ[i], "OPENSANDBOX_", 12) != 0 &&
        strncmp(environ[i], "SANDGATE_EGRESS_", 16) != 0)
      envp[k++] = environ[i];
  sprintf(e_rules, "OPENSANDBOX_EGRESS_RULES=%s", doc);
  snprintf(e_token, sizeof(e_token), "OPENSANDBOX_EGRESS_TOKEN=%s", r->token);
  envp[k++] = e_rules;
  envp[k++] = e_token;
  envp[k] = NULL;
  r->egress = spawn_self(r, argv, log, envp);
  free(envp);
  free(e_rules);
  free(doc);
  if (r->egress < 0) {
    say("cannot start the egress plane: %s", strerror(errno));
    return -1;
  }
  for (int waited = 0; waited < READY_TIMEOUT_MS; waited += 50) {
    if (healthy(r))
      return 0;
    int st;
    if (waitpid(r->egress, &st, WNOHANG) == r->egress) {
      r->egress = 0;
      say("the egress plane did not start; its log (%s) says:", log);
      char *text = NULL, err[128];
      if (sg_file_read(log, &text, NULL, err, sizeof(err)) == 0)
        fputs(text, stderr);
      free(text);
      return -1;
    }
    usleep(50000);
  }
  say("the egress plane did not answer on %s within %d s", api,
      READY_TIMEOUT_MS / 1000);
  return -1;
}

static int start_portproxy(run_t *r) {
  char log[96];
  snprintf(log, sizeof(log), "%s/portproxy.log", r->dir);
  char *argv[] = {"sandgate", "portproxy", "--port", "44772", NULL};
  r->portproxy = spawn_self(r, argv, log, environ);
  return r->portproxy > 0 ? 0 : -1;
}

/* The user CMD runs as: the one sudo was called by, else ourselves. */
static int target_user(uid_t *uid, gid_t *gid, const char **name) {
  const char *su = getenv("SUDO_UID"), *sg = getenv("SUDO_GID");
  *uid = getuid();
  *gid = getgid();
  if (su && sg) {
    *uid = (uid_t)atol(su);
    *gid = (gid_t)atol(sg);
  }
  struct passwd *pw = getpwuid(*uid);
  *name = pw ? pw->pw_name : NULL;
  return 0;
}

static pid_t start_cmd(run_t *r) {
  char resolv[96];
  snprintf(resolv, sizeof(resolv), "%s/resolv.conf", r->dir);
  FILE *f = fopen(resolv, "w");
  if (!f) {
    say("cannot write %s: %s", resolv, strerror(errno));
    return -1;
  }
  /* Any address works: the egress plane intercepts port 53. */
  fprintf(f,
          "# written by sandgate run: DNS goes through the egress "
          "plane\nnameserver %s\n",
          r->host_ip);
  fclose(f);
  uid_t uid;
  gid_t gid;
  const char *user;
  target_user(&uid, &gid, &user);
  pid_t pid = fork();
  if (pid != 0)
    return pid;
  /* The child: the namespace, a private mount namespace with our
   * resolv.conf, then the user's identity, then CMD. */
  if (enter_netns(r->ns) != 0) {
    fprintf(stderr, "sandgate run: cannot enter %s: %s\n", r->ns,
            strerror(errno));
    _exit(126);
  }
  if (unshare(CLONE_NEWNS) != 0 ||
      mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) != 0 ||
      mount(resolv, "/etc/resolv.conf", NULL, MS_BIND, NULL) != 0) {
    fprintf(stderr,
            "sandgate run: cannot give the namespace its "
            "resolv.conf: %s\n",
            strerror(errno));
    _exit(126);
  }
  if (uid != 0) {
    if ((user ? initgroups(user, gid) : setgroups(0, NULL)) != 0 ||
        setgid(gid) != 0 || setuid(uid) != 0) {
      fprintf(stderr, "sandgate run: cannot become uid %ld: %s\n", (long)uid,
              strerror(errno));
      _exit(126);
    }
  }
  execvp(r->o.cmd[0], r->o.cmd);
  fprintf(stderr, "sandgate run: %s: %s\n", r->o.cmd[0], strerror(errno));
  _exit(127);
}

/* ---- the policy API on the host ---- */

static void api_route(void *ctx, const sg_proxy_request_t *req,
                      sg_proxy_route_t *out) {
  run_t *r = ctx;
  snprintf(out->host, sizeof(out->host), "%s", r->sb_ip);
  out->port = API_PORT;
  size_t n = req->target_len < sizeof(out->path) - 1 ? req->target_len
                                                     : sizeof(out->path) - 1;
  memcpy(out->path, req->target, n);
  out->path[n] = 0;
  /* Whoever reaches the host address may write the policy; the sandbox,
   * which does not know the token, may not. */
  out->nset = 1;
  snprintf(out->set_name[0], sizeof(out->set_name[0]),
           "OPENSANDBOX-EGRESS-AUTH");
  snprintf(out->set_value[0], sizeof(out->set_value[0]), "%s", r->token);
  out->status = 0;
}

static int start_api_forwarder(run_t *r) {
  char err[256];
  sg_proxy_opts_t po = {
      .route = api_route,
      .route_ctx = r,
      .plain_errors = 1,
      .header_timeout_ms = 10000,
      .connect_timeout_ms = 5000,
      .first_byte_timeout_ms = 30000,
      .idle_timeout_ms = 60000,
      .keepalive_ms = 60000,
      .pool_idle_ms = 10000,
      .pool_max_per_backend = 4,
  };
  if (sg_sockaddr_parse(r->o.policy_api, API_PORT, &po.listen, err,
                        sizeof(err))) {
    say("--policy-api: %s", err);
    return -1;
  }
  if (sg_proxy_start(r->loop, &po, &r->api_fwd, err, sizeof(err))) {
    say("--policy-api: %s", err);
    return -1;
  }
  return 0;
}

/* ---- supervision and cleanup ---- */

static void stop_child(pid_t *pid) {
  if (*pid <= 0)
    return;
  kill(*pid, SIGTERM);
  for (int i = 0; i < 40; i++) {
    if (waitpid(*pid, NULL, WNOHANG) == *pid) {
      *pid = 0;
      return;
    }
    usleep(50000);
  }
  kill(*pid, SIGKILL);
  waitpid(*pid, NULL, 0);
  *pid = 0;
}

static void cleanup(run_t *r) {
  if (r->cmd > 0) {
    kill(r->cmd, SIGTERM);
    stop_child(&r->cmd);
  }
  stop_child(&r->portproxy);
  stop_child(&r->egress);
  /* What CMD left running in the background goes with the namespace. */
  kill_netns_procs(r->ns_ino);
  if (r->netns_made)
    ip_cmd(true, "netns del %s", r->ns); /* the veth pair goes with it */
  if (r->nat_made)
    remove_nat(r->table);
  if (r->forward_changed) {
    /* Only when no other run still needs forwarding. */
    struct stat st;
    bool others = false;
    for (int n = 0; n < 256 && !others; n++) {
      char path[64];
      snprintf(path, sizeof(path), "/run/netns/sgrun-%d", n);
      others = n != r->n && stat(path, &st) == 0;
    }
    FILE *f = others ? NULL : fopen("/proc/sys/net/ipv4/ip_forward", "w");
    if (f) {
      fputs("0\n", f);
      fclose(f);
    }
  }
  if (r->dir[0])
    remove_run_dir(r->dir, r->o.keep_logs);
}

static void close_all(run_t *r) {
  if (r->stopping)
    return;
  r->stopping = 1;
  uv_close((uv_handle_t *)&r->sigchld, NULL);
  uv_close((uv_handle_t *)&r->sigint, NULL);
  uv_close((uv_handle_t *)&r->sigterm, NULL);
  uv_close((uv_handle_t *)&r->sighup, NULL);
  if (r->api_fwd)
    sg_proxy_drain(r->api_fwd, 0, NULL, NULL);
  r->api_fwd = NULL;
}

static void on_sigchld(uv_signal_t *h, int signum) {
  (void)signum;
  run_t *r = h->data;
  int st;
  pid_t pid;
  while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
    if (pid == r->cmd) {
      r->cmd = 0;
      r->cmd_status = WIFEXITED(st)     ? WEXITSTATUS(st)
                      : WIFSIGNALED(st) ? 128 + WTERMSIG(st)
                                        : 1;
      close_all(r);
    } else if (pid == r->egress) {
      /* Without its egress plane the sandbox is closed: end CMD too. */
      r->egress = 0;
      say("the egress plane exited; stopping %s", r->o.cmd[0]);
      if (r->cmd > 0)
        kill(r->cmd, SIGTERM);
    } else if (pid == r->portproxy) {
      r->portproxy = 0;
    }
  }
}

static void on_stop_signal(uv_signal_t *h, int signum) {
  run_t *r = h->data;
  /* Passed on to CMD (a Ctrl-C reaches it from the terminal too, which
   * is harmless); CMD's end ends the run. */
  if (r->cmd > 0)
    kill(r->cmd, signum);
}

static int parse(opts_t *o, int argc, char **argv) {
  static const struct option lo[] = {
      {"policy", required_argument, NULL, 'p'},
      {"allow", required_argument, NULL, 'a'},
      {"deny", required_argument, NULL, 'd'},
      {"mode", required_argument, NULL, 'm'},
      {"publish", required_argument, NULL, 'P'},
      {"policy-api", required_argument, NULL, 'A'},
      {"upstream", required_argument, NULL, 'u'},
      {"subnet", required_argument, NULL, 's'},
      {"keep-logs", no_argument, NULL, 'k'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  memset(o, 0, sizeof(*o));
  o->net_a = 10;
  o->net_b = 200;
  optind = 1;
  opterr = 0;
  int opt;
  /* "+": stop at the first non-flag (CMD), like `--`. */
  while ((opt = getopt_long(argc, argv, "+h", lo, NULL)) != -1) {
    switch (opt) {
    case 'p': o->policy_file = optarg; break;
    case 'a':
    case 'd':
      if (o->nrules == MAX_RULES) {
        say("more than %d --allow/--deny rules", MAX_RULES);
        return 2;
      }
      o->rule_action[o->nrules] = opt == 'a' ? "allow" : "deny";
      o->rule_target[o->nrules++] = optarg;
      break;
    case 'm': o->mode = optarg; break;
    case 'P': {
      char *e;
      long port = strtol(optarg, &e, 10);
      if (*e || port < 1 || port > 65535 || o->npublish == MAX_PUBLISH) {
        say("--publish: \"%s\" is not a port (1-65535, at most %d)", optarg,
            MAX_PUBLISH);
        return 2;
      }
      o->publish[o->npublish++] = (uint16_t)port;
      break;
    }
    case 'A': o->policy_api = optarg; break;
    case 'u': o->upstream = optarg; break;
    case 's': {
      unsigned a, b, c, d;
      if (sscanf(optarg, "%u.%u.%u.%u", &a, &b, &c, &d) != 4 || a > 255 ||
          b > 255) {
        say("--subnet: \"%s\" is not an IPv4 address like 10.200.0.0", optarg);
        return 2;
      }
      o->net_a = (uint8_t)a;
      o->net_b = (uint8_t)b;
      break;
    }
    case 'k': o->keep_logs = 1; break;
    case 'h': fputs(usage, stdout); return 1;
    default:
      say("unknown flag or missing value near \"%s\" (see --help)",
          argv[optind - 1]);
      return 2;
    }
  }
  if (o->policy_file && o->nrules) {
    say("give the policy either as --policy FILE or as --allow/--deny rules, "
        "not both");
    return 2;
  }
  if (o->mode && strcasecmp(o->mode, "dns") != 0 &&
      strcasecmp(o->mode, "dns+nft") != 0) {
    say("--mode: \"%s\" is not dns or dns+nft", o->mode);
    return 2;
  }
  if (optind >= argc) {
    say("no command (usage: sandgate run [flags] -- CMD [ARGS...])");
    return 2;
  }
  o->cmd = argv + optind;
  return 0;
}

int sg_run_main(int argc, char **argv) {
  static run_t r;
  memset(&r, 0, sizeof(r));
  int rc = parse(&r.o, argc, argv);
  if (rc)
    return rc == 1 ? 0 : 2;
  if (geteuid() != 0) {
    say("needs root (network namespaces, a veth pair, nftables): run it with "
        "sudo; the command itself runs as you");
    return 2;
  }
  sg_log_set_level(SG_LOG_WARN);
  signal(SIGPIPE, SIG_IGN);
  /* Signals arrive through the loop from here on; until the loop runs,
   * block the ones that would end the run without cleanup. */
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGHUP);
  sigprocmask(SIG_BLOCK, &block, &old);
  r.loop = uv_default_loop();
  int status = 1;
  if (claim_index(&r) || setup_link(&r) || setup_nat(&r) || start_egress(&r) ||
      (r.o.npublish && start_portproxy(&r)) ||
      (r.o.policy_api && start_api_forwarder(&r)))
    goto done;
  say("sandbox %s: %s (%s mode, egress log %s/egress.log)", r.ns, r.sb_ip,
      r.o.mode ? r.o.mode : "dns+nft", r.dir);
  for (int i = 0; i < r.o.npublish; i++)
    say("published: http://%s:%d/proxy/%u/", r.sb_ip, PORTPROXY_PORT,
        r.o.publish[i]);
  if (r.o.policy_api)
    say("policy API: http://%s/policy", r.o.policy_api);
  uv_signal_init(r.loop, &r.sigchld);
  uv_signal_init(r.loop, &r.sigint);
  uv_signal_init(r.loop, &r.sigterm);
  uv_signal_init(r.loop, &r.sighup);
  r.sigchld.data = r.sigint.data = r.sigterm.data = r.sighup.data = &r;
  uv_signal_start(&r.sigchld, on_sigchld, SIGCHLD);
  uv_signal_start(&r.sigint, on_stop_signal, SIGINT);
  uv_signal_start(&r.sigterm, on_stop_signal, SIGTERM);
  uv_signal_start(&r.sighup, on_stop_signal, SIGHUP);
  sigprocmask(SIG_SETMASK, &old, NULL);
  r.cmd = start_cmd(&r);
  if (r.cmd < 0) {
    r.cmd = 0;
    r.cmd_status = 127;
    close_all(&r);
  }
  uv_run(r.loop, UV_RUN_DEFAULT);
  status = r.cmd_status;
done:
  cleanup(&r);
  sigprocmask(SIG_SETMASK, &old, NULL);
  uv_loop_close(r.loop);
  return status;
}
