-- Audit-only (dry-run) egress policy.
--
-- Use it to find out what a policy would break before enforcing it:
--
--   sandgate egress --script examples/egress/audit.lua
--
-- then push the policy document you intend to enforce, exactly as you would
-- for the default script. Every DNS query is answered normally, but each one
-- the real policy would have denied is logged as one JSON line:
--
--   {"level":"info","event":"policy.audit_would_deny",
--    "name":"evil.example","qtype":"A","rule":"default","client":"10.0.0.5"}
--
-- "rule" says which rule (or "default") would have denied it, so the log
-- tells you which allow rules are missing. When the log stays quiet for a
-- representative workload, switch back to the default script.
--
-- Limits of a dry run:
--   * Only DNS is audited. IP and CIDR deny rules are not enforced either
--     (static_sets returns no deny sets), but connections to them are not
--     logged here: this script never sees them.
--   * Every would-be denial is logged, including repeats; a chatty client
--     produces a chatty log.
local rules = require "sandgate.rules"
local log = require "sandgate.log"

local M = {}

local policy = rules.compile(nil)

-- The verdict returned instead of a denial, one per denying rule, built the
-- first time that rule denies something. Reusing it keeps the per-query path
-- free of allocations for the common case; the cache is reset on every load
-- because a new compiled policy has new verdict tables.
local allowed_instead = {}

function M.load(doc)
  policy = rules.compile(doc)
  allowed_instead = {}
end

-- Returns the allowing verdict that stands in for a denying one.
local function instead_of(verdict)
  local instead = allowed_instead[verdict]
  if not instead then
    -- The "audit:" prefix makes the host's query log show that this answer
    -- was let through only because the script is in audit mode.
    instead = { action = "allow", rule = "audit:" .. verdict.rule, would = "deny" }
    allowed_instead[verdict] = instead
  end
  return instead
end

function M.decide(q)
  local verdict = policy:match(q.name)
  if verdict.action == "allow" then return verdict end
  log.info("policy.audit_would_deny", {
    name = q.name,
    qtype = q.qtype,
    rule = verdict.rule,
    client = q.client,
  })
  return instead_of(verdict)
end

-- Nothing is blocked in a dry run, so the deny sets stay empty. The allow
-- sets are passed through unchanged: they only ever open things up.
function M.static_sets()
  local s = policy.static
  return { allow_v4 = s.allow_v4, allow_v6 = s.allow_v6, deny_v4 = {}, deny_v6 = {} }
end

function M.selftest()
  policy:verify()
  -- The whole point of this script: no verdict may come out as a denial.
  -- Checked without calling decide so that a reload logs nothing.
  local verdicts = { policy.default_verdict }
  for _, r in ipairs(policy.rules) do verdicts[#verdicts + 1] = policy.verdicts[r.index + 1] end
  for _, v in ipairs(verdicts) do
    if v.action == "deny" and instead_of(v).action ~= "allow" then
      error("selftest: audit mode would deny " .. v.rule)
    end
  end
end

return M
