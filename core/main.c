/* sandgate: one binary, one subcommand per process role. */
#include <stdio.h>
#include <string.h>

#include "egress/egress.h"
#include "ingress/ingress.h"
#include "portproxy/portproxy.h"
#include "run/run.h"
#include "tools/tools.h"

#define SANDGATE_VERSION "0.1.0"

static const char usage[] =
    "usage: sandgate <command> [flags]\n"
    "\n"
    "commands:\n"
    "  egress     the egress plane of a sandbox: policy DNS proxy + "
    "interception\n"
    "  ingress    the gateway: a stable URL for every sandbox port, routed "
    "by Lua\n"
    "  portproxy  the in-sandbox /proxy/{port} proxy: one published port "
    "reaches every port\n"
    "  run        a command in a fresh network namespace behind the egress "
    "plane\n"
    "  endpoint   where a sandbox port is reached in single-host mode\n"
    "  check      load a policy or routing script as the server would; print "
    "ok or its errors\n"
    "  test       run a JSON cases file against a policy or routing script\n"
    "  version    print the version\n"
    "\n"
    "Run `sandgate <command> --help` for the flags of a command.\n";

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0 ||
      strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
    fputs(usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const char *cmd = argv[1];
  if (strcmp(cmd, "egress") == 0)
    return sg_egress_main(argc - 1, argv + 1);
  if (strcmp(cmd, "ingress") == 0)
    return sg_ingress_main(argc - 1, argv + 1);
  if (strcmp(cmd, "portproxy") == 0)
    return sg_portproxy_main(argc - 1, argv + 1);
  if (strcmp(cmd, "run") == 0)
    return sg_run_main(argc - 1, argv + 1);
  if (strcmp(cmd, "endpoint") == 0)
    return sg_endpoint_main(argc - 1, argv + 1);
  if (strcmp(cmd, "check") == 0)
    return sg_check_main(argc - 1, argv + 1);
  if (strcmp(cmd, "test") == 0)
    return sg_test_main(argc - 1, argv + 1);
  if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
    printf("sandgate %s\n", SANDGATE_VERSION);
    return 0;
  }
  fprintf(stderr, "sandgate: unknown command \"%s\"\n\n%s", cmd, usage);
  return 2;
}
