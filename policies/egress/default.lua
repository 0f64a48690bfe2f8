-- The shipped egress policy: OpenSandbox semantics, nothing more.
--
-- All the work happens in sandgate.rules (JIT-compiled); this script only
-- wires the compiled policy to the host's hooks. Until the host calls load,
-- the policy is deny-all, like an empty document.
local rules = require "sandgate.rules"

local M = {}

local policy = rules.compile(nil)

-- Assigns only after a successful compile: a bad document leaves the
-- previous policy in place (the host keeps it too).
function M.load(doc)
  policy = rules.compile(doc)
end

-- Returns the compiled policy's verdict as is. It is a table the compiled
-- policy reuses for every match (see sandgate.rules), which is fine here: the
-- host reads it before it calls decide again, and nothing else matches in
-- between. A rule verdict names its rule by index and target; the host turns
-- them into "egress[<index>] <action> <target>" when it logs the query.
function M.decide(q)
  return policy:match(q.name)
end

function M.static_sets()
  return policy.static
end

-- Runs after every load: checks the compiled indexes against the rules
-- (every rule reachable unless shadowed, no wildcard matching its apex, the
-- root falling through to the default).
function M.selftest()
  policy:verify()
end

return M
