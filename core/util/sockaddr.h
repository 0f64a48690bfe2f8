/* Socket address parsing and formatting shared by every listener and by the
 * upstream list. */
#ifndef SG_UTIL_SOCKADDR_H
#define SG_UTIL_SOCKADDR_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Enough for "[ffff:...:ffff%iface]:65535". */
#define SG_ADDRSTR_MAX 80

/* Parses "IP", "IP:port", "[v6]" or "[v6]:port" (a bare IPv6 address without
 * brackets is accepted too, and takes the default port). Only numeric
 * addresses: a hostname is refused. Returns 0, or -EINVAL with a message in
 * err naming the input. */
int sg_sockaddr_parse(const char *s, uint16_t default_port,
                      struct sockaddr_storage *out, char *err, size_t errlen);

/* "1.2.3.4:53" / "[::1]:53". */
const char *sg_sockaddr_str(const struct sockaddr *sa, char *buf, size_t len);
/* The address alone, "1.2.3.4" / "::1". */
const char *sg_sockaddr_ip(const struct sockaddr *sa, char *buf, size_t len);
uint16_t sg_sockaddr_port(const struct sockaddr *sa);
socklen_t sg_sockaddr_len(const struct sockaddr *sa);

/* Raises a socket's receive buffer to `bytes`: SO_RCVBUFFORCE where the
 * process may (CAP_NET_ADMIN), else SO_RCVBUF (capped by rmem_max). A burst
 * of answers must queue, not be dropped: a lost UDP answer costs the client
 * a whole timeout. Best effort; returns 0 or a negative errno. */
int sg_socket_grow_rcvbuf(int fd, int bytes);

#endif
