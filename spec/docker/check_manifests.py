#!/usr/bin/python3
"""Checks docker/ against the binary: what can be checked without Docker or a
cluster.

    python3 spec/docker/check_manifests.py build/sandgate

- Every YAML file under docker/ parses.
- Every OPENSANDBOX_*, SANDGATE_* and EXECD_* name in docker/ is a setting
  that `sandgate egress|ingress|portproxy --help` or the README's
  configuration tables know (or, in a Dockerfile, a CMake option of
  CMakeLists.txt).
- Every flag given to sandgate in docker/ is in that command's --help.
- The ports and probe paths of the manifests are the ones the binary serves:
  18080 and GET /healthz (egress API), 15353 (egress DNS), 28888 and
  GET /status.ok (ingress), 44772 (port proxy).
- The manifests hang together: native sidecar with a startup probe, NET_ADMIN
  on the egress sidecar only, paths inside the volumes that hold them,
  ConfigMaps that exist, policies that are JSON.
- The Dockerfiles build with scripts/install-deps.sh --build-only and CMake,
  the same way in both, and install the libraries the binary links.
- As root (a private network namespace via unshare), the binary is started
  with the manifests' own configuration: the egress sidecar with the
  ConfigMaps' env, always-lists and script, the gateway with its args, the
  port proxy as compose runs it; the probes, DNS and compose's healthcheck
  are then tried for real.

Prints one "ok"/"not ok" line per check, then "N passed, M failed"; exits 0
only if nothing failed.
"""
import http.client
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCKER = os.path.join(ROOT, "docker")

# Settings sandgate reads from the environment. EXECD_ACCESS_TOKEN is the
# port proxy's (OpenSandbox execd's name).
ENV_RE = re.compile(r"\b(?:OPENSANDBOX|SANDGATE|EXECD)_[A-Z0-9_]*[A-Z0-9]\b")
FLAG_RE = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")

# The ports each command serves by default, and where its --help says so.
SERVED = {
    "egress": {18080: ":18080", 15353: "15353"},
    "ingress": {28888: "28888"},
    "portproxy": {44772: "44772"},
}

# Shared libraries of the binary -> Debian packages that provide them.
SONAME_PACKAGES = {
    "libluajit-5.1.so.2": {"libluajit-5.1-2", "libluajit2-5.1-2"},
    "libuv.so.1": {"libuv1"},
    "libcares.so.2": {"libc-ares2"},
    "libnftnl.so.11": {"libnftnl11"},
    "libmnl.so.0": {"libmnl0"},
    "libcrypto.so.3": {"libssl3"},
}
# The C library's own, and a sanitizer build's runtime (not in an image).
BASE_SONAMES = re.compile(r"^(linux-vdso|ld-linux|libc\.so|libm\.so|libgcc_s\.so|libpthread|libdl\.so"
                          r"|librt\.so|libasan|libubsan|libstdc\+\+)")


class Report:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0

    def check(self, cond, name, why=""):
        if cond:
            self.passed += 1
            print("ok - " + name)
        else:
            self.failed += 1
            print("not ok - " + name + (": " + why if why else ""))
        sys.stdout.flush()
        return cond

    def skip(self, name, why):
        self.skipped += 1
        print("ok - %s # SKIP %s" % (name, why))


def rel(path):
    return os.path.relpath(path, ROOT)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def docker_files():
    out = []
    for d, _, names in os.walk(DOCKER):
        for n in sorted(names):
            out.append(os.path.join(d, n))
    return sorted(out)


def run(cmd, timeout=10):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=timeout, text=True)
    return p.returncode, p.stdout


def help_of(binary, cmd):
    """The --help text of a subcommand, or None when the binary lacks it."""
    rc, out = run([binary, cmd, "--help"])
    if rc != 0 or ("usage: sandgate %s" % cmd) not in out:
        return None
    return out


def readme_settings():
    """The settings named in the README's tables (rows starting with |)."""
    names = set()
    for line in read(os.path.join(ROOT, "README.md")).splitlines():
        if line.startswith("|"):
            names.update(ENV_RE.findall(line))
    return names


def cmake_options():
    text = read(os.path.join(ROOT, "CMakeLists.txt"))
    names = set(re.findall(r"option\((\w+)", text))
    names.update(re.findall(r"set\((\w+)[^)]*\bCACHE\b", text))
    return names


# YAML --------------------------------------------------------------------

def load_yaml(report, yaml):
    docs = {}
    for path in docker_files():
        if not path.endswith((".yaml", ".yml")):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                docs[path] = [d for d in yaml.safe_load_all(f) if d is not None]
            report.check(True, "%s parses as YAML (%d documents)" % (rel(path), len(docs[path])))
        except yaml.YAMLError as e:
            report.check(False, "%s parses as YAML" % rel(path), str(e).replace("\n", " "))
    return docs


def k8s_objects(docs):
    objs = []
    for path, ds in docs.items():
        if os.path.basename(path).startswith("compose"):
            continue
        for d in ds:
            if isinstance(d, dict):
                objs.append((path, d))
    return objs


def pod_specs(objs):
    """(path, namespace, owner name, pod spec) of every Pod and Deployment."""
    out = []
    for path, o in objs:
        meta = o.get("metadata") or {}
        if o.get("kind") == "Pod":
            out.append((path, meta.get("namespace"), meta.get("name"), o.get("spec") or {}))
        elif o.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((path, meta.get("namespace"), meta.get("name"), o["spec"]["template"]["spec"]))
    return out


def sandgate_command(container):
    """Which sandgate subcommand a container runs, from its image and command."""
    cmd = container.get("command") or container.get("entrypoint") or []
    if isinstance(cmd, str):
        cmd = cmd.split()
    if len(cmd) >= 2 and os.path.basename(cmd[0]) == "sandgate":
        return cmd[1], list(cmd[2:])
    image = container.get("image") or ""
    m = re.search(r"sandgate-(egress|ingress)\b", image)
    if m:
        return m.group(1), []
    return None, []


def configmaps(objs):
    return {(o["metadata"].get("namespace"), o["metadata"]["name"]): o.get("data") or {}
            for _, o in objs if o.get("kind") == "ConfigMap"}


def container_env(container, spec_ns, cms, pod_name):
    """The environment a container gets: envFrom ConfigMaps, then env."""
    env = {}
    for ef in container.get("envFrom") or []:
        ref = ef.get("configMapRef")
        if ref:
            env.update({k: str(v) for k, v in cms.get((spec_ns, ref["name"]), {}).items()})
    for e in container.get("env") or []:
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "valueFrom" in e:
            vf = e["valueFrom"]
            if "fieldRef" in vf and vf["fieldRef"].get("fieldPath") == "metadata.name":
                env[e["name"]] = pod_name
            elif "secretKeyRef" in vf:
                if not vf["secretKeyRef"].get("optional"):
                    env[e["name"]] = "check-manifests-secret"
    return env


def mounts_of(container, spec):
    """mountPath -> (volume name, volume) for a container."""
    vols = {v["name"]: v for v in spec.get("volumes") or []}
    return {m["mountPath"]: (m["name"], vols.get(m["name"]), m.get("readOnly", False))
            for m in container.get("volumeMounts") or []}


def inside_mount(path, mounts):
    for mp in mounts:
        if path == mp or path.startswith(mp.rstrip("/") + "/"):
            return mp
    return None


def check_k8s(report, docs, helps):
    objs = k8s_objects(docs)
    cms = configmaps(objs)
    plan = {}
    for path, o in objs:
        ok = all(k in o for k in ("apiVersion", "kind", "metadata")) and "name" in (o.get("metadata") or {})
        report.check(ok, "%s: %s %s has apiVersion, kind and metadata.name"
                     % (rel(path), o.get("kind"), (o.get("metadata") or {}).get("name")))
    names = {(o["metadata"].get("namespace"), o["kind"], o["metadata"]["name"]) for _, o in objs}
    for path, ns, owner, spec in pod_specs(objs):
        for vol in spec.get("volumes") or []:
            ref = (vol.get("configMap") or {}).get("name")
            if ref:
                report.check((ns, "ConfigMap", ref) in names,
                             "%s: %s volume %s: ConfigMap %s exists" % (rel(path), owner, vol["name"], ref))
        every = [(c, True) for c in spec.get("initContainers") or []] + \
                [(c, False) for c in spec.get("containers") or []]
        for c, is_init in every:
            cmd, extra_args = sandgate_command(c)
            where = "%s: %s/%s" % (rel(path), owner, c["name"])
            caps = ((c.get("securityContext") or {}).get("capabilities") or {}).get("add") or []
            if cmd != "egress":
                report.check("NET_ADMIN" not in caps, where + " has no NET_ADMIN (only the egress sidecar does)")
            for v in (c.get("envFrom") or []):
                ref = (v.get("configMapRef") or {}).get("name")
                if ref:
                    report.check((ns, "ConfigMap", ref) in names, where + " envFrom ConfigMap %s exists" % ref)
            if cmd is None:
                continue
            args = extra_args + [str(a) for a in c.get("args") or []]
            h = helps.get(cmd)
            for flag in [a for a in args if a.startswith("--")]:
                report.check(h is not None and re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(flag), h),
                             where + " flag %s is in `sandgate %s --help`" % (flag, cmd))
            ports = [("containerPort", p["containerPort"]) for p in c.get("ports") or []]
            probes = {k: c[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in c}
            for k, pr in probes.items():
                ports.append((k, (pr.get("httpGet") or {}).get("port")))
            served = SERVED.get(cmd, {})
            if cmd == "ingress" and "--port" in args:
                served = {int(args[args.index("--port") + 1]): "28888"}
            for what, p in ports:
                report.check(p in served and h is not None and served[p] in h,
                             where + " %s %s is served by `sandgate %s` (its --help: %s)"
                             % (what, p, cmd, ", ".join(map(str, served)) or "none"))
            want_path = {"egress": "/healthz", "ingress": "/status.ok"}.get(cmd)
            for k, pr in probes.items():
                g = pr.get("httpGet") or {}
                report.check(g.get("path") == want_path,
                             where + " %s is GET %s (got %s)" % (k, want_path, g.get("path")))
            env = container_env(c, ns, cms, owner)
            mounts = mounts_of(c, spec)
            if cmd == "egress":
                report.check("NET_ADMIN" in caps, where + " adds NET_ADMIN")
                report.check(is_init and c.get("restartPolicy") == "Always" and "startupProbe" in c,
                             where + " is a native sidecar (init container, restartPolicy Always, startupProbe)")
                report.check(spec.get("containers") and all(
                    ((x.get("securityContext") or {}).get("runAsUser", 0)) !=
                    ((c.get("securityContext") or {}).get("runAsUser", 0))
                    for x in spec["containers"]),
                    where + " runs as another uid than the sandbox containers")
                for var in ("SANDGATE_EGRESS_SCRIPT", "SANDGATE_RULES_DIR", "OPENSANDBOX_EGRESS_POLICY_FILE"):
                    if var in env:
                        mp = inside_mount(env[var], mounts)
                        report.check(mp is not None, where + " %s=%s is inside a mounted volume" % (var, env[var]))
                        if var == "OPENSANDBOX_EGRESS_POLICY_FILE" and mp:
                            report.check(not mounts[mp][2], where + " the policy file's volume is writable")
                        if var == "SANDGATE_EGRESS_SCRIPT" and mp and (mounts[mp][1] or {}).get("configMap"):
                            key = os.path.relpath(env[var], mp)
                            data = cms.get((ns, mounts[mp][1]["configMap"]["name"]), {})
                            report.check(key in data, where + " the script %s is a key of its ConfigMap" % key)
                if "OPENSANDBOX_EGRESS_RULES" in env:
                    report.check(valid_json(env["OPENSANDBOX_EGRESS_RULES"]),
                                 where + " OPENSANDBOX_EGRESS_RULES is JSON")
            plan.setdefault(cmd, {"env": env, "args": args, "mounts": {
                mp: materialize_spec(v, cms, ns) for mp, (_, v, _) in mounts.items()}, "where": where})
    for path, o in objs:
        if o.get("kind") != "Service":
            continue
        for p in (o.get("spec") or {}).get("ports") or []:
            if o["metadata"]["name"].startswith("sandgate-ingress"):
                report.check(p.get("targetPort", p.get("port")) == 28888,
                             "%s: Service %s targets 28888" % (rel(path), o["metadata"]["name"]))
    return plan


def materialize_spec(vol, cms, ns):
    """What a volume holds, for the live run: {file: text} or None (empty)."""
    if vol and vol.get("configMap"):
        return cms.get((ns, vol["configMap"]["name"]), {})
    return None


def valid_json(text):
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def check_compose(report, docs, helps):
    plan = {}
    for path, ds in docs.items():
        if not os.path.basename(path).startswith("compose"):
            continue
        services = (ds[0] if ds else {}).get("services") or {}
        for name, svc in services.items():
            where = "%s: service %s" % (rel(path), name)
            cmd, args = sandgate_command(svc)
            if isinstance(svc.get("command"), list) and cmd:
                args = args + [str(a) for a in svc["command"]]
            caps = svc.get("cap_add") or []
            report.check(("NET_ADMIN" in caps) == (cmd == "egress"),
                         where + (" adds NET_ADMIN" if cmd == "egress" else " has no NET_ADMIN"))
            if cmd:
                h = helps.get(cmd)
                for flag in [a for a in args if a.startswith("--")]:
                    report.check(h is not None and re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(flag), h),
                                 where + " flag %s is in `sandgate %s --help`" % (flag, cmd))
                if "--port" in args:
                    p = int(args[args.index("--port") + 1])
                    report.check(p in SERVED.get(cmd, {}) and h is not None and str(p) in h,
                                 where + " --port %d is the port `sandgate %s` serves" % (p, cmd))
            env = svc.get("environment") or {}
            if isinstance(env, list):
                env = dict(e.split("=", 1) for e in env)
            if "OPENSANDBOX_EGRESS_RULES" in env:
                report.check(valid_json(env["OPENSANDBOX_EGRESS_RULES"]),
                             where + " OPENSANDBOX_EGRESS_RULES is JSON")
            for p in svc.get("ports") or []:
                container_port = int(str(p).split(":")[-1].split("/")[0])
                report.check(container_port in SERVED["portproxy"],
                             where + " publishes %d, the port proxy's port" % container_port)
            hc = svc.get("healthcheck")
            if hc:
                test = " ".join(hc.get("test") or [])
                report.check("/healthz" in test and "18080" in test,
                             where + " healthcheck is GET /healthz on 18080")
            plan[name] = {"cmd": cmd, "args": args, "env": env, "healthcheck": hc}
    return plan


# Text checks ---------------------------------------------------------------

def check_settings(report, helps):
    known = set()
    for h in helps.values():
        if h:
            known.update(ENV_RE.findall(h))
    known |= readme_settings()
    cmake = cmake_options()
    # A name right after "-D" is a CMake option, anything else a setting.
    used = {}
    for path in docker_files():
        text = read(path)
        for m in ENV_RE.finditer(text):
            kind = "cmake" if text[max(0, m.start() - 2):m.start()] == "-D" else "env"
            used.setdefault((kind, m.group(0)), set()).add(rel(path))
    for (kind, name) in sorted(used):
        files = ", ".join(sorted(used[(kind, name)]))
        if kind == "cmake":
            report.check(name in cmake, "CMake option -D%s (%s) is in CMakeLists.txt" % (name, files))
        else:
            report.check(name in known, "setting %s (%s) is known to the binary or the README" % (name, files),
                         "not in any --help nor in a README table")


def check_prose_flags(report, helps):
    """Flags after `sandgate <cmd>` or a sandgate image name on one line."""
    line_re = re.compile(r"\bsandgate[ -](egress|ingress|portproxy)(?![\w-])(.*)")
    for path in docker_files():
        for n, line in enumerate(read(path).splitlines(), 1):
            for m in line_re.finditer(line):
                cmd, rest = m.group(1), m.group(2)
                rest = re.split(r"[`'\"#|]", rest)[0]
                for flag in FLAG_RE.findall(rest):
                    h = helps.get(cmd)
                    report.check(h is not None and re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(flag), h),
                                 "%s:%d: `sandgate %s %s` is in its --help" % (rel(path), n, cmd, flag))


def dockerfile_stages(text):
    stages, cur = [], None
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.upper().startswith("FROM "):
            cur = [s]
            stages.append(cur)
        elif cur is not None:
            cur.append(s)
    return stages


def binary_sonames(binary):
    rc, out = run(["ldd", binary])
    if rc != 0:
        return None
    names = []
    for line in out.splitlines():
        name = line.strip().split(" ")[0]
        if name and not BASE_SONAMES.match(name) and not name.startswith("/"):
            names.append(name)
    return names


def check_dockerfiles(report, binary, helps):
    deps = read(os.path.join(ROOT, "scripts", "install-deps.sh"))
    report.check("--build-only" in deps, "scripts/install-deps.sh takes --build-only")
    cmakelists = read(os.path.join(ROOT, "CMakeLists.txt"))
    install_dirs = re.findall(r"install\(DIRECTORY ([^)]*?) DESTINATION share/sandgate\)", cmakelists)
    install_dirs = install_dirs[0].split() if install_dirs else []
    report.check(install_dirs != [], "CMakeLists.txt installs lua/, policies/, examples/ to share/sandgate",
                 "no install(DIRECTORY ... DESTINATION share/sandgate)")
    top_dirs = set(re.findall(r"^\s+([a-z_]+)/[\w/]+\.c\s*$", cmakelists, re.M)) | set(install_dirs)
    sonames = binary_sonames(binary)
    builders = {}
    for name, cmd in (("egress.Dockerfile", "egress"), ("ingress.Dockerfile", "ingress")):
        path = os.path.join(DOCKER, name)
        if not report.check(os.path.exists(path), "docker/%s exists" % name):
            continue
        text = read(path)
        stages = dockerfile_stages(text)
        report.check(stages and all(re.match(r"FROM debian:bookworm-slim(\s|$)", s[0]) for s in stages),
                     "docker/%s: every stage is FROM debian:bookworm-slim" % name)
        build = next((s for s in stages if re.search(r"\bAS build\b", s[0])), None)
        if not report.check(build is not None, "docker/%s has a build stage" % name):
            continue
        body = "\n".join(build)
        builders[name] = body
        report.check(re.search(r"^COPY scripts/install-deps\.sh\b", body, re.M) and
                     re.search(r"^RUN bash scripts/install-deps\.sh --build-only\b", body, re.M),
                     "docker/%s: the build stage runs scripts/install-deps.sh --build-only" % name)
        report.check(re.search(r"cmake -S \. -B build\b", body) and re.search(r"cmake --build build\b", body),
                     "docker/%s: the build stage builds with CMake as the README does" % name)
        copied = set(re.findall(r"^COPY (\w+)/ ", body, re.M))
        report.check(top_dirs <= copied, "docker/%s: the build stage copies %s"
                     % (name, ", ".join(sorted(top_dirs))), "missing " + ", ".join(sorted(top_dirs - copied)))
        runtime = stages[-1]
        rt = "\n".join(runtime)
        report.check(re.search(r'^ENTRYPOINT \["sandgate", "%s"\]' % cmd, rt, re.M),
                     'docker/%s: ENTRYPOINT ["sandgate", "%s"]' % (name, cmd))
        report.check(re.search(r"^ENV SANDGATE_HOME=/usr/share/sandgate$", rt, re.M) and
                     "--prefix /usr" in body,
                     "docker/%s: SANDGATE_HOME=/usr/share/sandgate, where cmake --install puts lua/ and policies/" % name)
        installed = set(re.findall(r"\b(lib[\w.+-]+|lua-cjson)\b", " ".join(
            l for l in runtime if "apt-get install" in l or l.startswith("lib") or "\\" in l)))
        report.check("lua-cjson" in installed, "docker/%s: the runtime stage installs lua-cjson" % name)
        if sonames is None:
            report.check(False, "docker/%s: runtime libraries" % name, "ldd %s failed" % binary)
        for so in sonames or []:
            pkgs = SONAME_PACKAGES.get(so)
            report.check(pkgs is not None and pkgs & installed,
                         "docker/%s: the runtime stage provides %s (%s)" % (name, so, ", ".join(sorted(pkgs or ["?"]))),
                         "the binary links it and no package for it is installed")
        for p in re.findall(r"^EXPOSE (.*)$", rt, re.M):
            for port in p.split():
                n = int(port.split("/")[0])
                owner = [c for c, ports in SERVED.items() if n in ports]
                report.check(owner and all(helps.get(c) and SERVED[c][n] in helps[c] for c in owner),
                             "docker/%s: EXPOSE %s is served by `sandgate %s`" % (name, port, "/".join(owner) or "?"))
    if len(builders) == 2:
        a, b = builders.values()
        report.check(a == b, "both Dockerfiles' build stages are the same, line for line")


# Live ---------------------------------------------------------------------

def dns_query(name, qtype, server, port=15353, timeout=3):
    qtypes = {"A": 1, "TXT": 16}
    qid = 0x5347
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", qtypes[qtype], 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(q, (server, port))
        data, _ = s.recvfrom(4096)
    finally:
        s.close()
    rid, flags, _, ancount = struct.unpack(">HHHH", data[:8])
    return rid == qid, flags & 0xF, ancount


def http_get(port, path, headers=None, timeout=3):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        c.close()


def wait_http(port, path, proc, seconds=10):
    deadline = time.time() + seconds
    last = None
    while time.time() < deadline:
        if proc.poll() is not None:
            return None, "exited with %d" % proc.returncode
        try:
            return http_get(port, path, timeout=1), None
        except OSError as e:
            last = e
            time.sleep(0.1)
    return None, "no answer on %d in %ds (%s)" % (port, seconds, last)


def live(plan_path):
    """Runs inside `unshare --net`: prints one JSON line per check."""
    plan = json.loads(read(plan_path))
    binary, work = plan["binary"], plan["work"]
    procs = []

    def out(ok, name, why="", skip=None):
        print(json.dumps({"ok": bool(ok), "name": name, "why": why, "skip": skip}), flush=True)

    def start(argv, env, log):
        full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "SANDGATE_HOME": ROOT}
        full.update(env)
        f = open(os.path.join(work, log), "w")
        p = subprocess.Popen(argv, env=full, stdout=f, stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    def tail(log):
        try:
            return " | ".join(read(os.path.join(work, log)).strip().splitlines()[-3:])
        except OSError:
            return ""

    def rewrite(value, mounts):
        for mp, local in mounts.items():
            if value == mp or value.startswith(mp.rstrip("/") + "/"):
                return local + value[len(mp.rstrip("/")):]
        return value

    def materialize(kind, mounts):
        local = {}
        for i, (mp, files) in enumerate(sorted(mounts.items())):
            d = os.path.join(work, "%s-vol%d" % (kind, i))
            os.makedirs(d, exist_ok=True)
            for k, v in (files or {}).items():
                with open(os.path.join(d, k), "w") as f:
                    f.write(v)
            local[mp] = d
        return local

    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        # A route out, so that a query to a foreign nameserver reaches the
        # nat hook (and its redirect) instead of failing with no route.
        routed = subprocess.run("ip link add sg0 type veth peer name sg1 && ip addr add 192.0.2.2/24 dev sg0 && "
                                "ip link set sg0 up && ip link set sg1 up && ip route add default via 192.0.2.1",
                                shell=True, stderr=subprocess.DEVNULL).returncode == 0

        eg = plan.get("egress")
        if eg:
            mounts = materialize("egress", eg["mounts"])
            env = {k: rewrite(v, mounts) for k, v in eg["env"].items()}
            env.setdefault("OPENSANDBOX_EGRESS_DNS_UPSTREAM", "192.0.2.1")
            p = start([binary, "egress"] + [rewrite(a, mounts) for a in eg["args"]], env, "egress.log")
            got, err = wait_http(18080, "/healthz", p)
            ok = got is not None and got[0] == 200 and got[1].strip() == "ok"
            out(ok, "live: %s starts with the manifests' env, always-lists and script; GET /healthz on 18080 is 200 ok"
                % eg["where"], (err or repr(got)) + ": " + tail("egress.log"))
            if ok:
                try:
                    r = dns_query("metadata.google.internal", "A", "127.0.0.1")
                    out(r[0] and r[1] == 3, "live: DNS on 127.0.0.1:15353 answers; a deny.always name is NXDOMAIN",
                        "rcode %d" % r[1])
                except OSError as e:
                    out(False, "live: DNS on 127.0.0.1:15353 answers", str(e))
                try:
                    r = dns_query("pypi.org", "TXT", "127.0.0.1")
                    out(r[0] and r[1] == 0 and r[2] == 0,
                        "live: the ConfigMap's script runs: TXT for an allowed name is NODATA",
                        "rcode %d, %d answers" % (r[1], r[2]))
                except OSError as e:
                    out(False, "live: the ConfigMap's script runs", str(e))
                if routed:
                    try:
                        r = dns_query("metadata.google.internal", "A", "198.51.100.53", port=53)
                        out(r[0] and r[1] == 3, "live: a query to another nameserver on port 53 is intercepted",
                            "rcode %d" % r[1])
                    except OSError as e:
                        out(False, "live: a query to another nameserver on port 53 is intercepted", str(e))
                else:
                    out(True, "live: a query to another nameserver on port 53 is intercepted",
                        skip="no veth to route through")
                hc = (plan.get("compose_egress") or {}).get("healthcheck")
                if hc and hc.get("test", [None])[0] in ("CMD", "CMD-SHELL"):
                    test = hc["test"]
                    argv = test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]]
                    rc = subprocess.run(argv, timeout=5).returncode
                    out(rc == 0, "live: compose.yaml's egress healthcheck passes", "exit %d" % rc)
                pp = plan.get("compose_portproxy")
                if pp and pp.get("cmd") == "portproxy":
                    q = start([binary, "portproxy"] + pp["args"], {}, "portproxy.log")
                    got, err = wait_http(44772, "/proxy/18080/healthz", q)
                    out(got is not None and got[0] == 200 and got[1].strip() == "ok",
                        "live: `sandgate portproxy %s` forwards /proxy/18080/healthz to the egress API"
                        % " ".join(pp["args"]), (err or repr(got)) + ": " + tail("portproxy.log"))

        ig = plan.get("ingress")
        if ig:
            mounts = materialize("ingress", ig["mounts"])
            env = {k: rewrite(v, mounts) for k, v in ig["env"].items()}
            p = start([binary, "ingress"] + [rewrite(a, mounts) for a in ig["args"]], env, "ingress.log")
            got, err = wait_http(28888, "/status.ok", p)
            out(got is not None and got[0] == 200,
                "live: %s starts with its args and routes; GET /status.ok on 28888 is 200" % ig["where"],
                (err or repr(got)) + ": " + tail("ingress.log"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def check_live(report, binary, k8s, compose):
    names = ["live: the egress sidecar, gateway and port proxy run with the manifests' configuration"]
    if os.geteuid() != 0:
        report.skip(names[0], "needs root for a private network namespace (unshare --net)")
        return
    if not shutil.which("unshare") or not shutil.which("ip"):
        report.skip(names[0], "needs unshare and ip")
        return
    work = tempfile.mkdtemp(prefix="sg-manifests-")
    try:
        plan = {"binary": binary, "work": work, "egress": k8s.get("egress"), "ingress": k8s.get("ingress"),
                "compose_egress": compose.get("egress"), "compose_portproxy": compose.get("portproxy")}
        plan_path = os.path.join(work, "plan.json")
        with open(plan_path, "w") as f:
            json.dump(plan, f)
        p = subprocess.run(["unshare", "--net", "--", sys.executable, os.path.abspath(__file__),
                            "--live", plan_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=120)
        lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
        if not lines:
            why = (p.stderr.strip().splitlines() or ["no output"])[-1]
            if "Operation not permitted" in p.stderr:
                report.skip(names[0], why)
            else:
                report.check(False, names[0], why)
            return
        for l in lines:
            r = json.loads(l)
            if r.get("skip"):
                report.skip(r["name"], r["skip"])
            else:
                report.check(r["ok"], r["name"], r["why"])
        if p.returncode != 0:
            report.check(False, "live: the namespace run ends cleanly",
                         (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv):
    if len(argv) >= 3 and argv[1] == "--live":
        live(argv[2])
        return 0
    if len(argv) != 2:
        print("usage: check_manifests.py path/to/sandgate", file=sys.stderr)
        return 2
    binary = os.path.abspath(argv[1])
    report = Report()
    try:
        import yaml
    except ImportError:
        report.check(False, "python3-yaml is installed", "apt-get install python3-yaml")
        print("%d passed, %d failed" % (report.passed, report.failed))
        return 1
    if not report.check(os.access(binary, os.X_OK), "%s is executable" % binary):
        print("%d passed, %d failed" % (report.passed, report.failed))
        return 1
    helps = {cmd: help_of(binary, cmd) for cmd in SERVED}
    for cmd, h in helps.items():
        report.check(h is not None, "`sandgate %s --help` works" % cmd)
        for port, text in SERVED[cmd].items():
            report.check(h is not None and text in h, "`sandgate %s --help` names its port %d" % (cmd, port))
    readme = read(os.path.join(ROOT, "README.md"))
    report.check("GET /healthz" in readme, "README: the egress API serves GET /healthz")
    report.check("GET /status.ok" in readme, "README: the gateway serves GET /status.ok")
    docs = load_yaml(report, yaml)
    k8s = check_k8s(report, docs, helps)
    compose = check_compose(report, docs, helps)
    check_settings(report, helps)
    check_prose_flags(report, helps)
    check_dockerfiles(report, binary, helps)
    check_live(report, binary, k8s, compose)
    if report.skipped:
        print("%d skipped" % report.skipped)
    print("%d passed, %d failed" % (report.passed, report.failed))
    return 0 if report.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
