-- expect: load_bomb.lua: in load(): script exceeded its memory limit of 64 MiB
local M = {}
function M.decide(q) return "allow" end
function M.load(doc)
  local t = {}
  for i = 1, 1e9 do t[i] = string.rep("x", 200) .. i end
end
return M
