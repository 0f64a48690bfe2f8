-- Test cases for policy and routing scripts:
--
--   * the cases files of `sandgate test` (M.decode, M.run);
--   * the request descriptions of the gateway's POST /explain and of
--     ingress cases (M.request, M.decode_request);
--   * the comparison of what a script did with what a case expects
--     (M.judge), which sandgate.testing uses too, so that a busted spec and
--     `sandgate test` report a mismatch alike.
--
-- An outcome is what the explain endpoints answer, decoded: for egress
-- { verdict, rcode, source, rule, index, action, target, default, error },
-- for ingress { status, message } when the gateway answers itself, else
-- { sandbox, host, port, path, keep_host, set_headers, removed, headers }
-- (see core/egress/explain.h and core/ingress/routing.h).
--
-- This module is trusted code: it runs in sandgate's own Lua states (and in
-- busted), never in a policy VM.
local cjson = require("cjson.safe").new()
local rules = require "sandgate.rules"

local type, tostring, pairs, ipairs, next, error, pcall =
  type, tostring, pairs, ipairs, next, error, pcall
local format, lower, upper, find, byte = string.format, string.lower, string.upper,
  string.find, string.byte
local concat, sort = table.concat, table.sort

local NULL = cjson.null
local quote = rules.quote

local M = {}

-- Messages ------------------------------------------------------------------

-- A value as a message shows it: strings quoted, tables as JSON.
local function show(v)
  if v == nil then return "nothing" end
  if v == NULL then return "null" end
  if type(v) == "string" then return quote(v) end
  if type(v) == "table" then return cjson.encode(v) or "(a table)" end
  return tostring(v)
end
M.show = show

local function json_type(v)
  if v == nil then return "nothing" end
  if v == NULL then return "null" end
  if type(v) == "table" then return v[1] ~= nil and "an array" or "an object" end
  if type(v) == "string" then return "a string" end
  if type(v) == "number" then return "a number" end
  return "a " .. type(v)
end

local function fail(where, fmt, ...)
  error(where .. ": " .. format(fmt, ...), 0)
end

-- Checks that t only has the fields in allowed (a set); a typo in a case
-- must not silently make it test less.
local function only_fields(t, allowed, where)
  local bad = {}
  for k in pairs(t) do
    if type(k) ~= "string" or not allowed[k] then bad[#bad + 1] = tostring(k) end
  end
  if #bad > 0 then
    sort(bad)
    local names = {}
    for k in pairs(allowed) do names[#names + 1] = k end
    sort(names)
    fail(where, "unknown field %s (known: %s)", quote(bad[1]), concat(names, ", "))
  end
end

local function optional_string(t, field, where)
  local v = t[field]
  if v == nil or v == NULL then return nil end
  if type(v) ~= "string" then
    fail(where, "%s must be a string, got %s", field, json_type(v))
  end
  return v
end

local function is_object(v)
  return type(v) == "table" and v ~= NULL and v[1] == nil
end

-- Request descriptions ------------------------------------------------------
--
-- { "method": "GET", "path": "/x?y=1", "host": "sbx-1-8080.example",
--   "headers": {"Name": "value"} or [["Name", "value"], ...],
--   "client": "10.0.0.7" }
-- method defaults to GET, client to 127.0.0.1; "host" is the Host header.

M.MAX_HEADERS = 100

local REQUEST_FIELDS = { method = true, path = true, headers = true, host = true, client = true }

-- tchar (RFC 9110): what a method or a header name is made of.
local function is_token(s)
  return s ~= "" and not find(s, "[^!#$%%&'*+%-.^_`|~%w]")
end

local function is_field_value(s)
  return not find(s, "[%z\1-\8\10-\31\127]")
end

-- Normalizes a description into { method, target, client, headers } with
-- headers a flat array { name1, value1, ... } in the order given (an
-- object's names sorted, since JSON objects have no order). Raises
-- "<where>: <problem>".
function M.request(desc, where)
  where = where or "request"
  if not is_object(desc) then
    fail(where, "expected an object {method, path, headers, host, client}, got %s",
      json_type(desc))
  end
  only_fields(desc, REQUEST_FIELDS, where)
  local method = optional_string(desc, "method", where) or "GET"
  method = upper(method)
  if not is_token(method) then fail(where, "method %s is not an HTTP method", quote(method)) end
  local path = optional_string(desc, "path", where)
  if not path then fail(where, "path is missing (the request-target, e.g. \"/api?x=1\")") end
  if not (byte(path, 1) == 47 or path == "*") or find(path, "[%c ]") then
    fail(where, "path %s must start with / and have no spaces or control characters",
      quote(path))
  end
  local client = optional_string(desc, "client", where) or "127.0.0.1"
  local canonical = rules.parse_ip(client)
  if not canonical then fail(where, "client %s is not an IP address", quote(client)) end

  local flat, n, has_host = {}, 0, false
  local function add(name, value, at)
    if type(name) ~= "string" or not is_token(name) then
      fail(where, "%s: header name %s is not a token", at, show(name))
    end
    if type(value) ~= "string" then
      fail(where, "%s: the value of %s must be a string, got %s", at, name, json_type(value))
    end
    if not is_field_value(value) then
      fail(where, "%s: the value of %s has control characters", at, name)
    end
    if lower(name) == "host" then has_host = true end
    flat[n + 1], flat[n + 2] = name, value
    n = n + 2
  end
  local headers = desc.headers
  if headers ~= nil and headers ~= NULL then
    if type(headers) ~= "table" then
      fail(where, "headers must be an object or an array of [name, value], got %s",
        json_type(headers))
    end
    if headers[1] ~= nil then
      for i, pair in ipairs(headers) do
        local at = format("headers[%d]", i - 1)
        if type(pair) ~= "table" or #pair ~= 2 then
          fail(where, "%s must be [name, value], got %s", at, show(pair))
        end
        add(pair[1], pair[2], at)
      end
    else
      local names = {}
      for name in pairs(headers) do names[#names + 1] = name end
      sort(names, function(a, b) return tostring(a) < tostring(b) end)
      for _, name in ipairs(names) do add(name, headers[name], "headers") end
    end
  end
  local host = optional_string(desc, "host", where)
  if host then
    if has_host then fail(where, "host is given twice (host and a Host header)") end
    add("Host", host, "host")
  end
  if n / 2 > M.MAX_HEADERS then fail(where, "more than %d headers", M.MAX_HEADERS) end
  return { method = method, target = path, client = canonical, headers = flat }
end

-- The gateway's POST /explain: the body's JSON text to method, target,
-- client, headers (flat); or nil and the 400 message.
function M.decode_request(text)
  local desc, err = cjson.decode(text or "")
  if desc == nil then return nil, "request description: not valid JSON: " .. tostring(err) end
  local ok, req = pcall(M.request, desc, "request description")
  if not ok then return nil, req end
  return req.method, req.target, req.client, req.headers
end

-- Cases files -----------------------------------------------------------------
--
-- { "description": "...",                     optional
--   "kind": "egress" | "ingress",             optional; must match the script
--   "policy": {...},                          egress: the policy document
--   "always": {"deny": [...], "allow": [...], "log_skip": [...]},
--                                             egress: the always-lists
--   "routes": {...},                          ingress: the routes document
--   "config": {...},                          ingress: more config fields
--                                             (keys, now, dns_template,
--                                             mode, script_config, ...)
--   "cases": [ ... ] }
-- or just the array of cases. An egress case:
--   { "description"?, "name", "qtype"?, "client"?, "transport"?,
--     "expect": "allow" | "deny", "rule"?, "rcode"?, "source"?, "error"? }
-- an ingress case:
--   { "description"?, "request": {...},
--     "expect": { "status"?, "message"?, "sandbox"?, "host"?, "port"?,
--                 "path"?, "keep_host"?, "set_headers"?, "removed"? } }

local FILE_FIELDS = {
  description = true, kind = true, policy = true, always = true, routes = true,
  config = true, cases = true,
}
local EGRESS_FIELDS = {
  description = true, name = true, qtype = true, client = true, transport = true,
  expect = true, rule = true, rcode = true, source = true, error = true,
}
local INGRESS_FIELDS = { description = true, request = true, expect = true }
local INGRESS_EXPECT = {
  status = true, message = true, sandbox = true, host = true, port = true, path = true,
  keep_host = true, set_headers = true, removed = true,
}
local RCODES = { NXDOMAIN = "NXDOMAIN", NOERROR = "NOERROR", NODATA = "NOERROR",
  REFUSED = "REFUSED", SERVFAIL = "SERVFAIL" }
local SOURCES = { policy = true, ["allow.always"] = true, ["deny.always"] = true }
local ALWAYS_LISTS = { "deny", "allow", "log_skip" }

local function egress_case(c, where)
  only_fields(c, EGRESS_FIELDS, where)
  local name = optional_string(c, "name", where)
  if not name then fail(where, "name is missing (the DNS name to ask)") end
  local expect = c.expect
  if expect ~= "allow" and expect ~= "deny" then
    fail(where, "expect must be \"allow\" or \"deny\", got %s", show(expect))
  end
  local rcode = optional_string(c, "rcode", where)
  if rcode then
    if not RCODES[upper(rcode)] then
      fail(where, "rcode %s is not NXDOMAIN, NODATA (NOERROR), REFUSED or SERVFAIL", quote(rcode))
    end
    if expect ~= "deny" then fail(where, "rcode only applies to \"expect\": \"deny\"") end
  end
  local source = optional_string(c, "source", where)
  if source and not SOURCES[source] then
    fail(where, "source %s is not policy, allow.always or deny.always", quote(source))
  end
  local qtype = optional_string(c, "qtype", where)
  local client = optional_string(c, "client", where)
  local transport = optional_string(c, "transport", where)
  local label = name .. " " .. (qtype or "A")
  if client then label = label .. " from " .. client end
  if transport then label = label .. " over " .. transport end
  return {
    label = optional_string(c, "description", where) or label,
    name = name, qtype = qtype, client = client, transport = transport,
    expect = {
      verdict = expect,
      rule = optional_string(c, "rule", where),
      rcode = rcode and RCODES[upper(rcode)],
      source = source,
      error = optional_string(c, "error", where),
    },
  }
end

local function ingress_case(c, where)
  only_fields(c, INGRESS_FIELDS, where)
  local req = M.request(c.request, where .. ".request")
  local e = c.expect
  if not is_object(e) then
    fail(where, "expect must be an object {status, host, port, path, ...}, got %s", json_type(e))
  end
  only_fields(e, INGRESS_EXPECT, where .. ".expect")
  if e.status ~= nil and (type(e.status) ~= "number" or e.status % 1 ~= 0) then
    fail(where, "expect.status must be an integer, got %s", show(e.status))
  end
  if e.port ~= nil and (type(e.port) ~= "number" or e.port % 1 ~= 0) then
    fail(where, "expect.port must be an integer, got %s", show(e.port))
  end
  for _, f in ipairs({ "message", "sandbox", "host", "path" }) do
    optional_string(e, f, where .. ".expect")
  end
  if e.keep_host ~= nil and type(e.keep_host) ~= "boolean" then
    fail(where, "expect.keep_host must be true or false, got %s", show(e.keep_host))
  end
  if e.set_headers ~= nil and not is_object(e.set_headers) then
    fail(where, "expect.set_headers must be an object {name: value or null}, got %s",
      json_type(e.set_headers))
  end
  if e.removed ~= nil then
    if type(e.removed) ~= "table" or (next(e.removed) ~= nil and e.removed[1] == nil) then
      fail(where, "expect.removed must be an array of header names, got %s", json_type(e.removed))
    end
    for i, name in ipairs(e.removed) do
      if type(name) ~= "string" then
        fail(where, "expect.removed[%d] must be a header name, got %s", i - 1, show(name))
      end
    end
  end
  local label = req.method .. " " .. req.target
  local flat = req.headers
  for i = 1, #flat, 2 do
    if lower(flat[i]) == "host" then label = label .. " (Host: " .. flat[i + 1] .. ")" end
  end
  return {
    label = optional_string(c, "description", where) or label,
    request = req,
    expect = e,
  }
end

-- Decodes and checks a cases file. kind is "egress" or "ingress" (the
-- script's); a file that says otherwise is refused. Returns
--   { kind, description, cases = { {label, ...}, ... },
--     policy = <document JSON text> | false (not given),
--     always = { deny = text, allow = text, log_skip = text } | nil,
--     routes = <table> | nil, config = <table> | nil }
-- or raises "<name>: <problem>", naming the case ("cases[3]") at fault.
function M.decode(text, name, kind)
  local doc, err = cjson.decode(text or "")
  if doc == nil then fail(name, "not valid JSON: %s", tostring(err)) end
  if type(doc) ~= "table" or doc == NULL then
    fail(name, "expected an object with \"cases\", or an array of cases, got %s", json_type(doc))
  end
  if doc[1] ~= nil then doc = { cases = doc } end
  only_fields(doc, FILE_FIELDS, name)
  if doc.kind ~= nil and doc.kind ~= kind then
    fail(name, "kind is %s, but the script is an %s script", show(doc.kind), kind)
  end
  local file = { kind = kind, description = optional_string(doc, "description", name),
                 policy = false, cases = {} }
  if kind == "egress" then
    for _, f in ipairs({ "routes", "config" }) do
      if doc[f] ~= nil then fail(name, "%s is for ingress cases; this is an egress script", f) end
    end
    if doc.policy ~= nil then
      if doc.policy ~= NULL and not is_object(doc.policy) then
        fail(name, "policy must be a policy document (an object) or null, got %s",
          json_type(doc.policy))
      end
      file.policy = doc.policy == NULL and "" or cjson.encode(doc.policy)
    end
    if doc.always ~= nil then
      if not is_object(doc.always) then
        fail(name, "always must be an object {deny: [...], allow: [...], log_skip: [...]}")
      end
      only_fields(doc.always, { deny = true, allow = true, log_skip = true }, name .. ": always")
      file.always = {}
      for _, list in ipairs(ALWAYS_LISTS) do
        local targets = doc.always[list]
        if targets ~= nil then
          if type(targets) ~= "table" or (next(targets) ~= nil and targets[1] == nil) then
            fail(name, "always.%s must be an array of targets", list)
          end
          for i, t in ipairs(targets) do
            if type(t) ~= "string" then
              fail(name, "always.%s[%d] must be a target string, got %s", list, i - 1, show(t))
            end
          end
          file.always[list] = concat(targets, "\n")
        end
      end
    end
  else
    for _, f in ipairs({ "policy", "always" }) do
      if doc[f] ~= nil then fail(name, "%s is for egress cases; this is an ingress script", f) end
    end
    for _, f in ipairs({ "routes", "config" }) do
      local v = doc[f]
      if v ~= nil and v ~= NULL and not is_object(v) then
        fail(name, "%s must be an object, got %s", f, json_type(v))
      end
      if v ~= NULL then file[f] = v end
    end
  end
  local cases = doc.cases
  if type(cases) ~= "table" or cases == NULL or (next(cases) ~= nil and cases[1] == nil) then
    fail(name, "cases must be an array of cases, got %s", json_type(cases))
  end
  if #cases == 0 then fail(name, "there are no cases") end
  local build = kind == "egress" and egress_case or ingress_case
  for i, c in ipairs(cases) do
    local where = format("%s: cases[%d]", name, i - 1)
    if not is_object(c) then fail(where, "expected an object, got %s", json_type(c)) end
    file.cases[i] = build(c, where)
  end
  return file
end

-- The config document of an ingress file: the gateway's (base, JSON text
-- from the flags) with the file's routes and config fields over it.
function M.ingress_config(base, file)
  local cfg = base and cjson.decode(base) or {}
  if type(cfg) ~= "table" or cfg == NULL then cfg = {} end
  if file.routes then cfg.routes = file.routes end
  for k, v in pairs(file.config or {}) do cfg[k] = v end
  return cjson.encode(cfg)
end

-- Judging -------------------------------------------------------------------

-- What an outcome says about the egress verdict, for messages.
local function egress_summary(o)
  if o.error then return o.verdict .. " (script error: " .. o.error .. ")" end
  local s = o.verdict
  if o.rcode then s = s .. " " .. o.rcode end
  if o.rule and o.rule ~= NULL then s = s .. " by " .. o.rule end
  if o.source and o.source ~= "policy" then s = s .. " (" .. o.source .. ")" end
  return s
end
M.egress_summary = egress_summary

local function nonnull(v)
  if v == NULL then return nil end
  return v
end

-- Compares an egress outcome with a case's expectations; returns nil when
-- they agree, else an array of "field: expected X, got Y" lines.
local function judge_egress(e, o)
  local out = {}
  local function diff(field, want, got)
    out[#out + 1] = format("%s: expected %s, got %s", field, show(want), show(got))
  end
  local err = nonnull(o.error)
  if e.error then
    if not err then
      diff("error", "an error containing " .. e.error, nil)
    elseif not find(err, e.error, 1, true) then
      diff("error", "an error containing " .. e.error, err)
    end
  elseif err then
    out[#out + 1] = "unexpected script error (the query is denied): " .. err
  end
  if e.verdict ~= o.verdict then diff("verdict", e.verdict, o.verdict) end
  if e.rule and e.rule ~= nonnull(o.rule) then diff("rule", e.rule, nonnull(o.rule)) end
  if e.rcode and e.rcode ~= nonnull(o.rcode) then diff("rcode", e.rcode, nonnull(o.rcode)) end
  if e.source and e.source ~= nonnull(o.source) then diff("source", e.source, nonnull(o.source)) end
  if #out == 0 then return nil end
  return out
end

local function judge_ingress(e, o)
  local out = {}
  local function diff(field, want, got)
    out[#out + 1] = format("%s: expected %s, got %s", field, show(want), show(got))
  end
  local status = nonnull(o.status)
  if e.status ~= nil then
    if status ~= e.status then
      if status then
        diff("status", e.status, status)
      else
        out[#out + 1] = format("status: expected %d, got a forward to %s:%s", e.status,
          tostring(o.host), tostring(o.port))
      end
    end
  elseif status then
    out[#out + 1] = format("expected a forward, got %d %s", status, show(nonnull(o.message)))
    return out
  end
  for _, f in ipairs({ "message", "sandbox", "host", "port", "path", "keep_host" }) do
    if e[f] ~= nil and e[f] ~= nonnull(o[f]) then diff(f, e[f], nonnull(o[f])) end
  end
  if e.set_headers then
    local got = {}
    for name, value in pairs(nonnull(o.set_headers) or {}) do got[lower(name)] = value end
    local names = {}
    for name in pairs(e.set_headers) do names[#names + 1] = name end
    sort(names)
    for _, name in ipairs(names) do
      local want = nonnull(e.set_headers[name])
      if want == false then want = nil end
      local have = got[lower(name)]
      if want ~= have then
        diff("set_headers[" .. name .. "]", want or "not set", have or "not set")
      end
    end
  end
  if e.removed then
    local got = {}
    for _, name in ipairs(nonnull(o.removed) or {}) do got[lower(name)] = true end
    for _, name in ipairs(e.removed) do
      if not got[lower(name)] then
        out[#out + 1] = format("removed: expected %s among %s", show(name), show(nonnull(o.removed) or {}))
      end
    end
  end
  if #out == 0 then return nil end
  return out
end

-- M.judge(kind, expect, outcome) -> nil when the outcome is what the case
-- expects, else the mismatches, one line each. expect is a decoded case's
-- expect table.
function M.judge(kind, expect, outcome)
  if kind == "egress" then return judge_egress(expect, outcome) end
  return judge_ingress(expect, outcome)
end

-- Running a file ------------------------------------------------------------

-- Runs a cases file (`sandgate test`). natives (from the C side):
--   build(file_policy, always, config) -> true | nil, errors
--     builds the VM the cases run against, with the file's document or
--     lists (nil: the command line's) or its config JSON (ingress)
--   explain(case) -> outcome JSON | nil, problem
--     egress: explain(name, qtype, client, transport)
--     ingress: explain(method, target, client, headers)
-- base: { config = <the gateway's config JSON> } (ingress).
-- write(line) prints. Returns the numbers of passed and failed cases; raises
-- for a malformed file.
function M.run(text, name, kind, natives, base, write)
  local file = M.decode(text, name, kind)
  local ok, errors
  if kind == "egress" then
    ok, errors = natives.build(file.policy ~= false and file.policy or nil, file.always)
  else
    ok, errors = natives.build(M.ingress_config(base and base.config, file))
  end
  if not ok then
    write("not ok - the script does not load:")
    for line in (tostring(errors) .. "\n"):gmatch("([^\n]*)\n") do write("#   " .. line) end
    write(format("0 passed, %d failed", #file.cases))
    return 0, #file.cases
  end
  local passed, failed = 0, 0
  for i, c in ipairs(file.cases) do
    local json, problem
    if kind == "egress" then
      json, problem = natives.explain(c.name, c.qtype, c.client, c.transport)
    else
      local r = c.request
      json, problem = natives.explain(r.method, r.target, r.client, r.headers)
    end
    local outcome = json and cjson.decode(json)
    local mismatches
    if not outcome then
      mismatches = { "the case cannot be asked: " .. tostring(problem) }
    else
      mismatches = M.judge(kind, c.expect, outcome)
    end
    if mismatches then
      failed = failed + 1
      write(format("not ok %d - %s", i, c.label))
      for _, m in ipairs(mismatches) do write("#   " .. m) end
      if json then write("#   actual: " .. json) end
    else
      passed = passed + 1
      write(format("ok %d - %s", i, c.label))
    end
  end
  write(format("%d passed, %d failed", passed, failed))
  return passed, failed
end

return M
