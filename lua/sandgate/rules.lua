-- The OpenSandbox egress rule compiler.
--
-- rules.compile(doc) turns a decoded OpenSandbox policy document
--
--   { defaultAction = "allow"|"deny",
--     egress = { { action = "allow"|"deny", target = "..." }, ... } }
--
-- into a compiled object whose :match(name) answers a DNS name with a
-- verdict table. Errors are raised with messages that start with
-- "invalid policy: " and name the place in 0-based JSON notation
-- (egress[0] is the first rule), because that is what the user wrote.
--
-- Semantics (they follow OpenSandbox):
--   * nil, JSON null or {} is a deny-all policy (default deny, no rules).
--   * defaultAction and action are trimmed and case-insensitive; missing,
--     null or "" means deny; anything but allow/deny is an error.
--   * A target is an exact name (api.github.com), a wildcard *.suffix that
--     matches names at any depth below the suffix but not the suffix itself,
--     an IPv4/IPv6 address, or a CIDR. Names are case-insensitive and one
--     trailing dot is ignored. IP and CIDR rules never affect DNS answers:
--     :match skips them and they go to the static sets for nftables.
--   * The first matching rule in list order wins, across exact and wildcard
--     rules; no match gives defaultAction.
--   * A dotted all-numeric string that is not a valid address (1.2.3,
--     300.1.1.1) is rejected: RFC 1123 section 2.1 rules out an all-numeric
--     top-level label for host names precisely so that such strings are never
--     names, and accepting one would silently turn a mistyped IP rule into a
--     domain rule that matches nothing.
--
-- Memory: a compiled policy keeps no table and no string per rule beyond the
-- normalized target text (which doubles as the exact-name index key): a rule
-- costs two array slots, at most one index slot and its target string (a
-- wildcard also keeps its suffix as the index key). Rule references such as
-- "egress[3] allow *.pypi.org" are never stored; :describe builds one when
-- something needs it (logs, tools), and the host formats its own.
--
-- The per-query path (:match) is written for the LuaJIT trace compiler: two
-- hash lookups per label, no pairs(), no closures, and it returns one verdict
-- table per compiled object that it fills in place, so it allocates nothing
-- but the suffix strings it probes (and only for suffix lengths that exist).
local ffi = require "ffi"
local cjson = require "cjson.safe"

local find, sub, lower, format, byte, gsub =
  string.find, string.sub, string.lower, string.format, string.byte, string.gsub
local concat = table.concat
local tonumber, tostring, type, pairs, error, setmetatable =
  tonumber, tostring, type, pairs, error, setmetatable

-- Preallocates a table (LuaJIT's table.new), so that arrays whose size is
-- known are allocated once and at exactly that size.
local has_tnew, table_new = pcall(require, "table.new")
if not has_tnew then table_new = function() return {} end end

local NULL = cjson.null

-- The cdef is guarded because another module in the same state may already
-- have declared the same function, and LuaJIT refuses a redefinition.
pcall(ffi.cdef, "int inet_pton(int af, const char *src, void *dst);")
local C = ffi.C
local AF_INET, AF_INET6 = 2, 10 -- Linux values.
local addrbuf = ffi.new("uint8_t[16]")

local M = {}

-- Message helpers ---------------------------------------------------------

local INVALID_TARGET = " is not a domain name, wildcard (*.suffix), IP address or CIDR"
local QUOTE_MAX = 200

local function escape_char(c)
  if c == '"' then return '\\"' end
  if c == "\\" then return "\\\\" end
  if c == "\n" then return "\\n" end
  if c == "\t" then return "\\t" end
  return format("\\u%04x", byte(c))
end

-- Quotes a user-supplied string for an error message: JSON-style escapes so
-- control characters cannot break a log line, and long values are cut so a
-- megabyte of garbage does not end up in the message.
local function quote(s)
  local cut = #s > QUOTE_MAX
  if cut then s = sub(s, 1, QUOTE_MAX) end
  s = gsub(s, '[%c"\\]', escape_char)
  return '"' .. s .. '"' .. (cut and "..." or "")
end
-- Exported so that scripts and tests can build messages in the same style.
M.quote = quote

-- The JSON type of a decoded value, for "expected X, got Y" messages. An
-- empty table is reported as an object: cjson decodes [] and {} alike.
local function json_type(v)
  if v == nil then return "nothing" end
  if v == NULL then return "null" end
  local t = type(v)
  if t == "table" then return v[1] ~= nil and "array" or "object" end
  return t
end

local function fail(where, problem)
  error("invalid policy: " .. where .. ": " .. problem, 0)
end

-- Actions -----------------------------------------------------------------

-- Returns "allow" or "deny" for a defaultAction/action value, or nil and the
-- problem for the error message (the caller names the place, so that the
-- place is only formatted when there is an error).
local function parse_action(v)
  if v == nil or v == NULL then return "deny" end
  if type(v) ~= "string" then
    return nil, "expected a string, got " .. json_type(v)
  end
  local a = lower((gsub(gsub(v, "^%s+", ""), "%s+$", "")))
  if a == "" then return "deny" end
  if a == "allow" or a == "deny" then return a end
  return nil, quote(v) .. " is not allow or deny"
end

-- Addresses ---------------------------------------------------------------

-- Parses an address into addrbuf. Returns 4 or 6, or nil. Strings with a NUL
-- are refused here because C would stop reading at the NUL and accept
-- "1.2.3.4\0junk" as 1.2.3.4.
local function pton(s)
  if find(s, "\0", 1, true) then return nil end
  if find(s, ":", 1, true) then
    if C.inet_pton(AF_INET6, s, addrbuf) == 1 then return 6 end
  elseif C.inet_pton(AF_INET, s, addrbuf) == 1 then
    return 4
  end
  return nil
end

-- An IPv4-mapped IPv6 address (::ffff:a.b.c.d) never appears in an IPv6
-- packet: a dual-stack socket sends it as IPv4. So a rule written that way is
-- turned into its IPv4 form, otherwise a deny rule would end up in the IPv6
-- set and block nothing. Only done when the prefix covers the whole ::ffff:0:0/96
-- block; returns the (possibly new) family and prefix length.
local function unmap(family, plen)
  if family ~= 6 or plen < 96 then return family, plen end
  for i = 0, 9 do
    if addrbuf[i] ~= 0 then return family, plen end
  end
  if addrbuf[10] ~= 0xff or addrbuf[11] ~= 0xff then return family, plen end
  for i = 0, 3 do addrbuf[i] = addrbuf[12 + i] end
  return 4, plen - 96
end

-- Clears the bits of addrbuf after the first plen bits.
local function zero_host_bits(nbytes, plen)
  for i = 0, nbytes - 1 do
    local keep = plen - i * 8
    if keep <= 0 then
      addrbuf[i] = 0
    elseif keep < 8 then
      addrbuf[i] = addrbuf[i] - addrbuf[i] % 2 ^ (8 - keep)
    end
  end
end

-- Formats addrbuf in canonical text form: dotted quad for IPv4, RFC 5952 for
-- IPv6 (lower-case hex, no leading zeros, the longest run of two or more zero
-- groups -- the first one on a tie -- written as "::").
local function ntop(family)
  local b = addrbuf
  if family == 4 then
    return format("%d.%d.%d.%d", b[0], b[1], b[2], b[3])
  end
  local w = {}
  for i = 1, 8 do w[i] = b[2 * i - 2] * 256 + b[2 * i - 1] end
  local best_start, best_len, run_start, run_len = 0, 0, 0, 0
  for i = 1, 8 do
    if w[i] == 0 then
      if run_len == 0 then run_start = i end
      run_len = run_len + 1
      if run_len > best_len then best_start, best_len = run_start, run_len end
    else
      run_len = 0
    end
  end
  local hex = {}
  for i = 1, 8 do hex[i] = format("%x", w[i]) end
  if best_len < 2 then return concat(hex, ":") end
  return concat(hex, ":", 1, best_start - 1) .. "::"
    .. concat(hex, ":", best_start + best_len, 8)
end

-- rules.parse_ip(str) -> canonical, family (4 or 6); or nil.
-- IPv4-mapped IPv6 addresses come back as IPv4 (see unmap).
function M.parse_ip(s)
  if type(s) ~= "string" then return nil end
  local family = pton(s)
  if not family then return nil end
  family = unmap(family, 128)
  return ntop(family), family
end

-- rules.parse_cidr(str) -> canonical, family, prefix_len; or nil, reason.
-- Requires the "/len" part. Host bits are zeroed ("10.1.2.3/8" gives
-- "10.0.0.0/8") and a full-length prefix gives the bare address
-- ("192.0.2.7/32" gives "192.0.2.7"), because both name the same set element.
function M.parse_cidr(s)
  if type(s) ~= "string" then return nil, "not a string" end
  local addr, len = s:match("^([^/]*)/([^/]*)$")
  if not addr then return nil, "not address/prefix-length" end
  local family = pton(addr)
  if not family then return nil, "address is not IPv4 or IPv6" end
  if not find(len, "^[0-9]+$") or #len > 3 then
    return nil, "prefix length " .. quote(len) .. " is not a number"
  end
  local plen, max = tonumber(len), family == 4 and 32 or 128
  if plen > max then
    return nil, format("prefix length %d out of range 0-%d", plen, max)
  end
  family, plen = unmap(family, plen)
  max = family == 4 and 32 or 128
  zero_host_bits(family == 4 and 4 or 16, plen)
  local text = ntop(family)
  if plen < max then text = text .. "/" .. plen end
  return text, family, plen
end

-- Names -------------------------------------------------------------------

-- Checks a lower-cased name without trailing dot. Returns true, or false and
-- an optional reason for the error message.
local function valid_name(name)
  if name == "" then return false end
  if #name > 253 then return false, "longer than 253 characters" end
  local start, last = 1, nil
  while true do
    local dot = find(name, ".", start, true)
    local label = sub(name, start, (dot or 0) - 1)
    if #label > 63 then return false, "label longer than 63 characters" end
    if not find(label, "^[a-z0-9_%-]+$") then return false end
    if not dot then
      last = label
      break
    end
    start = dot + 1
  end
  if find(last, "^[0-9]+$") then
    return false, "all-numeric top-level label, and not a valid IP address"
  end
  return true
end

-- Classifies one target. Returns kind, normalized target, family; or nil and
-- the problem for the error message (the caller names the place).
local function parse_target(raw)
  if find(raw, "/", 1, true) then
    local text, family_or_reason = M.parse_cidr(raw)
    if not text then
      return nil, quote(raw) .. INVALID_TARGET .. " (" .. family_or_reason .. ")"
    end
    return "cidr", text, family_or_reason
  end
  local text, family = M.parse_ip(raw)
  if text then return "ip", text, family end

  local name = lower(raw)
  if byte(name, -1) == 46 then name = sub(name, 1, -2) end -- one trailing "."
  local kind, check = "domain", name
  if byte(name, 1) == 42 and byte(name, 2) == 46 then -- "*."
    kind, check = "wildcard", sub(name, 3)
    if #name > 253 then
      return nil, quote(raw) .. INVALID_TARGET .. " (longer than 253 characters)"
    end
  end
  local ok, reason = valid_name(check)
  if not ok then
    return nil, quote(raw) .. INVALID_TARGET .. (reason and " (" .. reason .. ")" or "")
  end
  return kind, name
end

-- The kind ("domain", "wildcard", "ip" or "cidr") and, for address rules,
-- the family (4 or 6) of a normalized target, read back from its text so that
-- the compiled object need not store them. This is exact because the forms
-- cannot be confused: only a wildcard starts with "*.", only a CIDR has a
-- "/", only an IPv6 address has a ":", and a name always has a non-digit in
-- its last label (an all-numeric one is rejected). One consequence: a CIDR
-- with a full-length prefix (192.0.2.7/32) is normalized to the bare address
-- and so reads back as kind "ip", which is what it is in the static sets.
local function kind_of(target)
  if byte(target, 1) == 42 then return "wildcard" end
  local v6 = find(target, ":", 1, true) and 6 or 4
  if find(target, "/", 1, true) then return "cidr", v6 end
  if v6 == 6 or find(target, "^[0-9.]+$") then return "ip", v6 end
  return "domain"
end

-- The name of the static set an address rule goes to.
local STATIC_SET = {
  allow = { [4] = "allow_v4", [6] = "allow_v6" },
  deny = { [4] = "deny_v4", [6] = "deny_v6" },
}

-- rules.describe(verdict): "egress[3] allow *.pypi.org" for a verdict that
-- names its rule by index and target (the host's format), the verdict's own
-- rule string ("default", "audit:...") for one that has it, nil for a table
-- that has neither. Builds a new string for a rule verdict: it is for logs
-- and tools, not for the per-query path.
local function describe(v)
  local rule = v.rule
  if rule ~= nil then return rule end
  local index = v.index
  if index == nil then return nil end
  return format("egress[%d] %s %s", index, v.action, v.target)
end
M.describe = describe

-- The compiled object -----------------------------------------------------

local Compiled = {}
Compiled.__index = Compiled

-- compiled:match(name) -> verdict table.
--
-- name must already be in the host's presentation form: lower-case, no
-- trailing dot, "" for the root.
--
-- The verdict is SHARED and REUSED. When a rule matches, match fills in and
-- returns the one verdict table this compiled object owns,
--   { action = "allow"|"deny", index = <0-based rule index>, target = <normalized target> }
-- (no rule field: the host formats "egress[<index>] <action> <target>"
-- itself, and :describe does the same in Lua). When no rule matches it
-- returns the constant { action = default_action, rule = "default" }.
-- So the returned table is valid only until the next match call on the same
-- compiled object: copy the fields you need before matching again (calls on
-- other compiled objects do not disturb it). Treat it as read-only.
function Compiled:match(name)
  local best = self.exact[name] or self.n
  -- An exact hit on a rule that comes before every wildcard rule cannot be
  -- beaten, so the suffix walk is skipped.
  if best >= self.wild_min then
    local wild, wild_len = self.wild, self.wild_len
    local len = #name
    local pos = find(name, ".", 1, true)
    while pos do
      -- wild_len is a dense array of booleans indexed by suffix length; it
      -- lets the walk skip creating a substring that cannot be a key.
      if wild_len[len - pos] then
        local i = wild[sub(name, pos + 1)]
        if i and i < best then best = i end
      end
      pos = find(name, ".", pos + 1, true)
    end
    if best >= self.n then return self.default_verdict end
  end
  local v = self.verdict
  v.action, v.index, v.target = self.actions[best + 1], best, self.targets[best + 1]
  return v
end

-- compiled:count() -> the number of rules (address rules included).
function Compiled:count()
  return self.n
end

-- compiled:rule(i) -> a new table { index = i, action, target, kind, family }
-- for the 0-based rule index i (family only for ip and cidr rules), or nil
-- when there is no such rule. For the API and tools; it allocates.
function Compiled:rule(i)
  if type(i) ~= "number" or i % 1 ~= 0 or i < 0 or i >= self.n then return nil end
  local target = self.targets[i + 1]
  local kind, family = kind_of(target)
  return { index = i, action = self.actions[i + 1], target = target, kind = kind, family = family }
end

-- compiled:describe(verdict) -> "egress[3] allow *.pypi.org", or "default"
-- for the default verdict (see describe above). Allocates.
function Compiled:describe(v)
  return describe(v)
end

-- compiled:verify() raises "selftest: ..." when an invariant of the compiled
-- indexes does not hold. It exists so that policy scripts (interpreted) can
-- check the whole policy cheaply from their selftest hook: every name rule
-- must be reachable by a name it covers unless an earlier rule shadows it,
-- no wildcard may match its own apex, no address rule may reach the matcher,
-- every index entry must point at a rule with that target, and names outside
-- every rule must get the default.
function Compiled:verify()
  local n, actions, targets = self.n, self.actions, self.targets
  local function check(cond, msg)
    if not cond then error("selftest: " .. msg, 0) end
  end
  -- The messages about rule i start with its reference; they are only
  -- formatted when the check fails.
  local function check_rule(cond, i, problem, detail)
    if not cond then
      check(false, format("egress[%d] %s %s: ", i, tostring(actions[i + 1]),
        tostring(targets[i + 1])) .. (detail and detail .. " " or "") .. problem)
    end
  end
  check(self.default_verdict.action == self.default_action,
    "default verdict does not carry defaultAction")
  check(#actions == n and #targets == n, "the rule arrays do not hold one entry per rule")
  local verdict = self.verdict
  for i = 0, n - 1 do
    local action, target = actions[i + 1], targets[i + 1]
    check_rule(action == "allow" or action == "deny", i, "action is not allow or deny")
    check_rule(type(target) == "string", i, "target is not a string")
    local kind = kind_of(target)
    if kind == "domain" or kind == "wildcard" then
      local probe = kind == "domain" and target or ("x." .. sub(target, 3))
      -- The verdict is shared: read it before the next match.
      local v = self:match(probe)
      local index = v.index
      check_rule(index ~= nil and index <= i, i, "does not match its own rule", probe)
      if index == i and not (v == verdict and v.action == action and v.target == target) then
        check_rule(false, i, "wrong verdict for " .. probe)
      end
      if kind == "wildcard" then
        check_rule(self:match(sub(target, 3)).index ~= i, i, "wildcard matches its own apex")
      end
    else
      check_rule(self:match(target).index ~= i, i, "address rule reached the DNS matcher")
    end
  end
  -- The indexes hold nothing but first occurrences of name rules.
  for name, i in pairs(self.exact) do
    if targets[i + 1] ~= name or kind_of(name) ~= "domain" then
      check(false, format("exact index entry %s points at rule %s", quote(tostring(name)), tostring(i)))
    end
  end
  local wild_min, wild_len = self.wild_min, self.wild_len
  for suffix, i in pairs(self.wild) do
    local target = targets[i + 1]
    if type(target) ~= "string" or sub(target, 3) ~= suffix or byte(target, 1) ~= 42
      or i < wild_min or not wild_len[#suffix] then
      check(false, format("wildcard index entry %s points at rule %s", quote(tostring(suffix)), tostring(i)))
    end
  end
  -- The root and a name under the reserved .invalid TLD (RFC 2606) match no
  -- rule unless one names them explicitly.
  check(self:match("") == self.default_verdict, "the root matched a rule")
  local probe = "sandgate-selftest.invalid"
  if self.exact[probe] == nil and self.wild["invalid"] == nil then
    check(self:match(probe) == self.default_verdict,
      probe .. " matched a rule")
  end
  return true
end

-- The place of rule i (1-based) in error messages. Only built on an error.
local function rule_where(i)
  return "egress[" .. (i - 1) .. "]"
end

-- rules.compile(doc) -> compiled object; raises "invalid policy: ...".
--
-- The result keeps nothing from doc (no reference into it) and nothing per
-- rule but an action and a target. Fields (read-only):
--   default_action   "allow" or "deny"
--   default_verdict  { action = default_action, rule = "default" }, returned
--                    by :match when no rule matches
--   actions          actions[i + 1] = "allow"|"deny" of the rule egress[i]
--   targets          targets[i + 1] = its normalized target: "api.github.com",
--                    "*.pypi.org", "10.0.0.0/8", "2001:db8::1"
--   exact            name -> 0-based index of the first exact rule for it
--   wild             suffix -> 0-based index of the first *.suffix rule
--   static           { allow_v4, allow_v6, deny_v4, deny_v6 }: canonical
--                    strings of the address rules, in rule order. An address
--                    or CIDR already listed by an earlier rule is dropped:
--                    the earlier rule wins, as in DNS matching. Overlapping
--                    but different prefixes are kept; ordering them is the
--                    nftables layer's job. Also default = default_action
--                    (the filter's chain policy in dns+nft mode).
-- Use :count(), :rule(i) and :describe(v) rather than the arrays where you
-- can; the layout of the arrays may change.
function M.compile(doc)
  if doc == NULL then doc = nil end
  if doc ~= nil and (type(doc) ~= "table" or doc[1] ~= nil) then
    fail("document", "expected an object, got " .. json_type(doc))
  end
  doc = doc or {}

  local default_action, problem = parse_action(doc.defaultAction)
  if not default_action then fail("defaultAction", problem) end

  local egress = doc.egress
  if egress == NULL then egress = nil end
  egress = egress or {}
  if type(egress) ~= "table" then
    fail("egress", "expected an array, got " .. json_type(egress))
  end
  local n = #egress
  for k in pairs(egress) do
    if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then
      fail("egress", "expected an array, got object")
    end
  end

  local exact, wild = {}, {}
  local actions, targets = table_new(n, 0), table_new(n, 0)
  local wild_len = table_new(256, 0)
  for i = 1, 256 do wild_len[i] = false end
  -- 0-based index of the first wildcard rule; n (no rule) if there is none.
  local wild_min = n
  local static = { allow_v4 = {}, allow_v6 = {}, deny_v4 = {}, deny_v6 = {},
    default = default_action }
  -- Canonical IPv4 and IPv6 texts never coincide (only IPv6 has a ":"), so
  -- one set of seen targets serves both families.
  local static_seen = {}

  for i = 1, n do
    local r = egress[i]
    if type(r) ~= "table" or r[1] ~= nil then
      fail(rule_where(i), "expected an object, got " .. json_type(r))
    end
    local action
    action, problem = parse_action(r.action)
    if not action then fail(rule_where(i) .. ".action", problem) end
    local raw = r.target
    if raw == nil or raw == NULL then
      fail(rule_where(i) .. ".target", "missing (expected a string)")
    end
    if type(raw) ~= "string" then
      fail(rule_where(i) .. ".target", "expected a string, got " .. json_type(raw))
    end
    local kind, target, family = parse_target(raw)
    if not kind then fail(rule_where(i) .. ".target", target) end

    actions[i], targets[i] = action, target
    if kind == "domain" then
      -- The target string itself is the key: one string serves both.
      if exact[target] == nil then exact[target] = i - 1 end
    elseif kind == "wildcard" then
      local suffix = sub(target, 3)
      if wild[suffix] == nil then wild[suffix] = i - 1 end
      wild_len[#suffix] = true
      if i - 1 < wild_min then wild_min = i - 1 end
    elseif not static_seen[target] then
      static_seen[target] = true
      local set = static[STATIC_SET[action][family]]
      set[#set + 1] = target
    end
  end

  local self = {
    default_action = default_action,
    default_verdict = { action = default_action, rule = "default" },
    -- The one verdict :match fills in for a rule match (see :match).
    verdict = { action = default_action, index = -1, target = "" },
    actions = actions,
    targets = targets,
    static = static,
    exact = exact,
    wild = wild,
    wild_len = wild_len,
    wild_min = wild_min,
    -- The number of rules, which is also one past the last index: an index
    -- no rule has, so that comparisons in :match stay numeric.
    n = n,
  }
  return setmetatable(self, Compiled)
end

return M
