-- The shared peer harness' routing grammar (../shared/bench/http-bench.sh), as a custom
-- routing script for `sandgate ingress`:
--
--   sandgate ingress --script bench/harness-route.lua --script-config routes.json ...
--
-- routes.json is the harness' routes file (lib/gen_http.py):
--   {"header":"X-Sandbox-Route","uriPattern":"/sandboxes/<id>/port/<port>/<rest>",
--    "routes":{"sb0-8080":"127.0.0.1:18101", ...}}
-- and reaches load() as ctx.config.script_config.
--
--   * A path starting with /sandboxes/ is URI mode (as the nginx and haproxy peers decide):
--     /sandboxes/<id>/port/<port>/<rest> goes to routes["<id>-<port>"] as /<rest> (or /),
--     bytes as received, with the query.
--   * Anything else is header mode: the header named by "header" holds the route key
--     "<id>-<port>"; path and query go to the backend untouched.
--   * An unknown route, a missing header or a path that does not fit the pattern: 404.
--
-- The peers forward the routing header and add nothing; so does this script (no
-- X-Forwarded-Prefix, no header removal beyond what the gateway always strips).
--
-- This hook is written in the script, so it runs interpreted (the time budget applies to
-- script code). Everything that can be is therefore done once in load(): the answers for
-- header mode are prebuilt tables (one per route key), and URI mode looks up the path's
-- "<id>/port/<port>" slice in a second table, so a request costs one header lookup, or
-- two plain finds, two subs and one table write.
local byte, find, sub, match, lower, tonumber, type, pairs, error =
  string.byte, string.find, string.sub, string.match, string.lower, tonumber, type, pairs, error

local M = {}

local PREFIX = "/sandboxes/"
local PREFIX_LEN = #PREFIX                  -- 11: the id starts at 12
local PATTERN = "/sandboxes/<id>/port/<port>/<rest>"

local NOT_FOUND = { status = 404, message = "route not found" }

local header = "x-sandbox-route"
local by_key = {}        -- "sb0-8080" -> { host = "127.0.0.1", port = 18101 } (header mode)
local by_uri = {}        -- "sb0/port/8080" -> { "127.0.0.1", 18101 }
local uri_answer = { host = "", port = 0, path = "/" }   -- reused: the host reads it at once

-- "<id>-<port>" and "host:port" -> id, port (string), backend host, backend port; raises
-- naming the entry.
local function parse_route(key, value)
  local id, port = match(key, "^([^/]+)%-(%d+)$")
  if not id then
    error("script_config.routes: key " .. key .. " is not <id>-<port>", 0)
  end
  if type(value) ~= "string" then
    error("script_config.routes[" .. key .. "] must be \"host:port\"", 0)
  end
  local h, p = match(value, "^([^:]+):(%d+)$")
  p = tonumber(p)
  if not h or p < 1 or p > 65535 then
    error("script_config.routes[" .. key .. "] = " .. value .. ", expected host:port", 0)
  end
  return id, port, h, p
end

function M.load(ctx)
  local cfg = ctx.config.script_config
  if type(cfg) ~= "table" or type(cfg.routes) ~= "table" then
    error("harness-route.lua needs --script-config with the harness' routes file", 0)
  end
  if cfg.uriPattern ~= nil and cfg.uriPattern ~= PATTERN then
    error("harness-route.lua implements uriPattern " .. PATTERN .. ", not " .. tostring(cfg.uriPattern), 0)
  end
  local hk, bu, n = {}, {}, 0
  for key, value in pairs(cfg.routes) do
    local id, port, h, p = parse_route(key, value)
    hk[key] = { host = h, port = p }
    bu[id .. "/port/" .. port] = { h, p }
    n = n + 1
  end
  if n == 0 then error("script_config.routes is empty", 0) end
  header = lower(type(cfg.header) == "string" and cfg.header or "X-Sandbox-Route")
  by_key, by_uri = hk, bu
end

function M.route(req)
  local path = req.path
  -- byte 2 first: a header-mode path rarely starts with "/s", and a plain find would scan it all
  if byte(path, 2) == 115 and find(path, PREFIX, 1, true) == 1 then
    -- /sandboxes/<id>/port/<port>[/<rest>]: e1 ends the id, e2 the port.
    local e1 = find(path, "/", PREFIX_LEN + 1, true)
    if not e1 then return NOT_FOUND end
    local e2 = find(path, "/", e1 + 6, true)   -- past "/port/"
    local b = by_uri[sub(path, PREFIX_LEN + 1, (e2 or 0) - 1)]
    if not b then return NOT_FOUND end
    local r = uri_answer
    r.host, r.port = b[1], b[2]
    if e2 then
      -- the target is path .. "?" .. query: from the rest's slash on, it is /<rest>?<query>
      r.path = sub(req.target, e2)
    else
      local q = req.query
      r.path = q and "/?" .. q or "/"
    end
    return r
  end
  local key = req.headers[header]
  return key and by_key[key] or NOT_FOUND
end

-- One route of the loaded table, both ways: refuses a load whose table or parsing is wrong.
function M.selftest()
  local key, want = next(by_key)
  local id, port = match(key, "^(.+)%-(%d+)$")
  local req = { method = "GET", path = "/sandboxes/" .. id .. "/port/" .. port .. "/a/b",
                query = "x=1", headers = {} }
  req.target = req.path .. "?x=1"
  local r = M.route(req)
  if r.host ~= want.host or r.port ~= want.port or r.path ~= "/a/b?x=1" then
    error("URI form of " .. key .. " routed wrong", 0)
  end
  req.path, req.target, req.query = "/a", "/a", nil
  req.headers[header] = key
  if M.route(req) ~= want then error("header form of " .. key .. " routed wrong", 0) end
  req.headers[header] = nil
  if M.route(req).status ~= 404 then error("no route did not give 404", 0) end
end

return M
