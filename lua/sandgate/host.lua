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
local str_format, str_match, str_gsub, str_sub =
  string.format, string.match, string.gsub, string.sub
local concat = table.concat
local getinfo = debug.getinfo

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

-- Load-time errors ----------------------------------------------------------
--
-- Every error of a load names the script file, its line when one is known,
-- and the stage it came from, on one line:
--
--   policy.lua:5: syntax error: '=' expected near 'end'
--   policy.lua:3: in main chunk: attempt to call global 'foo' (a nil value)
--   policy.lua:12: in load(): attempt to index local 'doc' (a nil value)
--   policy.lua:40: in selftest(): pypi.org should be allowed
--   policy.lua:9: in load(): script exceeded its time budget of 5000 ms
--   policy.lua: in load(): script exceeded its memory limit of 64 MiB
--
-- The server's reload log, the policy API's 400 and `sandgate check` all
-- show this text. Two kinds keep their own form: errors about the policy
-- document ("invalid policy: ...", which name the place in the document:
-- the script's position means nothing to whoever sent it), and errors about
-- the hooks table, which name the hook. Several independent errors (a
-- failing static_sets and a failing selftest) are reported one per line.

local function script_file(chunkname)
  return (str_gsub(chunkname, "^@", ""))
end

-- Set by the error handler: the line of the innermost frame of the running
-- script when the error was raised (nil when none was found).
local running_chunk, error_line

-- How far down the stack the handler looks for the script's frame; a stack
-- overflow has thousands of frames, all of them the script's.
local MAX_FRAMES = 200

-- The xpcall handler of every load-time stage. Errors raised by a shipped
-- module on the script's behalf (rules.compile from load()) or with level 0
-- carry no position of the script; the stack still has it. Past the
-- deadline nothing more is done: any further interpreted code would be cut
-- off again, and the budget hook's message already has its position.
local function locate(err)
  error_line = nil
  if budget_exceeded() then return err end
  for level = 2, MAX_FRAMES do
    local info = getinfo(level, "Sl")
    if not info then break end
    if info.source == running_chunk and info.currentline > 0 then
      error_line = info.currentline
      break
    end
  end
  return err
end

-- Splits "file:NN: rest" off a message that starts with the script's
-- position; otherwise the position is the handler's line, if any.
local function position(file, msg, line)
  if str_sub(msg, 1, #file + 1) == file .. ":" then
    local n, rest = str_match(str_sub(msg, #file + 2), "^(%d+): (.*)$")
    if n then return file .. ":" .. n, rest end
  end
  -- Lua shortens a long chunk name to "...<its end>" in positions.
  local tail, n, rest = str_match(msg, "^%.%.%.([^:]+):(%d+): (.*)$")
  if tail and str_sub(file, -#tail) == tail then return file .. ":" .. n, rest end
  if line then return file .. ":" .. line, msg end
  return file, msg
end

-- The one-line message of a failed stage (see above). stage is "main
-- chunk", "load", "selftest" or "static_sets".
local function stage_error(chunkname, stage, err, line)
  local msg = tostring(err)
  if stage == "load" then
    local inner = str_match(msg, "(invalid policy: .*)$")
    if inner then return inner end
  end
  local where, text = position(script_file(chunkname), msg, line)
  if budget_exceeded() then
    text = native.load_budget_ms
      and str_format("script exceeded its time budget of %d ms", native.load_budget_ms)
      or BUDGET
  elseif msg == "not enough memory" then
    if native.mem_limit_mib then
      text = str_format("script exceeded its memory limit of %d MiB", native.mem_limit_mib)
    end
  end
  local label = stage == "main chunk" and "in main chunk" or "in " .. stage .. "()"
  return where .. ": " .. label .. ": " .. text
end

-- Runs one stage of a load (the main chunk or a hook) with its arguments.
-- Returns true and the first result, or false and the stage's message.
local function run_stage(chunkname, stage, f, ...)
  running_chunk = chunkname
  local ok, res = xpcall(f, locate, ...)
  if ok then return true, res end
  -- After a memory bomb the failed call's garbage goes first, so that the
  -- message can be built at all. (LuaJIT raises this error without calling
  -- the handler, so it has no line.)
  if res == "not enough memory" then collectgarbage() end
  return false, stage_error(chunkname, stage, res, error_line)
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

-- Compiles the script in the sandbox and runs its main chunk; returns the
-- hooks table. Raises the stage's message.
local function load_script(src, chunkname)
  local chunk, err = load(src, chunkname, "t", sandbox_env())
  if not chunk then
    local where, text = position(script_file(chunkname), tostring(err))
    error(where .. ": syntax error: " .. text, 0)
  end
  -- The script and every function it defines stay interpreted, so the
  -- budget hook sees all of them; the modules it requires are compiled.
  jit.off(chunk, true)
  local ok, hooks = run_stage(chunkname, "main chunk", chunk)
  if not ok then error(hooks, 0) end
  if type(hooks) ~= "table" then
    error(str_format("%s: the script must return a table of hooks, got %s",
      script_file(chunkname), type(hooks)), 0)
  end
  return hooks
end

-- Checks that each hook named in `order` is a function (or absent, unless
-- `required` has its name) and raises every problem at once, one per line.
local function check_hooks(hooks, chunkname, order, required)
  local errors = {}
  for i = 1, #order do
    local name = order[i]
    local f = hooks[name]
    if not (f == nil and not required[name]) and type(f) ~= "function" then
      errors[#errors + 1] = str_format("%s: hook %q must be a function, got %s",
        script_file(chunkname), name, type(f))
    end
  end
  if #errors > 0 then error(concat(errors, "\n"), 0) end
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
-- (log_skip.always), and the seventh where the decision came from:
-- "deny.always", "allow.always" or "policy" (the script). For a list's
-- entry, index and target are its position in its list (0-based) and its
-- target. The same function answers queries and explains them (the policy
-- API's /policy/explain), so an explanation cannot disagree with an answer.
local POLICY = "policy"

local function egress_entry(decide, always)
  local q = { name = "", qtype = "", client = "", transport = "" }
  local check = always and always.check
  -- Without log_skip.always there is nothing to ask per query.
  local quiet = always and always.counts.log_skip > 0 and always.quiet
  return function(name, qtype, client, transport)
    if check then
      local a, ref, index, target = check(name)
      if a == 0 then return 0, ref, 3, index, target, nil, "deny.always" end
      if a == 1 then
        return 1, ref, nil, index, target, quiet and quiet(name), "allow.always"
      end
    end
    q.name, q.qtype, q.client, q.transport = name, qtype, client, transport
    local v = decide(q)
    local tv = type(v)
    if tv == "table" then
      local a = v.action
      if a == "allow" then
        return 1, v.rule, nil, v.index, v.target, quiet and quiet(name), POLICY
      end
      if a == "deny" then return 0, v.rule, deny_rcode(v), v.index, v.target, nil, POLICY end
      error("decide returned a verdict whose action is " .. describe(a)
        .. ", expected \"allow\" or \"deny\"", 0)
    elseif v == "allow" or v == true then
      return 1, nil, nil, nil, nil, quiet and quiet(name), POLICY
    elseif v == "deny" or v == false then
      return 0, nil, 3, nil, nil, nil, POLICY
    end
    error("decide returned " .. describe(v)
      .. ", expected \"allow\", \"deny\" or {action = ...}", 0)
  end
end

-- natives: log, budget_exceeded, sha256 (C functions), and the limits the
-- load runs under, for messages: load_budget_ms, mem_limit_mib.
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

-- Checks the lists of a static_sets() result: each field nil or an array
-- of strings (the C side parses them and names a bad address). Raises
-- "<problem>" without a prefix.
local function static_lists(s)
  local out = {}
  for _, field in ipairs(STATIC_FIELDS) do
    local v = s[field]
    if v == nil then
      v = {}
    elseif type(v) ~= "table" then
      error(str_format("%s must be an array of IP/CIDR strings, got %s", field, type(v)), 0)
    end
    for i = 1, #v do
      if type(v[i]) ~= "string" then
        error(str_format("%s[%d] must be an IP/CIDR string, got %s", field, i, type(v[i])), 0)
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
-- A bad result is a load error of the script, in static_sets().
function M.statics(hooks, always, chunkname)
  local out = static_lists({})
  out.default = "deny"
  local f = hooks.static_sets
  if f then
    local ok, s = run_stage(chunkname, "static_sets", f)
    if not ok then error(s, 0) end
    local where = script_file(chunkname) .. ": in static_sets(): "
    if type(s) ~= "table" then
      error(where .. "returned " .. describe(s) .. ", expected a table", 0)
    end
    if s.default ~= nil and s.default ~= "allow" and s.default ~= "deny" then
      error(where .. "default is " .. describe(s.default) .. ", expected \"allow\" or \"deny\"", 0)
    end
    ok, out = pcall(static_lists, s)
    if not ok then error(where .. out, 0) end
    out.default = s.default or "deny"
  end
  -- The lists' entries all compile as "allow" (see sandgate.always).
  local st = always and always.static or {}
  local a, d = st.allow or {}, st.deny or {}
  out.always_allow_v4, out.always_allow_v6 = a.allow_v4 or {}, a.allow_v6 or {}
  out.always_deny_v4, out.always_deny_v6 = d.allow_v4 or {}, d.allow_v6 or {}
  return out
end

local EGRESS_HOOKS = { "decide", "load", "selftest", "static_sets" }
local EGRESS_REQUIRED = { decide = true }

-- Loads an egress policy script with a policy document and returns the
-- entry point for decide, and with want_statics the filter's static sets
-- (see M.statics), and the hooks. Raises the load's errors (see "Load-time
-- errors"): the lists', the script's, the hooks', the document's, load()'s;
-- after a successful load() both static_sets() and selftest() run and each
-- failure is reported.
function M.egress(src, chunkname, policy_text, always_files, want_statics)
  -- The lists first: a bad line refuses the whole build, naming its line.
  local always = always_lists.build(always_files)
  local hooks = load_script(src, chunkname)
  check_hooks(hooks, chunkname, EGRESS_HOOKS, EGRESS_REQUIRED)
  local doc = decode_policy(policy_text)
  if hooks.load then
    local ok, err = run_stage(chunkname, "load", hooks.load, doc)
    if not ok then error(err, 0) end
  end
  local errors, statics = {}, nil
  if hooks.selftest then
    local ok, err = run_stage(chunkname, "selftest", hooks.selftest)
    if not ok then errors[#errors + 1] = err end
  end
  -- Past the deadline a further stage could only be cut off again.
  if want_statics and not budget_exceeded() then
    local ok, s = pcall(M.statics, hooks, always, chunkname)
    if ok then statics = s else errors[#errors + 1] = tostring(s) end
  end
  if #errors > 0 then error(concat(errors, "\n"), 0) end
  return egress_entry(hooks.decide, always), statics, hooks
end

-- Which plane a script is written for, told by its hooks: "egress" (it has
-- decide) or "ingress" (it has route). Runs the main chunk in the sandbox,
-- so its errors are raised as a load raises them; a script with both hooks
-- or neither gives nil and the reason.
function M.kind(src, chunkname)
  local hooks = load_script(src, chunkname)
  local d, r = type(hooks.decide) == "function", type(hooks.route) == "function"
  if d ~= r then return d and "egress" or "ingress" end
  return nil, script_file(chunkname) .. (d
    and ': has both a "decide" hook (egress) and a "route" hook (ingress)'
    or ': has neither a "decide" hook (egress) nor a "route" hook (ingress)')
end

M.decode_policy = decode_policy
M.sandbox_env = sandbox_env
-- For the ingress host (sandgate.ingress.host), which loads routing scripts
-- exactly as egress scripts are loaded, and for sandgate.testing.
M.load_script = load_script
M.check_hooks = check_hooks
M.run_stage = run_stage
M.describe = describe

return M
