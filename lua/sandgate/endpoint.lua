-- The endpoint of a sandbox port in single-host mode, as OpenSandbox's
-- get_endpoint gives it for a Docker sandbox on the bridge network
-- (server/src/services/docker.py): every port is reached through the port
-- proxy published on one host port, except 8080, which has a host port of
-- its own.
--
--   endpoint.get{ public_host = "10.0.0.5", proxy_port = 40001, port = 3000,
--                 mappings = { [8080] = 32080 } }
--     -> "10.0.0.5:40001/proxy/3000"          (port 3000, through the proxy)
--     -> "10.0.0.5:32080"                     (port 8080, mapped directly)
--     -> nil, "Missing host port mapping for ..." when the mapping it needs is
--        not there, or nil and a message naming a malformed input
--
-- Ports are integers or strings of decimal digits (what a command line
-- gives). `mappings` maps a container port to a host port, as [PORT] =
-- HOSTPORT entries or as "PORT=HOSTPORT" strings in its array part (the form
-- of `sandgate endpoint --map`); later strings win. A direct mapping is used
-- for any port that has one; OpenSandbox only ever has one for 8080, and 8080
-- without one is an error, never the proxy. spec/endpoint_cases.txt holds the
-- cases that this module and the C command share.
local type, tostring, tonumber, pairs = type, tostring, tonumber, pairs
local find, match, sub, format = string.find, string.match, string.sub, string.format

local M = {}

-- OpenSandbox's container ports: its HTTP port, mapped directly, and the
-- execd proxy port that every other port goes through.
M.HTTP_PORT = 8080
M.PROXY_PORT = 44772

local PORT_RANGE = "Port must be between 1 and 65535."

-- A port number from an integer or a string of decimal digits, or nil.
local function parse_port(v)
  local n
  if type(v) == "number" then
    n = v
  elseif type(v) == "string" and match(v, "^%d+$") then
    n = tonumber(v)
  else
    return nil
  end
  if n ~= n or n < 1 or n > 65535 or n % 1 ~= 0 then return nil end
  return n
end
M.parse_port = parse_port

local function bad_mapping(text)
  return format('invalid mapping "%s": expected PORT=HOSTPORT, each 1-65535', text)
end

-- The mappings as { [port] = hostport }, or nil and the first bad entry:
-- the "PORT=HOSTPORT" strings of the array part in order, then the
-- [PORT] = HOSTPORT entries.
local function parse_mappings(t)
  local out = {}
  if t == nil then return out end
  if type(t) ~= "table" then
    return nil, "mappings must be a table, got " .. type(t)
  end
  local n = #t
  for i = 1, n do
    local s = t[i]
    if type(s) ~= "string" then return nil, bad_mapping(tostring(s)) end
    local eq = find(s, "=", 1, true)
    local from = eq and parse_port(sub(s, 1, eq - 1))
    local to = eq and parse_port(sub(s, eq + 1))
    if not from or not to then return nil, bad_mapping(s) end
    out[from] = to
  end
  for k, v in pairs(t) do
    if not (type(k) == "number" and k >= 1 and k <= n and k % 1 == 0) then
      local from, to = parse_port(k), parse_port(v)
      if not from or not to then
        return nil, bad_mapping(tostring(k) .. "=" .. tostring(v))
      end
      out[from] = to
    end
  end
  return out
end

function M.get(opts)
  opts = opts or {}
  -- The order of the checks is OpenSandbox's: the port first (its 400),
  -- then what the answer is built from.
  local port = parse_port(opts.port)
  if not port then return nil, PORT_RANGE end

  local host = opts.public_host
  if type(host) ~= "string" or host == "" then return nil, "public host is required" end

  local proxy
  if opts.proxy_port ~= nil then
    proxy = parse_port(opts.proxy_port)
    if not proxy then
      return nil, format('invalid proxy port "%s": expected 1-65535', tostring(opts.proxy_port))
    end
  end

  local maps, err = parse_mappings(opts.mappings)
  if not maps then return nil, err end

  local direct = maps[port]
  if direct then return host .. ":" .. direct end
  if port == M.HTTP_PORT then
    return nil, "Missing host port mapping for container port 8080."
  end
  if not proxy then
    return nil, "Missing host port mapping for execd proxy port 44772."
  end
  return host .. ":" .. proxy .. "/proxy/" .. port
end

M.parse_mappings = parse_mappings

return M
