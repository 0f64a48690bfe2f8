#!/usr/bin/python3
"""Backends and clients for the ingress end-to-end test (Debian's
/usr/bin/python3 with python3-websockets). Everything binds and connects to
127.0.0.1 only.

Servers
  http PORT NAME        HTTP/1.1 backend (keep-alive, pipelining, chunked and
                        content-length bodies, Expect: 100-continue). Paths:
    /__upload[?delay=MS]     streams the body into SHA-256 (after sleeping MS
                             before the first read): "len N sha256 HEX"
    /__download?n=N[&chunked=1]  N bytes of pattern() (see below)
    /__slow?ms=MS            answers "slow done" after MS
    /__sse[?close=1]         text/event-stream: "one", 1 s pause, "two", 1 s
                             pause, "three" (chunked, or close-delimited)
    /__status?code=N         that status, body "status N"
    /__stall?ms=MS           a 10-byte body: 5 bytes, MS of silence, 5 bytes
    /__arm                   answers (keep-alive), then meets the next request
                             on that connection with a close and no answer, as
                             a server does whose keep-alive timeout just ran
                             out
    /__close                 "name: NAME", then closes the connection (so the
                             gateway cannot pool it)
    /__midfail?mode=cl|chunked  a 1000000-byte (or chunked) body cut off
                             after 1000 bytes: the connection is closed
    /__upgrade               with an Upgrade header: 101, then a raw tunnel
                             that echoes every byte upper-cased
    anything else            echo: a text body with "name:", "conn:" (the
                             connection's serial number), "nreq:" (requests on
                             that connection), "body-len:", then "--- head"
                             and the request head exactly as received (CRLF
                             shown as LF), then "--- body" and the body
  ws PORT               WebSocket echo (text "__info" -> JSON of the path
                        and request headers the server saw)

Clients (print one result line each, see the functions)
  freeports N | pattern-sha N | sig KEY KEYID ID PORT EXP36
  raw PORT NRESP [TIMEOUT]      sends stdin in ONE write, prints NRESP responses
  ws-echo URL [HDR:VAL...]      text, binary, 1 MiB round trips
  ws-hold URL SECONDS OUT [HDR:VAL...]  one connection, a message every 0.1 s
  sse URL [HDR:VAL...]          arrival time of each event
  slowloris PORT ROUTE          a header byte per second
  tunnel PORT ROUTE             Upgrade: foo/1 to /__upgrade, then bytes
  expect PORT ROUTE             Expect: 100-continue by hand
  slowread PORT ROUTE N PAUSE   reads a download after PAUSE seconds
  load PORT PATH SECONDS OUT [HDR:VAL...]  requests in a loop (new and kept connections)
"""
import asyncio
import hashlib
import json
import os
import select
import socket
import socketserver
import struct
import sys
import threading
import time
import urllib.parse

HOST = "127.0.0.1"
BLOCK = bytes(range(256)) * 256  # 64 KiB


def pattern_chunks(n):
    while n > 0:
        k = min(n, len(BLOCK))
        yield BLOCK[:k]
        n -= k


def pattern_sha(n):
    h = hashlib.sha256()
    for c in pattern_chunks(n):
        h.update(c)
    return h.hexdigest()


class Reader:
    """Buffered reads on a socket."""

    def __init__(self, sock):
        self.s = sock
        self.buf = b""

    def fill(self):
        d = self.s.recv(262144)
        if not d:
            raise EOFError
        self.buf += d

    def until(self, sep):
        while sep not in self.buf:
            self.fill()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def some(self, limit):
        if not self.buf:
            self.fill()
        out, self.buf = self.buf[:limit], self.buf[limit:]
        return out

    def body(self, headers):
        """Yields the pieces of a body framed by these headers."""
        te = headers.get("transfer-encoding", "").lower()
        if "chunked" in te:
            while True:
                line = self.until(b"\r\n")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.until(b"\r\n") != b"\r\n":
                        pass
                    return
                left = size
                while left > 0:
                    piece = self.some(min(left, 262144))
                    left -= len(piece)
                    yield piece
                self.exact(2)
        else:
            left = int(headers.get("content-length", "0"))
            while left > 0:
                piece = self.some(min(left, 262144))
                left -= len(piece)
                yield piece


def parse_head(raw):
    lines = raw.decode("latin-1").split("\r\n")
    first = lines[0]
    hdrs = {}
    for ln in lines[1:]:
        if not ln:
            continue
        k, _, v = ln.partition(":")
        k = k.strip().lower()
        v = v.strip()
        hdrs[k] = hdrs[k] + ", " + v if k in hdrs else v
    return first, hdrs


# ---- the HTTP backend ---------------------------------------------------------

CONN_SEQ = [0]
SEQ_LOCK = threading.Lock()


def respond(sock, status, body, ctype="text/plain", extra=(), close=False):
    reason = {101: "Switching Protocols", 200: "OK"}.get(status, "Status")
    h = "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nX-Backend: %s\r\n" % (
        status, reason, ctype, len(body), NAME)
    for k, v in extra:
        h += "%s: %s\r\n" % (k, v)
    if close:
        h += "Connection: close\r\n"
    sock.sendall(h.encode("latin-1") + b"\r\n" + body)


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        with SEQ_LOCK:
            CONN_SEQ[0] += 1
            cid = CONN_SEQ[0]
        s = self.request
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        r = Reader(s)
        nreq = 0
        try:
            while True:
                raw = r.until(b"\r\n\r\n")
                nreq += 1
                first, hdrs = parse_head(raw)
                if not self.one(s, r, raw, first, hdrs, cid, nreq):
                    return
        except (EOFError, ConnectionError, OSError):
            return

    def one(self, s, r, raw, first, hdrs, cid, nreq):
        """Answers one request; False closes the connection."""
        method, target, _ = first.split(" ", 2)
        u = urllib.parse.urlsplit(target)
        q = dict(urllib.parse.parse_qsl(u.query))
        close = "close" in hdrs.get("connection", "").lower()
        if "100-continue" in hdrs.get("expect", "").lower():
            s.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        p = u.path
        if p == "/__upload":
            time.sleep(int(q.get("delay", "0")) / 1000)
            h = hashlib.sha256()
            n = 0
            for piece in r.body(hdrs):
                h.update(piece)
                n += len(piece)
            respond(s, 200, ("len %d sha256 %s\n" % (n, h.hexdigest())).encode(), close=close)
            return not close
        body = b"".join(r.body(hdrs))
        if p == "/__download":
            n = int(q.get("n", "0"))
            if q.get("chunked"):
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n")
                for c in pattern_chunks(n):
                    s.sendall(b"%x\r\n%s\r\n" % (len(c), c))
                s.sendall(b"0\r\n\r\n")
            else:
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                          b"Content-Length: %d\r\n\r\n" % n)
                for c in pattern_chunks(n):
                    s.sendall(c)
            return not close
        if p == "/__slow":
            time.sleep(int(q.get("ms", "1000")) / 1000)
            respond(s, 200, b"slow done\n", close=close)
            return not close
        if p == "/__sse":
            events = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]
            if q.get("close"):
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                          b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n")
            else:
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                          b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i, e in enumerate(events):
                if i:
                    time.sleep(1)
                s.sendall(e if q.get("close") else b"%x\r\n%s\r\n" % (len(e), e))
            if q.get("close"):
                return False
            s.sendall(b"0\r\n\r\n")
            return not close
        if cid in DROP_NEXT:
            DROP_NEXT.discard(cid)
            return False  # closed, with no byte of an answer
        if p == "/__arm":
            DROP_NEXT.add(cid)
            respond(s, 200, ("name: %s\narmed %d\n" % (NAME, cid)).encode())
            return True
        if p == "/__stall":
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                      b"Content-Length: 10\r\n\r\nhello")
            time.sleep(int(q.get("ms", "3000")) / 1000)
            s.sendall(b"world")
            return not close
        if p == "/__close":
            respond(s, 200, ("name: %s\nclosed\n" % NAME).encode(), close=True)
            return False
        if p == "/__status":
            code = int(q.get("code", "200"))
            respond(s, code, b"status %d\n" % code, close=close,
                    extra=[("X-Status-Test", "yes")])
            return not close
        if p == "/__midfail":
            if q.get("mode") == "chunked":
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n3e8\r\n" + b"x" * 1000 + b"\r\n")
            else:
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                          b"Content-Length: 1000000\r\n\r\n" + b"x" * 1000)
            time.sleep(0.2)
            return False
        if p == "/__upgrade" and "upgrade" in hdrs:
            s.sendall(("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                       "Upgrade: %s\r\n\r\n" % hdrs["upgrade"]).encode("latin-1"))
            if r.buf:
                s.sendall(r.buf.upper())
                r.buf = b""
            while True:
                d = s.recv(65536)
                if not d:
                    return False
                s.sendall(d.upper())
        text = ("name: %s\nconn: %d\nnreq: %d\nbody-len: %d\n--- head\n" % (NAME, cid, nreq, len(body))).encode()
        text += raw[:-2].replace(b"\r\n", b"\n") + b"--- body\n" + body
        respond(s, 200, text, close=close)
        return not close


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def serve_http(port, name):
    global NAME
    NAME = name
    Server((HOST, int(port)), Handler).serve_forever()


def serve_ws(port):
    import websockets

    async def echo(ws, path):
        try:
            async for m in ws:
                if m == "__info":
                    await ws.send(json.dumps({"path": path, "headers": dict(
                        (k.lower(), v) for k, v in ws.request_headers.raw_items())}))
                else:
                    await ws.send(m)
        except websockets.ConnectionClosed:
            pass

    async def main():
        async with websockets.serve(echo, HOST, int(port), max_size=None):
            await asyncio.Future()

    asyncio.run(main())


# ---- clients ------------------------------------------------------------------

def hdr_args(args):
    return [tuple(a.split(":", 1)) for a in args]


def read_response(r, method="GET"):
    """Reads one response (interim 1xx included as their own); returns
    (status, raw head, body)."""
    raw = r.until(b"\r\n\r\n")
    first, hdrs = parse_head(raw)
    status = int(first.split(" ")[1])
    if status < 200 or status in (204, 304) or method == "HEAD":
        return status, raw, b""
    if "transfer-encoding" in hdrs or "content-length" in hdrs:
        return status, raw, b"".join(r.body(hdrs))
    body = b""
    try:
        while True:
            body += r.some(262144)
    except EOFError:
        pass
    return status, raw, body


def cmd_raw(port, nresp, timeout="5"):
    data = sys.stdin.buffer.read()
    s = socket.create_connection((HOST, int(port)))
    s.settimeout(float(timeout))
    s.sendall(data)
    r = Reader(s)
    out = []
    try:
        for _ in range(int(nresp)):
            st, raw, body = read_response(r)
            out.append("== %d\n%s\n-- body\n%s" % (st, raw.decode("latin-1").replace("\r\n", "\n").rstrip("\n"),
                                                  body.decode("latin-1")))
    except EOFError:
        out.append("== EOF")
    except socket.timeout:
        out.append("== TIMEOUT")
    except Exception as e:  # noqa
        out.append("== ERROR %r" % e)
    print("\n".join(out))


def cmd_ws_echo(url, *hdrs):
    import websockets

    async def main():
        async with websockets.connect(url, extra_headers=hdr_args(hdrs), max_size=None) as ws:
            await ws.send("hello text \u00e9")
            print("text", "ok" if await ws.recv() == "hello text \u00e9" else "bad")
            b = bytes([0, 1, 2, 255, 254, 0x81, 0x7e, 0x7f])
            await ws.send(b)
            print("binary", "ok" if await ws.recv() == b else "bad")
            big = os.urandom(1 << 20)
            await ws.send(big)
            got = await ws.recv()
            print("big", "ok" if got == big else "bad len %d" % len(got))
            await ws.send("__info")
            print("info", await ws.recv())

    try:
        asyncio.run(asyncio.wait_for(main(), 20))
    except Exception as e:  # noqa
        print("error", repr(e))


def cmd_ws_hold(url, seconds, outfile, *hdrs):
    import websockets

    async def main():
        n = 0
        try:
            async with websockets.connect(url, extra_headers=hdr_args(hdrs), max_size=None) as ws:
                with open(outfile + ".open", "w") as f:
                    f.write("open\n")
                end = time.time() + float(seconds)
                while time.time() < end:
                    m = "msg %d" % n
                    await ws.send(m)
                    got = await asyncio.wait_for(ws.recv(), 5)
                    if got != m:
                        return "bad echo at %d: %r" % (n, got)
                    n += 1
                    await asyncio.sleep(0.1)
            return "ok %d" % n
        except Exception as e:  # noqa
            return "failed after %d: %r" % (n, e)

    res = asyncio.run(main())
    with open(outfile, "w") as f:
        f.write(res + "\n")


def cmd_sse(url, *hdrs):
    import http.client
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    t0 = time.time()
    c.request("GET", u.path + ("?" + u.query if u.query else ""), headers=dict(hdr_args(hdrs)))
    resp = c.getresponse()
    times = []
    datas = []
    while True:
        line = resp.readline()
        if not line:
            break
        if line.startswith(b"data:"):
            times.append(time.time() - t0)
            datas.append(line[5:].strip().decode())
    print("status %d ctype %s events %s times %s" % (
        resp.status, resp.getheader("Content-Type"), ",".join(datas),
        ",".join("%.3f" % t for t in times)))


def cmd_slowloris(port, route):
    s = socket.create_connection((HOST, int(port)))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t0 = time.time()
    s.sendall(("GET /slow HTTP/1.1\r\nOpenSandbox-Ingress-To: %s\r\n" % route).encode())
    filler = b"X-Slow: " + b"a" * 40
    sent = 0
    got = b""
    while time.time() - t0 < 15:
        rd, _, _ = select.select([s], [], [], 1.0)
        if rd:
            try:
                d = s.recv(4096)
            except OSError:
                d = b""
            if not d:
                break
            got += d
            continue
        try:
            s.send(filler[sent % len(filler):sent % len(filler) + 1])
            sent += 1
        except OSError:
            break
    el = time.time() - t0
    first = got.split(b"\r\n", 1)[0].decode("latin-1") if got else "-"
    print("closed %.1f sent %d response %s" % (el, sent, first))


def cmd_tunnel(port, route):
    s = socket.create_connection((HOST, int(port)))
    s.settimeout(5)
    s.sendall(("GET /__upgrade HTTP/1.1\r\nHost: x\r\nOpenSandbox-Ingress-To: %s\r\n"
               "Connection: Upgrade\r\nUpgrade: foo/1\r\n\r\n" % route).encode())
    r = Reader(s)
    try:
        raw = r.until(b"\r\n\r\n")
        first = raw.split(b"\r\n", 1)[0].decode("latin-1")
        s.sendall(b"hello tunnel\n")
        a = r.until(b"\n").decode("latin-1").strip()
        s.sendall(b"\x00\xffbinary\n")
        b = r.until(b"\n")
        print("%s | %s | %s" % (first, a, "binary ok" if b == b"\x00\xffBINARY\n" else "binary bad %r" % b))
    except Exception as e:  # noqa
        print("error %r" % e)


def cmd_expect(port, route):
    s = socket.create_connection((HOST, int(port)))
    s.settimeout(3)
    body = b"expected body"
    s.sendall(("POST /expect HTTP/1.1\r\nHost: x\r\nOpenSandbox-Ingress-To: %s\r\n"
               "Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (route, len(body))).encode())
    r = Reader(s)
    try:
        st, raw, _ = read_response(r)
    except socket.timeout:
        st = "none"
    interim = st
    s.sendall(body)
    if st == 100:
        st, raw, got = read_response(r)
    else:
        got = b""
    ok = b"body-len: %d" % len(body) in got and got.endswith(body)
    print("interim %s final %s body %s" % (interim, st, "ok" if ok else "bad"))


def cmd_slowread(port, route, n, pause):
    s = socket.create_connection((HOST, int(port)))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.sendall(("GET /__download?n=%s HTTP/1.1\r\nHost: x\r\nOpenSandbox-Ingress-To: %s\r\n\r\n"
               % (n, route)).encode())
    time.sleep(float(pause))
    s.settimeout(20)
    r = Reader(s)
    raw = r.until(b"\r\n\r\n")
    _, hdrs = parse_head(raw)
    h = hashlib.sha256()
    total = 0
    for piece in r.body(hdrs):
        h.update(piece)
        total += len(piece)
    print("len %d sha256 %s" % (total, h.hexdigest()))


def cmd_load(port, path, seconds, outfile, *hdrs):
    import http.client
    res = {"total": 0, "fail": 0, "errors": [], "first": None, "last": None}
    lock = threading.Lock()
    t0 = time.time()
    end = t0 + float(seconds)

    def note(ok, what):
        with lock:
            res["total"] += 1
            if not ok:
                res["fail"] += 1
                t = "%.3f" % (time.time() - t0)
                res["first"] = res["first"] or t
                res["last"] = t
                if len(res["errors"]) < 3:
                    res["errors"].append(what)

    def worker(keep):
        c = None
        while time.time() < end:
            try:
                if c is None:
                    c = http.client.HTTPConnection(HOST, int(port), timeout=5)
                c.request("GET", path, headers=dict(hdr_args(hdrs)))
                resp = c.getresponse()
                body = resp.read()
                note(resp.status == 200 and b"name: " in body, "status %d %r" % (resp.status, body[:80]))
                if not keep or resp.will_close:
                    c.close()
                    c = None
            except Exception as e:  # noqa
                note(False, repr(e))
                if c:
                    c.close()
                c = None

    ts = [threading.Thread(target=worker, args=(k,)) for k in (True, False, True, False)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    with open(outfile, "w") as f:
        f.write("total %d fail %d %s\n" % (res["total"], res["fail"], "; ".join(res["errors"])))
        if res["fail"]:
            f.write("failures between %s and %s s after the start (%.3f)\n" % (res["first"], res["last"], t0))


def sig(key, keyid, sid, port, exp36):
    canon = "v1\nshort\n%s\n%s\n%s\n" % (sid, port, exp36)
    k, c = key.encode(), canon.encode()
    d = hashlib.sha256(struct.pack(">I", len(k)) + k + struct.pack(">I", len(c)) + c).hexdigest()
    return d[:8] + keyid


def main():
    a = sys.argv[1:]
    cmd = a[0]
    if cmd == "http":
        serve_http(a[1], a[2])
    elif cmd == "ws":
        serve_ws(a[1])
    elif cmd == "freeports":
        socks = []
        for _ in range(int(a[1])):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        print(" ".join(str(s.getsockname()[1]) for s in socks))
    elif cmd == "pattern-sha":
        print(pattern_sha(int(a[1])))
    elif cmd == "sig":
        print(sig(*a[1:6]))
    elif cmd == "raw":
        cmd_raw(*a[1:])
    elif cmd == "ws-echo":
        cmd_ws_echo(*a[1:])
    elif cmd == "ws-hold":
        cmd_ws_hold(*a[1:])
    elif cmd == "sse":
        cmd_sse(*a[1:])
    elif cmd == "slowloris":
        cmd_slowloris(*a[1:])
    elif cmd == "tunnel":
        cmd_tunnel(*a[1:])
    elif cmd == "expect":
        cmd_expect(*a[1:])
    elif cmd == "slowread":
        cmd_slowread(*a[1:])
    elif cmd == "load":
        cmd_load(*a[1:])
    else:
        sys.exit("unknown command " + cmd)


NAME = "?"
DROP_NEXT = set()  # connections whose next request is met with a close (/__arm)
if __name__ == "__main__":
    main()
