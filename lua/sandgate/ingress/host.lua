-- The trusted side of a routing VM: loads a routing script in the same
-- sandbox as egress policy scripts (sandgate.host), builds the backend
-- providers and the signing keys from the ingress config, runs the
-- script's load and selftest hooks, and returns the per-request entry point
-- the C core calls.
--
--   local entry, hooks = require("sandgate.ingress.host").ingress(src, chunkname, cfg_json)
--
-- cfg_json (null or empty means {}):
--   { "mode": "header"|"uri",                 (which shipped grammar; optional)
--     "routes": { "<id>": "10.0.0.5" | {"host":..,"ready":..,"token":..} } | null,
--     "dns_template": "{id}.sandboxes.default.svc.cluster.local" | null,
--     "keys": { "a": "<base64>" } | null,      (OSEP-0011 signing keys)
--     "now": <seconds> }                       (a fixed clock, for tests)
-- Other fields are passed through to the script untouched.
--
-- Script hooks:
--   load(ctx)    optional; ctx = { mode, backends (a provider: :lookup(id)),
--                keys (key id -> secret bytes), now, config (the decoded
--                cfg) }; an error refuses the load
--   selftest()   optional; an error refuses the load
--   route(req)   required; req = { method, target (raw), path (raw, no
--                query), query (raw, or nil when the target has no '?'),
--                headers (lower-case name -> value, repeats joined with ", "),
--                host (the Host header), client (the client address) }.
--                req and its headers table are reused: valid only during
--                the call. Returns { status = 4xx|5xx, message = "..." } or
--                { host, port, path (default: the target as received),
--                set_headers = { name = value }, remove_headers = { name },
--                keep_host = bool, sandbox = id }.
--                A hook written in the script runs interpreted (script code
--                runs with the JIT off, so that the time budget applies); a
--                hook taken from a shipped module, such as the shipped
--                scripts' route.new(...).hook, runs compiled.
--
-- The entry: entry(method, target, client_ip, headers, path, query) where
-- headers maps lower-case names to values (repeats joined with ", " in
-- order) and path and query are the target split at its first '?' (query
-- nil without one): the C core builds them (see push_headers in
-- core/script/vm.c), request_args below does the same from a flat header
-- array { name1, value1, ... }. It returns either
--   status, message                         (status >= 400: reply with it)
-- or
--   0, host, port, path, set_headers, remove_headers, keep_host, sandbox
-- where path is the request-target to send (path and query, raw),
-- set_headers a flat array { name, value, ... } or nil (each replaces any
-- header of that name), remove_headers an array of lower-case names (always
-- at least the routing and secure-access headers), keep_host a boolean and
-- sandbox the sandbox id or nil (for logs and metrics). The set_headers and
-- remove_headers arrays are reused by the next call: read them before.
--
-- A script that raises, or returns something that is not a valid answer,
-- gets a 500 whose message names the error: nothing is forwarded.
local cjson = require "cjson.safe"
local host = require "sandgate.host"
local route = require "sandgate.ingress.route"
local backends = require "sandgate.ingress.backends"

local type, tostring, error, pcall, pairs, next =
  type, tostring, error, pcall, pairs, next
local byte, lower, find, sub, format = string.byte, string.lower, string.find, string.sub, string.format
local floor = math.floor

local NULL = cjson.null
local quote = require("sandgate.rules").quote

-- Values in messages: strings JSON-quoted (no raw control characters in a
-- log line or a reply body, and cut when long), the rest as tostring does.
local function describe(v)
  if type(v) == "string" then return quote(v) end
  return tostring(v)
end

local M = {}

-- Config ----------------------------------------------------------------

local function config_error(problem)
  error("invalid ingress config: " .. problem, 0)
end

local WANT = { string = "a string", table = "an object", number = "a number" }

local function optional(cfg, field, want)
  local v = cfg[field]
  if v == NULL then
    cfg[field] = nil
    return nil
  end
  if v ~= nil and type(v) ~= want then
    config_error(format("%s must be %s, got %s", field, WANT[want],
      type(v) == "table" and (v[1] ~= nil and "an array" or "an object") or describe(v)))
  end
  return v
end

-- Decodes the config text into a table with JSON nulls removed from the
-- known fields.
function M.decode_config(text)
  if text == nil or find(text, "^%s*$") then return {} end
  local cfg, err = cjson.decode(text)
  if err then config_error("not valid JSON: " .. tostring(err)) end
  if cfg == NULL then return {} end
  if type(cfg) ~= "table" or cfg[1] ~= nil then config_error("expected a JSON object") end
  local mode = optional(cfg, "mode", "string")
  if mode ~= nil and mode ~= "header" and mode ~= "uri" then
    config_error("mode must be \"header\" or \"uri\", got " .. describe(mode))
  end
  optional(cfg, "routes", "table")
  optional(cfg, "dns_template", "string")
  optional(cfg, "keys", "table")
  optional(cfg, "now", "number")
  return cfg
end

-- The table the script's load hook receives.
function M.context(cfg)
  local ok, ring = pcall(route.keyring, cfg.keys)
  if not ok then config_error(ring) end
  return {
    mode = cfg.mode,
    backends = backends.from_config(cfg),
    keys = ring,
    now = cfg.now,
    config = cfg,
  }
end

-- Results -----------------------------------------------------------------

-- Headers the gateway manages itself (framing, Host, hop-by-hop): a script
-- may neither set nor remove them.
local MANAGED = {
  host = true, ["content-length"] = true, ["transfer-encoding"] = true,
  connection = true, upgrade = true, te = true, trailer = true,
  ["keep-alive"] = true, ["proxy-connection"] = true,
}

-- tchar (RFC 9110 section 5.6.2).
local TOKEN = {}
for c in ("!#$%&'*+-.^_`|~"):gmatch(".") do TOKEN[byte(c)] = true end
for c = 48, 57 do TOKEN[c] = true end
for c = 65, 90 do TOKEN[c] = true end
for c = 97, 122 do TOKEN[c] = true end

-- Byte loops, not patterns: LuaJIT compiles them, while a pattern find is
-- a call out of the trace (measured: the entry is about 40% slower with
-- patterns).
local function is_token(s)
  local n = #s
  if n == 0 then return false end
  for i = 1, n do
    if not TOKEN[byte(s, i)] then return false end
  end
  return true
end

-- True when s has no control byte, space or DEL: what may go into a request
-- line or a Host header.
local function is_visible(s)
  for i = 1, #s do
    local c = byte(s, i)
    if c <= 32 or c == 127 then return false end
  end
  return true
end

-- A header value: no control bytes but horizontal tab (so no CR/LF).
local function is_field_value(s)
  for i = 1, #s do
    local c = byte(s, i)
    if (c < 32 and c ~= 9) or c == 127 then return false end
  end
  return true
end

local REMOVE = route.REMOVE_HEADERS
local NREMOVE = #REMOVE

local function bad(what)
  return 500, "routing script returned " .. what
end

-- Builds the per-request entry around the script's route hook. The request
-- table and the two header arrays handed to C are reused from call to call
-- (the headers table comes from the caller).
local function ingress_entry(route_hook)
  local req = { method = "", target = "", path = "", query = nil, headers = nil,
                host = nil, client = "" }
  local set_flat, nset = {}, 0
  local remove_flat, nremove = {}, 0
  for i = 1, NREMOVE do remove_flat[i] = REMOVE[i] end

  -- Fills set_flat from the script's set_headers; returns the array, or nil
  -- and the problem.
  local function set_list(set)
    local n = 0
    for name, value in pairs(set) do
      if type(name) ~= "string" or not is_token(name) then
        return nil, "set_headers with a bad header name " .. describe(name)
      end
      if MANAGED[lower(name)] then
        return nil, "set_headers naming " .. name .. ", which the gateway manages"
      end
      if type(value) ~= "string" or not is_field_value(value) then
        return nil, "set_headers[" .. describe(name) .. "] = " .. describe(value)
          .. ", expected a string without control characters"
      end
      set_flat[n + 1], set_flat[n + 2] = name, value
      n = n + 2
    end
    for i = n + 1, nset do set_flat[i] = nil end
    nset = n
    return set_flat
  end

  local function remove_list(list)
    local n = NREMOVE
    for i = 1, #list do
      local name = list[i]
      if type(name) ~= "string" or not is_token(name) then
        return nil, "remove_headers with a bad header name " .. describe(name)
      end
      name = lower(name)
      if MANAGED[name] then
        return nil, "remove_headers naming " .. name .. ", which the gateway manages"
      end
      n = n + 1
      remove_flat[n] = name
    end
    for i = n + 1, nremove do remove_flat[i] = nil end
    nremove = n
    return remove_flat
  end

  -- Turns the hook's answer into the entry's results.
  local function answer(r)
    if type(r) ~= "table" then
      return bad(describe(r) .. ", expected a table")
    end
    local status = r.status
    if status ~= nil then
      if type(status) ~= "number" or status < 400 or status > 599 or status ~= floor(status) then
        return bad("status " .. describe(status) .. ", expected an integer 400-599")
      end
      local message = r.message
      if message == nil then message = "request refused by the routing script" end
      if type(message) ~= "string" then
        return bad("message " .. describe(message) .. ", expected a string")
      end
      return status, message
    end
    local h, port, path = r.host, r.port, r.path
    if type(h) ~= "string" or h == "" or not is_visible(h) then
      return bad("host " .. describe(h) .. ", expected a host name or address")
    end
    if type(port) ~= "number" or port < 1 or port > 65535 or port ~= floor(port) then
      return bad("port " .. describe(port) .. ", expected an integer 1-65535")
    end
    if path == nil then
      path = req.target
    elseif type(path) ~= "string" or not (byte(path, 1) == 47 or path == "*")
      or not is_visible(path) then
      return bad("path " .. describe(path)
        .. ", expected a request-target starting with / and without spaces or control characters")
    end
    local set, remove, problem = r.set_headers, REMOVE, nil
    if set ~= nil then
      if type(set) ~= "table" then return bad("set_headers " .. describe(set) .. ", expected a table") end
      if next(set) == nil then
        set = nil
      else
        set, problem = set_list(set)
        if set == nil then return bad(problem) end
      end
    end
    local rm = r.remove_headers
    if rm ~= nil then
      if type(rm) ~= "table" then return bad("remove_headers " .. describe(rm) .. ", expected an array") end
      if rm[1] ~= nil then
        remove, problem = remove_list(rm)
        if remove == nil then return bad(problem) end
      end
    end
    local sandbox = r.sandbox
    if sandbox ~= nil and type(sandbox) ~= "string" then
      return bad("sandbox " .. describe(sandbox) .. ", expected a string")
    end
    return 0, h, port, path, set, remove, r.keep_host and true or false, sandbox
  end

  return function(method, target, client, headers, path, query)
    req.method, req.target, req.client = method, target, client
    req.headers, req.host, req.path, req.query = headers, headers.host, path, query
    local ok, r = pcall(route_hook, req)
    if not ok then
      return 500, "routing script failed: " .. tostring(r)
    end
    return answer(r)
  end
end

-- The entry's arguments from a request with its headers as a flat array
-- { name1, value1, ... } in the order received: what the C core passes
-- (sandgate.testing calls the entry through this).
function M.request_args(method, target, client, flat)
  local headers = {}
  for i = 1, #flat - 1, 2 do
    local name, value = lower(flat[i]), flat[i + 1]
    local old = headers[name]
    headers[name] = old == nil and value or old .. ", " .. value
  end
  local q = find(target, "?", 1, true)
  if q then
    return method, target, client, headers, sub(target, 1, q - 1), sub(target, q + 1)
  end
  return method, target, client, headers, target, nil
end

-- Loads a routing script with its config and returns the entry point (see
-- above) and the script's hooks. Raises (with file:line where the script is
-- at fault) on any failure; the caller keeps the previous VM.
local INGRESS_HOOKS = { "route", "load", "selftest" }
local INGRESS_REQUIRED = { route = true }

function M.ingress(src, chunkname, cfg_json)
  local cfg = M.decode_config(cfg_json)
  local ctx = M.context(cfg)
  local hooks = host.load_script(src, chunkname)
  host.check_hooks(hooks, chunkname, INGRESS_HOOKS, INGRESS_REQUIRED)
  -- Errors name the script, the line and the hook (see sandgate.host).
  if hooks.load then
    local ok, err = host.run_stage(chunkname, "load", hooks.load, ctx)
    if not ok then error(err, 0) end
  end
  if hooks.selftest then
    local ok, err = host.run_stage(chunkname, "selftest", hooks.selftest)
    if not ok then error(err, 0) end
  end
  return ingress_entry(hooks.route), hooks
end

return M
