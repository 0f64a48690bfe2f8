-- expect: selftest_and_sets.lua:5: in selftest(): pypi.org should be allowed
-- expect: selftest_and_sets.lua:6: in static_sets(): attempt to index global 'policy' (a nil value)
local M = {}
function M.decide(q) return "deny" end
function M.selftest() error("pypi.org should be allowed") end
function M.static_sets() return policy.static end
return M
