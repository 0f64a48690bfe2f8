local cjson = require "cjson"

-- Loads a policy script roughly the way the host does: in an environment
-- that can only require sandgate.* and cjson, with no io and a reduced os.
local function load_script(path)
  local function sandbox_require(name)
    if name:match("^sandgate%.") or name == "cjson" or name == "cjson.safe" then
      return require(name)
    end
    error("module '" .. name .. "' is not available to policy scripts", 2)
  end
  local env = {
    require = sandbox_require, string = string, table = table, math = math,
    pairs = pairs, ipairs = ipairs, next = next, type = type, select = select,
    tostring = tostring, tonumber = tonumber, error = error, assert = assert,
    pcall = pcall, setmetatable = setmetatable, getmetatable = getmetatable,
    rawget = rawget, rawset = rawset, unpack = unpack,
    os = { time = os.time, date = os.date, clock = os.clock },
  }
  local chunk = assert(loadfile(path, "t", env))
  return chunk()
end

local function query(name, qtype)
  return { name = name, qtype = qtype or "A", client = "10.0.0.2", transport = "udp" }
end

describe("policies/egress/default.lua", function()
  local policy
  before_each(function()
    policy = load_script("policies/egress/default.lua")
  end)

  it("has the hooks the host calls", function()
    assert.is_function(policy.load)
    assert.is_function(policy.decide)
    assert.is_function(policy.static_sets)
    assert.is_function(policy.selftest)
  end)

  it("denies everything before load and after an empty document", function()
    assert.equals("deny", policy.decide(query("example.com")).action)
    policy.load(nil)
    policy.selftest()
    assert.same({ action = "deny", rule = "default" }, policy.decide(query("example.com")))
    policy.load({})
    assert.equals("deny", policy.decide(query("")).action)
  end)

  it("applies an OpenSandbox document", function()
    policy.load(cjson.decode([[{
      "defaultAction": "deny",
      "egress": [
        {"action": "allow", "target": "api.github.com"},
        {"action": "deny",  "target": "upload.pypi.org"},
        {"action": "allow", "target": "*.pypi.org"},
        {"action": "allow", "target": "10.0.0.0/8"},
        {"action": "deny",  "target": "2001:DB8::1"}
      ]}]]))
    policy.selftest()
    local v = policy.decide(query("api.github.com"))
    assert.equals("allow", v.action)
    assert.equals("egress[0] allow api.github.com", v.rule)
    assert.equals("deny", policy.decide(query("upload.pypi.org")).action)
    assert.equals("egress[2] allow *.pypi.org", policy.decide(query("files.pypi.org", "AAAA")).rule)
    assert.equals("deny", policy.decide(query("pypi.org")).action)
    assert.equals("default", policy.decide(query("github.com")).rule)
    assert.same({ allow_v4 = { "10.0.0.0/8" }, allow_v6 = {}, deny_v4 = {}, deny_v6 = { "2001:db8::1" } },
      policy.static_sets())
  end)

  it("keeps no reference to the query table", function()
    policy.load({ defaultAction = "deny", egress = { { action = "allow", target = "a.com" } } })
    local q = query("a.com")
    local v1 = policy.decide(q)
    q.name = "b.com" -- the host reuses q for the next query
    local v2 = policy.decide(q)
    assert.equals("allow", v1.action)
    assert.equals("deny", v2.action)
  end)

  it("keeps the previous policy when load fails", function()
    policy.load({ defaultAction = "allow" })
    local ok, err = pcall(policy.load, { egress = { { action = "allow", target = "a b" } } })
    assert.is_false(ok)
    assert.equals('invalid policy: egress[0].target: "a b" is not a domain name, '
      .. "wildcard (*.suffix), IP address or CIDR", err)
    assert.equals("allow", policy.decide(query("anything.example")).action)
  end)

  it("passes its selftest on a large policy", function()
    local egress = {}
    for i = 1, 1000 do
      egress[i] = { action = i % 3 == 0 and "deny" or "allow",
                    target = (i % 2 == 0 and "*.d" or "h") .. i .. ".example.org" }
    end
    policy.load({ defaultAction = "allow", egress = egress })
    policy.selftest()
  end)
end)
