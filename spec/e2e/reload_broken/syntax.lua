-- expect: egress.lua:5:
local M = {}
function M.decide(q)
  return "allow"
end end
return M
