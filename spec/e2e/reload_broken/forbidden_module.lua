-- expect: egress.lua:3: in main chunk: module "os" is not available to policy scripts
local M = {}
local os = require "os"
function M.decide(q) return "allow" end
return M
