-- The shipped header-mode routing script: OpenSandbox's ingress semantics,
-- nothing more.
--
-- The sandbox and port come from OpenSandbox-Ingress-To ("<id>-<port>", or
-- the signed "<id>-<port>-<expires>-<signature>"), else the deprecated
-- OPEN-SANDBOX-INGRESS, else the first label of Host. The request goes to
-- the sandbox's backend with its path and query untouched. All the work
-- happens in sandgate.ingress.route (JIT-compiled); this script only wires
-- it to the host's hooks. Until load, no sandbox is known (404).
local route = require "sandgate.ingress.route"
local backends = require "sandgate.ingress.backends"

local M = {}

-- One router for the life of the VM: load only reconfigures it. Its hook
-- is the script's route hook as is, so routing runs compiled from end to
-- end (a function written here would run interpreted). The answer is a
-- table the router reuses; the host reads it before the next request.
local router = route.new({ mode = "header", backends = backends.routes(nil) })

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
