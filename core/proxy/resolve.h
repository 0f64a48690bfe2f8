/* Backend name resolution for the gateway: c-ares on the worker's loop
 * (the system's resolv.conf), answers cached for their TTL (at least 1 s,
 * at most 300 s), so a DNS-template route costs one lookup per name and
 * TTL, not one per request. IP literals never reach the network. */
#ifndef SG_PROXY_RESOLVE_H
#define SG_PROXY_RESOLVE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

typedef struct sg_resolver sg_resolver_t;
typedef struct sg_resolve_req sg_resolve_req_t;

/* status 0 with the address (port set), or a negative libuv error. */
typedef void (*sg_resolve_cb)(void *arg, int status,
                              const struct sockaddr_storage *addr);

int sg_resolver_new(uv_loop_t *loop, sg_resolver_t **out, char *err,
                    size_t errlen);

/* Resolves host. Returns 0 when the answer is already known (IP literal or
 * cached: *addr filled, cb not called), 1 when cb will be called later
 * (*req set: pass it to sg_resolve_cancel if arg goes away first), or a
 * negative error. */
int sg_resolve(sg_resolver_t *r, const char *host, uint16_t port,
               struct sockaddr_storage *addr, sg_resolve_cb cb, void *arg,
               sg_resolve_req_t **req);

/* The callback will not be called. */
void sg_resolve_cancel(sg_resolve_req_t *req);

void sg_resolver_close(sg_resolver_t *r);

#endif
