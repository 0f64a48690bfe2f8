/* Drives a c-ares channel from a libuv loop: c-ares says which sockets it
 * wants watched (ARES_OPT_SOCK_STATE_CB) and each gets a uv_poll that hands
 * readiness back to ares_process_fd. Timeouts stay the owner's business (a
 * tick timer calling ares_process_fd with no socket).
 *
 * The owner embeds an sg_ares_uv_t, passes sg_ares_uv_sock_state with a
 * pointer to it as the socket-state callback, and learns through `hold`
 * when a poll handle starts (+1) and when its close callback ran (-1), so
 * the owner is freed only after the last handle. */
#ifndef SG_DNS_ARES_UV_H
#define SG_DNS_ARES_UV_H

#include <ares.h>
#include <stddef.h>
#include <uv.h>

typedef struct sg_ares_poller sg_ares_poller_t;

typedef struct {
  uv_loop_t *loop;
  ares_channel ch; /* set by the owner once ares_init_options succeeded */
  sg_ares_poller_t *pollers;
  void (*hold)(void *owner, int delta);
  void *owner;
} sg_ares_uv_t;

/* ares_library_init, once per process. Returns 0 or -ENOMEM (with err). */
int sg_ares_uv_library_init(char *err, size_t errlen);

void sg_ares_uv_init(sg_ares_uv_t *io, uv_loop_t *loop,
                     void (*hold)(void *owner, int delta), void *owner);

/* The ARES_OPT_SOCK_STATE_CB callback; data is the sg_ares_uv_t. */
void sg_ares_uv_sock_state(void *data, ares_socket_t fd, int readable,
                           int writable);

#endif
