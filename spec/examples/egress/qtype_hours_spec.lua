local log = require "sandgate.log"
local rules = require "sandgate.rules"

local support = require "support.policy"
local load_script, query = support.load, support.query

-- 2024-03-01 00:00:00 UTC, plus hours.
local function at_utc_hour(h, minutes)
  return function() return 1709251200 + h * 3600 + (minutes or 0) * 60 end
end

describe("examples/egress/qtype_hours.lua", function()
  local policy, lines

  before_each(function()
    lines = {}
    log.set_sink(function(level, event, fields)
      lines[#lines + 1] = { level = level, event = event, fields = fields }
    end)
    policy = load_script("examples/egress/qtype_hours.lua")
    policy.now = at_utc_hour(12)
    policy.load({
      defaultAction = "deny",
      egress = {
        { action = "allow", target = "api.example.com" },
        { action = "allow", target = "*.example-config.com" },
        { action = "allow", target = "_acme-challenge.example.com" },
        { action = "deny", target = "blocked.slack.com" },
        { action = "allow", target = "slack.com" },
        { action = "allow", target = "*.slack.com" },
      },
    })
  end)

  after_each(function()
    log.set_sink(nil)
  end)

  describe("query types", function()
    it("answers A, AAAA, CNAME and HTTPS for allowed names", function()
      for _, t in ipairs({ "A", "AAAA", "CNAME", "HTTPS" }) do
        local v = policy.decide(query("api.example.com", t))
        assert.same({ action = "allow", index = 0, target = "api.example.com" }, v)
      end
      assert.equals(0, #lines)
    end)

    it("denies TXT and other types for allowed names, and logs it", function()
      for _, t in ipairs({ "TXT", "MX", "NULL", "SRV", "ANY", "TYPE65534" }) do
        local v = policy.decide(query("api.example.com", t))
        assert.equals("deny", v.action)
        -- NODATA, not NXDOMAIN: the name's other types must stay resolvable.
        assert.equals("NODATA", v.rcode)
        assert.equals("qtype_hours: query type not allowed", v.rule)
      end
      assert.equals(6, #lines)
      assert.same({ level = "info", event = "policy.qtype_denied",
                    fields = { name = "api.example.com", qtype = "TXT",
                               rule = "egress[0] allow api.example.com" } }, lines[1])
    end)

    it("allows TXT for names in the TXT allowlist, but nothing more", function()
      -- The policy's verdict comes back intact: matching the TXT allowlist
      -- (another compiled object) does not touch it.
      assert.same({ action = "allow", index = 1, target = "*.example-config.com" },
        policy.decide(query("cfg.example-config.com", "TXT")))
      assert.equals("allow", policy.decide(query("a.b.example-config.com", "TXT")).action)
      assert.equals("allow", policy.decide(query("_acme-challenge.example.com", "TXT")).action)
      assert.equals("deny", policy.decide(query("cfg.example-config.com", "MX")).action)
    end)

    it("never turns a policy denial into an allow", function()
      local v = policy.decide(query("other.example", "A"))
      assert.same({ action = "deny", rule = "default" }, v)
      assert.equals("deny", policy.decide(query("other.example-config.org", "TXT")).action)
      -- The TXT allowlist does not allow names the policy denies.
      policy.configure({ txt_allow = { "other.example" } })
      assert.equals("deny", policy.decide(query("other.example", "TXT")).action)
      assert.equals(0, #lines)
    end)
  end)

  describe("time window", function()
    it("allows windowed names inside the hours", function()
      for _, h in ipairs({ 8, 12, 17 }) do
        policy.now = at_utc_hour(h, 59)
        assert.equals("allow", policy.decide(query("slack.com")).action)
        assert.equals("allow", policy.decide(query("files.slack.com", "AAAA")).action)
      end
      assert.equals(0, #lines)
    end)

    it("denies windowed names outside the hours, and logs it", function()
      for _, h in ipairs({ 18, 23, 0, 7 }) do
        policy.now = at_utc_hour(h, 30)
        local v = policy.decide(query("files.slack.com"))
        assert.equals("deny", v.action)
        assert.equals("qtype_hours: outside allowed hours", v.rule)
      end
      assert.same({ level = "info", event = "policy.outside_hours",
                    fields = { name = "files.slack.com", qtype = "A", hour = 18 } }, lines[1])
      assert.equals(7, lines[4].fields.hour)
    end)

    it("leaves other names alone at any hour", function()
      policy.now = at_utc_hour(3)
      assert.equals("allow", policy.decide(query("api.example.com")).action)
    end)

    it("returns the policy's verdict intact after checking the window", function()
      policy.now = at_utc_hour(12)
      assert.same({ action = "allow", index = 5, target = "*.slack.com" },
        policy.decide(query("files.slack.com", "HTTPS")))
      assert.same({ action = "allow", index = 4, target = "slack.com" },
        policy.decide(query("slack.com")))
    end)

    it("keeps policy denials of windowed names", function()
      policy.now = at_utc_hour(12)
      assert.equals("egress[3] deny blocked.slack.com", rules.describe(policy.decide(query("blocked.slack.com"))))
      assert.equals("egress[5] allow *.slack.com", rules.describe(policy.decide(query("x.blocked.slack.com"))))
      -- Outside the hours the policy denial still wins: it is the more
      -- specific answer and it does not depend on the clock.
      policy.now = at_utc_hour(22)
      assert.equals("egress[3] deny blocked.slack.com", rules.describe(policy.decide(query("blocked.slack.com"))))
    end)

    it("supports windows that wrap midnight", function()
      policy.configure({ window = { targets = { "*.night.example" }, from_hour = 22, to_hour = 6 } })
      policy.load({ egress = { { action = "allow", target = "*.night.example" } } })
      for h = 0, 23 do
        policy.now = at_utc_hour(h)
        local expect = (h >= 22 or h < 6) and "allow" or "deny"
        assert.equals(expect, policy.decide(query("job.night.example")).action, "hour " .. h)
      end
    end)

    it("treats from == to as the whole day", function()
      policy.configure({ window = { targets = { "slack.com" }, from_hour = 5, to_hour = 5 } })
      for h = 0, 23 do
        policy.now = at_utc_hour(h)
        assert.equals("allow", policy.decide(query("slack.com")).action)
      end
    end)

    it("checks the time window before the query type", function()
      policy.now = at_utc_hour(20)
      assert.equals("qtype_hours: outside allowed hours", policy.decide(query("slack.com", "TXT")).rule)
      policy.now = at_utc_hour(10)
      assert.equals("qtype_hours: query type not allowed", policy.decide(query("slack.com", "TXT")).rule)
    end)
  end)

  describe("configuration", function()
    it("rejects bad hours and bad targets", function()
      assert.has_error(function()
        policy.configure({ window = { targets = {}, from_hour = 24, to_hour = 1 } })
      end, "qtype_hours: window hours must be integers 0-23, got 24")
      assert.has_error(function()
        policy.configure({ window = { targets = {}, from_hour = 1.5, to_hour = 1 } })
      end)
      assert.has_error(function() policy.configure({ txt_allow = { "a b" } }) end,
        'invalid policy: egress[0].target: "a b" is not a domain name, wildcard (*.suffix), IP address or CIDR')
    end)
  end)

  it("passes through the static sets and its selftest", function()
    policy.load({ egress = { { action = "allow", target = "192.0.2.1/24" } } })
    assert.same({ allow_v4 = { "192.0.2.0/24" }, allow_v6 = {}, deny_v4 = {}, deny_v6 = {},
      default = "deny" }, policy.static_sets())
    policy.selftest()
    assert.equals(0, #lines)
  end)
end)
