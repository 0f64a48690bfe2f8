#include "util/sockaddr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse_port(const char *s, uint16_t *port) {
  char *end;
  if (!*s)
    return -1;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || v < 1 || v > 65535)
    return -1;
  *port = (uint16_t)v;
  return 0;
}

int sg_sockaddr_parse(const char *s, uint16_t default_port,
                      struct sockaddr_storage *out, char *err, size_t errlen) {
  char host[INET6_ADDRSTRLEN + 1];
  const char *port_s = NULL;
  size_t hlen;
  memset(out, 0, sizeof(*out));

  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    if (!close)
      goto bad;
    hlen = (size_t)(close - s - 1);
    if (hlen >= sizeof(host))
      goto bad;
    memcpy(host, s + 1, hlen);
    host[hlen] = 0;
    if (close[1] == ':')
      port_s = close + 2;
    else if (close[1])
      goto bad;
  } else {
    const char *colon = strchr(s, ':');
    /* More than one colon and no brackets: a bare IPv6 address. */
    if (colon && strchr(colon + 1, ':'))
      colon = NULL;
    hlen = colon ? (size_t)(colon - s) : strlen(s);
    if (hlen >= sizeof(host))
      goto bad;
    memcpy(host, s, hlen);
    host[hlen] = 0;
    if (colon)
      port_s = colon + 1;
  }

  uint16_t port = default_port;
  if (port_s && parse_port(port_s, &port) != 0) {
    snprintf(err, errlen, "\"%s\": port must be a number from 1 to 65535", s);
    return -EINVAL;
  }
  struct sockaddr_in *sin = (struct sockaddr_in *)out;
  struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
  if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    return 0;
  }
  if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    return 0;
  }
bad:
  snprintf(err, errlen,
           "\"%s\" is not an IP address (expected IP, IP:port or [IPv6]:port; "
           "hostnames are not accepted)",
           s);
  return -EINVAL;
}

const char *sg_sockaddr_ip(const struct sockaddr *sa, char *buf, size_t len) {
  if (sa->sa_family == AF_INET)
    inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf,
              (socklen_t)len);
  else if (sa->sa_family == AF_INET6)
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf,
              (socklen_t)len);
  else
    snprintf(buf, len, "?");
  return buf;
}

uint16_t sg_sockaddr_port(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET)
    return ntohs(((const struct sockaddr_in *)sa)->sin_port);
  if (sa->sa_family == AF_INET6)
    return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
  return 0;
}

int sg_socket_grow_rcvbuf(int fd, int bytes) {
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof(bytes)) == 0)
    return 0;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes)) == 0)
    return 0;
  return -errno;
}

socklen_t sg_sockaddr_len(const struct sockaddr *sa) {
  return sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                   : sizeof(struct sockaddr_in);
}

const char *sg_sockaddr_str(const struct sockaddr *sa, char *buf, size_t len) {
  char ip[INET6_ADDRSTRLEN];
  sg_sockaddr_ip(sa, ip, sizeof(ip));
  if (sa->sa_family == AF_INET6)
    snprintf(buf, len, "[%s]:%u", ip, sg_sockaddr_port(sa));
  else
    snprintf(buf, len, "%s:%u", ip, sg_sockaddr_port(sa));
  return buf;
}
