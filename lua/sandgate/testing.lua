-- Busted specs for your own policy and routing scripts.
--
--   local testing = require "sandgate.testing"
--
--   local p = testing.egress("policy.lua", { policy = { defaultAction = "deny",
--     egress = { { action = "allow", target = "*.pypi.org" } } } })
--   p:expect("files.pypi.org", "allow")
--   p:expect({ name = "x.example", qtype = "TXT" }, { verdict = "deny", rule = "default" })
--   local v = p:decide("files.pypi.org")   -- { verdict, rule, source, index, ... }
--
--   local g = testing.ingress("route.lua", { routes = { ["sbx-1"] = "10.0.0.5" } })
--   g:expect({ path = "/api", host = "sbx-1-8080.gw" }, { host = "10.0.0.5", port = 8080 })
--   local r = g:route({ path = "/", headers = { ["X-Debug"] = "1" } })
--
-- A script is loaded by the server's own loader code (sandgate.host,
-- sandgate.ingress.host): the same sandbox, the same hooks in the same
-- order (main chunk, load, selftest, static_sets), the same messages. What
-- a spec cannot have is the server's C side: the memory cap and the time
-- budget (a spec that loops, loops; `sandgate check` and `sandgate test` run
-- under them), the DNS wire format (names are lower-cased and lose one
-- trailing dot here, where the proxy also escapes odd bytes), and the
-- gateway's own answers (GET /status.ok, a second Host header) and request
-- rewrite (X-Forwarded-*, hop-by-hop headers). `sandgate test` and the
-- explain endpoints have all of that; their answers have the same fields
-- as the tables here, and expectations are checked by the same code
-- (sandgate.cases), so a mismatch reads the same in both.
--
-- This module is for specs: it reads files and is never loaded by the
-- server.
local host = require "sandgate.host"
local ingress_host = require "sandgate.ingress.host"
local cases = require "sandgate.cases"
local log = require "sandgate.log"
local cjson = require("cjson.safe").new()

local type, tostring, error, pcall, pairs, ipairs, setmetatable =
  type, tostring, error, pcall, pairs, ipairs, setmetatable
local format, lower, sub, concat = string.format, string.lower, string.sub, table.concat

local M = {}

local function read(path)
  local f, err = io.open(path, "r")
  if not f then error("sandgate.testing: cannot read " .. tostring(err), 3) end
  local src = f:read("*a")
  f:close()
  return src
end

-- JSON text of a document given as a table (or already as text).
local function as_json(v, what)
  if v == nil or type(v) == "string" then return v end
  local text, err = cjson.encode(v)
  if not text then error("sandgate.testing: " .. what .. ": " .. tostring(err), 3) end
  return text
end

-- A table of lists { deny = {...}, allow = {...}, log_skip = {...} } to the
-- host's always-list texts.
local function always_texts(always)
  if always == nil then return nil end
  local files = {}
  for _, list in ipairs({ "deny", "allow", "log_skip" }) do
    local v = always[list]
    if type(v) == "table" then v = concat(v, "\n") end
    files[list] = v
  end
  return files
end

-- Log capture ---------------------------------------------------------------

-- Starts collecting what scripts log (instead of writing it to stderr) and
-- returns the array the lines go into: { level, event, fields } each.
-- testing.release_log() goes back to stderr.
function M.capture_log()
  local lines = {}
  log.set_sink(function(level, event, fields)
    lines[#lines + 1] = { level = level, event = event, fields = fields }
  end)
  return lines
end

function M.release_log()
  log.set_sink(nil)
end

-- Egress ----------------------------------------------------------------------

local RCODE_NAMES = { [0] = "NOERROR", [2] = "SERVFAIL", [3] = "NXDOMAIN", [5] = "REFUSED" }

-- testing.query(name, qtype, client, transport) or testing.query{...}: the
-- query a script's decide gets, with the proxy's defaults (A, 127.0.0.1,
-- udp) and its name form (lower-case, no trailing dot).
function M.query(name, qtype, client, transport)
  if type(name) == "table" then
    name, qtype, client, transport = name.name, name.qtype, name.client, name.transport
  end
  if type(name) ~= "string" then error("sandgate.testing: a query needs a name", 2) end
  name = lower(name)
  if sub(name, -1) == "." then name = sub(name, 1, -2) end
  return { name = name, qtype = qtype or "A", client = client or "127.0.0.1",
           transport = transport or "udp" }
end

-- The entry's results as the explain endpoint shows them (see
-- core/egress/explain.c).
local function egress_outcome(q, ok, allow, rule, rcode, index, target, quiet, source)
  local o = { name = q.name, qtype = q.qtype, client = q.client, transport = q.transport }
  if not ok then
    o.verdict, o.rcode, o.error = "deny", "NXDOMAIN", tostring(allow)
    return o
  end
  o.verdict = allow == 1 and "allow" or "deny"
  if allow ~= 1 then o.rcode = RCODE_NAMES[rcode] or "NXDOMAIN" end
  o.source = source
  local has_rule = type(index) == "number" and type(target) == "string"
  if type(rule) == "string" then
    o.rule = rule
  elseif has_rule then
    o.rule = format("egress[%d] %s %s", index, o.verdict, target)
  end
  if has_rule then o.index, o.action, o.target = index, o.verdict, target end
  if source == "policy" and o.rule == "default" then o.default = true end
  if allow == 1 and quiet then o.log_skip = true end
  return o
end

local Egress = {}
Egress.__index = Egress

-- p:decide(name [, qtype, client, transport]) or p:decide{...}: what the
-- server would answer, as a table like GET /policy/explain's answer:
-- verdict ("allow"/"deny"), rcode (a deny's), source ("policy",
-- "allow.always", "deny.always"), rule (the log's reference), index,
-- action, target, default, log_skip, or error (the script failed: denied).
function Egress:decide(...)
  local q = M.query(...)
  return egress_outcome(q, pcall(self.entry, q.name, q.qtype, q.client, q.transport))
end

-- What a failed expectation raises: the query, each mismatch, the answer.
local function mismatch(label, lines, outcome, summary)
  error(label .. ":\n  " .. concat(lines, "\n  ") .. "\n  actual: " .. summary(outcome), 3)
end

-- p:expect(query, expected): raises unless the answer is as expected.
-- query is a name or a table for testing.query; expected is "allow",
-- "deny" or a table with verdict and any of rule, rcode ("NXDOMAIN",
-- "NODATA", ...), source, error (a part of the script's error).
function Egress:expect(query, expected)
  local q = M.query(query)
  local e = type(expected) == "table" and expected or { verdict = expected }
  if e.verdict ~= "allow" and e.verdict ~= "deny" then
    error("sandgate.testing: expected must be \"allow\", \"deny\" or {verdict = ..., ...}", 2)
  end
  local want = { verdict = e.verdict, rule = e.rule, source = e.source, error = e.error,
                 rcode = e.rcode and (e.rcode == "NODATA" and "NOERROR" or e.rcode) }
  local o = self:decide(q)
  local lines = cases.judge("egress", want, o)
  if lines then mismatch(q.name .. " " .. q.qtype, lines, o, cases.egress_summary) end
  return o
end

-- testing.egress(path, opts) loads an egress script as the server does.
-- opts: policy (the document: a table, JSON text, or nil for deny-all),
-- always ({ deny = {...}, allow = {...}, log_skip = {...} }: the operator's
-- lists). Raises the load's error, as the server reports it. The result has
-- :decide, :expect, .hooks (the script's table) and .statics.
function M.egress(path, opts)
  opts = opts or {}
  local entry, statics, hooks = host.egress(read(path), "@" .. path,
    as_json(opts.policy, "policy"), always_texts(opts.always), true)
  return setmetatable({ entry = entry, statics = statics, hooks = hooks }, Egress)
end

-- Ingress ---------------------------------------------------------------------

-- testing.request(description): a request description ({method, path,
-- headers, host, client}, as the gateway's POST /explain takes it)
-- normalized as sandgate.cases does it.
function M.request(desc)
  return cases.request(desc, "request")
end

local Ingress = {}
Ingress.__index = Ingress

-- The entry's results as POST /explain shows them (without the forwarded
-- head, which is the gateway's).
local function ingress_outcome(ok, status, a, port, path, set, remove, keep_host, sandbox)
  if not ok then
    return { status = 500, message = "routing script failed: " .. tostring(status) }
  end
  if status ~= 0 then return { status = status, message = a } end
  local o = { host = a, port = port, path = path, keep_host = keep_host, sandbox = sandbox,
              set_headers = {}, removed = {} }
  -- The entry reuses its arrays: copy them.
  for i = 1, #(set or {}), 2 do o.set_headers[set[i]] = set[i + 1] end
  for i = 1, #(remove or {}) do o.removed[i] = remove[i] end
  return o
end

-- g:route(description): what the routing script decides, as a table like
-- POST /explain's answer: status and message (refused), or sandbox, host,
-- port, path, keep_host, set_headers ({name = value}), removed ({names}).
function Ingress:route(desc)
  local r = M.request(desc)
  return ingress_outcome(pcall(self.entry, ingress_host.request_args(r.method, r.target, r.client, r.headers)))
end

-- g:expect(description, expected): raises unless the route is as expected.
-- expected has any of status, message, sandbox, host, port, path,
-- keep_host, set_headers ({name = value}, or false for "not set"), removed
-- ({names} that must be among the removed ones).
function Ingress:expect(desc, expected)
  if type(expected) ~= "table" then
    error("sandgate.testing: expected must be a table {status = ...} or {host = ..., port = ...}", 2)
  end
  local r = M.request(desc)
  local o = ingress_outcome(pcall(self.entry, ingress_host.request_args(r.method, r.target, r.client, r.headers)))
  local lines = cases.judge("ingress", expected, o)
  if lines then
    mismatch(r.method .. " " .. r.target, lines, o, function(x) return cjson.encode(x) end)
  end
  return o
end

-- testing.ingress(path, opts) loads a routing script as the gateway does.
-- opts: routes (sandbox id -> backend), and config (more config fields:
-- keys, now, dns_template, mode, script_config, or your script's own).
-- Raises the load's error. The result has :route, :expect and .hooks.
function M.ingress(path, opts)
  opts = opts or {}
  local cfg = {}
  for k, v in pairs(opts.config or {}) do cfg[k] = v end
  if opts.routes ~= nil then cfg.routes = opts.routes end
  local entry, hooks = ingress_host.ingress(read(path), "@" .. path, as_json(cfg, "config"))
  return setmetatable({ entry = entry, hooks = hooks }, Ingress)
end

-- Loading errors ----------------------------------------------------------------

-- testing.load_error(kind, path, opts): the message a load of the script
-- fails with ("policy.lua:12: in load(): ..."), or nil when it loads.
function M.load_error(kind, path, opts)
  local ok, err = pcall(kind == "ingress" and M.ingress or M.egress, path, opts)
  if ok then return nil end
  return tostring(err)
end

return M
