-- expect: syntax.lua:5: syntax error: ')' expected near 'return'
local M = {}

function M.decide(q
  return "allow"
end
return M
