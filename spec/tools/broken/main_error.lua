-- expect: main_error.lua:3: in main chunk: attempt to call global 'undefined_function' (a nil value)
local M = {}
undefined_function()
function M.decide(q) return "allow" end
return M
