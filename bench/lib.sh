# Shared by the bench scripts (sourced).

# write_nsd_config DIR PORT: an NSD on 127.0.0.1:PORT whose root zone answers
# every name with A 192.0.2.1, as the shared harness' upstream does. Writes
# DIR/root.zone and DIR/nsd.conf; start it with `nsd -d -c DIR/nsd.conf`.
write_nsd_config() {
  local dir=$1 port=$2
  printf '$ORIGIN .\n$TTL 300\n@ IN SOA ns.bench. hostmaster.bench. 1 3600 600 86400 300\n@ IN NS ns.bench.\n* IN A 192.0.2.1\n' \
    >"$dir/root.zone"
  cat >"$dir/nsd.conf" <<C
server:
  ip-address: 127.0.0.1@$port
  port: $port
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "$dir"
  database: ""
  zonelistfile: "$dir/zone.list"
  xfrdfile: "$dir/xfrd.state"
  pidfile: "$dir/nsd.pid"
  logfile: "$dir/nsd.log"
  verbosity: 0
  do-ip6: no
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
  tcp-count: 1000
remote-control:
  control-enable: no
zone:
  name: "."
  zonefile: "$dir/root.zone"
C
}
