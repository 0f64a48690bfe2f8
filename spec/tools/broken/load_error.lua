-- expect: load_error.lua:6: in load(): attempt to index local 'doc' (a nil value)
-- A policy that forgets that an empty document reaches load() as nil.
local M = {}
function M.decide(q) return "allow" end
function M.load(doc)
  local rules = doc.egress
end
return M
