/* The gateway's routing decision, shared by everything that needs it: the
 * workers (every request), the admin API's POST /explain and `sandgate
 * check`/`sandgate test`. One config document, one routing function, one
 * explanation built from the engine's own routing and request rewrite. */
#ifndef SG_INGRESS_ROUTING_H
#define SG_INGRESS_ROUTING_H

#include <stddef.h>
#include <stdio.h>

#include "nft/ipset.h"
#include "proxy/proxy.h"
#include "script/vm.h"

/* Where the routing VM's config document comes from (the gateway's flags). */
typedef struct {
  const char *mode;          /* "header" or "uri"; NULL = header */
  const char *routes;        /* routes file, or NULL */
  const char *script_config; /* JSON file for ctx.config.script_config */
  const char *dns_template;
  const char *keys; /* "id=base64,..." */
} sg_ingress_sources_t;

/* The config document a routing VM is built with (see
 * lua/sandgate/ingress/host.lua): mode, routes, script_config, dns_template,
 * keys. Returns a malloc'd string, or NULL with err naming the file that
 * cannot be read. */
char *sg_ingress_config_json(const sg_ingress_sources_t *src, char *err,
                             size_t errlen);

/* The route for one request: GET /status.ok is answered by the gateway
 * itself, everything else by the routing script. */
void sg_ingress_route(sg_vm_t *vm, const sg_proxy_request_t *req,
                      sg_proxy_route_t *out);

/* How the request would be framed (as llhttp decides it): chunked when
 * Transfer-Encoding ends in chunked, an upgrade when Connection lists
 * upgrade and an Upgrade header is present. */
void sg_ingress_framing(const sg_proxy_request_t *req, int *chunked,
                        int *upgrade);

/* Writes what the gateway would do with req, without sending anything, as
 * one JSON object (no newline):
 *   request                    {method, path, host, client} as received
 *   status, message            when the gateway answers itself (an error,
 *                              or 200 for /status.ok)
 *   sandbox, host, port, path  the route: the backend and the
 *                              request-target sent to it
 *   keep_host                  whether the client's Host goes through
 *   set_headers                {name: value} the route sets
 *   removed                    [names] the route strips (always the routing
 *                              and secure-access headers)
 *   headers                    [[name, value], ...] the head the backend
 *                              gets, in order (as the engine writes it)
 * trusted is the gateway's --trusted-proxies pair (NULL: none). */
void sg_ingress_explain(sg_vm_t *vm, const sg_proxy_request_t *req,
                        const sg_ipset_t *trusted, FILE *f);

#endif
