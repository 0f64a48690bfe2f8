#!/usr/bin/python3
"""Raw DNS client for the end-to-end tests (Debian's /usr/bin/python3, no
third-party modules).

Subcommands (HOST may be IPv4 or IPv6; output is one result per line, for
the shell script to check):

  query udp|tcp HOST PORT NAME [QTYPE]     -> RCODE ANCOUNT idmatch|idmismatch
  pipeline HOST PORT NAME...               one TCP connection, every query
                                           in one write -> "NAME RCODE ANCOUNT"
                                           per name (matched by ID)
  pipeline-n HOST PORT NAME COUNT          COUNT queries in one write
                                           -> "answered K of COUNT"
  split HOST PORT NAME                     one framed query written a byte at a
                                           time -> "NAME RCODE ANCOUNT"
  idle HOST PORT MAXWAIT                   connects, sends nothing -> "closed MS"
                                           or "open" (still open after MAXWAIT s)
  keepalive HOST PORT NAME INTERVAL COUNT  COUNT queries INTERVAL s apart on one
                                           connection -> "answered K of COUNT"
  maxclients HOST PORT NAME                see cmd_maxclients
  raw udp|tcp|tcpraw HOST PORT HEX [TIMEOUT]  -> "reply HEX", "noreply" or
                                           "closed" (tcp frames HEX, tcpraw not)
  json-lines FILE                          number of lines that are not JSON
  fuzz HOST PORT SEED COUNT                random UDP packets -> "sent N replies M"
  serve HOST PORT ADDRESS [DELAY_MS [LOG]] a UDP DNS server answering every A
                                           query with ADDRESS (big socket buffer),
                                           each answer DELAY_MS late, each query
                                           logged to LOG as "QTYPE NAME"
  log-count FILE key=value|key~=part...    number of JSON log lines with all
                                           these fields (~=: contains)
"""
import json
import random
import socket
import struct
import sys
import time

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN",
          4: "NOTIMP", 5: "REFUSED"}
QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15,
          "TXT": 16, "AAAA": 28, "SRV": 33, "ANY": 255}


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def build_query(name, qtype="A", qid=None, edns=True):
    if qid is None:
        qid = random.randrange(0, 65536)
    hdr = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    q = encode_name(name) + struct.pack(">HH", QTYPES.get(qtype, 1), 1)
    opt = b"\0" + struct.pack(">HHIH", 41, 1232, 0, 0) if edns else b""
    return qid, hdr + q + opt


def header(msg):
    qid, flags, qd, an, ns, ar = struct.unpack(">HHHHHH", msg[:12])
    return {"id": qid, "flags": flags, "rcode": RCODES.get(flags & 0xF, str(flags & 0xF)),
            "tc": bool(flags & 0x0200), "qd": qd, "an": an}


def frame(msg):
    return struct.pack(">H", len(msg)) + msg


def tcp_connect(host, port, timeout=5.0):
    s = socket.socket(family(host), socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((host, int(port)))
    return s


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def recv_frame(s):
    h = recv_exact(s, 2)
    if h is None:
        return None
    (n,) = struct.unpack(">H", h)
    return recv_exact(s, n)


def tcp_query(s, name, qtype="A"):
    qid, msg = build_query(name, qtype)
    s.sendall(frame(msg))
    reply = recv_frame(s)
    if reply is None:
        return "closed"
    h = header(reply)
    return h["rcode"] if h["id"] == qid else "idmismatch"


def cmd_query(proto, host, port, name, qtype="A"):
    qid, msg = build_query(name, qtype)
    if proto == "udp":
        s = socket.socket(family(host), socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(msg, (host, int(port)))
        reply, _ = s.recvfrom(65535)
    else:
        s = tcp_connect(host, port)
        s.sendall(frame(msg))
        reply = recv_frame(s)
    h = header(reply)
    print(h["rcode"], h["an"], "idmatch" if h["id"] == qid else "idmismatch")


def cmd_pipeline(host, port, *names):
    s = tcp_connect(host, port)
    ids, data = {}, b""
    for i, name in enumerate(names):
        qid, msg = build_query(name, qid=0x4000 + i)
        ids[qid] = name
        data += frame(msg)
    s.sendall(data)  # all queries in one segment
    got = {}
    for _ in names:
        reply = recv_frame(s)
        if reply is None:
            break
        h = header(reply)
        got[h["id"]] = h
    for qid, name in ids.items():
        h = got.get(qid)
        print(name, h["rcode"], h["an"]) if h else print(name, "missing", 0)


def cmd_pipeline_n(host, port, name, count):
    """COUNT queries for NAME in one write on one connection."""
    count = int(count)
    s = tcp_connect(host, port, 10.0)
    data = b""
    for i in range(count):
        data += frame(build_query(name, qid=i)[1])
    s.sendall(data)
    seen, other = set(), {}
    t0 = time.monotonic()
    for _ in range(count):
        reply = recv_frame(s)
        if reply is None:
            break
        h = header(reply)
        if h["rcode"] in ("NOERROR", "NXDOMAIN"):
            seen.add(h["id"])
        else:
            other[h["rcode"]] = other.get(h["rcode"], 0) + 1
    print("answered %d of %d" % (len(seen), count))
    if other:
        print("other rcodes: %s after %.1f s" % (other, time.monotonic() - t0))


def cmd_split(host, port, name):
    s = tcp_connect(host, port)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    qid, msg = build_query(name)
    for b in frame(msg):
        s.send(bytes([b]))
        time.sleep(0.01)
    reply = recv_frame(s)
    if reply is None:
        print(name, "closed", 0)
        return
    h = header(reply)
    print(name, h["rcode"] if h["id"] == qid else "idmismatch", h["an"])


def wait_closed(s, maxwait):
    """Milliseconds until the peer closes the connection, or None."""
    t0 = time.monotonic()
    s.settimeout(maxwait)
    try:
        while True:
            data = s.recv(4096)
            if not data:
                break
    except (ConnectionResetError, BrokenPipeError):
        pass
    except socket.timeout:
        return None
    return int((time.monotonic() - t0) * 1000)


def cmd_idle(host, port, maxwait):
    s = tcp_connect(host, port)
    ms = wait_closed(s, float(maxwait))
    print("open" if ms is None else "closed %d" % ms)


def cmd_keepalive(host, port, name, interval, count):
    s = tcp_connect(host, port)
    answered = 0
    for i in range(int(count)):
        if i:
            time.sleep(float(interval))
        try:
            if tcp_query(s, name) in ("NOERROR", "NXDOMAIN"):
                answered += 1
        except OSError:
            pass
    print("answered %d of %s" % (answered, count))


def try_query(s, name):
    try:
        return tcp_query(s, name)
    except OSError as e:
        return "error:" + type(e).__name__


def cmd_maxclients(host, port, name):
    """With --tcp-max-clients 2: two connections work, a third is closed at
    once while the two keep working, and a slot freed by closing one is
    usable again."""
    c1 = tcp_connect(host, port)
    print("c1", try_query(c1, name))
    c2 = tcp_connect(host, port)
    print("c2", try_query(c2, name))
    c3 = tcp_connect(host, port)
    ms = wait_closed(c3, 3.0)
    print("c3", "open" if ms is None else "closed %d" % ms)
    print("c1-again", try_query(c1, name))
    print("c2-again", try_query(c2, name))
    c1.close()
    # The server learns about the close asynchronously: retry for a while.
    result = "never"
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        c4 = tcp_connect(host, port)
        result = try_query(c4, name)
        if result == "NOERROR":
            break
        c4.close()
        time.sleep(0.1)
    print("c4", result)


def cmd_json_lines(path):
    """Lines of a log that are not a JSON object."""
    bad = 0
    with open(path, "rb") as f:
        for line in f:
            try:
                if not isinstance(json.loads(line), dict):
                    bad += 1
            except ValueError:
                bad += 1
    print(bad)


def cmd_raw(proto, host, port, hexdata, timeout="2"):
    data = bytes.fromhex(hexdata)
    timeout = float(timeout)
    if proto == "udp":
        s = socket.socket(family(host), socket.SOCK_DGRAM)
        s.settimeout(timeout)
        s.sendto(data, (host, int(port)))
        try:
            reply, _ = s.recvfrom(65535)
        except socket.timeout:
            print("noreply")
            return
    else:
        s = tcp_connect(host, port, timeout)
        s.sendall(data if proto == "tcpraw" else frame(data))
        try:
            reply = recv_frame(s)
        except socket.timeout:
            print("noreply")
            return
        except ConnectionResetError:
            reply = None
        if reply is None:
            print("closed")
            return
    print("reply", reply.hex())


def cmd_fuzz(host, port, seed, count):
    rnd = random.Random(int(seed))
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    s.setblocking(False)
    sent = replies = 0
    for i in range(int(count)):
        kind = i % 4
        if kind == 0:  # pure noise of any length
            pkt = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 600)))
        else:  # a query header (QR clear, QDCOUNT 1) followed by noise
            body = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 300)))
            flags = rnd.randrange(65536) & ~0x8000
            if kind == 1:
                flags &= ~0x7800  # opcode QUERY, so the question is parsed
            pkt = struct.pack(">HHHHHH", rnd.randrange(65536), flags, 1,
                              rnd.randrange(3), rnd.randrange(3),
                              rnd.randrange(3)) + body
        s.sendto(pkt, (host, int(port)))
        sent += 1
        try:
            while True:
                s.recvfrom(65535)
                replies += 1
        except BlockingIOError:
            pass
        if i % 50 == 49:
            time.sleep(0.01)
    time.sleep(0.2)
    try:
        while True:
            s.recvfrom(65535)
            replies += 1
    except BlockingIOError:
        pass
    print("sent", sent, "replies", replies)


def field_matches(rec, key, value):
    """key=value: equal; key~=value: the field contains value."""
    if key.endswith("~"):
        return value in str(rec.get(key[:-1], ""))
    return key in rec and str(rec[key]) == value


def qname(question):
    labels, i = [], 0
    while i < len(question) and question[i]:
        labels.append(question[i + 1:i + 1 + question[i]].decode("latin-1"))
        i += 1 + question[i]
    return ".".join(labels)


def cmd_serve(host, port, address, delay_ms="0", log=None):
    """A minimal UDP authority: answers every A query with ADDRESS (TTL 0),
    anything else with NOERROR and no records. Its socket has a 4 MiB
    receive buffer (SO_RCVBUFFORCE, root), so that bursts are not lost on
    the test's side. With DELAY_MS, each answer waits that long (one query
    after the other: a slow server); with LOG, each query is written to that
    file as "QTYPE NAME". Runs until killed."""
    delay = int(delay_ms) / 1000
    logf = open(log, "a", buffering=1) if log else None
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((host, int(port)))
    print("ready", flush=True)
    addr = socket.inet_aton(address)
    while True:
        q, peer = s.recvfrom(65535)
        if len(q) < 12:
            continue
        qid, flags, qd = struct.unpack(">HHH", q[:6])
        if flags & 0x8000 or qd != 1:
            continue
        end = 12
        while end < len(q) and q[end] != 0:
            end += 1 + q[end]
        question = q[12:end + 5]
        qtype = struct.unpack(">H", question[-4:-2])[0] if len(question) >= 5 else 0
        if logf:
            logf.write("%d %s\n" % (qtype, qname(question)))
        if delay:
            time.sleep(delay)
        an = b""
        if qtype == 1:
            an = struct.pack(">HHHIH", 0xC00C, 1, 1, 0, 4) + addr
        reply = struct.pack(">HHHHHH", qid, 0x8180 | (flags & 0x0100), 1,
                            1 if an else 0, 0, 0) + question + an
        s.sendto(reply, peer)


def cmd_log_count(path, *pairs):
    want = [p.split("=", 1) for p in pairs]
    n = 0
    try:
        with open(path, errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and all(
                        field_matches(rec, k, v) for k, v in want):
                    n += 1
    except FileNotFoundError:
        pass
    print(n)


def main():
    cmd, args = sys.argv[1].replace("-", "_"), sys.argv[2:]
    try:
        globals()["cmd_" + cmd](*args)
    except (OSError, ValueError) as e:
        print("error", type(e).__name__, e)
        sys.exit(1)


if __name__ == "__main__":
    main()
