#include "ingress/routing.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/file.h"
#include "util/json.h"

char *sg_ingress_config_json(const sg_ingress_sources_t *src, char *err,
                             size_t errlen) {
  char *routes = NULL, *extra = NULL;
  if (src->routes && sg_file_read(src->routes, &routes, NULL, err, errlen))
    return NULL;
  /* An empty file is a write in progress (truncate, then write), not an
   * empty table: that is `{}`. */
  if (routes && routes[strspn(routes, " \t\r\n")] == 0) {
    snprintf(err, errlen,
             "routes file %s is empty (an empty routes table is {})",
             src->routes);
    free(routes);
    return NULL;
  }
  if (src->script_config &&
      sg_file_read(src->script_config, &extra, NULL, err, errlen)) {
    free(routes);
    return NULL;
  }
  char *out = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&out, &len);
  if (!f) {
    free(routes);
    free(extra);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  fputs("{\"mode\":", f);
  sg_json_str(f, src->mode && strcasecmp(src->mode, "uri") == 0 ? "uri"
                                                                : "header");
  /* The files' texts go in as they are: the Lua side decodes the whole
   * document and names a bad field. */
  fputs(",\"routes\":", f);
  fputs(routes && *routes ? routes : "null", f);
  fputs(",\"script_config\":", f);
  fputs(extra && *extra ? extra : "null", f);
  fputs(",\"dns_template\":", f);
  sg_json_str(f, src->dns_template);
  fputs(",\"keys\":{", f);
  if (src->keys) {
    char *copy = strdup(src->keys), *save = NULL;
    int first = 1;
    for (char *t = copy ? strtok_r(copy, ",", &save) : NULL; t;
         t = strtok_r(NULL, ",", &save)) {
      char *eq = strchr(t, '=');
      if (!eq)
        continue;
      *eq = 0;
      sg_json_key(f, &first, t);
      sg_json_str(f, eq + 1);
    }
    free(copy);
  }
  fputs("}}", f);
  fclose(f);
  free(routes);
  free(extra);
  return out;
}

void sg_ingress_route(sg_vm_t *vm, const sg_proxy_request_t *req,
                      sg_proxy_route_t *out) {
  if (req->target_len == 10 && memcmp(req->target, "/status.ok", 10) == 0 &&
      strcmp(req->method, "GET") == 0) {
    out->status = 200;
    snprintf(out->message, sizeof(out->message), "OK");
    return;
  }
  sg_vm_route(vm, req, out);
}

static void route_cb(void *ctx, const sg_proxy_request_t *req,
                     sg_proxy_route_t *out) {
  sg_ingress_route(ctx, req, out);
}

static const char *find(const sg_proxy_request_t *req, const char *name,
                        size_t *len) {
  size_t n = strlen(name);
  for (size_t i = 0; i < req->nheaders; i++)
    if (req->headers[i].name_len == n &&
        strncasecmp(req->headers[i].name, name, n) == 0) {
      *len = req->headers[i].value_len;
      return req->headers[i].value;
    }
  return NULL;
}

void sg_ingress_framing(const sg_proxy_request_t *req, int *chunked,
                        int *upgrade) {
  size_t tl = 0, cl = 0, ul = 0;
  const char *te = find(req, "transfer-encoding", &tl);
  const char *conn = find(req, "connection", &cl);
  *chunked = 0;
  if (te) {
    while (tl && (te[tl - 1] == ' ' || te[tl - 1] == '\t'))
      tl--;
    *chunked = tl >= 7 && strncasecmp(te + tl - 7, "chunked", 7) == 0;
  }
  *upgrade = conn && sg_proxy_list_has(conn, cl, "upgrade", 7) &&
             find(req, "upgrade", &ul);
}

typedef struct {
  FILE *f;
  int n;
} pairs_t;

static void json_pair(void *ctx, const char *name, size_t nl, const char *value,
                      size_t vl) {
  pairs_t *p = ctx;
  fputs(p->n++ ? ",[" : "[", p->f);
  sg_json_strn(p->f, name, nl);
  fputc(',', p->f);
  sg_json_strn(p->f, value, vl);
  fputc(']', p->f);
}

void sg_ingress_explain(sg_vm_t *vm, const sg_proxy_request_t *req,
                        const sg_ipset_t *trusted, FILE *f) {
  sg_proxy_route_t *rt = malloc(sizeof(*rt));
  int first = 1;
  size_t hl = 0;
  const char *host = find(req, "host", &hl);
  fputc('{', f);
  sg_json_key(f, &first, "request");
  fputs("{\"method\":", f);
  sg_json_str(f, req->method);
  fputs(",\"path\":", f);
  sg_json_strn(f, req->target, req->target_len);
  fputs(",\"host\":", f);
  if (host)
    sg_json_strn(f, host, hl);
  else
    fputs("null", f);
  fputs(",\"client\":", f);
  sg_json_str(f, req->client_ip);
  fputc('}', f);
  if (!rt) {
    fputs(",\"status\":500,\"message\":\"out of memory\"}", f);
    return;
  }
  sg_proxy_route(route_cb, vm, req, rt);
  if (rt->status != 0) {
    sg_json_key(f, &first, "status");
    fprintf(f, "%d", rt->status);
    sg_json_key(f, &first, "message");
    sg_json_str(f, rt->message);
    fputc('}', f);
    free(rt);
    return;
  }
  if (rt->sandbox[0]) {
    sg_json_key(f, &first, "sandbox");
    sg_json_str(f, rt->sandbox);
  }
  sg_json_key(f, &first, "host");
  sg_json_str(f, rt->host);
  sg_json_key(f, &first, "port");
  fprintf(f, "%u", (unsigned)rt->port);
  sg_json_key(f, &first, "path");
  sg_json_str(f, rt->path);
  sg_json_key(f, &first, "keep_host");
  fputs(rt->keep_host ? "true" : "false", f);
  sg_json_key(f, &first, "set_headers");
  fputc('{', f);
  int sfirst = 1;
  for (int i = 0; i < rt->nset; i++) {
    sg_json_key(f, &sfirst, rt->set_name[i]);
    sg_json_str(f, rt->set_value[i]);
  }
  fputc('}', f);
  sg_json_key(f, &first, "removed");
  fputc('[', f);
  for (int i = 0; i < rt->nremove; i++) {
    if (i)
      fputc(',', f);
    sg_json_str(f, rt->remove[i]);
  }
  fputc(']', f);
  /* The head the backend gets, written by the engine's own rewrite. */
  int chunked, upgrade;
  sg_ingress_framing(req, &chunked, &upgrade);
  sg_json_key(f, &first, "headers");
  fputc('[', f);
  pairs_t pairs = {f, 0};
  sg_proxy_forward_headers(req, rt, sg_proxy_trusted(trusted, req->client_ip),
                           chunked, upgrade, json_pair, &pairs);
  fputs("]}", f);
  free(rt);
}
