-- The custom policy in README.md is real code: this spec extracts the first
-- ```lua block of the README and checks that it behaves as the text says,
-- and runs the walkthrough's spec (the second ```lua block, which uses
-- sandgate.testing) against it, as a user would.
local function readme()
  local f = assert(io.open("README.md", "r"))
  local text = f:read("*a")
  f:close()
  local blocks = {}
  for src in text:gmatch("```lua\n(.-)```") do blocks[#blocks + 1] = src end
  assert(#blocks >= 2, "README.md should have the policy and its spec as ```lua blocks")
  return blocks
end

local function readme_policy()
  return assert(loadstring(readme()[1], "@README.md"))()
end

-- The walkthrough's spec names the policy by its deployed path; here it is
-- the first block, written to a file.
do
  local blocks = readme()
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(blocks[1])
  f:close()
  local spec = blocks[2]:gsub('"/etc/sandgate/policy%.lua"', string.format("%q", path))
  assert(spec ~= blocks[2], "the README spec should load /etc/sandgate/policy.lua")
  -- It runs in this file's environment, where busted's describe and it are.
  local chunk = assert(loadstring(spec, "@README.md (spec)"))
  setfenv(chunk, getfenv(1))
  describe("README walkthrough", function()
    chunk()
    teardown(function() os.remove(path) end)
  end)
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
