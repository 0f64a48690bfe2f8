/* See batch.h. The kernel side this relies on (net/netfilter/nfnetlink.c):
 *
 * - A batch is one sendmsg: BATCH_BEGIN, the messages, BATCH_END. The kernel
 *   runs every message even after one failed, then commits only when all
 *   succeeded, otherwise aborts the whole transaction.
 * - Each message carrying NLM_F_ACK gets an NLMSG_ERROR answer with its own
 *   sequence number (error 0 when it went through), delivered after the
 *   whole batch ran.
 * - A refusal of the batch as a whole (no CAP_NET_ADMIN, no nf_tables
 *   subsystem, a failed commit) is one NLMSG_ERROR with the sequence number
 *   of BATCH_BEGIN; for a failed commit it comes before the per-message
 *   answers. */
#include "nft/batch.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <libmnl/libmnl.h>
#include <libnftnl/batch.h>
#include <libnftnl/chain.h>
#include <libnftnl/common.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>

#ifndef NETLINK_CAP_ACK
#define NETLINK_CAP_ACK 10
#endif

/* The same sizes as nft: messages are packed into 128 KiB pages, and one
 * message may run over a page by up to 64 KiB + a page (netlink attributes
 * carry 16-bit lengths, so no message is bigger). */
#define PAGE_BYTES (32 * 4096)
#define MSG_MAX_BYTES (65536 + 4096)

struct sg_nft_batch {
  struct nftnl_batch *nb;
  uint32_t seq_begin; /* message i has seq_begin + 1 + i, END the next one */
  int count;
  bool sent;
  /* What the kernel answered so far (allocated when sent). */
  int *err;       /* per message: 0 or negative errno, once answered */
  bool *answered; /* per message */
  int pending;    /* messages still unanswered */
  int frame_err;  /* negative errno of a refusal of the whole batch */
};

sg_nft_batch_t *sg_nft_batch_new(void) {
  /* Sequence numbers only need to be unique on our own socket, which lives
   * for one send; the time just makes them tell runs apart in a trace. */
  return sg_nft_batch_new_at((uint32_t)time(NULL));
}

sg_nft_batch_t *sg_nft_batch_new_at(uint32_t seq) {
  sg_nft_batch_t *b = calloc(1, sizeof(*b));
  if (!b)
    return NULL;
  b->nb = nftnl_batch_alloc(PAGE_BYTES, MSG_MAX_BYTES);
  if (!b->nb) {
    free(b);
    return NULL;
  }
  b->seq_begin = seq;
  nftnl_batch_begin(nftnl_batch_buffer(b->nb), b->seq_begin);
  if (nftnl_batch_update(b->nb) < 0) {
    nftnl_batch_free(b->nb);
    free(b);
    return NULL;
  }
  return b;
}

void sg_nft_batch_free(sg_nft_batch_t *b) {
  if (!b)
    return;
  nftnl_batch_free(b->nb);
  free(b->err);
  free(b->answered);
  free(b);
}

int sg_nft_batch_count(const sg_nft_batch_t *b) {
  return b->count;
}

/* The header of the next message, written in place in the batch buffer; the
 * caller appends the payload and calls end_msg. */
static struct nlmsghdr *begin_msg(sg_nft_batch_t *b, uint16_t type,
                                  uint32_t family, uint16_t flags) {
  uint32_t seq = b->seq_begin + 1 + (uint32_t)b->count;
  return nftnl_nlmsg_build_hdr(nftnl_batch_buffer(b->nb), type,
                               (uint16_t)family, flags | NLM_F_ACK, seq);
}

static int end_msg(sg_nft_batch_t *b) {
  if (nftnl_batch_update(b->nb) < 0)
    return -ENOMEM;
  return b->count++;
}

int sg_nft_batch_add_table(sg_nft_batch_t *b, uint16_t type, uint16_t flags,
                           const struct nftnl_table *t) {
  if (b->sent || !nftnl_table_is_set(t, NFTNL_TABLE_FAMILY))
    return -EINVAL;
  struct nlmsghdr *nlh =
      begin_msg(b, type, nftnl_table_get_u32(t, NFTNL_TABLE_FAMILY), flags);
  nftnl_table_nlmsg_build_payload(nlh, t);
  return end_msg(b);
}

int sg_nft_batch_add_chain(sg_nft_batch_t *b, uint16_t type, uint16_t flags,
                           const struct nftnl_chain *c) {
  if (b->sent || !nftnl_chain_is_set(c, NFTNL_CHAIN_FAMILY))
    return -EINVAL;
  struct nlmsghdr *nlh =
      begin_msg(b, type, nftnl_chain_get_u32(c, NFTNL_CHAIN_FAMILY), flags);
  nftnl_chain_nlmsg_build_payload(nlh, c);
  return end_msg(b);
}

int sg_nft_batch_add_rule(sg_nft_batch_t *b, uint16_t type, uint16_t flags,
                          struct nftnl_rule *r) {
  if (b->sent || !nftnl_rule_is_set(r, NFTNL_RULE_FAMILY))
    return -EINVAL;
  struct nlmsghdr *nlh =
      begin_msg(b, type, nftnl_rule_get_u32(r, NFTNL_RULE_FAMILY), flags);
  nftnl_rule_nlmsg_build_payload(nlh, r);
  return end_msg(b);
}

int sg_nft_batch_add_set(sg_nft_batch_t *b, uint16_t type, uint16_t flags,
                         struct nftnl_set *s) {
  if (b->sent || !nftnl_set_is_set(s, NFTNL_SET_FAMILY))
    return -EINVAL;
  struct nlmsghdr *nlh =
      begin_msg(b, type, nftnl_set_get_u32(s, NFTNL_SET_FAMILY), flags);
  nftnl_set_nlmsg_build_payload(nlh, s);
  return end_msg(b);
}

int sg_nft_batch_add_setelems(sg_nft_batch_t *b, uint16_t type, uint16_t flags,
                              struct nftnl_set *s) {
  if (b->sent || !nftnl_set_is_set(s, NFTNL_SET_FAMILY))
    return -EINVAL;
  struct nlmsghdr *nlh =
      begin_msg(b, type, nftnl_set_get_u32(s, NFTNL_SET_FAMILY), flags);
  nftnl_set_elems_nlmsg_build_payload(nlh, s);
  return end_msg(b);
}

uint32_t sg_nft_batch_seq_end(const sg_nft_batch_t *b) {
  return b->seq_begin + 1 + (uint32_t)b->count;
}

int sg_nft_batch_feed(sg_nft_batch_t *b, uint32_t seq, int error) {
  if (!b->sent || !b->err)
    return 0;
  if (error > 0)
    error = -error;
  uint32_t rel = seq - b->seq_begin; /* 0 is BEGIN */
  if (rel == 0 || rel == (uint32_t)b->count + 1) {
    if (error != 0)
      b->frame_err = error;
  } else if (rel <= (uint32_t)b->count) {
    int i = (int)rel - 1;
    if (!b->answered[i]) {
      b->answered[i] = true;
      b->err[i] = error;
      b->pending--;
    }
  } else {
    return 0; /* not about this batch */
  }
  return b->pending == 0 || b->frame_err != 0;
}

int sg_nft_batch_result(const sg_nft_batch_t *b, int *failed_index) {
  int where_dummy;
  int *where = failed_index ? failed_index : &where_dummy;
  if (b->frame_err) {
    *where = SG_NFT_BATCH_AT_FRAME;
    return b->frame_err;
  }
  /* The first refusal is the cause; later ones are mostly its echo. */
  for (int i = 0; i < b->count; i++) {
    if (b->answered[i] && b->err[i]) {
      *where = i;
      return b->err[i];
    }
  }
  if (b->pending > 0) {
    *where = SG_NFT_BATCH_AT_IO;
    return -ETIMEDOUT;
  }
  return 0;
}

static int on_error(const struct nlmsghdr *nlh, void *data) {
  sg_nft_batch_t *b = data;
  if (mnl_nlmsg_get_payload_len(nlh) < sizeof(struct nlmsgerr)) {
    errno = EBADMSG;
    return MNL_CB_ERROR;
  }
  const struct nlmsgerr *e = mnl_nlmsg_get_payload(nlh);
  sg_nft_batch_feed(b, nlh->nlmsg_seq, e->error);
  return MNL_CB_OK;
}

/* Makes a socket buffer at least `bytes` big. SO_*BUFFORCE lets root go
 * beyond net.core.[rw]mem_max; the plain option is the fallback. */
static void grow_buffer(int fd, int opt, int force_opt, size_t bytes) {
  int cur = 0;
  socklen_t len = sizeof(cur);
  if (bytes > (size_t)(1 << 30))
    bytes = (size_t)1 << 30;
  if (getsockopt(fd, SOL_SOCKET, opt, &cur, &len) == 0 && (size_t)cur >= bytes)
    return;
  int want = (int)bytes;
  if (setsockopt(fd, SOL_SOCKET, force_opt, &want, sizeof(want)) < 0)
    (void)setsockopt(fd, SOL_SOCKET, opt, &want, sizeof(want));
}

/* Opens and configures the socket for one batch. */
static int open_socket(const sg_nft_batch_t *b, size_t batch_bytes,
                       struct mnl_socket **out) {
  struct mnl_socket *nl = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);
  if (!nl)
    return errno ? -errno : -EPROTONOSUPPORT;
  if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
    int rc = errno ? -errno : -EIO;
    mnl_socket_close(nl);
    return rc;
  }
  int fd = mnl_socket_get_fd(nl);
  /* A kernel that never answers must not hang the caller. */
  struct timeval tv = {.tv_sec = SG_NFT_BATCH_TIMEOUT_MS / 1000,
                       .tv_usec = (SG_NFT_BATCH_TIMEOUT_MS % 1000) * 1000};
  if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0) {
    int rc = -errno;
    mnl_socket_close(nl);
    return rc;
  }
  /* Error answers need not echo the whole refused message back. */
  int one = 1;
  (void)setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
  /* The batch goes in one sendmsg, so it must fit the send buffer; and the
   * kernel drops answers that do not fit the receive buffer (it queues all
   * of them before we read any), about a kilobyte each in skb overhead. */
  grow_buffer(fd, SO_SNDBUF, SO_SNDBUFFORCE, batch_bytes);
  grow_buffer(fd, SO_RCVBUF, SO_RCVBUFFORCE, ((size_t)b->count + 2) * 1024);
  *out = nl;
  return 0;
}

static int send_batch(struct mnl_socket *nl, struct iovec *iov, int iovlen) {
  struct sockaddr_nl snl = {.nl_family = AF_NETLINK};
  struct msghdr msg = {
      .msg_name = &snl,
      .msg_namelen = sizeof(snl),
      .msg_iov = iov,
      .msg_iovlen = (size_t)iovlen,
  };
  ssize_t n;
  do
    n = sendmsg(mnl_socket_get_fd(nl), &msg, 0);
  while (n < 0 && errno == EINTR);
  return n < 0 ? -errno : 0;
}

/* Reads answers until every message has one or the batch was refused. */
static int read_acks(struct mnl_socket *nl, sg_nft_batch_t *a) {
  char *buf = malloc(MSG_MAX_BYTES);
  if (!buf)
    return -ENOMEM;
  mnl_cb_t ctl[NLMSG_MIN_TYPE] = {[NLMSG_ERROR] = on_error};
  unsigned int portid = mnl_socket_get_portid(nl);
  int rc = 0;
  while (a->pending > 0 && a->frame_err == 0) {
    ssize_t n = mnl_socket_recvfrom(nl, buf, MSG_MAX_BYTES);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      rc = (errno == EAGAIN || errno == EWOULDBLOCK) ? -ETIMEDOUT : -errno;
      break;
    }
    /* seq 0: the answers carry several sequence numbers, on_error sorts
     * them out. */
    if (mnl_cb_run2(buf, (size_t)n, 0, portid, NULL, a, ctl, NLMSG_MIN_TYPE) ==
        MNL_CB_ERROR) {
      rc = errno ? -errno : -EBADMSG;
      break;
    }
  }
  free(buf);
  return rc;
}

/* Closes the batch and allocates the answer bookkeeping. */
static int finish(sg_nft_batch_t *b) {
  if (b->sent || b->count == 0)
    return -EINVAL;
  b->sent = true;
  nftnl_batch_end(nftnl_batch_buffer(b->nb), sg_nft_batch_seq_end(b));
  if (nftnl_batch_update(b->nb) < 0)
    return -ENOMEM;
  b->err = calloc((size_t)b->count, sizeof(int));
  b->answered = calloc((size_t)b->count, sizeof(bool));
  b->pending = b->count;
  return b->err && b->answered ? 0 : -ENOMEM;
}

/* The batch as an iovec (allocated) and its size in bytes. */
static struct iovec *batch_iov(sg_nft_batch_t *b, int *iovlen, size_t *bytes) {
  *iovlen = nftnl_batch_iovec_len(b->nb);
  struct iovec *iov = calloc((size_t)*iovlen, sizeof(*iov));
  if (!iov)
    return NULL;
  nftnl_batch_iovec(b->nb, iov, (uint32_t)*iovlen);
  *bytes = 0;
  for (int i = 0; i < *iovlen; i++)
    *bytes += iov[i].iov_len;
  return iov;
}

int sg_nft_batch_send_on(sg_nft_batch_t *b, int fd) {
  int rc = finish(b);
  if (rc < 0)
    return rc;
  int iovlen;
  size_t bytes;
  struct iovec *iov = batch_iov(b, &iovlen, &bytes);
  if (!iov)
    return -ENOMEM;
  struct sockaddr_nl snl = {.nl_family = AF_NETLINK};
  struct msghdr msg = {
      .msg_name = &snl,
      .msg_namelen = sizeof(snl),
      .msg_iov = iov,
      .msg_iovlen = (size_t)iovlen,
  };
  ssize_t n;
  do
    n = sendmsg(fd, &msg, 0);
  while (n < 0 && errno == EINTR);
  free(iov);
  return n < 0 ? -errno : 0;
}

int sg_nft_batch_send(sg_nft_batch_t *b, int *failed_index) {
  int where_dummy;
  int *where = failed_index ? failed_index : &where_dummy;
  *where = SG_NFT_BATCH_AT_IO;
  int rc = finish(b);
  if (rc < 0)
    return rc;

  int iovlen;
  size_t bytes;
  struct iovec *iov = batch_iov(b, &iovlen, &bytes);
  struct mnl_socket *nl = NULL;
  if (!iov) {
    rc = -ENOMEM;
    goto out;
  }
  rc = open_socket(b, bytes, &nl);
  if (rc < 0) {
    *where = SG_NFT_BATCH_AT_SOCKET;
    goto out;
  }
  rc = send_batch(nl, iov, iovlen);
  if (rc < 0)
    goto out;
  rc = read_acks(nl, b);
  if (rc < 0)
    goto out;
  rc = sg_nft_batch_result(b, where);

out:
  if (nl)
    mnl_socket_close(nl);
  free(iov);
  return rc;
}
