-- Shared by the policy and example specs: loads a policy script in the very
-- sandbox the server builds for it (sandgate.host's environment: only
-- sandgate.* and cjson can be required, no io, a reduced os), and builds
-- queries shaped like the host's.
local host = require "sandgate.host"

local M = {}

function M.load(path)
  local chunk = assert(loadfile(path, "t", host.sandbox_env()))
  return chunk()
end

function M.query(name, qtype)
  return { name = name, qtype = qtype or "A", client = "10.0.0.2", transport = "udp" }
end

return M
