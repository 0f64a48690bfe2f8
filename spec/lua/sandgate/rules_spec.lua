local rules = require "sandgate.rules"
local cjson = require "cjson"

-- Compiles a policy from a list of "action target" strings.
local function policy(default, list)
  local egress = {}
  for i, spec in ipairs(list or {}) do
    local action, target = spec:match("^(%S*) (.*)$")
    egress[i] = { action = action, target = target }
  end
  return rules.compile({ defaultAction = default, egress = egress })
end

local function action(p, name) return p:match(name).action end
-- The log reference of the verdict: "egress[i] action target" or "default".
local function rule(p, name) return p:describe(p:match(name)) end

local function compile_error(doc)
  local ok, err = pcall(rules.compile, doc)
  assert.is_false(ok, "compile should have failed")
  return err
end

local BAD = " is not a domain name, wildcard (*.suffix), IP address or CIDR"

describe("sandgate.rules", function()
  describe("empty documents", function()
    it("treats nil, cjson.null and {} as deny-all", function()
      for _, doc in ipairs({ false, cjson.null, {}, cjson.decode("{}") }) do
        local p = rules.compile(doc or nil)
        assert.equals("deny", p.default_action)
        assert.equals(0, p:count())
        assert.equals("deny", action(p, "example.com"))
        assert.equals("deny", action(p, ""))
        assert.same({ action = "deny", rule = "default" }, p:match("x"))
      end
    end)

    it("accepts an empty egress list and a null egress", function()
      assert.equals("allow", action(rules.compile({ defaultAction = "allow", egress = {} }), "a.b"))
      assert.equals("allow", action(rules.compile(cjson.decode('{"defaultAction":"allow","egress":null}')), "a.b"))
    end)

    it("ignores unknown keys", function()
      local p = rules.compile(cjson.decode(
        '{"defaultAction":"allow","x":1,"egress":[{"action":"deny","target":"a.com","comment":"no"}]}'))
      assert.equals("deny", action(p, "a.com"))
      assert.equals("allow", action(p, "b.com"))
    end)
  end)

  describe("actions", function()
    it("reads defaultAction case-insensitively and trimmed", function()
      for _, a in ipairs({ "allow", "ALLOW", "Allow", " allow\t", "\nAlLoW " }) do
        assert.equals("allow", rules.compile({ defaultAction = a }).default_action)
      end
      for _, a in ipairs({ "deny", "DENY", " Deny " }) do
        assert.equals("deny", rules.compile({ defaultAction = a }).default_action)
      end
    end)

    it("defaults a missing, null or empty defaultAction to deny", function()
      assert.equals("deny", rules.compile({ egress = {} }).default_action)
      assert.equals("deny", rules.compile({ defaultAction = "" }).default_action)
      assert.equals("deny", rules.compile({ defaultAction = "   " }).default_action)
      assert.equals("deny", rules.compile({ defaultAction = cjson.null }).default_action)
    end)

    it("treats an empty or missing rule action as deny", function()
      local p = rules.compile({ defaultAction = "allow", egress = {
        { target = "a.com" }, { action = "", target = "b.com" },
        { action = cjson.null, target = "c.com" }, { action = " ", target = "d.com" },
      } })
      for _, n in ipairs({ "a.com", "b.com", "c.com", "d.com" }) do
        assert.equals("deny", action(p, n))
      end
      assert.equals("allow", action(p, "e.com"))
    end)

    it("reads rule actions case-insensitively", function()
      local p = rules.compile({ egress = { { action = "ALLOW", target = "a.com" },
                                           { action = " Allow\t", target = "b.com" } } })
      assert.equals("allow", action(p, "a.com"))
      assert.equals("allow", action(p, "b.com"))
      assert.equals("egress[1] allow b.com", rule(p, "b.com"))
    end)

    it("rejects other actions, naming value and place", function()
      assert.equals('invalid policy: defaultAction: "permit" is not allow or deny',
        compile_error({ defaultAction = "permit" }))
      assert.equals('invalid policy: egress[1].action: "permit" is not allow or deny',
        compile_error({ egress = { { action = "allow", target = "a.com" },
                                   { action = "permit", target = "b.com" } } }))
      assert.equals('invalid policy: egress[0].action: "allowed" is not allow or deny',
        compile_error({ egress = { { action = "allowed", target = "a.com" } } }))
    end)
  end)

  describe("wrong JSON types", function()
    local cases = {
      { '"allow"', "invalid policy: document: expected an object, got string" },
      { '42', "invalid policy: document: expected an object, got number" },
      { 'true', "invalid policy: document: expected an object, got boolean" },
      { '[{"target":"a.com"}]', "invalid policy: document: expected an object, got array" },
      { '{"defaultAction":1}', "invalid policy: defaultAction: expected a string, got number" },
      { '{"defaultAction":["allow"]}', "invalid policy: defaultAction: expected a string, got array" },
      { '{"egress":"a.com"}', "invalid policy: egress: expected an array, got string" },
      { '{"egress":true}', "invalid policy: egress: expected an array, got boolean" },
      { '{"egress":{"target":"a.com"}}', "invalid policy: egress: expected an array, got object" },
      { '{"egress":["a.com"]}', "invalid policy: egress[0]: expected an object, got string" },
      { '{"egress":[{"target":"a.com"},null]}', "invalid policy: egress[1]: expected an object, got null" },
      { '{"egress":[["allow","a.com"]]}', "invalid policy: egress[0]: expected an object, got array" },
      { '{"egress":[{"action":"allow"}]}', "invalid policy: egress[0].target: missing (expected a string)" },
      { '{"egress":[{"action":"allow","target":null}]}', "invalid policy: egress[0].target: missing (expected a string)" },
      { '{"egress":[{"target":5}]}', "invalid policy: egress[0].target: expected a string, got number" },
      { '{"egress":[{"target":{"host":"a"}}]}', "invalid policy: egress[0].target: expected a string, got object" },
      { '{"egress":[{"action":true,"target":"a.com"}]}', "invalid policy: egress[0].action: expected a string, got boolean" },
      { '{"egress":[{"action":1,"target":"a.com"}]}', "invalid policy: egress[0].action: expected a string, got number" },
    }
    for _, c in ipairs(cases) do
      it("rejects " .. c[1], function()
        assert.equals(c[2], compile_error(cjson.decode(c[1])))
      end)
    end
  end)

  describe("invalid targets", function()
    local cases = {
      { "", "" },
      { " ", "" },
      { "a b", "" },
      { " example.com", "" },
      { "example.com ", "" },
      { "*", "" },
      { "*.", "" },
      { ".", "" },
      { "..", "" },
      { "a*.b", "" },
      { "*a.b", "" },
      { "**.b", "" },
      { "*.*.b", "" },
      { "a.*.b", "" },
      { "foo..bar", "" },
      { ".foo.bar", "" },
      { "foo.bar..", "" },
      { "ex%ample.com", "" },
      { "exa/mple.com", " (address is not IPv4 or IPv6)" },
      { "b\195\188cher.de", "" },
      { "http://a.com", " (not address/prefix-length)" },
      { "a.com:443", "" },
      { string.rep("a", 64) .. ".com", " (label longer than 63 characters)" },
      { "*." .. string.rep("a", 64) .. ".com", " (label longer than 63 characters)" },
      { string.rep("abcdefghi.", 25) .. "abcd", " (longer than 253 characters)" },
      { "*." .. string.rep("abcdefghi.", 25) .. "ab", " (longer than 253 characters)" },
      { "1.2.3", " (all-numeric top-level label, and not a valid IP address)" },
      { "300.1.1.1", " (all-numeric top-level label, and not a valid IP address)" },
      { "1.2.3.4.5", " (all-numeric top-level label, and not a valid IP address)" },
      { "01.2.3.4", " (all-numeric top-level label, and not a valid IP address)" },
      { "1.2.3.4.", " (all-numeric top-level label, and not a valid IP address)" },
      { "*.1.2.3", " (all-numeric top-level label, and not a valid IP address)" },
      { "123", " (all-numeric top-level label, and not a valid IP address)" },
      { "1:2:3", "" },
      { "fe80::1%eth0", "" },
      { "::ffff:300.1.1.1", "" },
      { "10.0.0.0/33", " (prefix length 33 out of range 0-32)" },
      { "2001:db8::/129", " (prefix length 129 out of range 0-128)" },
      { "10.0.0.0/", ' (prefix length "" is not a number)' },
      { "10.0.0.0/-1", ' (prefix length "-1" is not a number)' },
      { "10.0.0.0/8/8", " (not address/prefix-length)" },
      { "10.0.0.0/ 8", ' (prefix length " 8" is not a number)' },
      { "10.0.0/8", " (address is not IPv4 or IPv6)" },
      { "/8", " (address is not IPv4 or IPv6)" },
    }
    for _, c in ipairs(cases) do
      it("rejects " .. rules.quote(c[1]), function()
        local err = compile_error({ defaultAction = "allow", egress = {
          { action = "allow", target = "ok.example" },
          { action = "deny", target = "ok2.example" },
          { action = "deny", target = c[1] },
        } })
        assert.equals("invalid policy: egress[2].target: " .. rules.quote(c[1]) .. BAD .. c[2], err)
      end)
    end

    it("matches the message format the host documents", function()
      assert.equals('invalid policy: egress[2].target: "a b" is not a domain name, '
        .. "wildcard (*.suffix), IP address or CIDR",
        compile_error({ egress = { { target = "a.com" }, { target = "b.com" }, { target = "a b" } } }))
    end)

    it("escapes control characters and NULs in messages", function()
      assert.equals('invalid policy: egress[0].target: "a\\nb"' .. BAD,
        compile_error({ egress = { { target = "a\nb" } } }))
      assert.equals('invalid policy: egress[0].target: "1.2.3.4\\u0000x"' .. BAD,
        compile_error({ egress = { { target = "1.2.3.4\0x" } } }))
      assert.equals('invalid policy: egress[0].target: "say \\"hi\\""' .. BAD,
        compile_error({ egress = { { target = 'say "hi"' } } }))
    end)

    it("cuts very long values in messages", function()
      local err = compile_error({ egress = { { target = string.rep("x ", 5000) } } })
      assert.truthy(#err < 400)
      assert.truthy(err:find('"...', 1, true))
    end)

    it("accepts names at the length limits", function()
      local label63 = string.rep("a", 63)
      local name253 = string.rep("abcdefghi.", 25) .. "abc"
      assert.equals(253, #name253)
      local wild253 = "*." .. string.rep("abcdefghi.", 25) .. "a"
      assert.equals(253, #wild253)
      local p = policy("deny", { "allow " .. label63 .. ".com", "allow " .. name253,
                                 "allow " .. wild253, "allow " .. name253 .. "." })
      assert.equals("allow", action(p, label63 .. ".com"))
      assert.equals("allow", action(p, name253))
    end)

    it("accepts underscores, hyphens, digits and numeric inner labels", function()
      local p = policy("deny", { "allow _dmarc.example.com", "allow -x-.example.com",
        "allow 1.2.3.example", "allow *.10.in-addr.arpa", "allow 3com.com", "allow localhost" })
      assert.equals("allow", action(p, "_dmarc.example.com"))
      assert.equals("allow", action(p, "-x-.example.com"))
      assert.equals("allow", action(p, "1.2.3.example"))
      assert.equals("allow", action(p, "4.3.2.10.in-addr.arpa"))
      assert.equals("allow", action(p, "localhost"))
    end)
  end)

  describe("exact and wildcard names", function()
    it("matches exact names only exactly", function()
      local p = policy("deny", { "allow api.github.com" })
      assert.equals("allow", action(p, "api.github.com"))
      assert.equals("deny", action(p, "github.com"))
      assert.equals("deny", action(p, "x.api.github.com"))
      assert.equals("deny", action(p, "api.github.co"))
      assert.equals("deny", action(p, "api.github.com.evil"))
    end)

    it("matches wildcards at any depth but not the apex", function()
      local p = policy("deny", { "allow *.pypi.org" })
      assert.equals("allow", action(p, "a.pypi.org"))
      assert.equals("allow", action(p, "files.pypi.org"))
      assert.equals("allow", action(p, "x.y.pypi.org"))
      assert.equals("allow", action(p, "a.b.c.d.e.pypi.org"))
      assert.equals("deny", action(p, "pypi.org"))
      assert.equals("deny", action(p, "org"))
      assert.equals("deny", action(p, ""))
    end)

    it("does not match look-alike suffixes", function()
      local p = policy("deny", { "allow *.pypi.org", "allow pypi.org" })
      assert.equals("deny", action(p, "notpypi.org"))
      assert.equals("deny", action(p, "x.notpypi.org"))
      assert.equals("deny", action(p, "pypi.org.evil.com"))
      assert.equals("deny", action(p, "pypi.orgx"))
      assert.equals("deny", action(p, "xpypi.org"))
    end)

    it("never lets an escaped dot split a label", function()
      -- The host escapes a dot inside a label as \046, so "evil\046pypi.org"
      -- is one label "evil.pypi" under org, and must not match *.pypi.org.
      local p = policy("deny", { "allow *.pypi.org", "allow a.com" })
      assert.equals("deny", action(p, "evil\\046pypi.org"))
      assert.equals("allow", action(p, "evil\\046x.pypi.org"))
      assert.equals("deny", action(p, "a\\046com"))
    end)

    it("ignores case and one trailing dot on targets", function()
      local p = policy("deny", { "allow Example.COM.", "allow *.PyPI.Org.", "deny 1.2.3.4" })
      assert.equals("allow", action(p, "example.com"))
      assert.equals("allow", action(p, "files.pypi.org"))
      assert.equals("egress[0] allow example.com", rule(p, "example.com"))
      assert.equals("egress[1] allow *.pypi.org", rule(p, "files.pypi.org"))
      assert.equals("example.com", p:rule(0).target)
      assert.equals("*.pypi.org", p:rule(1).target)
      assert.equals("domain", p:rule(0).kind)
      assert.equals("wildcard", p:rule(1).kind)
      assert.equals("ip", p:rule(2).kind)
    end)

    it("a wildcard on a single label covers a whole TLD", function()
      local p = policy("deny", { "allow *.internal" })
      assert.equals("allow", action(p, "db.internal"))
      assert.equals("deny", action(p, "internal"))
    end)

    it("lets a query for a literal * label match wildcards only", function()
      local p = policy("deny", { "allow *.a.com" })
      assert.equals("allow", action(p, "*.a.com"))
      assert.equals("deny", action(policy("deny", { "allow a.com" }), "*.a.com"))
    end)
  end)

  describe("first match wins", function()
    it("deny before allow", function()
      local p = policy("allow", { "deny *.pypi.org", "allow files.pypi.org" })
      assert.equals("deny", action(p, "files.pypi.org"))
      assert.equals("egress[0] deny *.pypi.org", rule(p, "files.pypi.org"))
    end)

    it("allow before deny", function()
      local p = policy("deny", { "allow files.pypi.org", "deny *.pypi.org" })
      assert.equals("allow", action(p, "files.pypi.org"))
      assert.equals("deny", action(p, "other.pypi.org"))
      assert.equals("egress[1] deny *.pypi.org", rule(p, "other.pypi.org"))
    end)

    it("wildcard before exact", function()
      local p = policy("deny", { "allow *.github.com", "deny api.github.com" })
      assert.equals("allow", action(p, "api.github.com"))
      assert.equals("egress[0] allow *.github.com", rule(p, "api.github.com"))
    end)

    it("exact before wildcard", function()
      local p = policy("allow", { "deny api.github.com", "allow *.github.com" })
      assert.equals("deny", action(p, "api.github.com"))
      assert.equals("allow", action(p, "raw.github.com"))
    end)

    it("the deeper wildcard only wins when it comes first", function()
      local p1 = policy("deny", { "allow *.a.example.com", "deny *.example.com" })
      assert.equals("allow", action(p1, "x.a.example.com"))
      assert.equals("deny", action(p1, "x.b.example.com"))
      local p2 = policy("deny", { "deny *.example.com", "allow *.a.example.com" })
      assert.equals("deny", action(p2, "x.a.example.com"))
      assert.equals("egress[0] deny *.example.com", rule(p2, "x.a.example.com"))
    end)

    it("keeps the first of duplicate rules", function()
      local p = policy("allow", { "deny a.com", "allow A.com.", "deny *.b.com", "allow *.B.COM" })
      assert.equals("egress[0] deny a.com", rule(p, "a.com"))
      assert.equals("egress[2] deny *.b.com", rule(p, "x.b.com"))
    end)

    it("falls back to the default", function()
      local p = policy("allow", { "deny a.com" })
      assert.equals("allow", action(p, "b.com"))
      assert.equals("default", rule(p, "b.com"))
    end)
  end)

  describe("address rules", function()
    it("never affect decide", function()
      local p = policy("deny", { "allow 1.2.3.4", "allow 10.0.0.0/8", "allow ::1", "allow 2001:db8::/32" })
      for _, n in ipairs({ "1.2.3.4", "10.0.0.0", "4.3.2.1.in-addr.arpa", "", "x" }) do
        assert.equals(p.default_verdict, p:match(n))
      end
      local q = policy("allow", { "deny 1.2.3.4", "deny 0.0.0.0/0", "deny ::/0" })
      assert.equals("allow", action(q, "1.2.3.4"))
      assert.is_nil(next(q.exact))
      assert.is_nil(next(q.wild))
    end)

    it("keep their place in the rule indices", function()
      local p = policy("deny", { "allow 1.2.3.4", "deny a.com", "allow *.b.com" })
      assert.equals("egress[1] deny a.com", rule(p, "a.com"))
      assert.equals("egress[2] allow *.b.com", rule(p, "x.b.com"))
      assert.equals(2, p:match("x.b.com").index)
    end)

    it("produce canonical static sets", function()
      local p = policy("deny", {
        "allow 10.0.0.0/8",
        "allow 192.0.2.7",
        "allow 192.0.2.8/32",
        "allow 172.16.5.4/12",
        "allow 0.0.0.0/0",
        "deny 198.51.100.1/24",
        "allow 2001:DB8:0:0:0:0:0:1",
        "allow 2001:db8:0:0:1:0:0:1",
        "allow 2001:db8::1:2:3:4/64",
        "allow ::/0",
        "deny FE80::1/10",
        "deny ::1",
        "deny ::ffff:203.0.113.9",
        "deny ::ffff:203.0.113.0/120",
        "allow 0:0:0:0:0:0:0:0",
        "allow 2001:0:0:1:0:0:0:1",
        "allow 2001:db8::/128",
        "deny a.com",
      })
      assert.same({
        allow_v4 = { "10.0.0.0/8", "192.0.2.7", "192.0.2.8", "172.16.0.0/12", "0.0.0.0/0" },
        allow_v6 = { "2001:db8::1", "2001:db8::1:0:0:1", "2001:db8::/64", "::/0", "::",
                     "2001:0:0:1::1", "2001:db8::" },
        deny_v4 = { "198.51.100.0/24", "203.0.113.9", "203.0.113.0/24" },
        deny_v6 = { "fe80::/10", "::1" },
        default = "deny",
      }, p.static)
      assert.equals("cidr", p:rule(0).kind)
      assert.equals("ip", p:rule(1).kind)
      -- A full-length prefix is normalized to the bare address, which is
      -- what the rule reads back as.
      assert.same({ index = 2, action = "allow", target = "192.0.2.8", kind = "ip", family = 4 },
        p:rule(2))
      assert.equals(4, p:rule(0).family)
      assert.equals(6, p:rule(6).family)
      assert.same({ index = 9, action = "allow", target = "::/0", kind = "cidr", family = 6 }, p:rule(9))
      assert.equals("egress[3] allow 172.16.0.0/12", p:describe(p:rule(3)))
      assert.is_nil(p:rule(17).family)
    end)

    it("drop an address an earlier rule already listed", function()
      local p = policy("deny", { "deny 1.2.3.4", "allow 1.2.3.4/32", "allow 10.0.0.1/8",
                                 "deny 10.0.0.0/8", "allow ::FFFF:1.2.3.4" })
      assert.same({ allow_v4 = { "10.0.0.0/8" }, allow_v6 = {}, deny_v4 = { "1.2.3.4" }, deny_v6 = {},
        default = "deny" }, p.static)
    end)

    it("are empty for a deny-all policy", function()
      assert.same({ allow_v4 = {}, allow_v6 = {}, deny_v4 = {}, deny_v6 = {}, default = "deny" },
        rules.compile(nil).static)
      assert.equals("allow", rules.compile({ defaultAction = "allow" }).static.default)
    end)
  end)

  describe("parse_ip and parse_cidr", function()
    it("parse addresses", function()
      assert.same({ "192.0.2.1", 4 }, { rules.parse_ip("192.0.2.1") })
      assert.same({ "2001:db8::", 6 }, { rules.parse_ip("2001:DB8:0::0") })
      assert.same({ "1.2.3.4", 4 }, { rules.parse_ip("::ffff:1.2.3.4") })
      assert.same({ "::102:304", 6 }, { rules.parse_ip("::1.2.3.4") })
      assert.is_nil(rules.parse_ip("1.2.3"))
      assert.is_nil(rules.parse_ip("256.1.1.1"))
      assert.is_nil(rules.parse_ip("1.2.3.4/32"))
      assert.is_nil(rules.parse_ip(""))
      assert.is_nil(rules.parse_ip(nil))
      assert.is_nil(rules.parse_ip("1.2.3.4\0"))
    end)

    it("parse CIDRs", function()
      assert.same({ "10.0.0.0/8", 4, 8 }, { rules.parse_cidr("10.1.2.3/8") })
      assert.same({ "1.2.3.254/31", 4, 31 }, { rules.parse_cidr("1.2.3.255/31") })
      assert.same({ "192.0.2.7", 4, 32 }, { rules.parse_cidr("192.0.2.7/32") })
      assert.same({ "0.0.0.0/0", 4, 0 }, { rules.parse_cidr("255.255.255.255/0") })
      assert.same({ "2001:db8::/33", 6, 33 }, { rules.parse_cidr("2001:db8:7fff::/33") })
      assert.same({ "2001:db8:8000::/33", 6, 33 }, { rules.parse_cidr("2001:db8:ffff::/33") })
      assert.same({ "2001:db8:8000::/33", 6, 33 }, { rules.parse_cidr("2001:db8:8000::1/33") })
      assert.same({ "10.0.0.0/8", 4, 8 }, { rules.parse_cidr("::ffff:10.9.9.9/104") })
      assert.same({ "::fffe:0:0/95", 6, 95 }, { rules.parse_cidr("::ffff:10.9.9.9/95") })
      assert.is_nil(rules.parse_cidr("10.0.0.0"))
      assert.is_nil(rules.parse_cidr("10.0.0.0/1000"))
    end)
  end)

  describe("verdict tables", function()
    it("name the rule by 0-based index and normalized target", function()
      local p = policy("deny", { "allow a.com", "allow *.B.com.", "deny c.com", "allow 10.0.0.0/8" })
      assert.same({ action = "allow", index = 1, target = "*.b.com" }, p:match("x.b.com"))
      assert.same({ action = "deny", index = 2, target = "c.com" }, p:match("c.com"))
      assert.same({ action = "allow", index = 0, target = "a.com" }, p:match("a.com"))
      assert.same({ action = "deny", rule = "default" }, p:match("nothing"))
    end)

    it("are one table per compiled object, reused by every rule match", function()
      local p = policy("deny", { "allow a.com", "allow *.b.com", "deny c.com" })
      local v1 = p:match("a.com")
      assert.equals(0, v1.index)
      local v2 = p:match("x.b.com")
      -- The same table, now describing the second match: callers must read
      -- a verdict before they match again.
      assert.equals(v1, v2)
      assert.same({ action = "allow", index = 1, target = "*.b.com" }, v1)
      assert.equals(v1, p:match("c.com"))
      assert.equals("deny", v1.action)
      assert.equals(p.verdict, p:match("y.z.b.com"))
      -- Another compiled object has a verdict of its own.
      local q = policy("deny", { "deny a.com" })
      assert.are_not.equals(v1, q:match("a.com"))
      assert.equals(1, p:match("x.b.com").index)
      assert.equals(0, q:match("a.com").index)
      assert.equals(1, v1.index)
    end)

    it("return one constant default verdict, apart from the rule verdict", function()
      local p = policy("allow", { "deny a.com" })
      local d = p:match("nothing")
      assert.equals(p.default_verdict, d)
      assert.equals(d, p:match("other"))
      assert.equals(d, p:match(""))
      assert.are_not.equals(d, p:match("a.com"))
      -- A rule match leaves the default verdict alone.
      assert.same({ action = "allow", rule = "default" }, d)
      assert.is_nil(d.index)
    end)

    it("does not allocate verdicts per call", function()
      local p = policy("deny", { "allow a.com", "allow *.b.com" })
      local names = { "a.com", "x.b.com", "nope.org" }
      collectgarbage("collect")
      collectgarbage("stop")
      local before = collectgarbage("count")
      for i = 1, 30000 do p:match(names[i % 3 + 1]) end
      local grown = collectgarbage("count") - before
      collectgarbage("restart")
      -- Suffix strings are interned once; verdict tables would cost > 1 MB.
      assert.truthy(grown < 64, "match allocated " .. grown .. " KB")
    end)
  end)

  describe("describe", function()
    it("formats rule verdicts as egress[index] action target", function()
      local p = policy("deny", { "allow 1.2.3.4", "deny a.com", "allow *.pypi.org", "deny 2001:db8::/32" })
      assert.equals("egress[2] allow *.pypi.org", p:describe(p:match("files.pypi.org")))
      assert.equals("egress[1] deny a.com", p:describe(p:match("a.com")))
      assert.equals("egress[3] deny 2001:db8::/32", p:describe(p:rule(3)))
      assert.equals("egress[2] allow *.pypi.org",
        p:describe({ action = "allow", index = 2, target = "*.pypi.org" }))
    end)

    it("gives a verdict's own rule string, and default for the default", function()
      local p = policy("allow", { "deny a.com" })
      assert.equals("default", p:describe(p:match("b.com")))
      assert.equals("custom", p:describe({ action = "deny", rule = "custom" }))
      assert.is_nil(p:describe({ action = "deny" }))
      assert.equals("egress[0] deny a.com", rules.describe(p:match("a.com")))
    end)
  end)

  describe("count and rule", function()
    it("list every rule, address rules included, by 0-based index", function()
      local p = policy("deny", { "allow API.github.com.", "deny *.pypi.org", "allow 10.1.2.3/8",
                                 "deny ::FFFF:1.2.3.4", "allow a.com", "allow a.com" })
      assert.equals(6, p:count())
      assert.same({ index = 0, action = "allow", target = "api.github.com", kind = "domain" }, p:rule(0))
      assert.same({ index = 1, action = "deny", target = "*.pypi.org", kind = "wildcard" }, p:rule(1))
      assert.same({ index = 2, action = "allow", target = "10.0.0.0/8", kind = "cidr", family = 4 }, p:rule(2))
      assert.same({ index = 3, action = "deny", target = "1.2.3.4", kind = "ip", family = 4 }, p:rule(3))
      assert.same({ index = 5, action = "allow", target = "a.com", kind = "domain" }, p:rule(5))
      -- A fresh table each time.
      assert.are_not.equals(p:rule(0), p:rule(0))
    end)

    it("return nil outside the rule list", function()
      local p = policy("deny", { "allow a.com" })
      assert.is_nil(p:rule(-1))
      assert.is_nil(p:rule(1))
      assert.is_nil(p:rule(0.5))
      assert.is_nil(p:rule("0"))
      assert.is_nil(rules.compile(nil):rule(0))
      assert.equals(0, rules.compile(nil):count())
    end)

    it("tell names from addresses by the normalized target", function()
      local p = policy("deny", { "allow 1.2.3.example", "allow 3com.com", "allow *.10.in-addr.arpa",
                                 "allow 2001:db8::1", "allow ::", "allow 0.0.0.0/0", "allow localhost" })
      local kinds = {}
      for i = 0, p:count() - 1 do kinds[#kinds + 1] = p:rule(i).kind end
      assert.same({ "domain", "domain", "wildcard", "ip", "ip", "cidr", "domain" }, kinds)
      assert.equals(6, p:rule(3).family)
    end)
  end)

  describe("memory", function()
    local function big_doc(n)
      local egress = {}
      for i = 1, n do
        egress[i] = i % 2 == 1 and { action = "allow", target = "api.svc" .. i .. ".com" }
          or { action = "deny", target = "*.svc" .. i .. ".org" }
      end
      return { defaultAction = "deny", egress = egress }
    end

    it("keeps a 4096-rule policy under 1 MiB", function()
      collectgarbage("collect")
      collectgarbage("collect")
      local before = collectgarbage("count")
      local doc = big_doc(4096)
      local p = rules.compile(doc)
      doc = nil -- luacheck: ignore
      collectgarbage("collect")
      collectgarbage("collect")
      local cost = (collectgarbage("count") - before) / 1024
      assert.equals(4096, p:count())
      -- About 0.5 MiB (~130 bytes per rule), most of it the target strings;
      -- the rule list with per-rule verdicts used to cost 2.5 MiB.
      assert.truthy(cost < 1.0, string.format("4096 rules cost %.3f MiB", cost))
    end)

    it("keeps no reference to the document", function()
      local weak = setmetatable({}, { __mode = "k" })
      local doc = big_doc(64)
      weak[doc], weak[doc.egress], weak[doc.egress[1]] = true, true, true
      local p = rules.compile(doc)
      doc = nil -- luacheck: ignore
      collectgarbage("collect")
      collectgarbage("collect")
      assert.is_nil(next(weak))
      assert.equals("allow", action(p, "api.svc1.com"))
    end)

    it("matches without net allocation", function()
      local p = rules.compile(big_doc(4096))
      local names = {}
      for i = 1, 1000 do
        local k = i % 4
        names[i] = k == 0 and ("api.svc" .. (2 * i + 1) .. ".com")
          or k == 1 and ("x.y.svc" .. (2 * i) .. ".org")
          or k == 2 and ("svc" .. (2 * i) .. ".org")
          or ("miss" .. i .. ".example.net")
      end
      local allowed = 0
      collectgarbage("collect")
      collectgarbage("collect")
      local before = collectgarbage("count")
      for i = 1, 100000 do
        if p:match(names[i % 1000 + 1]).action == "allow" then allowed = allowed + 1 end
      end
      collectgarbage("collect")
      collectgarbage("collect")
      local grown = collectgarbage("count") - before
      assert.equals(25000, allowed)
      -- Probed suffix strings are garbage and collected; nothing stays.
      assert.truthy(grown < 64, "100k matches kept " .. grown .. " KiB")
    end)
  end)

  describe("large policies", function()
    it("handles 1000 rules", function()
      local egress = {}
      for i = 1, 500 do
        egress[#egress + 1] = { action = i % 2 == 0 and "allow" or "deny", target = "host" .. i .. ".example.com" }
        egress[#egress + 1] = { action = i % 2 == 0 and "deny" or "allow", target = "*.zone" .. i .. ".example.net" }
      end
      local p = rules.compile({ defaultAction = "deny", egress = egress })
      assert.equals(1000, p:count())
      assert.same({ action = "allow", index = 2, target = "host2.example.com" },
        p:match("host2.example.com"))
      assert.equals("egress[999] deny *.zone500.example.net", rule(p, "a.b.zone500.example.net"))
      assert.equals("egress[1] allow *.zone1.example.net", rule(p, "x.zone1.example.net"))
      assert.equals("default", rule(p, "zone1.example.net"))
      assert.equals("default", rule(p, "host501.example.com"))
      for i = 1, 500 do
        local v = p:match("host" .. i .. ".example.com")
        assert.equals((i - 1) * 2, v.index)
        v = p:match("w.zone" .. i .. ".example.net")
        assert.equals((i - 1) * 2 + 1, v.index)
      end
      assert.is_true(p:verify())
    end)
  end)

  describe("verify", function()
    it("passes on sound policies", function()
      assert.is_true(rules.compile(nil):verify())
      assert.is_true(policy("allow", { "deny *.a.com", "allow x.a.com", "allow 1.2.3.4", "deny a.com" }):verify())
    end)

    it("catches a corrupted index", function()
      local p = policy("deny", { "allow a.com", "allow *.b.com" })
      p.exact["a.com"] = nil
      assert.has_error(function() p:verify() end, "selftest: egress[0] allow a.com: a.com does not match its own rule")
      local q = policy("deny", { "allow a.com", "allow *.b.com" })
      q.wild["b.com"] = nil
      assert.has_error(function() q:verify() end,
        "selftest: egress[1] allow *.b.com: x.b.com does not match its own rule")
    end)

    it("catches index entries that do not belong there", function()
      local p = policy("deny", { "allow 1.2.3.4", "allow *.b.com", "allow c.com" })
      p.exact["1.2.3.4"] = 0
      assert.has_error(function() p:verify() end,
        "selftest: egress[0] allow 1.2.3.4: address rule reached the DNS matcher")
      p = policy("deny", { "allow 1.2.3.4", "allow *.b.com", "allow c.com" })
      p.exact["b.com"] = 1
      assert.has_error(function() p:verify() end,
        "selftest: egress[1] allow *.b.com: wildcard matches its own apex")
      p = policy("deny", { "allow 1.2.3.4", "allow *.b.com", "allow c.com" })
      p.exact["d.com"] = 2
      assert.has_error(function() p:verify() end,
        'selftest: exact index entry "d.com" points at rule 2')
      p = policy("deny", { "allow 1.2.3.4", "allow *.b.com", "allow c.com" })
      p.wild["c.com"] = 2
      assert.has_error(function() p:verify() end,
        'selftest: wildcard index entry "c.com" points at rule 2')
    end)

    it("catches a corrupted rule array or verdict", function()
      local p = policy("deny", { "allow a.com", "allow *.b.com" })
      p.actions[2] = "maybe"
      assert.has_error(function() p:verify() end,
        "selftest: egress[1] maybe *.b.com: action is not allow or deny")
      p = policy("deny", { "allow a.com", "allow *.b.com" })
      p.targets[3] = "c.com"
      assert.has_error(function() p:verify() end,
        "selftest: the rule arrays do not hold one entry per rule")
      p = policy("deny", { "allow a.com" })
      p.default_verdict.action = "allow"
      assert.has_error(function() p:verify() end,
        "selftest: default verdict does not carry defaultAction")
    end)
  end)
end)
