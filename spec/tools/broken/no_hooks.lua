-- expect: no_hooks.lua: has neither a "decide" hook (egress) nor a "route" hook (ingress)
return { decde = function() return "allow" end }
