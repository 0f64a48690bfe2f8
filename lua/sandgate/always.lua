-- The operator's always-lists: deny.always, allow.always and log_skip.always
-- in SANDGATE_RULES_DIR (default /var/egress/rules). One target per line
-- (the same targets as policy rules: exact names, *.suffix, IPs, CIDRs);
-- blank lines and lines starting with # are ignored.
--
-- deny.always wins over everything, allow.always over the user's policy.
-- Neither is part of the policy document: GET /policy does not show them,
-- they are not persisted with it and they do not count against the rule
-- limit. log_skip.always names domains whose allowed queries are not logged.
local rules = require "sandgate.rules"

local type, tostring, pcall, error = type, tostring, pcall, error
local str_match, str_gsub, str_format = string.match, string.gsub, string.format

local M = {}

-- Parses one list. Returns a compiled set (a rules.compile result where a
-- listed target matches "allow" and anything else the default "deny") and
-- the reference string of each entry ("deny.always:3 *.evil.example"), or
-- raises "<file>:<line>: <problem>" for the first bad line.
function M.parse(text, name)
  local egress, refs, lines = {}, {}, {}
  local lineno = 0
  for line in ((text or "") .. "\n"):gmatch("([^\n]*)\n") do
    lineno = lineno + 1
    line = str_gsub(str_gsub(line, "\r$", ""), "^%s+", "")
    line = str_gsub(line, "%s+$", "")
    if line ~= "" and not str_match(line, "^#") then
      -- Each target is checked on its own so the error names its line.
      local ok, err = pcall(rules.compile, { egress = { { action = "allow", target = line } } })
      if not ok then
        local why = str_match(tostring(err), "invalid policy: egress%[0%]%.target: (.*)$")
          or tostring(err)
        error(str_format("%s:%d: %s", name, lineno, why), 0)
      end
      egress[#egress + 1] = { action = "allow", target = line }
      refs[#egress] = str_format("%s:%d %s", str_match(name, "[^/]*$"), lineno, line)
      lines[#egress] = lineno
    end
  end
  return rules.compile({ defaultAction = "deny", egress = egress }), refs
end

-- Builds the always-check for the host from the three texts (nil = no
-- file). Returns nil when all lists are empty, so the per-query path costs
-- nothing in the common case; otherwise a table with
--   check(name) -> nil | 1, ref, index, target (allow.always)
--                      | 0, ref, index, target (deny.always)
--     (index: the entry's 0-based position among its list's entries)
--   quiet(name) -> true when an allowed query for name is not to be logged
function M.build(files)
  files = files or {}
  local deny, deny_refs, allow, allow_refs, skip
  if files.deny then deny, deny_refs = M.parse(files.deny, files.deny_name or "deny.always") end
  if files.allow then allow, allow_refs = M.parse(files.allow, files.allow_name or "allow.always") end
  if files.log_skip then skip = M.parse(files.log_skip, files.log_skip_name or "log_skip.always") end
  if deny and deny:count() == 0 then deny = nil end
  if allow and allow:count() == 0 then allow = nil end
  if skip and skip:count() == 0 then skip = nil end
  if not (deny or allow or skip) then return nil end

  local function check(name)
    if deny then
      local v = deny:match(name)
      if v.action == "allow" then return 0, deny_refs[v.index + 1], v.index, v.target end
    end
    if allow then
      local v = allow:match(name)
      if v.action == "allow" then return 1, allow_refs[v.index + 1], v.index, v.target end
    end
    return nil
  end
  local function quiet(name)
    return skip ~= nil and skip:match(name).action == "allow"
  end
  return {
    check = check,
    quiet = quiet,
    -- The IPs and CIDRs of the lists, for the static sets of dns+nft.
    static = { allow = allow and allow.static, deny = deny and deny.static },
    counts = {
      deny = deny and deny:count() or 0,
      allow = allow and allow:count() or 0,
      log_skip = skip and skip:count() or 0,
    },
  }
end

return M
