-- Header A/B: requests carrying "X-Version: beta" go to the sandbox's beta
-- twin ("<id>-beta" in the routes file); everything else routes as usual.
local route = require "sandgate.ingress.route"

local M = {}
local router = route.new({ mode = "header", backends = require("sandgate.ingress.backends").routes(nil) })

function M.load(ctx)
  router:configure(ctx)
end

function M.route(req)
  local r = router:route(req)
  if r.status or req.headers["x-version"] ~= "beta" then return r end
  local beta = router.backends:lookup(r.sandbox .. "-beta")
  if not beta then return { status = 404, message = "no beta for " .. r.sandbox } end
  r.host = beta.host
  r.remove_headers = { "x-version" }
  return r
end

return M
