-- Backend providers: where a sandbox id leads.
--
-- A provider is any table with :lookup(id) returning a record
--   { host = "10.0.0.5" | "name.example", ready = true|false,
--     token = "..." | nil, token_digest = SHA-256 of token | nil }
-- or nil for an unknown sandbox. The port always comes from the route.
-- Records are shared: callers read them and must not change them.
--
--   backends.routes(doc)        the routes file: a decoded JSON object keyed
--                               by sandbox id, each value a host string or
--                               { "host": ..., "ready": bool, "token": ... }
--   backends.dns(template)      a name per sandbox from a template such as
--                               "{id}.sandboxes.default.svc.cluster.local";
--                               the C side resolves the name asynchronously
--   backends.chain(p1, p2, ...) the first provider that knows the id
--   backends.from_config(cfg)   routes, then DNS, from the ingress config
--
-- Validation errors start with "invalid routes: " or "invalid dns_template: "
-- and name the bad entry, so that a broken routes file is refused with a
-- message its author can act on (and the previous routes keep serving).
local cjson = require "cjson.safe"
local crypto = require "sandgate.crypto"
local rules = require "sandgate.rules"

local byte, sub, find, gsub = string.byte, string.sub, string.find, string.gsub
local type, pairs, ipairs, error, setmetatable, tostring, unpack =
  type, pairs, ipairs, error, setmetatable, tostring, unpack
local sort = table.sort
local quote = rules.quote

local NULL = cjson.null

-- The JSON type of a decoded value, for "expected X, got Y" messages.
local function json_type(v)
  if v == nil then return "nothing" end
  if v == NULL then return "null" end
  local t = type(v)
  if t == "table" then return v[1] ~= nil and "array" or "object" end
  return t
end

local M = {}

-- Names and addresses -------------------------------------------------------

-- A DNS label (RFC 1123): 1-63 letters, digits and hyphens, not starting or
-- ending with a hyphen. Checked byte by byte: it runs per request for the
-- DNS provider.
local function valid_label(s, i, j)
  local n = j - i + 1
  if n < 1 or n > 63 then return false end
  for k = i, j do
    local c = byte(s, k)
    local alnum = (c >= 48 and c <= 57) or (c >= 97 and c <= 122) or (c >= 65 and c <= 90)
    if not alnum and (c ~= 45 or k == i or k == j) then return false end
  end
  return true
end

function M.valid_label(s)
  return type(s) == "string" and valid_label(s, 1, #s)
end

-- A host name: dot-separated labels (underscores allowed, as in service
-- names), at most 253 characters, one trailing dot allowed.
local function valid_name(s)
  local n = #s
  if byte(s, n) == 46 then n = n - 1 end
  if n < 1 or n > 253 then return false end
  local start = 1
  while start <= n + 1 do
    local dot = find(s, ".", start, true)
    if not dot or dot > n then dot = n + 1 end
    local label = sub(s, start, dot - 1)
    if not find(label, "^[%w_]") or not find(label, "^[%w_%-]+$") or #label > 63
      or byte(label, -1) == 45 then
      return false
    end
    start = dot + 1
    if dot == n + 1 then break end
  end
  return true
end

-- True for an IPv4 or IPv6 address literal (without brackets) or a host
-- name.
local function valid_host(s)
  if rules.parse_ip(s) then return true end
  if find(s, "^[%d%.]+$") then return false end -- 10.0.0.300, 1.2.3
  return valid_name(s)
end
M.valid_host = valid_host

-- Routes file -----------------------------------------------------------------

local Table = {}
Table.__index = Table

function Table:lookup(id)
  return self.map[id]
end

local function routes_error(id, problem)
  error("invalid routes: " .. quote(id) .. ": " .. problem, 0)
end

local function check_host(id, h, field)
  if type(h) ~= "string" then
    routes_error(id, field .. " must be a string, got " .. json_type(h))
  end
  if not valid_host(h) then
    routes_error(id, field .. " " .. quote(h) .. " is not an IP address or host name"
      .. " (no port, no brackets, no scheme: the port comes from the route)")
  end
  return h
end

local ENTRY_FIELDS = { host = true, ready = true, token = true }

local function record(id, v)
  if type(v) == "string" then
    return { host = check_host(id, v, "host"), ready = true }
  end
  if type(v) ~= "table" or v == NULL or v[1] ~= nil then
    routes_error(id, "expected a host string or an object "
      .. "{\"host\": ..., \"ready\": ..., \"token\": ...}, got " .. json_type(v))
  end
  local names = {}
  for k in pairs(v) do
    if not ENTRY_FIELDS[k] then names[#names + 1] = tostring(k) end
  end
  if #names > 0 then
    sort(names)
    routes_error(id, "unknown field " .. quote(names[1])
      .. " (expected \"host\", \"ready\" and \"token\")")
  end
  if v.host == nil then routes_error(id, "missing \"host\"") end
  local rec = { host = check_host(id, v.host, "host"), ready = true }
  local ready = v.ready
  if ready ~= nil and ready ~= NULL then
    if type(ready) ~= "boolean" then
      routes_error(id, "\"ready\" must be true or false, got " .. json_type(ready))
    end
    rec.ready = ready
  end
  local token = v.token
  if token ~= nil and token ~= NULL then
    if type(token) ~= "string" then
      routes_error(id, "\"token\" must be a string, got " .. json_type(token))
    end
    -- OpenSandbox trims the annotation; an empty token means the sandbox
    -- does not require secure access.
    token = gsub(gsub(token, "^%s+", ""), "%s+$", "")
    if token ~= "" then
      rec.token, rec.token_digest = token, crypto.sha256(token)
    end
  end
  return rec
end

-- Builds the routes-file provider from its decoded JSON. nil, JSON null and
-- {} give a provider that knows no sandbox.
function M.routes(doc)
  local map = {}
  if doc ~= nil and doc ~= NULL then
    if type(doc) ~= "table" or doc[1] ~= nil then
      error("invalid routes: expected a JSON object keyed by sandbox id, got "
        .. json_type(doc), 0)
    end
    -- Sorted, so that of several bad entries the same one is always named.
    local ids = {}
    for id in pairs(doc) do
      if type(id) ~= "string" then
        error("invalid routes: expected a JSON object keyed by sandbox id", 0)
      end
      ids[#ids + 1] = id
    end
    sort(ids)
    for _, id in ipairs(ids) do
      if id == "" then error("invalid routes: a sandbox id is empty", 0) end
      map[id] = record(id, doc[id])
    end
  end
  return setmetatable({ map = map }, Table)
end

-- Decodes and builds a routes file from its text.
function M.routes_json(text)
  local doc, err = cjson.decode(text)
  if err then error("invalid routes: not valid JSON: " .. tostring(err), 0) end
  return M.routes(doc)
end

-- DNS template ---------------------------------------------------------------

local Dns = {}
Dns.__index = Dns

-- At most this many names are kept; past it the cache starts over, so a
-- client sending random ids cannot grow it without bound.
local DNS_CACHE_MAX = 1024

function Dns:lookup(id)
  local rec = self.cache[id]
  if rec then return rec end
  if type(id) ~= "string" or not valid_label(id, 1, #id) then return nil end
  local host
  if self.suffix then
    host = self.prefix .. id .. self.suffix
  else
    host = gsub(self.template, "{id}", id)
  end
  if self.count >= DNS_CACHE_MAX then
    self.cache, self.count = {}, 0
  end
  rec = { host = host, ready = true }
  self.cache[id] = rec
  self.count = self.count + 1
  return rec
end

-- Builds the DNS provider. The template must contain "{id}" and give a
-- valid host name once a label is put in its place. A sandbox id that is
-- not a DNS label is unknown (404), never substituted.
function M.dns(template)
  if type(template) ~= "string" then
    error("invalid dns_template: expected a string, got " .. json_type(template), 0)
  end
  local first = find(template, "{id}", 1, true)
  if not first then
    error("invalid dns_template: " .. quote(template) .. " does not contain {id}", 0)
  end
  if not valid_name((gsub(template, "{id}", "x"))) then
    error("invalid dns_template: " .. quote(template)
      .. " is not a host name once {id} is replaced by a sandbox id", 0)
  end
  local p = setmetatable({ template = template, cache = {}, count = 0 }, Dns)
  if not find(template, "{id}", first + 4, true) then
    p.prefix, p.suffix = sub(template, 1, first - 1), sub(template, first + 4)
  end
  return p
end

-- Chain ----------------------------------------------------------------------

local Chain = {}
Chain.__index = Chain

function Chain:lookup(id)
  local list = self.list
  for i = 1, #list do
    local rec = list[i]:lookup(id)
    if rec then return rec end
  end
  return nil
end

function M.chain(...)
  return setmetatable({ list = { ... } }, Chain)
end

-- The providers an ingress config asks for: the routes table first (an
-- explicit entry wins), then the DNS template. With neither, no sandbox is
-- known.
function M.from_config(cfg)
  local list = {}
  if cfg.routes ~= nil and cfg.routes ~= NULL then list[#list + 1] = M.routes(cfg.routes) end
  if cfg.dns_template ~= nil and cfg.dns_template ~= NULL then
    list[#list + 1] = M.dns(cfg.dns_template)
  end
  if #list == 1 then return list[1] end
  return M.chain(unpack(list))
end

return M
