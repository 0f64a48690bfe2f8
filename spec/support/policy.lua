-- Shared by the policy and example specs: loads a policy script in the very
-- sandbox the server builds for it (sandgate.host's environment: only
-- sandgate.* and cjson can be required, no io, a reduced os), and builds
-- queries shaped like the host's.
local host = require "sandgate.host"
local ingress = require "sandgate.ingress.host"
local cjson = require "cjson"

local M = {}

function M.load(path)
  local chunk = assert(loadfile(path, "t", host.sandbox_env()))
  return chunk()
end

function M.query(name, qtype)
  return { name = name, qtype = qtype or "A", client = "10.0.0.2", transport = "udp" }
end

-- Loads a routing script as the C core does (sandgate.ingress.host.ingress,
-- the config as JSON) and returns call(method, target, client, headers),
-- headers a flat array { name1, value1, ... }: it calls the entry with what
-- request_args makes of them, as the C core would pass them, and returns
-- the entry's results in a table, with the arrays the entry reuses copied.
function M.ingress(path, cfg)
  local f = assert(io.open(path))
  local src = f:read("*a")
  f:close()
  local entry = ingress.ingress(src, "@" .. path, cfg and cjson.encode(cfg) or nil)
  return function(method, target, client, headers)
    return M.results(entry(ingress.request_args(method, target, client, headers or {})))
  end
end

-- An ingress entry's results in a table, the arrays it reuses copied.
function M.results(...)
  local out = { ... }
  for i, v in pairs(out) do
    if type(v) == "table" then
      local t = {}
      for j, x in ipairs(v) do t[j] = x end
      out[i] = t
    end
  end
  return out
end

return M
