/* `sandgate ingress`: the Lua-routed HTTP/SSE/WebSocket gateway that gives
 * every sandbox port a stable URL (OpenSandbox's ingress, wire-compatible). */
#ifndef SG_INGRESS_INGRESS_H
#define SG_INGRESS_INGRESS_H

/* Runs the gateway until SIGTERM/SIGINT (then drains). Returns the process
 * exit code. */
int sg_ingress_main(int argc, char **argv);

#endif
