#!/usr/bin/python3
"""HTTP pieces of the gateway's /explain end-to-end test (Debian's
/usr/bin/python3, standard library only).

  echo ADDR PORT [ADDR PORT...]   HTTP/1.1 backends: each request is answered
                                  200 with the JSON {server, method, path,
                                  headers} of what it received (headers as
                                  [name, value] pairs in the order and case
                                  received); prints "ADDR:PORT METHOD PATH"
                                  per request on stdout
  compare GW_ADDR GW_PORT ADMIN_ADDR ADMIN_PORT CASES
                                  for each request description of the JSON
                                  array CASES ({what, method, path, headers
                                  ([[name, value], ...]), client?}): sends it
                                  byte for byte to the gateway, asks
                                  POST /explain with the same description,
                                  and prints "ok - WHAT ..." or "not ok - WHAT"
                                  with "#" lines: the explanation must be what
                                  happened (the same status and body, or the
                                  backend, path and every header of the
                                  request the backend got, in order)
"""
import http.client
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def echo(pairs):
    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self):
            body = json.dumps({
                "server": "%s:%d" % self.server.server_address[:2],
                "method": self.command,
                "path": self.path,
                "headers": [[k, v] for k, v in self.headers.items()],
            }).encode()
            print("%s %s %s" % (self.server.server_address[0] + ":" + str(self.server.server_address[1]),
                                self.command, self.path), flush=True)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = answer

        def log_message(self, *args):
            pass

    servers = []
    for addr, port in pairs:
        srv = ThreadingHTTPServer((addr, int(port)), Echo)
        servers.append(srv)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    threading.Event().wait()


def read_response(sock):
    """Status, headers (lower-case names) and body of one response with a
    Content-Length."""
    f = sock.makefile("rb")
    status = int(f.readline().split()[1])
    headers = {}
    while True:
        line = f.readline().decode("latin-1").rstrip("\r\n")
        if not line:
            break
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    body = f.read(int(headers.get("content-length", "0")))
    return status, headers, body.decode("utf-8", "replace")


def send(gw, port, desc):
    sock = socket.create_connection((gw, int(port)), timeout=5)
    client = sock.getsockname()[0]
    head = "%s %s HTTP/1.1\r\n" % (desc.get("method", "GET"), desc["path"])
    for k, v in desc.get("headers", []):
        head += "%s: %s\r\n" % (k, v)
    sock.sendall((head + "\r\n").encode("latin-1"))
    try:
        return client, read_response(sock)
    finally:
        sock.close()


def explain(admin, port, desc):
    conn = http.client.HTTPConnection(admin, int(port), timeout=5)
    conn.request("POST", "/explain", body=json.dumps(desc))
    r = conn.getresponse()
    body = r.read().decode()
    conn.close()
    if r.status != 200:
        raise RuntimeError("POST /explain: %d %s" % (r.status, body))
    return json.loads(body)


def compare(gw, gw_port, admin, admin_port, cases_file):
    cases = json.load(open(cases_file))
    failed = 0
    for c in cases:
        what = c.pop("what")
        problems = []
        try:
            client, (status, headers, body) = send(gw, gw_port, c)
            desc = dict(c)
            desc.setdefault("client", client)
            ex = explain(admin, admin_port, desc)
        except Exception as e:  # noqa: BLE001 - reported as a failed case
            print("not ok - %s: %s" % (what, e))
            failed += 1
            continue
        if "status" in ex:
            want = ex["message"] if ex["status"] < 400 else \
                "OpenSandbox Ingress: " + ex["message"] + "\n"
            if status != ex["status"] or body != want:
                problems.append("the gateway answered %d %r, explain said %d %r"
                                % (status, body, ex["status"], want))
            summary = "%d %s" % (ex["status"], ex["message"])
        else:
            got = json.loads(body) if status == 200 else None
            backend = "%s:%d" % (ex["host"], ex["port"])
            if got is None:
                problems.append("the gateway answered %d %r, explain said forward to %s"
                                % (status, body, backend))
            else:
                if got["server"] != backend:
                    problems.append("backend: explain %s, real %s" % (backend, got["server"]))
                if got["path"] != ex["path"]:
                    problems.append("path: explain %r, real %r" % (ex["path"], got["path"]))
                if got["method"] != c.get("method", "GET"):
                    problems.append("method: real %r" % got["method"])
                if got["headers"] != ex["headers"]:
                    problems.append("headers: explain %s, real %s"
                                    % (json.dumps(ex["headers"]), json.dumps(got["headers"])))
            summary = "forward to %s%s with %d headers" % (backend, ex["path"], len(ex["headers"]))
        if problems:
            failed += 1
            print("not ok - %s" % what)
            for p in problems:
                print("#   " + p)
            print("#   explain: " + json.dumps(ex))
        else:
            print("ok - %s: explain and the gateway agree (%s)" % (what, summary))
    return failed


def main():
    cmd = sys.argv[1]
    if cmd == "echo":
        args = sys.argv[2:]
        echo(list(zip(args[0::2], args[1::2])))
    elif cmd == "compare":
        compare(*sys.argv[2:7])
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
