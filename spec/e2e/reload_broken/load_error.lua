-- expect: egress.lua:3: broken at load time
local M = {}
error("broken at load time")
return M
