-- expect: in selftest():
-- expect: egress.lua:5: selftest says no
local M = {}
function M.decide(q) return "allow" end
function M.selftest() error("selftest says no") end
return M
