/* `sandgate endpoint`: what OpenSandbox's get_endpoint returns in single-host
 * (Docker bridge) mode, for scripts and operators. The same function in Lua
 * is lua/sandgate/endpoint.lua; spec/endpoint_cases.txt holds the cases both
 * are tested against. */
#include "portproxy/portproxy.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HTTP_PORT 8080
#define MAX_MAPS 64

static const char usage[] =
    "usage: sandgate endpoint --public-host H --port X [--proxy-port P] "
    "[--map PORT=HOSTPORT]...\n"
    "\n"
    "Prints where a sandbox port is reached in single-host mode, as\n"
    "OpenSandbox's get_endpoint does: H:P/proxy/X through the port proxy\n"
    "published on host port P, or H:<mapped> for a port with a direct\n"
    "mapping (port 8080 needs one). Exits 1 with the reason when the mapping\n"
    "it needs is unavailable.\n";

/* A port: digits only, 1-65535 (leading zeros allowed). 0 when not. */
static long parse_port(const char *s, size_t n) {
  if (!s || n == 0)
    return 0;
  long v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return 0;
    v = v * 10 + (s[i] - '0');
    if (v > 65535)
      return 0;
  }
  return v >= 1 ? v : 0;
}

static int fail(const char *msg) {
  fprintf(stderr, "%s\n", msg);
  return 1;
}

int sg_endpoint_main(int argc, char **argv) {
  static const struct option lo[] = {
      {"public-host", required_argument, NULL, 'H'},
      {"proxy-port", required_argument, NULL, 'P'},
      {"port", required_argument, NULL, 'p'},
      {"map", required_argument, NULL, 'm'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *host = NULL, *proxy_s = NULL, *port_s = NULL;
  const char *maps[MAX_MAPS];
  int nmaps = 0;
  optind = 1;
  opterr = 0;
  int opt;
  while ((opt = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    switch (opt) {
    case 'H': host = optarg; break;
    case 'P': proxy_s = optarg; break;
    case 'p': port_s = optarg; break;
    case 'm':
      if (nmaps == MAX_MAPS)
        return fail("too many --map");
      maps[nmaps++] = optarg;
      break;
    case 'h': fputs(usage, stdout); return 0;
    default:
      fprintf(stderr, "sandgate endpoint: unknown flag or missing value near "
                      "\"%s\" (see --help)\n",
              argv[optind - 1]);
      return 2;
    }
  }
  /* OpenSandbox's order: the port first, then what the answer is built
   * from. */
  long port = port_s ? parse_port(port_s, strlen(port_s)) : 0;
  if (!port)
    return fail("Port must be between 1 and 65535.");
  if (!host || !*host)
    return fail("public host is required");
  long proxy = 0;
  if (proxy_s && !(proxy = parse_port(proxy_s, strlen(proxy_s)))) {
    fprintf(stderr, "invalid proxy port \"%s\": expected 1-65535\n", proxy_s);
    return 1;
  }
  long direct = 0;
  for (int i = 0; i < nmaps; i++) {
    const char *eq = strchr(maps[i], '=');
    long from = eq ? parse_port(maps[i], (size_t)(eq - maps[i])) : 0;
    long to = eq ? parse_port(eq + 1, strlen(eq + 1)) : 0;
    if (!from || !to) {
      fprintf(stderr,
              "invalid mapping \"%s\": expected PORT=HOSTPORT, each 1-65535\n",
              maps[i]);
      return 1;
    }
    if (from == port)
      direct = to; /* the last mapping of a port wins */
  }
  if (direct) {
    printf("%s:%ld\n", host, direct);
    return 0;
  }
  if (port == HTTP_PORT)
    return fail("Missing host port mapping for container port 8080.");
  if (!proxy)
    return fail("Missing host port mapping for execd proxy port 44772.");
  printf("%s:%ld/proxy/%ld\n", host, proxy, port);
  return 0;
}
