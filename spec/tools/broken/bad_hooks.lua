-- expect: bad_hooks.lua: hook "load" must be a function, got string
-- expect: bad_hooks.lua: hook "selftest" must be a function, got table
return { decide = function() return "allow" end, load = "later", selftest = {} }
