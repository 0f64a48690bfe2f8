-- expect: egress.lua:5: in selftest(): selftest says no
-- (the file, the line and the hook the error came from)
local M = {}
function M.decide(q) return "allow" end
function M.selftest() error("selftest says no") end
return M
