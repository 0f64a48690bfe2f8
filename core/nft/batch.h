/* One nf_tables netlink transaction: messages built with libnftnl objects,
 * sent as a single batch (BATCH_BEGIN ... BATCH_END) over a NETLINK_NETFILTER
 * socket, applied by the kernel all or nothing.
 *
 * Every message is sent with NLM_F_ACK, so the kernel answers each one with
 * its own sequence number; sg_nft_batch_send waits for all the answers and
 * reports which message failed first (the later ones often fail only as a
 * consequence, e.g. a rule whose chain was refused).
 *
 * Usage:
 *
 *   sg_nft_batch_t *b = sg_nft_batch_new();
 *   int i_table = sg_nft_batch_add_table(b, NFT_MSG_NEWTABLE, NLM_F_CREATE, t);
 *   int i_chain = sg_nft_batch_add_chain(b, NFT_MSG_NEWCHAIN, NLM_F_CREATE, c);
 *   ...
 *   int failed;
 *   int rc = sg_nft_batch_send(b, &failed);  // rc < 0: compare failed with
 *   sg_nft_batch_free(b);                    // i_table, i_chain, ...
 *
 * The add functions copy the object into the batch; the caller keeps
 * ownership of it. The family of each message is taken from the object's
 * FAMILY attribute, which must be set. */
#ifndef SG_NFT_BATCH_H
#define SG_NFT_BATCH_H

#include <stdint.h>

struct nftnl_table;
struct nftnl_chain;
struct nftnl_rule;
struct nftnl_set;

typedef struct sg_nft_batch sg_nft_batch_t;

/* Values of *failed_index when a send failed but not at one of the caller's
 * messages. */
enum {
  /* No NETLINK_NETFILTER socket could be opened or bound: the kernel has no
   * nfnetlink (or the socket family is filtered away). */
  SG_NFT_BATCH_AT_SOCKET = -1,
  /* Sending the batch or receiving the answers failed, or the kernel did not
   * answer within the receive timeout. */
  SG_NFT_BATCH_AT_IO = -2,
  /* The kernel refused the batch as a whole, at its BEGIN/END frame: no
   * nf_tables subsystem (EOPNOTSUPP), or no CAP_NET_ADMIN (EPERM). */
  SG_NFT_BATCH_AT_FRAME = -3,
};

/* How long sg_nft_batch_send waits for each answer of the kernel. */
#define SG_NFT_BATCH_TIMEOUT_MS 2000

/* NULL when out of memory. */
sg_nft_batch_t *sg_nft_batch_new(void);
/* The same, with the sequence numbers starting at seq (BEGIN gets seq,
 * message i seq + 1 + i, END the next one): for batches sent one after the
 * other on one long-lived socket, whose answers must not be confused. */
sg_nft_batch_t *sg_nft_batch_new_at(uint32_t seq);
void sg_nft_batch_free(sg_nft_batch_t *b);

/* Append one message. type is the NFT_MSG_* command (NEWTABLE, DELTABLE,
 * ...), flags the NLM_F_* request flags beyond NLM_F_REQUEST|NLM_F_ACK
 * (NLM_F_CREATE, NLM_F_EXCL, NLM_F_APPEND, ...). Returns the index of the
 * message in the batch (0, 1, 2, ... in the order added) or a negative
 * errno: -EINVAL when the object has no family or the batch was already
 * sent, -ENOMEM. */
int sg_nft_batch_add_table(sg_nft_batch_t *b, uint16_t type, uint16_t flags,
                           const struct nftnl_table *t);
int sg_nft_batch_add_chain(sg_nft_batch_t *b, uint16_t type, uint16_t flags,
                           const struct nftnl_chain *c);
int sg_nft_batch_add_rule(sg_nft_batch_t *b, uint16_t type, uint16_t flags,
                          struct nftnl_rule *r);
/* A set (NFT_MSG_NEWSET/DELSET). To use an anonymous or new set from a rule
 * of the same batch, give it an NFTNL_SET_ID and reference it by that id. */
int sg_nft_batch_add_set(sg_nft_batch_t *b, uint16_t type, uint16_t flags,
                         struct nftnl_set *s);
/* The elements attached to s (NFT_MSG_NEWSETELEM/DELSETELEM), in one
 * message: keep it below 64 KiB, split large element lists over several
 * calls. */
int sg_nft_batch_add_setelems(sg_nft_batch_t *b, uint16_t type, uint16_t flags,
                              struct nftnl_set *s);

/* Number of messages added so far. */
int sg_nft_batch_count(const sg_nft_batch_t *b);

/* Sends the batch once and waits for the kernel's answer to every message.
 * Returns 0 when the kernel committed it all. Otherwise returns a negative
 * errno and sets *failed_index (when failed_index is not NULL) to where it
 * went wrong: the index of the first message the kernel refused, or one of
 * SG_NFT_BATCH_AT_*. Except after SG_NFT_BATCH_AT_IO (the answers were
 * lost, the outcome is unknown) the kernel applied none of the batch: the
 * transaction is atomic. -ETIMEDOUT when the kernel left a message
 * unanswered for SG_NFT_BATCH_TIMEOUT_MS. A batch can be sent only once;
 * -EINVAL when it is empty or already sent. */
int sg_nft_batch_send(sg_nft_batch_t *b, int *failed_index);

/* Asynchronous use, on a socket the caller owns (a bound, non-blocking
 * NETLINK_NETFILTER socket polled by its event loop):
 *
 *   sg_nft_batch_send_on(b, fd);               // one sendmsg, no waiting
 *   ... for each NLMSG_ERROR read from fd:
 *   if (sg_nft_batch_feed(b, seq, error))      // 1: the batch is complete
 *     rc = sg_nft_batch_result(b, &where);
 *
 * sg_nft_batch_send_on returns 0 or a negative errno (the batch can then
 * not have been applied). sg_nft_batch_seq_end is the last sequence number
 * of the batch (END): answers with seq_begin..seq_end belong to it.
 * sg_nft_batch_feed ignores answers that are not about b. Before the batch
 * is complete, sg_nft_batch_result returns -ETIMEDOUT with
 * SG_NFT_BATCH_AT_IO. */
int sg_nft_batch_send_on(sg_nft_batch_t *b, int fd);
uint32_t sg_nft_batch_seq_end(const sg_nft_batch_t *b);
int sg_nft_batch_feed(sg_nft_batch_t *b, uint32_t seq, int error);
int sg_nft_batch_result(const sg_nft_batch_t *b, int *failed_index);

#endif
