-- expect: route_load_error.lua:6: in load(): no backends configured
local M = {}
function M.route(req) return { status = 404 } end
function M.load(ctx)
  if ctx.config.routes == nil then
    error("no backends configured")
  end
end
return M
