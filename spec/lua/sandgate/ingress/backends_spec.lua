local backends = require "sandgate.ingress.backends"
local crypto = require "sandgate.crypto"
local cjson = require "cjson"

local function routes_error(doc)
  local ok, err = pcall(backends.routes, doc)
  assert.is_false(ok, "routes should have been refused")
  return err
end

describe("sandgate.ingress.backends", function()
  describe("routes", function()
    it("takes host strings and objects", function()
      local p = backends.routes(cjson.decode([[{
        "a": "10.0.0.5",
        "b": {"host": "10.0.0.6"},
        "c": {"host": "fd00::7", "ready": false},
        "d": {"host": "d.sandboxes.svc.cluster.local.", "ready": true, "token": " tok \n"},
        "e": {"host": "10.0.0.8", "token": "", "ready": null},
        "f": {"host": "10.0.0.9", "token": null}
      }]]))
      assert.same({ host = "10.0.0.5", ready = true }, p:lookup("a"))
      assert.same({ host = "10.0.0.6", ready = true }, p:lookup("b"))
      assert.same({ host = "fd00::7", ready = false }, p:lookup("c"))
      assert.same({ host = "d.sandboxes.svc.cluster.local.", ready = true, token = "tok",
                    token_digest = crypto.sha256("tok") }, p:lookup("d"))
      -- An empty token means no secure access, as in OpenSandbox.
      assert.same({ host = "10.0.0.8", ready = true }, p:lookup("e"))
      assert.same({ host = "10.0.0.9", ready = true }, p:lookup("f"))
      assert.is_nil(p:lookup("g"))
      assert.equals(p:lookup("a"), p:lookup("a"))
    end)

    it("knows no sandbox for nil, null and {}", function()
      for _, doc in ipairs({ false, cjson.null, {}, cjson.decode("{}") }) do
        assert.is_nil(backends.routes(doc or nil):lookup("a"))
      end
    end)

    it("names the bad entry", function()
      local cases = {
        { { a = 5 }, 'invalid routes: "a": expected a host string or an object '
          .. '{"host": ..., "ready": ..., "token": ...}, got number' },
        { { a = { "10.0.0.1" } }, 'invalid routes: "a": expected a host string or an object '
          .. '{"host": ..., "ready": ..., "token": ...}, got array' },
        { { a = cjson.null }, 'invalid routes: "a": expected a host string or an object '
          .. '{"host": ..., "ready": ..., "token": ...}, got null' },
        { { a = {} }, 'invalid routes: "a": missing "host"' },
        { { a = { host = 1 } }, 'invalid routes: "a": host must be a string, got number' },
        { { a = { host = "10.0.0.1", ready = "yes" } }, 'invalid routes: "a": "ready" must be true or false, got string' },
        { { a = { host = "10.0.0.1", token = 7 } }, 'invalid routes: "a": "token" must be a string, got number' },
        { { a = { host = "10.0.0.1", tokn = "x" } },
          'invalid routes: "a": unknown field "tokn" (expected "host", "ready" and "token")' },
        { { [""] = "10.0.0.1" }, "invalid routes: a sandbox id is empty" },
        { { "10.0.0.1" }, "invalid routes: expected a JSON object keyed by sandbox id, got array" },
        { "10.0.0.1", "invalid routes: expected a JSON object keyed by sandbox id, got string" },
      }
      for _, c in ipairs(cases) do
        assert.equals(c[2], routes_error(c[1]))
      end
    end)

    it("refuses hosts with a port, brackets, a scheme or junk", function()
      local tail = " is not an IP address or host name (no port, no brackets, no scheme: the port comes from the route)"
      for _, h in ipairs({ "10.0.0.5:8080", "[fd00::1]", "http://10.0.0.5", "10.0.0.300", "1.2.3",
                           "", "a..b", "-a.b", "a-.b", "a b", "a\r\nb", "a/b" }) do
        assert.equals('invalid routes: "x": host ' .. require("sandgate.rules").quote(h) .. tail,
          routes_error({ x = h }), h)
      end
    end)

    it("names the same bad entry every time", function()
      local doc = { b = 1, a = 2, c = 3 }
      for _ = 1, 5 do
        assert.matches('^invalid routes: "a": ', routes_error(doc))
      end
    end)

    it("decodes a routes file", function()
      assert.equals("10.0.0.1", backends.routes_json('{"a":"10.0.0.1"}'):lookup("a").host)
      local ok, err = pcall(backends.routes_json, "{")
      assert.is_false(ok)
      assert.matches("^invalid routes: not valid JSON: ", err)
    end)
  end)

  describe("DNS template", function()
    it("puts the sandbox id in place of {id}", function()
      local p = backends.dns("{id}.sandboxes.default.svc.cluster.local")
      assert.same({ host = "sbx-001.sandboxes.default.svc.cluster.local", ready = true }, p:lookup("sbx-001"))
      assert.equals(p:lookup("sbx-001"), p:lookup("sbx-001"))
      assert.equals("sandbox-a.sandboxes.svc", backends.dns("sandbox-{id}.sandboxes.svc"):lookup("a").host)
      assert.equals("a.a.svc", backends.dns("{id}.{id}.svc"):lookup("a").host)
    end)

    it("knows no sandbox whose id is not a DNS label", function()
      local p = backends.dns("{id}.svc")
      for _, id in ipairs({ "", "a.b", "-a", "a-", "a_b", "a b", "a/b", "a%2e", ("x"):rep(64), "a,b" }) do
        assert.is_nil(p:lookup(id), id)
      end
      assert.truthy(p:lookup(("x"):rep(63)))
      assert.truthy(p:lookup("0"))
    end)

    it("keeps a bounded number of names", function()
      local p = backends.dns("{id}.svc")
      for i = 1, 5000 do p:lookup("s" .. i) end
      assert.truthy(p.count <= 1024)
      assert.equals("s5000.svc", p:lookup("s5000").host)
    end)

    it("refuses a template without {id} or that makes no host name", function()
      local cases = {
        { "sandboxes.svc", 'invalid dns_template: "sandboxes.svc" does not contain {id}' },
        { "{id}:80.svc", 'invalid dns_template: "{id}:80.svc" is not a host name once {id} is replaced by a sandbox id' },
        { "http://{id}.svc", 'invalid dns_template: "http://{id}.svc" is not a host name once {id} is replaced by a sandbox id' },
        { 5, "invalid dns_template: expected a string, got number" },
      }
      for _, c in ipairs(cases) do
        local ok, err = pcall(backends.dns, c[1])
        assert.is_false(ok)
        assert.equals(c[2], err)
      end
    end)
  end)

  describe("from_config", function()
    it("asks the routes table first, then DNS", function()
      local p = backends.from_config({ routes = { a = "10.0.0.1" }, dns_template = "{id}.svc" })
      assert.equals("10.0.0.1", p:lookup("a").host)
      assert.equals("b.svc", p:lookup("b").host)
      assert.is_nil(p:lookup("c.d"))
    end)

    it("builds one provider, or none", function()
      assert.equals("10.0.0.1", backends.from_config({ routes = { a = "10.0.0.1" } }):lookup("a").host)
      assert.equals("a.svc", backends.from_config({ dns_template = "{id}.svc" }):lookup("a").host)
      assert.is_nil(backends.from_config({}):lookup("a"))
      assert.is_nil(backends.from_config({ routes = cjson.null, dns_template = cjson.null }):lookup("a"))
    end)
  end)
end)
