-- The shipped URI-mode routing script: OpenSandbox's ingress semantics,
-- nothing more.
--
-- /<id>/<port>/<rest> goes to the sandbox's backend as /<rest> (or /), raw
-- bytes kept (%2F stays %2F) and the query byte for byte, with
-- X-Forwarded-Prefix: /<id>/<port> so that applications can build absolute
-- URLs. For a sandbox that requires secure access,
-- /<id>/<port>/<expires>/<signature>/<rest> is the signed form. All the
-- work happens in sandgate.ingress.route (JIT-compiled); this script only
-- wires it to the host's hooks. Until load, no sandbox is known (404).
local route = require "sandgate.ingress.route"
local backends = require "sandgate.ingress.backends"

local M = {}

-- One router for the life of the VM: load only reconfigures it. Its hook
-- is the script's route hook as is, so routing runs compiled from end to
-- end (a function written here would run interpreted). The answer is a
-- table the router reuses; the host reads it before the next request.
local router = route.new({ mode = "uri", backends = backends.routes(nil) })

M.route = router.hook

function M.load(ctx)
  router:configure(ctx)
end

-- OSEP-0011's test vector: a wrong digest or canonical string would make
-- every signed URL fail, so refuse to start instead.
function M.selftest()
  local sig = route.signature("my-test-secret", "a", "sbx-001", 8080, "x2qxvk")
  if sig ~= "0ff8cd39a" then
    error("route signature test vector gives " .. sig .. ", expected 0ff8cd39a")
  end
end

return M
