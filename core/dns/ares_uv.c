#include "dns/ares_uv.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "util/common.h"

struct sg_ares_poller {
  uv_poll_t poll;
  sg_ares_uv_t *io;
  ares_socket_t fd;
  sg_ares_poller_t *next;
};

int sg_ares_uv_library_init(char *err, size_t errlen) {
  /* Every user runs on the one loop thread, so a plain flag is enough. */
  static int ready;
  if (ready)
    return 0;
  int rc = ares_library_init(ARES_LIB_INIT_ALL);
  if (rc != ARES_SUCCESS) {
    snprintf(err, errlen, "c-ares: %s", ares_strerror(rc));
    return -ENOMEM;
  }
  ready = 1;
  return 0;
}

void sg_ares_uv_init(sg_ares_uv_t *io, uv_loop_t *loop,
                     void (*hold)(void *owner, int delta), void *owner) {
  io->loop = loop;
  io->ch = NULL;
  io->pollers = NULL;
  io->hold = hold;
  io->owner = owner;
}

static void on_poller_closed(uv_handle_t *h) {
  sg_ares_poller_t *p = container_of((uv_poll_t *)h, sg_ares_poller_t, poll);
  sg_ares_uv_t *io = p->io;
  free(p);
  io->hold(io->owner, -1);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  sg_ares_poller_t *p = container_of(h, sg_ares_poller_t, poll);
  ares_socket_t rd = ARES_SOCKET_BAD, wr = ARES_SOCKET_BAD;
  /* On an error let c-ares try both directions: it sees the socket error
   * itself and deals with the queries on that socket. */
  if (status < 0 || (events & UV_READABLE))
    rd = p->fd;
  if (status < 0 || (events & UV_WRITABLE))
    wr = p->fd;
  ares_process_fd(p->io->ch, rd, wr);
}

void sg_ares_uv_sock_state(void *data, ares_socket_t fd, int readable,
                           int writable) {
  sg_ares_uv_t *io = data;
  sg_ares_poller_t **pp = &io->pollers, *p;
  while ((p = *pp) && p->fd != fd)
    pp = &p->next;

  if (!readable && !writable) {
    if (p) {
      *pp = p->next;
      uv_poll_stop(&p->poll);
      uv_close((uv_handle_t *)&p->poll, on_poller_closed);
    }
    return;
  }
  if (!p) {
    p = calloc(1, sizeof(*p));
    if (!p)
      return; /* the query on that socket times out */
    if (uv_poll_init_socket(io->loop, &p->poll, fd) != 0) {
      free(p);
      return;
    }
    p->io = io;
    p->fd = fd;
    p->next = io->pollers;
    io->pollers = p;
    io->hold(io->owner, +1);
  }
  uv_poll_start(&p->poll,
                (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0),
                on_poll);
}
