local cases = require "sandgate.cases"
local cjson = require "cjson"

local function refused(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return err
end

describe("sandgate.cases", function()
  describe("request descriptions", function()
    it("normalizes a description into method, target, client and flat headers", function()
      local r = cases.request({ path = "/a?b=1", host = "sbx-1-8080.example",
        headers = { ["X-B"] = "2", ["X-A"] = "1" }, client = "10.0.0.7", method = "post" })
      assert.same({ method = "POST", target = "/a?b=1", client = "10.0.0.7",
        headers = { "X-A", "1", "X-B", "2", "Host", "sbx-1-8080.example" } }, r)
      r = cases.request({ path = "/", headers = { { "X", "1" }, { "x", "2" } } })
      assert.same({ "X", "1", "x", "2" }, r.headers)
      assert.equals("GET", r.method)
      assert.equals("127.0.0.1", r.client)
    end)

    it("names what is wrong with a description", function()
      local function bad(desc) return refused(cases.request, desc, "req") end
      assert.equals("req: path is missing (the request-target, e.g. \"/api?x=1\")", bad({}))
      assert.matches('^req: path "x" must start with /', bad({ path = "x" }))
      assert.matches('^req: unknown field "hosts" %(known: client, headers, host, method, path%)$',
        bad({ path = "/", hosts = "a" }))
      assert.equals('req: client "nope" is not an IP address', bad({ path = "/", client = "nope" }))
      assert.equals("req: host is given twice (host and a Host header)",
        bad({ path = "/", host = "a", headers = { Host = "b" } }))
      assert.matches("the value of X must be a string, got a number",
        bad({ path = "/", headers = { X = 1 } }))
      assert.matches("headers%[0%] must be %[name, value%]", bad({ path = "/", headers = { { "a" } } }))
      assert.matches('method "G T" is not an HTTP method', bad({ path = "/", method = "g t" }))
      assert.matches("control characters", bad({ path = "/", headers = { X = "a\r\nb" } }))
      assert.matches("^req: expected an object", bad("GET /"))
    end)

    it("decodes the body of POST /explain, or gives the 400 message", function()
      local m, t, c, h = cases.decode_request('{"path":"/x","host":"a-1"}')
      assert.same({ "GET", "/x", "127.0.0.1", { "Host", "a-1" } }, { m, t, c, h })
      local none, err = cases.decode_request("{nope")
      assert.is_nil(none)
      assert.matches("^request description: not valid JSON: ", err)
      none, err = cases.decode_request('{"path":"/","x":1}')
      assert.is_nil(none)
      assert.matches('^request description: unknown field "x"', err)
    end)
  end)

  describe("cases files", function()
    it("decodes an egress file, with the policy and lists it brings", function()
      local f = cases.decode(cjson.encode({
        policy = { defaultAction = "deny", egress = { { action = "allow", target = "a.example" } } },
        always = { deny = { "x.example", "*.y.example" } },
        cases = {
          { name = "a.example", expect = "allow", rule = "egress[0] allow a.example" },
          { name = "b.example", qtype = "TXT", client = "10.0.0.2", expect = "deny", rcode = "NODATA" },
          { description = "named", name = "c", expect = "deny" },
        },
      }), "f.json", "egress")
      assert.equals("egress", f.kind)
      assert.same({ defaultAction = "deny", egress = { { action = "allow", target = "a.example" } } },
        cjson.decode(f.policy))
      assert.same({ deny = "x.example\n*.y.example" }, f.always)
      assert.equals("a.example A", f.cases[1].label)
      assert.equals("b.example TXT from 10.0.0.2", f.cases[2].label)
      assert.equals("NOERROR", f.cases[2].expect.rcode)
      assert.equals("named", f.cases[3].label)
      -- A bare array is a file of cases; no policy means the command line's.
      f = cases.decode('[{"name":"a","expect":"allow"}]', "f.json", "egress")
      assert.is_false(f.policy)
      -- null is the deny-all document.
      f = cases.decode('{"policy":null,"cases":[{"name":"a","expect":"allow"}]}', "f.json", "egress")
      assert.equals("", f.policy)
    end)

    it("decodes an ingress file, with its routes and config", function()
      local f = cases.decode(cjson.encode({
        routes = { ["sbx-1"] = "10.0.0.5" },
        config = { now = 5 },
        cases = {
          { request = { path = "/", host = "sbx-1-80" }, expect = { host = "10.0.0.5", port = 80 } },
          { request = { path = "/x" }, expect = { status = 400 } },
        },
      }), "f.json", "ingress")
      assert.equals("GET / (Host: sbx-1-80)", f.cases[1].label)
      assert.equals("GET /x", f.cases[2].label)
      assert.same({ routes = { ["sbx-1"] = "10.0.0.5" }, keys = {}, now = 5, mode = "uri" },
        cjson.decode(cases.ingress_config('{"mode":"uri","routes":null,"keys":{}}', f)))
    end)

    it("names the file, the case and the problem", function()
      local function bad(doc, kind)
        return refused(cases.decode, type(doc) == "string" and doc or cjson.encode(doc), "f.json",
          kind or "egress")
      end
      assert.matches("^f.json: not valid JSON: ", bad("{"))
      assert.equals("f.json: there are no cases", bad('{"cases":[]}'))
      assert.equals('f.json: kind is "ingress", but the script is an egress script',
        bad({ kind = "ingress", cases = { { name = "a", expect = "allow" } } }))
      assert.equals("f.json: routes is for ingress cases; this is an egress script",
        bad({ routes = {}, cases = { { name = "a", expect = "allow" } } }))
      assert.equals('f.json: cases[1]: expect must be "allow" or "deny", got "yes"',
        bad({ cases = { { name = "a", expect = "allow" }, { name = "b", expect = "yes" } } }))
      assert.matches('^f.json: cases%[0%]: unknown field "expct"',
        bad({ cases = { { name = "a", expct = "allow" } } }))
      assert.equals('f.json: cases[0]: rcode only applies to "expect": "deny"',
        bad({ cases = { { name = "a", expect = "allow", rcode = "REFUSED" } } }))
      assert.equals('f.json: cases[0]: source "always" is not policy, allow.always or deny.always',
        bad({ cases = { { name = "a", expect = "allow", source = "always" } } }))
      assert.matches('^f.json: cases%[0%].request: path is missing',
        bad({ cases = { { request = {}, expect = {} } } }, "ingress"))
      assert.matches('^f.json: cases%[0%].expect: unknown field "stauts"',
        bad({ cases = { { request = { path = "/" }, expect = { stauts = 1 } } } }, "ingress"))
      assert.equals("f.json: always.deny[1] must be a target string, got 5",
        bad({ always = { deny = { "a", 5 } }, cases = { { name = "a", expect = "allow" } } }))
    end)
  end)

  describe("judge", function()
    local allow = { verdict = "allow", source = "policy", rule = "egress[0] allow a", index = 0 }

    it("passes an egress outcome that matches, and lists each mismatch", function()
      assert.is_nil(cases.judge("egress", { verdict = "allow" }, allow))
      assert.is_nil(cases.judge("egress", { verdict = "allow", rule = "egress[0] allow a",
        source = "policy" }, allow))
      assert.same({ 'verdict: expected "deny", got "allow"',
                    'rule: expected "default", got "egress[0] allow a"' },
        cases.judge("egress", { verdict = "deny", rule = "default" }, allow))
      local denied = { verdict = "deny", rcode = "NOERROR", rule = cjson.null }
      assert.same({ 'rule: expected "x", got nothing', 'rcode: expected "NXDOMAIN", got "NOERROR"' },
        cases.judge("egress", { verdict = "deny", rcode = "NXDOMAIN", rule = "x" }, denied))
    end)

    it("fails on a script error unless the case expects it", function()
      local failed = { verdict = "deny", rcode = "NXDOMAIN", error = "p.lua:3: boom" }
      assert.same({ "unexpected script error (the query is denied): p.lua:3: boom" },
        cases.judge("egress", { verdict = "deny" }, failed))
      assert.is_nil(cases.judge("egress", { verdict = "deny", error = "boom" }, failed))
      assert.same({ 'error: expected "an error containing bang", got "p.lua:3: boom"' },
        cases.judge("egress", { verdict = "deny", error = "bang" }, failed))
    end)

    it("compares an ingress route, its headers and its status", function()
      local fwd = { sandbox = "s", host = "10.0.0.5", port = 80, path = "/x",
                    set_headers = { ["X-Forwarded-Prefix"] = "/s/80" },
                    removed = { "opensandbox-ingress-to", "x-debug" } }
      assert.is_nil(cases.judge("ingress", { host = "10.0.0.5", port = 80, path = "/x",
        set_headers = { ["x-forwarded-prefix"] = "/s/80", ["X-Other"] = cjson.null },
        removed = { "X-Debug" } }, fwd))
      assert.same({ "port: expected 81, got 80", 'set_headers[X-A]: expected "1", got "not set"',
                    'removed: expected "cookie" among ["opensandbox-ingress-to","x-debug"]' },
        cases.judge("ingress", { port = 81, set_headers = { ["X-A"] = "1" }, removed = { "cookie" } }, fwd))
      assert.same({ "status: expected 404, got a forward to 10.0.0.5:80" },
        cases.judge("ingress", { status = 404 }, fwd))
      local refused404 = { status = 404, message = "sandbox not found: s" }
      assert.same({ 'expected a forward, got 404 "sandbox not found: s"' },
        cases.judge("ingress", { host = "10.0.0.5" }, refused404))
      assert.is_nil(cases.judge("ingress", { status = 404, message = "sandbox not found: s" }, refused404))
    end)
  end)

  describe("run", function()
    -- Natives that answer like the C side would: JSON text by name.
    local function natives(answers, build_error)
      local built
      return {
        build = function(...)
          built = { ... }
          if build_error then return nil, build_error end
          return true
        end,
        explain = function(name) return answers[name], "no answer" end,
        built = function() return built end,
      }
    end

    it("prints a line per case and the summary, and counts", function()
      local lines = {}
      local n = natives({ a = '{"verdict":"allow"}', b = '{"verdict":"allow","rule":"egress[1] allow b"}' })
      local passed, failed = cases.run(cjson.encode({
        policy = { defaultAction = "allow" },
        cases = { { name = "a", expect = "allow" }, { name = "b", expect = "deny" },
                  { name = "c", expect = "deny" } },
      }), "f.json", "egress", n, nil, function(l) lines[#lines + 1] = l end)
      assert.equals(1, passed)
      assert.equals(2, failed)
      assert.same({
        "ok 1 - a A",
        "not ok 2 - b A",
        '#   verdict: expected "deny", got "allow"',
        '#   actual: {"verdict":"allow","rule":"egress[1] allow b"}',
        "not ok 3 - c A",
        "#   the case cannot be asked: no answer",
        "1 passed, 2 failed",
      }, lines)
      assert.same({ '{"defaultAction":"allow"}' }, n.built())
    end)

    it("fails every case when the script does not load, with the load's errors", function()
      local lines = {}
      local passed, failed = cases.run('[{"name":"a","expect":"allow"},{"name":"b","expect":"allow"}]',
        "f.json", "egress", natives({}, "p.lua:1: in load(): x\np.lua:2: in selftest(): y"), nil,
        function(l) lines[#lines + 1] = l end)
      assert.equals(0, passed)
      assert.equals(2, failed)
      assert.same({ "not ok - the script does not load:", "#   p.lua:1: in load(): x",
                    "#   p.lua:2: in selftest(): y", "0 passed, 2 failed" }, lines)
    end)
  end)
end)
