/* `sandgate portproxy`: the in-sandbox /proxy/{port} proxy (OpenSandbox
 * execd-compatible), so one published port reaches every port. */
#ifndef SG_PORTPROXY_PORTPROXY_H
#define SG_PORTPROXY_PORTPROXY_H

int sg_portproxy_main(int argc, char **argv);

/* `sandgate endpoint`: OpenSandbox's single-host get_endpoint. */
int sg_endpoint_main(int argc, char **argv);

#endif
