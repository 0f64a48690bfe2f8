-- The trusted side of a policy VM: builds the sandbox a user script runs in,
-- loads the script and the policy document, runs the self-test, and returns
-- the per-query entry point the C core calls.
--
-- This module runs with the full standard library; the scripts it loads never
-- see it (they cannot require it) and get only the environment built below.
local cjson = require "cjson.safe"
local log = require "sandgate.log"
local always_lists = require "sandgate.always"

local type, tostring, error, pcall, xpcall, select, unpack =
  type, tostring, error, pcall, xpcall, select, unpack
local str_format, str_match = string.format, string.match

local M = {}

-- Set by init(): C functions of the host.
local native = {}

-- The message LuaJIT puts first on an error raised by the budget hook; a
-- script's own pcall must not be able to swallow it (see guard_pcall).
local BUDGET = "script exceeded its time budget"

local function budget_exceeded()
  return native.budget_exceeded and native.budget_exceeded()
end

-- A pcall for scripts that re-raises once the time budget is spent, so that
-- `while true do pcall(loop) end` still ends.
local function guard(ok, ...)
  if not ok and budget_exceeded() then
    error(BUDGET, 0)
  end
  return ok, ...
end

local function safe_pcall(f, ...)
  return guard(pcall(f, ...))
end

local function safe_xpcall(f, handler, ...)
  local args, n = { ... }, select("#", ...)
  return guard(xpcall(function() return f(unpack(args, 1, n)) end, handler))
end

local function copy(t, names)
  local out = {}
  if names then
    for i = 1, #names do out[names[i]] = t[names[i]] end
  else
    for k, v in pairs(t) do out[k] = v end
  end
  return out
end

-- Modules a script may require: the shipped building blocks and JSON.
-- sandgate.host (this file) is not among them.
local function allowed_module(name)
  if name == "cjson" or name == "cjson.safe" then return true end
  return str_match(name, "^sandgate%.[%w_%.]+$") ~= nil and name ~= "sandgate.host"
    and name ~= "sandgate.ingress.host"
end

local function sandbox_env()
  local env = {
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
    pcall = safe_pcall, xpcall = safe_xpcall, select = select,
    tonumber = tonumber, tostring = tostring, type = type, unpack = unpack,
    rawequal = rawequal, rawget = rawget, rawset = rawset,
    setmetatable = setmetatable, getmetatable = getmetatable,
    string = copy(string), table = copy(table), math = copy(math), bit = copy(bit),
    os = copy(os, { "time", "date", "clock", "difftime" }),
  }
  env.string.dump = nil
  env._G = env
  env._VERSION = _VERSION
  env.require = function(name)
    if type(name) ~= "string" or not allowed_module(name) then
      error(str_format("module %q is not available to policy scripts "
        .. "(allowed: sandgate.*, cjson, cjson.safe)", tostring(name)), 2)
    end
    return require(name)
  end
  -- Source text only: precompiled bytecode can break out of any sandbox.
  env.load = function(chunk, name, mode, fenv)
    if mode ~= nil and mode ~= "t" then
      error("load: only text chunks are allowed (mode \"t\")", 2)
    end
    return load(chunk, name, "t", fenv or env)
  end
  env.collectgarbage = function(opt)
    if opt == nil or opt == "count" or opt == "collect" or opt == "step" then
      return collectgarbage(opt)
    end
    error("collectgarbage: only \"count\", \"collect\" and \"step\" are allowed", 2)
  end
  env.print = function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    log.info("script.print", { msg = table.concat(parts, "\t") })
  end
  return env
end

-- Errors from a document check come back as "invalid policy: ..." without
-- the position of the module that raised them: the position means nothing to
-- whoever sent the document.
local function clean_policy_error(msg)
  msg = tostring(msg)
  local inner = str_match(msg, "(invalid policy: .*)$")
  return inner or msg
end

-- Decodes the policy document: empty, null and {} all mean deny-all and
-- reach load() as nil.
local function decode_policy(text)
  if text == nil or str_match(text, "^%s*$") then return nil end
  local doc, err = cjson.decode(text)
  if err then
    error("invalid policy: not valid JSON: " .. tostring(err), 0)
  end
  if doc == cjson.null then return nil end
  if type(doc) == "table" and next(doc) == nil then return nil end
  return doc
end

local function load_script(src, chunkname)
  local chunk, err = load(src, chunkname, "t", sandbox_env())
  if not chunk then error(err, 0) end
  -- The script and every function it defines stay interpreted, so the
  -- budget hook sees all of them; the modules it requires are compiled.
  jit.off(chunk, true)
  local ok, hooks = pcall(chunk)
  if not ok then error(hooks, 0) end
  if type(hooks) ~= "table" then
    error(str_format("%s: the script must return a table of hooks, got %s",
      chunkname:gsub("^@", ""), type(hooks)), 0)
  end
  return hooks
end

local function check_hook(hooks, name, required, chunkname)
  local f = hooks[name]
  if f == nil and not required then return nil end
  if type(f) ~= "function" then
    error(str_format("%s: hook %q must be a function, got %s",
      chunkname:gsub("^@", ""), name, type(f)), 0)
  end
  return f
end

local function describe(v)
  if type(v) == "string" then return str_format("%q", v) end
  return tostring(v)
end

-- The answers a deny verdict may ask for instead of NXDOMAIN. NOERROR with no
-- records ("NODATA") denies one query type without telling the client that
-- the whole name does not exist (an NXDOMAIN is cached for every type).
local DENY_RCODES = { NXDOMAIN = 3, NOERROR = 0, NODATA = 0, REFUSED = 5, SERVFAIL = 2 }

local function deny_rcode(v)
  local r = v.rcode
  if r == nil then return 3 end
  local code = DENY_RCODES[r]
  if not code then
    error("decide returned a verdict whose rcode is " .. describe(r)
      .. ", expected \"NXDOMAIN\", \"NOERROR\" (or \"NODATA\"), \"REFUSED\" or \"SERVFAIL\"", 0)
  end
  return code
end

-- Builds the per-query entry point around the script's decide hook. The
-- query table is reused from call to call (a handle valid only during the
-- call), so a query costs no table allocation. Returns allow (1/0), the
-- rule reference, for a deny the rcode to answer with, and the rule's index
-- and target: a verdict may name its rule by index + target instead of a
-- string, and the C side formats "egress[i] action target" only when it
-- logs, so no string is built per query.
--
-- The operator's always-lists come first (deny.always, then allow.always);
-- the sixth result tells the C side not to log an allowed query
-- (log_skip.always).
local function egress_entry(decide, always)
  local q = { name = "", qtype = "", client = "", transport = "" }
  local check = always and always.check
  -- Without log_skip.always there is nothing to ask per query.
  local quiet = always and always.counts.log_skip > 0 and always.quiet
  return function(name, qtype, client, transport)
    if check then
      local a, ref = check(name)
      if a == 0 then return 0, ref, 3 end
      if a == 1 then return 1, ref, nil, nil, nil, quiet and quiet(name) end
    end
    q.name, q.qtype, q.client, q.transport = name, qtype, client, transport
    local v = decide(q)
    local tv = type(v)
    if tv == "table" then
      local a = v.action
      if a == "allow" then return 1, v.rule, nil, v.index, v.target, quiet and quiet(name) end
      if a == "deny" then return 0, v.rule, deny_rcode(v), v.index, v.target end
      error("decide returned a verdict whose action is " .. describe(a)
        .. ", expected \"allow\" or \"deny\"", 0)
    elseif v == "allow" or v == true then
      return 1, nil, nil, nil, nil, quiet and quiet(name)
    elseif v == "deny" or v == false then
      return 0, nil, 3
    end
    error("decide returned " .. describe(v)
      .. ", expected \"allow\", \"deny\" or {action = ...}", 0)
  end
end

function M.init(natives)
  native = natives or {}
  if native.log then log.set_sink(native.log) end
  -- Scripts share the string metatable with the host; without this they
  -- could swap string functions under the compiled modules.
  local smt = getmetatable("")
  if smt then smt.__metatable = false end
end

-- The address lists of a static_sets() result, checked: each field is nil
-- or an array of strings (the C side parses them and names a bad entry).
local STATIC_FIELDS = { "allow_v4", "allow_v6", "deny_v4", "deny_v6" }

local function static_lists(s, where)
  local out = {}
  for _, field in ipairs(STATIC_FIELDS) do
    local v = s[field]
    if v == nil then
      v = {}
    elseif type(v) ~= "table" then
      error(str_format("%s.%s must be an array of IP/CIDR strings, got %s",
        where, field, type(v)), 0)
    end
    for i = 1, #v do
      if type(v[i]) ~= "string" then
        error(str_format("%s.%s[%d] must be an IP/CIDR string, got %s",
          where, field, i, type(v[i])), 0)
      end
    end
    out[field] = v
  end
  return out
end

-- What the kernel's filter is built from in dns+nft mode: the script's
-- static_sets() (no hook: no static sets, default deny) and the IPs and
-- CIDRs of the always-lists. Returns one flat table of arrays:
--   { default = "allow"|"deny", allow_v4, allow_v6, deny_v4, deny_v6,
--     always_allow_v4, always_allow_v6, always_deny_v4, always_deny_v6 }
function M.statics(hooks, always)
  local out = static_lists({}, "static_sets()")
  out.default = "deny"
  local f = hooks.static_sets
  if f then
    local ok, s = pcall(f)
    if not ok then error("static_sets failed: " .. tostring(s), 0) end
    if type(s) ~= "table" then
      error("static_sets returned " .. describe(s) .. ", expected a table", 0)
    end
    if s.default ~= nil and s.default ~= "allow" and s.default ~= "deny" then
      error("static_sets().default is " .. describe(s.default)
        .. ", expected \"allow\" or \"deny\"", 0)
    end
    out = static_lists(s, "static_sets()")
    out.default = s.default or "deny"
  end
  -- The lists' entries all compile as "allow" (see sandgate.always).
  local st = always and always.static or {}
  local a, d = st.allow or {}, st.deny or {}
  out.always_allow_v4, out.always_allow_v6 = a.allow_v4 or {}, a.allow_v6 or {}
  out.always_deny_v4, out.always_deny_v6 = d.allow_v4 or {}, d.allow_v6 or {}
  return out
end

-- Loads an egress policy script with a policy document and returns the
-- entry point for decide, and with want_statics the filter's static sets
-- (see M.statics). Raises (a string with file:line where the script is at
-- fault) on any failure.
function M.egress(src, chunkname, policy_text, always_files, want_statics)
  -- The lists first: a bad line refuses the whole build, naming its line.
  local always = always_lists.build(always_files)
  local hooks = load_script(src, chunkname)
  local decide = check_hook(hooks, "decide", true, chunkname)
  local load_hook = check_hook(hooks, "load", false, chunkname)
  local selftest = check_hook(hooks, "selftest", false, chunkname)
  check_hook(hooks, "static_sets", false, chunkname)
  local doc = decode_policy(policy_text)
  if load_hook then
    local ok, err = pcall(load_hook, doc)
    if not ok then error(clean_policy_error(err), 0) end
  end
  if selftest then
    local ok, err = pcall(selftest)
    if not ok then error("selftest failed: " .. tostring(err), 0) end
  end
  local statics
  if want_statics then statics = M.statics(hooks, always) end
  return egress_entry(decide, always), statics, hooks
end

M.decode_policy = decode_policy
M.sandbox_env = sandbox_env
-- For the ingress host (sandgate.ingress.host), which loads routing scripts
-- exactly as egress scripts are loaded.
M.load_script = load_script
M.check_hook = check_hook
M.describe = describe

return M
