-- The custom policy in README.md is real code: this spec extracts the first
-- ```lua block of the README and checks that it behaves as the text says.
local function readme_policy()
  local f = assert(io.open("README.md", "r"))
  local text = f:read("*a")
  f:close()
  local src = assert(text:match("```lua\n(.-)```"), "no lua block in README.md")
  return assert(loadstring(src, "@README.md"))()
end

describe("README custom policy", function()
  local log = require "sandgate.log"
  local lines

  before_each(function()
    lines = {}
    log.set_sink(function(level, event, fields)
      lines[#lines + 1] = { level = level, event = event, fields = fields }
    end)
  end)
  after_each(function() log.set_sink(nil) end)

  local function q(name, transport)
    return { name = name, qtype = "A", client = "10.0.0.5", transport = transport }
  end

  it("denies internal names over TCP and logs them", function()
    local p = readme_policy()
    p.load({ defaultAction = "allow" })
    local v = p.decide(q("db.internal.example", "tcp"))
    assert.equals("deny", v.action)
    assert.equals("custom: internal over tcp", v.rule)
    assert.equals(1, #lines)
    assert.equals("policy.internal_tcp", lines[1].event)
  end)

  it("applies the normal policy to everything else", function()
    local p = readme_policy()
    p.load({ defaultAction = "deny", egress = { { action = "allow", target = "*.internal.example" } } })
    assert.equals("allow", p.decide(q("db.internal.example", "udp")).action)
    assert.equals("deny", p.decide(q("pypi.org", "tcp")).action)
    assert.equals(0, #lines)
  end)
end)
