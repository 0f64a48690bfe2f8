local log = require "sandgate.log"
local rules = require "sandgate.rules"

local support = require "support.policy"
local load_script, query = support.load, support.query

describe("examples/egress/audit.lua", function()
  local policy, lines

  before_each(function()
    lines = {}
    log.set_sink(function(level, event, fields)
      lines[#lines + 1] = { level = level, event = event, fields = fields }
    end)
    policy = load_script("examples/egress/audit.lua")
    policy.load({
      defaultAction = "deny",
      egress = {
        { action = "allow", target = "*.pypi.org" },
        { action = "deny", target = "evil.example" },
        { action = "allow", target = "10.0.0.0/8" },
        { action = "deny", target = "192.0.2.0/24" },
        { action = "deny", target = "2001:db8::/32" },
      },
    })
  end)

  after_each(function()
    log.set_sink(nil)
  end)

  it("allows and logs nothing for what the policy allows", function()
    local v = policy.decide(query("files.pypi.org"))
    assert.same({ action = "allow", index = 0, target = "*.pypi.org" }, v)
    assert.equals("egress[0] allow *.pypi.org", rules.describe(v))
    assert.equals(0, #lines)
  end)

  it("allocates nothing for allowed queries", function()
    local qs = { query("files.pypi.org"), query("a.b.pypi.org", "AAAA"), query("x.pypi.org") }
    policy.decide(qs[1])
    collectgarbage("collect")
    collectgarbage("stop")
    local before = collectgarbage("count")
    for i = 1, 30000 do
      assert(policy.decide(qs[i % 3 + 1]).action == "allow")
    end
    local grown = collectgarbage("count") - before
    collectgarbage("restart")
    assert.truthy(grown < 16, "allowed queries allocated " .. grown .. " KB")
    assert.equals(0, #lines)
  end)

  it("allows what the policy would deny, and logs it", function()
    local v = policy.decide(query("evil.example", "TXT"))
    assert.equals("allow", v.action)
    assert.equals("audit:egress[1] deny evil.example", v.rule)
    assert.equals(1, #lines)
    assert.same({ level = "info", event = "policy.audit_would_deny",
                  fields = { name = "evil.example", qtype = "TXT",
                             rule = "egress[1] deny evil.example", client = "10.0.0.2" } },
      lines[1])

    v = policy.decide(query("pypi.org", "AAAA"))
    assert.equals("allow", v.action)
    assert.equals("audit:default", v.rule)
    assert.equals("default", lines[2].fields.rule)
    assert.equals("pypi.org", lines[2].fields.name)
  end)

  it("reuses one stand-in verdict for every denial", function()
    assert.equals(policy.decide(query("a.example")), policy.decide(query("b.example")))
    assert.equals(2, #lines)
    -- Also across rules: it does not grow with the policy.
    local v = policy.decide(query("c.example"))
    assert.equals(v, policy.decide(query("evil.example")))
    assert.same({ action = "allow", rule = "audit:egress[1] deny evil.example", would = "deny" }, v)
    assert.equals(v, policy.decide(query("d.example")))
    assert.same({ action = "allow", rule = "audit:default", would = "deny" }, v)
  end)

  it("passes its selftest on a large policy with many deny rules", function()
    local egress = {}
    for i = 1, 1000 do
      egress[i] = { action = i % 2 == 0 and "deny" or "allow",
                    target = (i % 3 == 0 and "*.d" or "h") .. i .. ".example.org" }
    end
    egress[1001] = { action = "deny", target = "192.0.2.0/24" }
    policy.load({ defaultAction = "deny", egress = egress })
    policy.selftest()
    assert.equals(0, #lines)
    assert.equals("audit:egress[5] deny *.d6.example.org", policy.decide(query("x.d6.example.org")).rule)
    assert.equals("egress[5] deny *.d6.example.org", lines[1].fields.rule)
  end)

  it("enforces no deny sets but keeps the allow sets", function()
    assert.same({ allow_v4 = { "10.0.0.0/8" }, allow_v6 = {}, deny_v4 = {}, deny_v6 = {} },
      policy.static_sets())
  end)

  it("passes its selftest without logging", function()
    policy.selftest()
    assert.equals(0, #lines)
  end)

  it("keeps the previous policy when load fails", function()
    assert.has_error(function() policy.load({ defaultAction = "maybe" }) end,
      'invalid policy: defaultAction: "maybe" is not allow or deny')
    assert.equals("egress[0] allow *.pypi.org", rules.describe(policy.decide(query("x.pypi.org"))))
  end)

  it("is deny-all (and so audits everything) before load", function()
    local fresh = load_script("examples/egress/audit.lua")
    assert.equals("allow", fresh.decide(query("example.com")).action)
    assert.equals("default", lines[1].fields.rule)
  end)
end)
