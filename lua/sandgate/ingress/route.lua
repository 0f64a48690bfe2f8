-- The OpenSandbox ingress route grammars and secure access (OSEP-0011).
--
-- Two layers:
--   * pure functions: parse_port, parse_expires, valid_signature,
--     parse_token (header/host form), parse_uri (URI form), signature,
--     mint, keyring; they take and return plain values and are what tests,
--     tools and custom scripts build on;
--   * a router: route.new{ mode = "header"|"uri", backends = provider,
--     keys = keyring, now = fixed time (tests) } whose :route(req) does the
--     whole OpenSandbox decision for one request and returns the table a
--     routing script's route hook returns.
--
-- Semantics, as OpenSandbox's ingress implements them
-- (components/ingress/pkg/proxy/host.go, host_route_parse.go and
-- pkg/signature/ in opensandbox-group/OpenSandbox):
--   * Header mode takes OpenSandbox-Ingress-To, else OPEN-SANDBOX-INGRESS,
--     else Host (an empty header counts as absent); "http://" and "https://"
--     prefixes are tolerated; the first DNS label is the route token.
--   * A token is signed when it has at least four '-'-separated segments and,
--     read from the right, the segments are a signature (8 lower-case hex +
--     a key id [0-9a-z]), an expiry (base 36, [0-9a-z]{1,13}, no leading
--     zero, at most 2^64-1) and a port; the rest is the sandbox id, dashes
--     included. Anything else is the unsigned form: the sandbox id is what
--     comes before the LAST '-', the port what follows it. A signed-looking
--     token can never be a valid unsigned one (a 9-character last segment is
--     never a port), so the two readings do not compete.
--   * URI mode reads /<id>/<port>/<expires>/<signature>/<rest> as signed
--     when the three segments after the id have those shapes, else
--     /<id>/<port>/<rest>. The signed reading is only used when the sandbox
--     requires secure access; for any other sandbox the path is read the
--     unsigned way, so an application path that merely looks like a signed
--     prefix reaches the application untouched.
--   * A sandbox requires secure access when its backend record has a token.
--     Then: OpenSandbox-Secure-Access present (even empty) -> it must equal
--     the token, and a mismatch is a 401 with no fallback to the signature;
--     absent -> a signed route must verify (expiry first, then key id, then
--     digest); no signature -> 401. Sandboxes without a token ignore both
--     credentials.
--   * Ports are decimal 1-65535, digits only, no leading zero (OpenSandbox's
--     ParsePortSegment). OpenSandbox's header-mode fallback also takes "+80"
--     and "08080" through strconv.Atoi; we do not.
--
-- Error messages are OpenSandbox's (the C side prefixes the body with
-- "OpenSandbox Ingress: ").
--
-- The per-request path allocates only the strings it must (the sandbox id,
-- the forwarded path in URI mode): parse results go into a table the caller
-- passes in, and the router fills one result table per router in place. A
-- result is therefore valid until the router's next call, which is how the
-- host uses it.
local crypto = require "sandgate.crypto"

local byte, sub, find, char, format, gsub =
  string.byte, string.sub, string.find, string.char, string.format, string.gsub
local band, rshift = bit.band, bit.rshift
local type, pairs, next, tostring, error, setmetatable, floor =
  type, pairs, next, tostring, error, setmetatable, math.floor
local os_time = os.time

-- crypto.equal is called through the module table (not cached) so that a
-- spec can check that every secret comparison goes through it.
local sha256, sha256_hex_prefix = crypto.sha256, crypto.sha256_hex_prefix

local M = {}

-- Header names, lower-case as the host delivers them.
M.INGRESS_TO = "opensandbox-ingress-to"
M.DEPRECATED_INGRESS = "open-sandbox-ingress"
M.SECURE_ACCESS = "opensandbox-secure-access"
-- OSEP-0009's per-request renew opt-out: OpenSandbox strips it too.
M.ACCESS_RENEW = "opensandbox-access-renew"

-- Removed from every forwarded request: the workload never sees routing
-- headers or credentials.
M.REMOVE_HEADERS = { M.INGRESS_TO, M.DEPRECATED_INGRESS, M.SECURE_ACCESS, M.ACCESS_RENEW }

local INGRESS_TO, DEPRECATED_INGRESS, SECURE_ACCESS =
  M.INGRESS_TO, M.DEPRECATED_INGRESS, M.SECURE_ACCESS

-- Messages (OpenSandbox's wording) -----------------------------------------

local INVALID = "invalid ingress route: "
M.MISSING_HEADER = "missing header 'Opensandbox-Ingress-To' or 'Host'"
M.URI_FORMAT = "invalid URI path format: expected '/<sandbox-id>/<sandbox-port>/<path-to-request>', got: "
M.HEADER_MISMATCH = "signature: secure access header mismatch"
M.SIGNATURE_REQUIRED = "signature: signature required for this sandbox"
M.NO_VERIFIER = "signature: ingress verifier not configured"
M.EXPIRED = "signature: access expired"
M.UNKNOWN_KEY = "signature: unauthorized: unknown signed_key_id"
M.BAD_SIGNATURE = "signature: unauthorized: signature mismatch"

-- Go's %q for the ASCII a route can contain: quotes and backslashes
-- escaped, other control and non-ASCII bytes as \xNN, so a message never
-- carries raw control characters.
local function goquote(s)
  return '"' .. gsub(s, '[%c"\\\128-\255]', function(c)
    if c == '"' or c == "\\" then return "\\" .. c end
    return format("\\x%02x", byte(c))
  end) .. '"'
end
M.goquote = goquote

-- Segments ----------------------------------------------------------------
-- Each takes a string and the inclusive byte range [i, j] of the segment, so
-- a route is checked in place without cutting it into strings first.
--
-- The per-request ones (ports, the last dash of an unsigned token) are
-- written without loops: a loop starts a trace of its own, LuaJIT cannot
-- compile the way back from it into the caller of the function it is in
-- ("NYI: return to lower frame"), and the rest of the request would then run
-- interpreted. The loops left run only for signed-looking routes.

-- The value of a decimal digit byte, or nil.
local function digit(c)
  if c and c >= 48 and c <= 57 then return c - 48 end
  return nil
end

-- Returns the port, or nil and the problem (for "invalid port format: ...").
local function port_at(s, i, j)
  local n = j - i + 1
  if n > 1 and byte(s, i) == 48 then return nil, "port must not have leading zeros" end
  local v
  if n >= 1 and n <= 5 then
    v = digit(byte(s, i))
    if v and n >= 2 then local d = digit(byte(s, i + 1)); v = d and v * 10 + d end
    if v and n >= 3 then local d = digit(byte(s, i + 2)); v = d and v * 10 + d end
    if v and n >= 4 then local d = digit(byte(s, i + 3)); v = d and v * 10 + d end
    if v and n >= 5 then local d = digit(byte(s, i + 4)); v = d and v * 10 + d end
  end
  if not v or v < 1 or v > 65535 then return nil, "invalid port " .. goquote(sub(s, i, j)) end
  return v
end

-- The largest uint64 in base 36: a 13-character expiry is in range when it
-- does not sort after it (same length, and '0'-'9' < 'a'-'z' in ASCII as in
-- value).
local EXPIRES_MAX = "3w5e11264sgsf"

-- Returns the expiry in seconds (a double: exact below 2^53, and anything
-- above is centuries away), or nil.
local function expires_at(s, i, j)
  local n = j - i + 1
  if n < 1 or n > 13 then return nil end
  if n > 1 and byte(s, i) == 48 then return nil end
  local v = 0
  for k = i, j do
    local c = byte(s, k)
    local d
    if c >= 48 and c <= 57 then
      d = c - 48
    elseif c >= 97 and c <= 122 then
      d = c - 87
    else
      return nil
    end
    v = v * 36 + d
  end
  if n == 13 and sub(s, i, j) > EXPIRES_MAX then return nil end
  return v
end

-- 8 lower-case hex digits and a key id [0-9a-z].
local function signature_at(s, i, j)
  if j - i ~= 8 then return false end
  for k = i, i + 7 do
    local c = byte(s, k)
    if not ((c >= 48 and c <= 57) or (c >= 97 and c <= 102)) then return false end
  end
  local c = byte(s, j)
  return (c >= 48 and c <= 57) or (c >= 97 and c <= 122)
end

-- The position of the last '-' in s at or before j, or nil.
local function last_dash(s, j)
  for k = j, 1, -1 do
    if byte(s, k) == 45 then return k end
  end
  return nil
end

function M.parse_port(s)
  if type(s) ~= "string" then return nil, "invalid port " .. tostring(s) end
  return port_at(s, 1, #s)
end

function M.parse_expires(s)
  if type(s) ~= "string" then return nil end
  return expires_at(s, 1, #s)
end

function M.valid_signature(s)
  return type(s) == "string" and signature_at(s, 1, #s)
end

-- Header and Host form ------------------------------------------------------

-- True when byte k of s is a dash (k may be out of range: string.byte
-- would read a negative index from the end).
local function dash(s, k)
  return k >= 1 and byte(s, k) == 45
end

-- The last dash of a token, looked for first among the six positions an
-- unsigned "-<port>" can start at, without a loop.
local function port_dash(tok, n)
  if dash(tok, n) then return n end
  if dash(tok, n - 1) then return n - 1 end
  if dash(tok, n - 2) then return n - 2 end
  if dash(tok, n - 3) then return n - 3 end
  if dash(tok, n - 4) then return n - 4 end
  if dash(tok, n - 5) then return n - 5 end
  return last_dash(tok, n)
end

-- Parses a route token "<id>-<port>" or "<id>-<port>-<expires>-<signature>"
-- into out (a table the caller reuses): out.id, out.port and, for a signed
-- token, out.expires_b36, out.expires, out.signature. Returns true, or nil
-- and the message. orig is what the message quotes (the header value).
local function parse_token(tok, out, orig)
  local n = #tok
  if dash(tok, n - 9) and signature_at(tok, n - 8, n) then
    local d1 = n - 9
    local d2 = last_dash(tok, d1 - 1)
    local expires = d2 and expires_at(tok, d2 + 1, d1 - 1)
    local d3 = expires and last_dash(tok, d2 - 1)
    if d3 and d3 > 1 and byte(tok, 1) ~= 45 then
      local port = port_at(tok, d3 + 1, d2 - 1)
      if port then
        out.id, out.port = sub(tok, 1, d3 - 1), port
        out.expires_b36, out.expires, out.signature = sub(tok, d2 + 1, d1 - 1), expires, sub(tok, d1 + 1, n)
        return true
      end
    end
  end
  local d1 = port_dash(tok, n)
  if not d1 or d1 == 1 or byte(tok, 1) == 45 then
    return nil, INVALID .. "invalid host: " .. (orig or tok)
  end
  local port, problem = port_at(tok, d1 + 1, n)
  if not port then return nil, INVALID .. "invalid port format: " .. problem end
  out.id, out.port = sub(tok, 1, d1 - 1), port
  out.expires_b36, out.expires, out.signature = nil, nil, nil
  return true
end

-- The route token of a header value or Host: the first DNS label, after an
-- optional scheme, without a ":port" (OpenSandbox keeps the port in a
-- dotless Host and then fails to parse it; we take the label).
local function label_of(v)
  local start = 1
  if byte(v, 1) == 104 then -- 'h'
    if find(v, "http://", 1, true) == 1 then
      start = 8
    elseif find(v, "https://", 1, true) == 1 then
      start = 9
    end
  end
  local stop = find(v, ".", start, true)
  local colon = find(v, ":", start, true)
  if colon and (not stop or colon < stop) then stop = colon end
  if stop then return sub(v, start, stop - 1) end
  if start == 1 then return v end
  return sub(v, start)
end

-- A header sent twice reaches us joined with ", "; like Go's Header.Get we
-- take the first value.
local function first_value(v)
  local comma = find(v, ",", 1, true)
  if not comma then return v end
  return (gsub(sub(v, 1, comma - 1), "%s+$", ""))
end

-- Header mode: picks the header (or Host) and parses its token into out.
-- Returns true, or nil and the message.
function M.parse_header_route(headers, out)
  local v = headers[INGRESS_TO]
  if v == nil or v == "" then v = headers[DEPRECATED_INGRESS] end
  if v == nil or v == "" then
    v = headers.host
    if v == nil or v == "" then return nil, M.MISSING_HEADER end
  else
    v = first_value(v)
  end
  return parse_token(label_of(v), out, v)
end

-- parse_token for tests and scripts: returns a new table, or nil and the
-- message.
function M.parse_token(tok)
  local out = {}
  local ok, err = parse_token(tok, out)
  if not ok then return nil, err end
  return out
end

-- URI form ----------------------------------------------------------------

-- Parses a raw path (no query) into out: out.id, out.port, out.rest (the
-- byte where the unsigned remainder starts, or nil for "/"), out.prefix
-- ("/<id>/<port>", raw) and, when the path has the signed
-- shape, out.expires_b36, out.expires, out.signature and out.signed_rest
-- (where the remainder after the signature starts, or nil). Returns true, or
-- nil and the message.
function M.parse_uri_route(path, out)
  local n = #path
  if n == 0 then return nil, "missing URI path" end
  local start = byte(path, 1) == 47 and 2 or 1
  local s1 = find(path, "/", start, true)
  if not s1 then return nil, INVALID .. M.URI_FORMAT .. path end
  if s1 == start then return nil, INVALID .. "missing sandbox-id or sandbox-port in URI path" end
  local s2 = find(path, "/", s1 + 1, true)
  local port_end = (s2 or n + 1) - 1
  local port, problem = port_at(path, s1 + 1, port_end)
  if not port then return nil, INVALID .. "invalid port format: " .. problem end
  out.id, out.port, out.rest = sub(path, start, s1 - 1), port, s2
  out.prefix = start == 2 and sub(path, 1, port_end) or "/" .. sub(path, 1, port_end)
  out.expires_b36, out.expires, out.signature, out.signed_rest = nil, nil, nil, nil
  -- The signature first: its length rules out most application paths
  -- before any loop runs.
  local s3 = s2 and find(path, "/", s2 + 1, true)
  if s3 then
    local s4 = find(path, "/", s3 + 1, true)
    local sig_end = (s4 or n + 1) - 1
    local expires = signature_at(path, s3 + 1, sig_end) and expires_at(path, s2 + 1, s3 - 1)
    if expires then
      out.expires_b36, out.expires = sub(path, s2 + 1, s3 - 1), expires
      out.signature, out.signed_rest = sub(path, s3 + 1, sig_end), s4
    end
  end
  return true
end

function M.parse_uri(path)
  local out = {}
  local ok, err = M.parse_uri_route(path, out)
  if not ok then return nil, err end
  return out
end

-- Signatures (OSEP-0011) -------------------------------------------------

local function be32(n)
  return char(band(rshift(n, 24), 255), band(rshift(n, 16), 255), band(rshift(n, 8), 255), band(n, 255))
end

-- The canonical string that a route signature covers.
function M.canonical(id, port, expires_b36)
  return "v1\nshort\n" .. id .. "\n" .. port .. "\n" .. expires_b36 .. "\n"
end

-- The 8 hex digits of a route signature: the first four bytes of
-- SHA-256(BE32(len key) || key || BE32(len canonical) || canonical).
function M.hex8(secret, id, port, expires_b36)
  local canonical = M.canonical(id, port, expires_b36)
  return sha256_hex_prefix(be32(#secret) .. secret .. be32(#canonical) .. canonical, 8)
end

-- The 9-character route signature: hex8 followed by the key id.
function M.signature(secret, key_id, id, port, expires_b36)
  return M.hex8(secret, id, port, expires_b36) .. key_id
end

-- Base 36, lower-case, no leading zeros (Go's strconv.FormatUint(n, 36)),
-- for whole seconds below 2^53.
function M.encode_expires(sec)
  sec = floor(sec)
  if sec == 0 then return "0" end
  local digits = {}
  while sec > 0 do
    local d = sec % 36
    digits[#digits + 1] = d < 10 and char(48 + d) or char(87 + d)
    sec = (sec - d) / 36
  end
  return string.reverse(table.concat(digits))
end

-- A signed route token "<id>-<port>-<expires_b36>-<signature>", as
-- OpenSandbox's GetEndpoint?expires= mints it.
function M.mint(secret, key_id, id, port, expires_sec)
  local e = M.encode_expires(expires_sec)
  return id .. "-" .. port .. "-" .. e .. "-" .. M.signature(secret, key_id, id, port, e)
end

-- Decodes the configured signing keys { key_id = "base64", ... } (an
-- optional "base64:" prefix is accepted, as OSEP-0011's examples write it)
-- into { key_id = secret bytes }. Raises an error naming the bad key.
function M.keyring(keys)
  local ring = {}
  if keys == nil then return ring end
  if type(keys) ~= "table" then
    error("keys must be an object of key id -> base64 secret, got " .. type(keys), 0)
  end
  for id, text in pairs(keys) do
    local where = "keys[" .. (type(id) == "string" and goquote(id) or tostring(id)) .. "]"
    if type(id) ~= "string" or not find(id, "^[0-9a-z]$") then
      error(where .. ": a key id is exactly one character [0-9a-z]", 0)
    end
    if type(text) ~= "string" then
      error(where .. ": the secret must be a base64 string, got " .. type(text), 0)
    end
    if sub(text, 1, 7) == "base64:" then text = sub(text, 8) end
    local secret, problem = crypto.base64_decode(text)
    if not secret then error(where .. ": the secret is not valid base64 (" .. problem .. ")", 0) end
    if #secret == 0 then error(where .. ": the secret is empty", 0) end
    ring[id] = secret
  end
  return ring
end

-- Secure access -----------------------------------------------------------

local function trim(s)
  if find(s, "^%s") or find(s, "%s$") then
    return (gsub(gsub(s, "^%s+", ""), "%s+$", ""))
  end
  return s
end

-- Checks the credentials of a request for a sandbox whose backend record b
-- has a token (b.token_digest, its SHA-256, is used when present). p is the parse result, ring the keyring (has_keys: it is not
-- empty), now the time in seconds. Returns nil when access is granted, else
-- the status and message. The static token is compared through SHA-256 so
-- that neither its contents nor its length show in the timing.
function M.check_access(headers, b, p, ring, has_keys, now)
  local v = headers[SECURE_ACCESS]
  if v ~= nil then
    local digest = b.token_digest or sha256(b.token)
    if crypto.equal(sha256(trim(v)), digest) then return nil end
    return 401, M.HEADER_MISMATCH
  end
  local sig = p.signature
  if not sig then return 401, M.SIGNATURE_REQUIRED end
  if not has_keys then return 503, M.NO_VERIFIER end
  if now < 0 or now > p.expires then return 401, M.EXPIRED end
  local secret = ring[sub(sig, 9, 9)]
  if not secret then return 401, M.UNKNOWN_KEY end
  if not crypto.equal(M.hex8(secret, p.id, p.port, p.expires_b36), sub(sig, 1, 8)) then
    return 401, M.BAD_SIGNATURE
  end
  return nil
end

-- The router ------------------------------------------------------------

local Router = {}
Router.__index = Router

local function check_backends(b)
  if type(b) ~= "table" or type(b.lookup) ~= "function" then
    error("route: backends must be a provider with a lookup method", 3)
  end
end

-- opts: mode ("header" or "uri"), backends (anything with :lookup(id)
-- returning { host, ready, token } or nil), keys (a keyring from
-- route.keyring), now (a fixed time for tests; default os.time()).
--
-- router.hook is router:route as a plain function, made here so that a
-- script can use it as its route hook directly: a hook defined in the
-- script itself runs interpreted (the host turns the JIT off for script
-- code), and LuaJIT cannot compile the return from a compiled router into
-- an interpreted caller, which costs about a third of the routing time.
function M.new(opts)
  opts = opts or {}
  local mode = opts.mode or "header"
  if mode ~= "header" and mode ~= "uri" then
    error("route.new: mode must be \"header\" or \"uri\", got " .. tostring(mode), 2)
  end
  check_backends(opts.backends)
  local self = setmetatable({
    uri = mode == "uri",
    parsed = {},
    -- The two results, reused for every request.
    failure = { status = 0, message = "" },
    result = { host = "", port = 0, path = "/", set_headers = nil, remove_headers = nil,
               keep_host = false, sandbox = "" },
    -- URI mode's one added header.
    prefix_header = { ["X-Forwarded-Prefix"] = "" },
  }, Router)
  self:configure(opts)
  local route = Router.route
  self.hook = function(req) return route(self, req) end
  return self
end

-- Replaces the backends, keys and clock of a router (its mode stays), as a
-- script's load hook does with the host's context: { backends, keys, now }.
function Router:configure(opts)
  check_backends(opts.backends)
  local ring = opts.keys or {}
  self.backends, self.ring, self.has_keys, self.now = opts.backends, ring, next(ring) ~= nil, opts.now
  return self
end

local function fail(self, status, message)
  local f = self.failure
  f.status, f.message = status, message
  return f
end

-- Routes one request (the host's req table: path, query, target, headers).
-- Returns the failure table { status, message } or the result table
-- { host, port, path, set_headers, keep_host, sandbox }, both reused.
function Router:route(req)
  local p = self.parsed
  local ok, err
  if self.uri then
    ok, err = M.parse_uri_route(req.path, p)
  else
    ok, err = M.parse_header_route(req.headers, p)
  end
  if not ok then return fail(self, 400, err) end
  local id = p.id
  local b = self.backends:lookup(id)
  if not b then return fail(self, 404, "sandbox not found: " .. id) end
  if b.ready == false then return fail(self, 503, "sandbox not ready: " .. id) end
  local token = b.token
  local secure = token ~= nil and token ~= ""
  if secure then
    local status, message = M.check_access(req.headers, b, p, self.ring, self.has_keys,
      self.now or os_time())
    if status then return fail(self, status, message) end
  end
  local r = self.result
  r.host, r.port, r.sandbox, r.keep_host, r.remove_headers = b.host, p.port, id, false, nil
  if self.uri then
    local path = req.path
    -- The signed prefix is stripped only for a sandbox that requires it.
    local at = p.rest
    if secure and p.signature then at = p.signed_rest end
    local rest = at and sub(path, at) or "/"
    local q = req.query
    r.path = q and rest .. "?" .. q or rest
    local h = self.prefix_header
    h["X-Forwarded-Prefix"] = p.prefix
    r.set_headers = h
  else
    r.path, r.set_headers = req.target, nil
  end
  return r
end

-- The hooks of a shipped routing script (policies/ingress/<mode>.lua). One
-- router for the life of the VM: load only reconfigures it, and its hook is
-- the route hook as is, so routing runs compiled from end to end. Until
-- load, no sandbox is known (404). selftest checks OSEP-0011's test vector:
-- a wrong digest or canonical string would make every signed URL fail, so
-- the script refuses to start instead.
function M.shipped(mode)
  local backends = require "sandgate.ingress.backends"
  local router = M.new({ mode = mode, backends = backends.routes(nil) })
  return {
    route = router.hook,
    load = function(ctx) router:configure(ctx) end,
    selftest = function()
      local sig = M.signature("my-test-secret", "a", "sbx-001", 8080, "x2qxvk")
      if sig ~= "0ff8cd39a" then
        error("route signature test vector gives " .. sig .. ", expected 0ff8cd39a")
      end
    end,
  }
end

return M
