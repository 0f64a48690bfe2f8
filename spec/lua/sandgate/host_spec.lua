-- sandgate.host's loader, as the C host calls it: the stage-named load
-- errors, several at once, the entry's source, and telling the plane of a
-- script by its hooks. (The time budget and the memory cap need the C host:
-- spec/c/test_vm.c.)
local host = require "sandgate.host"

local function egress(src, doc, always, statics)
  return host.egress(src, "@p.lua", doc, always, statics)
end

local function load_error(...)
  local ok, err = pcall(egress, ...)
  assert.is_false(ok, "the load should have failed")
  return err
end

describe("sandgate.host", function()
  describe("load errors", function()
    it("name the file, the line and the stage", function()
      assert.equals("p.lua:2: syntax error: '<eof>' expected near 'end'",
        load_error("local x\nlocal y end\n"))
      assert.equals("p.lua:2: in main chunk: boom",
        load_error("local M = {}\nerror('boom')\nreturn M\n"))
      assert.equals("p.lua:3: in load(): attempt to index local 'doc' (a nil value)",
        load_error("local M = { decide = function() end }\nfunction M.load(doc)\n  return doc.x\nend\nreturn M\n"))
      assert.equals("p.lua:2: in selftest(): no",
        load_error("return { decide = function() end,\n  selftest = function() error('no') end }\n"))
      assert.equals("p.lua:2: in static_sets(): sets",
        load_error("return { decide = function() end,\n  static_sets = function() error('sets') end }\n",
          nil, nil, true))
    end)

    it("find the script's line when the error has no position", function()
      assert.equals("p.lua:3: in load(): plain",
        load_error("local M = { decide = function() end }\nfunction M.load()\n  error('plain', 0)\nend\nreturn M\n"))
      -- Raised inside a shipped module on the script's behalf.
      assert.matches('^p.lua:4: in selftest%(%): invalid policy: egress%[0%]%.target: "a b" is not',
        load_error("local M = { decide = function() end }\nlocal rules = require 'sandgate.rules'\n"
          .. "function M.selftest()\n  rules.compile({ egress = { { target = 'a b' } } })\nend\nreturn M\n"))
    end)

    it("keep a policy document error as OpenSandbox words it", function()
      assert.equals('invalid policy: defaultAction: "maybe" is not allow or deny',
        load_error("local r = require 'sandgate.rules'\nlocal M = { decide = function() end }\n"
          .. "function M.load(doc) r.compile(doc) end\nreturn M\n", '{"defaultAction":"maybe"}'))
      assert.matches("^invalid policy: not valid JSON", load_error("return { decide = function() end }", "{"))
    end)

    it("report every bad hook, and selftest and static_sets together", function()
      assert.equals('p.lua: hook "decide" must be a function, got nil\n'
        .. 'p.lua: hook "load" must be a function, got number',
        load_error("return { load = 1 }"))
      assert.equals("p.lua:2: in selftest(): a\np.lua:3: in static_sets(): b",
        load_error("return { decide = function() end,\n  selftest = function() error('a') end,\n"
          .. "  static_sets = function() error('b') end }\n", nil, nil, true))
      assert.equals('p.lua: in static_sets(): allow_v4 must be an array of IP/CIDR strings, got string',
        load_error("return { decide = function() end, static_sets = function() return { allow_v4 = 'x' } end }",
          nil, nil, true))
    end)
  end)

  describe("the entry", function()
    it("says where a decision came from", function()
      local entry = egress("local r = require 'sandgate.rules'\nlocal p\n"
        .. "return { decide = function(q) return p:match(q.name) end,\n"
        .. "  load = function(doc) p = r.compile(doc) end }\n",
        '{"egress":[{"action":"allow","target":"*.a.example"}]}',
        { deny = "# no\nx.a.example\n", allow = "b.example" })
      assert.same({ 1, nil, nil, 0, "*.a.example", false, "policy" }, { entry("y.a.example", "A", "::1", "udp") })
      assert.same({ 0, "deny.always:2 x.a.example", 3, 0, "x.a.example", nil, "deny.always" },
        { entry("x.a.example", "A", "::1", "udp") })
      assert.same({ 1, "allow.always:1 b.example", nil, 0, "b.example", false, "allow.always" },
        { entry("b.example", "A", "::1", "udp") })
      assert.same({ 0, "default", 3, nil, nil, nil, "policy" }, { entry("c.example", "A", "::1", "udp") })
    end)
  end)

  describe("kind", function()
    it("tells the plane by the hooks", function()
      assert.equals("egress", host.kind("return { decide = function() end }", "@p.lua"))
      assert.equals("ingress", host.kind("return { route = function() end }", "@p.lua"))
      assert.same({ nil, 'p.lua: has both a "decide" hook (egress) and a "route" hook (ingress)' },
        { host.kind("return { decide = print, route = print }", "@p.lua") })
      assert.same({ nil, 'p.lua: has neither a "decide" hook (egress) nor a "route" hook (ingress)' },
        { host.kind("return {}", "@p.lua") })
      local ok, err = pcall(host.kind, "error('x')", "@p.lua")
      assert.is_false(ok)
      assert.equals("p.lua:1: in main chunk: x", err)
    end)
  end)
end)
