#!/usr/bin/python3
"""TCP backend and clients for the dns+nft end-to-end test (Debian's
/usr/bin/python3, standard library only).

  serve PORT...                  listens on [::]:PORT (IPv4 too) for each port;
                                 each connection gets "hello ADDR PORT\\n" (the
                                 address the client connected to), then every
                                 line it sends comes back as "echo LINE\\n"
  connect HOST PORT TIMEOUT      one connection -> "ok ADDR MS", "refused MS",
                                 "timeout MS" or "error ERRNO-NAME MS";
                                 exit status 0 only for ok
  hold HOST PORT GOFILE OUT      connects and reads the hello ("connected ..."
                                 into OUT), waits (60 s at most) for GOFILE to
                                 exist, then sends a line on the same
                                 connection and writes "echo ok" or
                                 "echo failed: ..." into OUT
  loop HOST PORT STOPFILE OUT    connects again and again (0.3 s timeout each)
                                 until STOPFILE exists, then writes
                                 "attempts N successes M" into OUT
"""
import errno
import os
import socket
import sys
import threading
import time


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def handle(conn):
    try:
        local = conn.getsockname()
        addr = local[0]
        if addr.startswith("::ffff:"):
            addr = addr[7:]
        conn.sendall(("hello %s %d\n" % (addr, local[1])).encode())
        f = conn.makefile("rb")
        for line in f:
            conn.sendall(b"echo " + line)
    except OSError:
        pass
    finally:
        conn.close()


def accept_loop(srv):
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def cmd_serve(ports):
    threads = []
    for p in ports:
        srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        srv.bind(("::", int(p)))
        srv.listen(128)
        t = threading.Thread(target=accept_loop, args=(srv,), daemon=True)
        t.start()
        threads.append(t)
    print("listening", " ".join(ports), flush=True)
    for t in threads:
        t.join()


def connect(host, port, timeout):
    s = socket.socket(family(host), socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((host, int(port)))
    return s


def read_line(s):
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(256)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").strip()


def cmd_connect(host, port, timeout):
    t0 = time.monotonic()
    ms = lambda: int((time.monotonic() - t0) * 1000)
    try:
        s = connect(host, port, float(timeout))
        hello = read_line(s)
        s.close()
        print("ok %s %d" % (hello, ms()))
        return 0
    except socket.timeout:
        print("timeout %d" % ms())
    except ConnectionRefusedError:
        print("refused %d" % ms())
    except OSError as e:
        print("error %s %d" % (errno.errorcode.get(e.errno, str(e.errno)), ms()))
    return 1


def cmd_hold(host, port, gofile, out):
    def put(text):
        with open(out, "a") as f:
            f.write(text + "\n")
    try:
        s = connect(host, port, 3)
        s.settimeout(3)
        put("connected " + read_line(s))
    except OSError as e:
        put("connect failed: %r" % e)
        return 1
    deadline = time.monotonic() + 60
    while not os.path.exists(gofile):
        if time.monotonic() > deadline:
            put("echo failed: no go file")
            return 1
        time.sleep(0.05)
    try:
        s.sendall(b"ping\n")
        line = read_line(s)
        put("echo ok" if line == "echo ping" else "echo failed: %r" % line)
        return 0 if line == "echo ping" else 1
    except OSError as e:
        put("echo failed: %r" % e)
        return 1


def cmd_loop(host, port, stopfile, out):
    attempts = successes = 0
    while not os.path.exists(stopfile):
        attempts += 1
        t0 = time.monotonic()
        try:
            s = connect(host, port, 0.3)
            s.close()
            successes += 1
        except OSError:
            pass
        # reject makes a failed connect instant: pace the attempts.
        left = 0.02 - (time.monotonic() - t0)
        if left > 0:
            time.sleep(left)
    with open(out, "w") as f:
        f.write("attempts %d successes %d\n" % (attempts, successes))
    return 0


def main(argv):
    cmd = argv[1]
    if cmd == "serve":
        return cmd_serve(argv[2:])
    if cmd == "connect":
        return cmd_connect(*argv[2:5])
    if cmd == "hold":
        return cmd_hold(*argv[2:6])
    if cmd == "loop":
        return cmd_loop(*argv[2:6])
    print("unknown command", cmd, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
