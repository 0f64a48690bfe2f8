-- expect: static_address.lua: in static_sets(): allow_v4[2] is "10.0.0.300", expected an IPv4 address or CIDR
-- Only the dns+nft server asks static_sets(); check always does.
local M = {}
function M.decide(q) return "allow" end
function M.static_sets() return { allow_v4 = { "10.0.0.0/8", "10.0.0.300" } } end
return M
