local cjson = require "cjson"
local rules = require "sandgate.rules"

local support = require "support.policy"
local load_script, query = support.load, support.query

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
    assert.same({ action = "allow", index = 0, target = "api.github.com" }, v)
    assert.equals("egress[0] allow api.github.com", rules.describe(v))
    assert.same({ action = "deny", index = 1, target = "upload.pypi.org" },
      policy.decide(query("upload.pypi.org")))
    assert.equals("egress[2] allow *.pypi.org", rules.describe(policy.decide(query("files.pypi.org", "AAAA"))))
    assert.equals("deny", policy.decide(query("pypi.org")).action)
    assert.same({ action = "deny", rule = "default" }, policy.decide(query("github.com")))
    assert.same({ allow_v4 = { "10.0.0.0/8" }, allow_v6 = {}, deny_v4 = {}, deny_v6 = { "2001:db8::1" },
      default = "deny" }, policy.static_sets())
  end)

  it("keeps no reference to the query table", function()
    policy.load({ defaultAction = "deny", egress = { { action = "allow", target = "a.com" } } })
    local q = query("a.com")
    -- A verdict is read before the next decide, as the host does.
    assert.equals("allow", policy.decide(q).action)
    q.name = "b.com" -- the host reuses q for the next query
    assert.equals("deny", policy.decide(q).action)
  end)

  it("returns verdicts the host can log: a rule string or index and target", function()
    policy.load({ defaultAction = "deny", egress = {
      { action = "allow", target = "a.com" }, { action = "deny", target = "*.B.com" } } })
    local seen = {}
    for _, name in ipairs({ "a.com", "x.b.com", "c.com" }) do
      local v = policy.decide(query(name))
      assert.truthy(v.action == "allow" or v.action == "deny")
      if v.rule == nil then
        assert.is_number(v.index)
        assert.is_string(v.target)
        seen[#seen + 1] = string.format("egress[%d] %s %s", v.index, v.action, v.target)
      else
        assert.is_string(v.rule)
        seen[#seen + 1] = v.rule
      end
    end
    assert.same({ "egress[0] allow a.com", "egress[1] deny *.b.com", "default" }, seen)
  end)

  it("reuses one verdict table for every rule match", function()
    policy.load({ defaultAction = "deny", egress = {
      { action = "allow", target = "a.com" }, { action = "deny", target = "*.b.com" } } })
    local v = policy.decide(query("a.com"))
    assert.equals(v, policy.decide(query("x.b.com")))
    assert.same({ action = "deny", index = 1, target = "*.b.com" }, v)
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
