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

-- The verdict returned instead of a denial. There is one, reused for every
-- would-be denial whatever the rule (the host reads it before it calls
-- decide again), so audit mode keeps nothing per rule. The "audit:" prefix
-- of its rule makes the host's query log show that the answer was let
-- through only because the script is in audit mode.
local AUDIT_DEFAULT = "audit:default"
local instead = { action = "allow", rule = AUDIT_DEFAULT, would = "deny" }

function M.load(doc)
  policy = rules.compile(doc)
end

-- Returns the allowing verdict that stands in for the denying one that
-- policy:describe calls ref ("default" or "egress[1] deny evil.example").
-- A denial by the default needs no new string; one by a rule builds its
-- "audit:egress[...]" reference, which is acceptable for a diagnostic mode
-- that logs a line for the query anyway.
local function instead_of(ref)
  instead.rule = ref == "default" and AUDIT_DEFAULT or "audit:" .. ref
  return instead
end

-- What the policy allows is returned as is (the compiled policy's shared
-- verdict), so allowed queries allocate nothing.
function M.decide(q)
  local verdict = policy:match(q.name)
  if verdict.action == "allow" then return verdict end
  -- The verdict is only valid until the next match on policy: describe it
  -- now.
  local ref = policy:describe(verdict)
  log.info("policy.audit_would_deny", {
    name = q.name,
    qtype = q.qtype,
    rule = ref,
    client = q.client,
  })
  return instead_of(ref)
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
  -- Checked without calling decide so that a reload logs nothing: the
  -- default and every denying name rule must get an allowing stand-in.
  local function check(ref)
    local v = instead_of(ref)
    if v.action ~= "allow" or v.rule ~= "audit:" .. ref then
      error("selftest: audit mode would deny " .. ref)
    end
  end
  check(policy:describe(policy.default_verdict))
  for i = 0, policy:count() - 1 do
    local r = policy:rule(i)
    if r.action == "deny" and (r.kind == "domain" or r.kind == "wildcard") then
      check(policy:describe(r))
    end
  end
end

return M
