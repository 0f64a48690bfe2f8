/* The policy developer's commands: `sandgate check` (load a script exactly
 * as the server would and report every error) and `sandgate test` (run a
 * cases file against it). Both build their VMs with the server's loader
 * (sg_vm_new_egress, sg_vm_new_ingress) and the server's config document,
 * and `test` asks the VM through the explain functions the APIs use
 * (sg_egress_explain, sg_ingress_explain), so what they report is what a
 * running server does. */
#ifndef SG_TOOLS_TOOLS_H
#define SG_TOOLS_TOOLS_H

#include <stddef.h>
#include <stdint.h>

#include "ingress/routing.h"
#include "script/vm.h"

/* The command line both commands share. */
typedef struct {
  const char *args[2]; /* SCRIPT, and CASES for test */
  int nargs;
  sg_vm_kind_t kind; /* 0 until known: --kind, or guessed from the hooks */
  const char *data_dir;
  /* egress */
  const char *policy_file;
  char *policy_json; /* its text (NULL: deny-all) */
  const char *rules_dir;
  char *always_text[3]; /* deny.always, allow.always, log_skip.always */
  char always_path[3][4096];
  /* ingress */
  sg_ingress_sources_t ingress;
  /* the limits, as the servers take them */
  size_t mem_limit;
  uint32_t call_budget_ms;
} sg_tool_t;

/* Parses argv (after the command name) into t: nargs positional arguments
 * and the shared flags; reads the policy file and the always-lists, and
 * tells the script's kind unless --kind did. Returns 0, 1 when --help was
 * printed, 2 with a message naming the bad flag or file in err (a usage
 * error), or -EINVAL with the script's own error in err (it cannot be read
 * or run to tell its kind: reported as the load's error). */
int sg_tool_init(sg_tool_t *t, int argc, char **argv, int nargs,
                 const char *usage, char *err, size_t errlen);
void sg_tool_free(sg_tool_t *t);

/* Builds the script's VM with the server's loader. Egress: with policy_json
 * and always (NULL: the command line's), and always with static_sets().
 * Ingress: with cfg_json (NULL: the command line's). Errors as the loader
 * gives them, one per line. */
int sg_tool_build(const sg_tool_t *t, const char *policy_json,
                  char *const always[3], const char *cfg_json, sg_vm_t **out,
                  char *err, size_t errlen);

/* Prints a load's errors, one line each after `lead`; a line about the
 * policy document or the routes is prefixed with the file it came from. */
void sg_tool_print_errors(const sg_tool_t *t, const char *lead,
                          const char *errors);

int sg_check_main(int argc, char **argv);
int sg_test_main(int argc, char **argv);

#endif
