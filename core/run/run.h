/* `sandgate run`: a command in a fresh network namespace whose egress goes
 * through the egress plane with a given policy. */
#ifndef SG_RUN_RUN_H
#define SG_RUN_RUN_H

int sg_run_main(int argc, char **argv);

#endif
