-- expect: egress.lua:3: in main chunk: broken at load time
local M = {}
error("broken at load time")
return M
