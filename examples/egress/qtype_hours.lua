-- Egress policy with two extra restrictions on top of the OpenSandbox rules.
--
--   sandgate egress --script examples/egress/qtype_hours.lua
--
-- The policy document is the usual OpenSandbox one and is applied first,
-- unchanged: whatever it denies stays denied. For names it allows, this
-- script then adds:
--
-- (a) A query-type filter. Only A, AAAA, CNAME and HTTPS queries are
--     answered for allowed names. TXT (and NULL, MX, SRV, ...) answers are
--     the usual channel for DNS tunnelling: a program in the sandbox can
--     smuggle data out in query names and get data back in TXT records of a
--     domain it controls, even when that domain only looks innocent. Names
--     that genuinely need TXT (say, a service that publishes configuration
--     in TXT records) go in the TXT allowlist, which accepts the same
--     targets as the policy (exact names and *.suffix wildcards).
--
-- (b) A time window. Names matching the window list are only allowed
--     between two UTC hours, e.g. a chat service during office hours. The
--     window is [from_hour, to_hour): from 9 to 17 allows 09:00:00 through
--     16:59:59 UTC. A window that wraps midnight (from 22 to 6) works too,
--     and from == to means the whole day.
--
-- Both are configured with M.configure below; edit the defaults in place or
-- call M.configure from a copy of this file. The clock is M.now (os.time by
-- default) so tests can pin the time.
--
-- A denied query type is answered NOERROR with no records ("NODATA", the
-- verdict's rcode option), not NXDOMAIN: resolvers cache an NXDOMAIN for
-- every type of the name, so refusing TXT that way would also break the A
-- record of api.example.com for the length of the negative TTL.
--
-- This script runs interpreted (user scripts are not JIT-compiled), so the
-- per-query path does little more than table lookups; the matching itself
-- is done by compiled rule sets from sandgate.rules.
local rules = require "sandgate.rules"
local log = require "sandgate.log"

local M = {}

local os_date = os.date

-- The clock, in seconds since the epoch. Replace it in tests.
M.now = os.time

-- Query types answered for every allowed name. The host names types by
-- their mnemonic ("A", "HTTPS"), or "TYPE<n>" for types it has no name for.
local ADDRESS_QTYPES = { A = true, AAAA = true, CNAME = true, HTTPS = true }

-- The verdicts this script adds. They are built once so that decide never
-- allocates; "rule" is what the host logs as the reason.
local DENY_QTYPE = { action = "deny", rcode = "NODATA", rule = "qtype_hours: query type not allowed" }
local DENY_HOURS = { action = "deny", rule = "qtype_hours: outside allowed hours" }

local policy = rules.compile(nil)
local txt_allow, window_names
local from_hour, to_hour

-- Builds a matcher that answers "allow" for the given targets and "deny"
-- otherwise, reusing the policy compiler (and its validation messages).
local function target_set(targets)
  local egress = {}
  for i, t in ipairs(targets) do egress[i] = { action = "allow", target = t } end
  return rules.compile({ defaultAction = "deny", egress = egress })
end

-- M.configure{ txt_allow = {...}, window = { targets = {...},
--              from_hour = 9, to_hour = 17 } }
-- Omitted parts fall back to the defaults shown in the call at the bottom of
-- this file. Raises on a bad target or hour.
function M.configure(opts)
  opts = opts or {}
  local window = opts.window or {}
  local from, to = window.from_hour or 0, window.to_hour or 0
  for _, h in ipairs({ from, to }) do
    if type(h) ~= "number" or h % 1 ~= 0 or h < 0 or h > 23 then
      error("qtype_hours: window hours must be integers 0-23, got " .. tostring(h))
    end
  end
  txt_allow = target_set(opts.txt_allow or {})
  window_names = target_set(window.targets or {})
  from_hour, to_hour = from, to
end

-- Whether an hour of the day (0-23) is inside the window.
local function in_window(hour)
  if from_hour == to_hour then return true end
  if from_hour < to_hour then return hour >= from_hour and hour < to_hour end
  return hour >= from_hour or hour < to_hour -- wraps midnight
end

function M.load(doc)
  policy = rules.compile(doc)
end

-- policy:match returns a verdict that policy reuses for its next match, so
-- decide matches policy once and returns that verdict (or one of its own)
-- without matching policy again. The window and TXT lists are separate
-- compiled objects with verdicts of their own; matching them leaves the
-- policy's verdict alone.
function M.decide(q)
  local verdict = policy:match(q.name)
  if verdict.action ~= "allow" then return verdict end

  -- The time window comes first: outside its hours a name is denied for
  -- every query type, so the type filter has nothing left to say.
  if window_names:match(q.name).action == "allow" then
    -- "!*t" is UTC; the local time zone of the host plays no part.
    local hour = os_date("!*t", M.now()).hour
    if not in_window(hour) then
      log.info("policy.outside_hours", { name = q.name, qtype = q.qtype, hour = hour })
      return DENY_HOURS
    end
  end

  local qtype = q.qtype
  if not ADDRESS_QTYPES[qtype]
    and not (qtype == "TXT" and txt_allow:match(q.name).action == "allow") then
    log.info("policy.qtype_denied", { name = q.name, qtype = qtype, rule = policy:describe(verdict) })
    return DENY_QTYPE
  end
  return verdict
end

function M.static_sets()
  return policy.static
end

function M.selftest()
  policy:verify()
  -- The window logic must agree with a few hand-checked cases, whatever the
  -- configured hours are: a one-hour window contains its start hour only.
  local saved_from, saved_to = from_hour, to_hour
  from_hour, to_hour = 23, 0
  local ok = in_window(23) and not in_window(0) and not in_window(22)
  from_hour, to_hour = saved_from, saved_to
  if not ok then error("selftest: time window arithmetic is wrong") end
end

-- The defaults. _acme-challenge names carry ACME DNS-01 tokens, a typical
-- legitimate TXT use; the chat service is only reachable 08:00-18:00 UTC.
M.configure({
  txt_allow = { "*.example-config.com", "_acme-challenge.example.com" },
  window = { targets = { "slack.com", "*.slack.com" }, from_hour = 8, to_hour = 18 },
})

return M
