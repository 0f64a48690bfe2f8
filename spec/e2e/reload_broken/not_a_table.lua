-- expect: egress.lua: the script must return a table of hooks, got string
return "allow everything"
