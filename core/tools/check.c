/* `sandgate check SCRIPT`: loads a policy or routing script exactly as the
 * server would and prints "ok" or every error, one per line, with its file,
 * line and stage. Exit 0 (ok), 1 (errors), 2 (usage). */
#include <stdio.h>

#include "tools/tools.h"

/* clang-format off */
static const char usage[] =
    "usage: sandgate check SCRIPT [flags]\n"
    "\n"
    "Loads SCRIPT exactly as the server would (the same sandbox, memory cap and\n"
    "time budget, the same document or routes), runs its main chunk, load(),\n"
    "static_sets() and selftest(), and prints \"ok\" or each error with its\n"
    "file:line and the hook it came from. Exit 0 when it loads, 1 when not.\n"
    "\n"
    "flags:\n"
    "  --kind egress|ingress  the plane (default: from the hooks: decide = egress,\n"
    "                         route = ingress)\n"
    "egress:\n"
    "  --policy FILE          the policy document (JSON) to load with (deny-all)\n"
    "  --rules-dir DIR        deny.always, allow.always, log_skip.always (none)\n"
    "ingress:\n"
    "  --routes FILE          sandbox id -> backend (JSON)\n"
    "  --script-config FILE   JSON the script gets as ctx.config.script_config\n"
    "  --mode header|uri      ctx.mode (header)\n"
    "  --dns-template T       backend host name template ({id})\n"
    "  --secure-access-keys L id=base64,... signing keys\n"
    "both:\n"
    "  --script-memory MB     SANDGATE_SCRIPT_MEMORY_MB: memory cap (64)\n"
    "  --script-timeout MS    SANDGATE_SCRIPT_TIMEOUT_MS: per-call budget (100)\n"
    "  --log-level LEVEL      what the script's own log lines show (warn)\n";
/* clang-format on */

int sg_check_main(int argc, char **argv) {
  sg_tool_t t;
  char err[8192];
  int rc = sg_tool_init(&t, argc, argv, 1, usage, err, sizeof(err));
  if (rc == 1) {
    sg_tool_free(&t);
    return 0;
  }
  if (rc == 2) {
    fprintf(stderr, "sandgate check: %s\n", err);
    sg_tool_free(&t);
    return 2;
  }
  sg_vm_t *vm = NULL;
  if (rc == 0)
    rc = sg_tool_build(&t, NULL, NULL, NULL, &vm, err, sizeof(err));
  if (rc) {
    sg_tool_print_errors(&t, "", err);
    sg_tool_free(&t);
    return 1;
  }
  sg_vm_unref(vm);
  sg_tool_free(&t);
  puts("ok");
  return 0;
}
