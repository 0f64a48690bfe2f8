local ingress = require "sandgate.ingress.host"
local cjson = require "cjson"
local support = require "support.policy"

local ALWAYS = { "opensandbox-ingress-to", "open-sandbox-ingress", "opensandbox-secure-access",
                 "opensandbox-access-renew" }

-- Loads a script given as source text; returns the entry point.
-- The entry takes the request as the C core gives it (headers by lower-case
-- name, path, query); these specs give a flat header array, turned into
-- that by request_args as sandgate.testing does.
local function load(src, cfg)
  local entry = ingress.ingress(src, "@test.lua", cfg and cjson.encode(cfg) or nil)
  return function(method, target, client, flat)
    return entry(ingress.request_args(method, target, client, flat))
  end
end

local function load_error(src, cfg_json)
  local ok, err = pcall(ingress.ingress, src, "@test.lua", cfg_json)
  assert.is_false(ok, "the load should have failed")
  return err
end

-- A script whose route hook returns what answer(req) gives.
local function answering(body)
  return "local M = {}\nfunction M.route(req)\n" .. body .. "\nend\nreturn M\n"
end

-- Calls the entry; copies its results (its arrays are reused).
local function call(entry, ...)
  return support.results(entry(...))
end

describe("sandgate.ingress.host", function()
  describe("loading", function()
    it("requires a route hook and checks the others", function()
      assert.equals('test.lua: hook "route" must be a function, got nil', load_error("return {}"))
      assert.equals('test.lua: hook "load" must be a function, got number',
        load_error("return { route = function() end, load = 1 }"))
      assert.equals("test.lua: the script must return a table of hooks, got nil", load_error(""))
      assert.matches("^test.lua:1: ", load_error("return {"))
    end)

    it("runs the script in the policy sandbox", function()
      assert.matches('module "sandgate.host" is not available',
        load_error('require "sandgate.host"'))
      assert.matches("attempt to index global 'io'", load_error("io.open('/etc/passwd')"))
      assert.matches("only text chunks", load_error("load('\\27LJ', nil, 'b')"))
    end)

    it("refuses a bad config, naming the field", function()
      local src = answering("return {status = 404}")
      local cases = {
        { "{", "^invalid ingress config: not valid JSON: " },
        { "[1]", "^invalid ingress config: expected a JSON object$" },
        { '{"mode":"host"}', '^invalid ingress config: mode must be "header" or "uri", got "host"$' },
        { '{"routes":[1]}', "^invalid routes: expected a JSON object keyed by sandbox id, got array$" },
        { '{"routes":"10.0.0.1"}', '^invalid ingress config: routes must be an object, got "10.0.0.1"$' },
        { '{"routes":{"a":{"host":"1.2.3.4:80"}}}', '^invalid routes: "a": host "1.2.3.4:80" is not' },
        { '{"dns_template":"x"}', '^invalid dns_template: "x" does not contain {id}$' },
        { '{"keys":{"a":"!"}}', '^invalid ingress config: keys%["a"%]: the secret is not valid base64' },
        { '{"now":"soon"}', '^invalid ingress config: now must be a number, got "soon"$' },
      }
      for _, c in ipairs(cases) do
        assert.matches(c[2], load_error(src, c[1]), nil, false, c[1])
      end
      -- Empty, null and nulls are fine.
      for _, text in ipairs({ "", " ", "null", "{}", '{"mode":null,"routes":null,"keys":null}' }) do
        assert.is_function(ingress.ingress(src, "@test.lua", text))
      end
    end)

    it("hands load() the providers, keys and config, and refuses a failing load or selftest", function()
      -- The script sees only its sandbox, so the spec hands it a probe
      -- through a module it may require.
      local seen
      package.loaded["sandgate.spec_probe"] = { seen = function(ctx) seen = ctx end }
      load([[
        local M = {}
        function M.load(ctx) require("sandgate.spec_probe").seen(ctx) end
        function M.route(req) return {status = 404} end
        return M
      ]], { mode = "uri", routes = { a = "10.0.0.1" }, keys = { a = "YQ==" }, now = 5, extra = { x = 1 } })
      package.loaded["sandgate.spec_probe"] = nil
      assert.equals("uri", seen.mode)
      assert.equals("10.0.0.1", seen.backends:lookup("a").host)
      assert.same({ a = "a" }, seen.keys)
      assert.equals(5, seen.now)
      assert.same({ x = 1 }, seen.config.extra)

      assert.matches("^test.lua:1: in load%(%): no good$",
        load_error('return { route = function() end, load = function() error("no good") end }'))
      assert.matches("^test.lua:1: in selftest%(%): broken$",
        load_error('return { route = function() end, selftest = function() error("broken") end }'))
      -- An error raised without a position still gets the script's line.
      assert.equals("test.lua:2: in load(): positionless",
        load_error('return { route = function() end,\nload = function() error("positionless", 0) end }'))
    end)
  end)

  describe("the request table", function()
    local seen, entry
    before_each(function()
      package.loaded["sandgate.spec_probe"] = { keep = function(req)
        local h = {}
        for k, v in pairs(req.headers) do h[k] = v end
        seen = { method = req.method, target = req.target, path = req.path, query = req.query,
                 host = req.host, client = req.client, headers = h }
      end }
      entry = load(answering('require("sandgate.spec_probe").keep(req) return {status = 418}'))
    end)
    after_each(function() package.loaded["sandgate.spec_probe"] = nil end)

    it("splits the target raw and lower-cases header names, joining repeats", function()
      entry("POST", "/a%2Fb/c?x=%20&y", "10.1.2.3", {
        "Host", "sbx-80.gw", "X-Multi", "1", "x-multi", "2", "Content-Type", "text/plain", "X-MULTI", "",
      })
      assert.same({
        method = "POST", target = "/a%2Fb/c?x=%20&y", path = "/a%2Fb/c", query = "x=%20&y",
        host = "sbx-80.gw", client = "10.1.2.3",
        headers = { host = "sbx-80.gw", ["x-multi"] = "1, 2, ", ["content-type"] = "text/plain" },
      }, seen)
    end)

    it("tells an empty query from none, and starts afresh on every request", function()
      entry("GET", "/p?", "c", { "A", "1" })
      assert.equals("", seen.query)
      entry("GET", "/p", "c", { "B", "2" })
      assert.is_nil(seen.query)
      assert.same({ b = "2" }, seen.headers)
      assert.is_nil(seen.host)
    end)
  end)

  describe("answers", function()
    it("passes an error status and message through", function()
      assert.same({ 403, "go away" }, call(load(answering('return {status = 403, message = "go away"}')), "GET", "/", "c", {}))
      assert.same({ 503, "request refused by the routing script" },
        call(load(answering("return {status = 503}")), "GET", "/", "c", {}))
    end)

    it("returns a route with the routing headers always removed", function()
      local entry = load(answering('return {host = "10.0.0.1", port = 8080, path = "/x?y", '
        .. 'set_headers = {["X-A"] = "1"}, sandbox = "sbx"}'))
      assert.same({ 0, "10.0.0.1", 8080, "/x?y", { "X-A", "1" }, ALWAYS, false, "sbx" },
        call(entry, "GET", "/", "c", {}))
    end)

    it("forwards the target untouched when the script gives no path", function()
      local entry = load(answering('return {host = "h", port = 1, keep_host = 1}'))
      assert.same({ 0, "h", 1, "/a%2F?b", nil, ALWAYS, true }, call(entry, "GET", "/a%2F?b", "c", {}))
    end)

    it("adds the script's headers to remove, lower-cased, and reuses its arrays", function()
      local n = 0
      package.loaded["sandgate.spec_probe"] = { n = function() n = n + 1 return n end }
      local entry = load(answering([[
        local n = require("sandgate.spec_probe").n()
        if n == 1 then
          return {host = "h", port = 1, remove_headers = {"X-Debug", "Cookie"}, set_headers = {A = "1", B = "2"}}
        end
        return {host = "h", port = 1, remove_headers = {"x-one"}, set_headers = {C = "3"}}
      ]]))
      local r1 = { entry("GET", "/", "c", {}) }
      assert.same({ "opensandbox-ingress-to", "open-sandbox-ingress", "opensandbox-secure-access",
                    "opensandbox-access-renew", "x-debug", "cookie" }, r1[6])
      assert.equals(4, #r1[5])
      local r2 = { entry("GET", "/", "c", {}) }
      package.loaded["sandgate.spec_probe"] = nil
      assert.equals(r1[5], r2[5])
      assert.same({ "C", "3" }, r2[5])
      assert.same({ "opensandbox-ingress-to", "open-sandbox-ingress", "opensandbox-secure-access",
                    "opensandbox-access-renew", "x-one" }, r2[6])
    end)

    it("fails closed with a 500 naming a script error", function()
      local entry = load(answering('error("boom")'))
      assert.same({ 500, "routing script failed: test.lua:3: boom" }, call(entry, "GET", "/", "c", {}))
      entry = load(answering("local x = nil; return x.y"))
      local r = call(entry, "GET", "/", "c", {})
      assert.equals(500, r[1])
      assert.matches("^routing script failed: test.lua:3: attempt to index local 'x'", r[2])
      r = call(load(answering("error({})")), "GET", "/", "c", {})
      assert.equals(500, r[1])
      assert.matches("^routing script failed: table: ", r[2])
    end)

    it("fails closed with a 500 on an answer that is not one", function()
      local cases = {
        { "return nil", "routing script returned nil, expected a table" },
        { 'return "10.0.0.1"', 'routing script returned "10.0.0.1", expected a table' },
        { "return {status = 302}", "routing script returned status 302, expected an integer 400-599" },
        { "return {status = 404.5}", "routing script returned status 404.5, expected an integer 400-599" },
        { 'return {status = "404"}', 'routing script returned status "404", expected an integer 400-599' },
        { "return {status = 404, message = 1}", "routing script returned message 1, expected a string" },
        { "return {port = 80}", "routing script returned host nil, expected a host name or address" },
        { 'return {host = "", port = 80}', 'routing script returned host "", expected a host name or address' },
        { 'return {host = "a\\r\\nX: y", port = 80}',
          'routing script returned host "a\\u000d\\nX: y", expected a host name or address' },
        { 'return {host = "h", port = 0}', "routing script returned port 0, expected an integer 1-65535" },
        { 'return {host = "h", port = 65536}', "routing script returned port 65536, expected an integer 1-65535" },
        { 'return {host = "h", port = "80"}', 'routing script returned port "80", expected an integer 1-65535' },
        { 'return {host = "h", port = 80, path = "x"}', 'routing script returned path "x", expected a '
          .. "request-target starting with / and without spaces or control characters" },
        { 'return {host = "h", port = 80, path = "/a b"}', 'routing script returned path "/a b", expected a '
          .. "request-target starting with / and without spaces or control characters" },
        { 'return {host = "h", port = 80, path = "/a\\r\\n"}', 'routing script returned path "/a\\u000d\\n", expected a '
          .. "request-target starting with / and without spaces or control characters" },
        { 'return {host = "h", port = 80, set_headers = {["X-A"] = "1\\r\\nX-B: 2"}}',
          'routing script returned set_headers["X-A"] = "1\\u000d\\nX-B: 2", expected a string without control characters' },
        { 'return {host = "h", port = 80, set_headers = {["X A"] = "1"}}',
          'routing script returned set_headers with a bad header name "X A"' },
        { 'return {host = "h", port = 80, set_headers = {"X-A", "1"}}',
          "routing script returned set_headers with a bad header name 1" },
        { 'return {host = "h", port = 80, set_headers = {["Content-Length"] = "1"}}',
          "routing script returned set_headers naming Content-Length, which the gateway manages" },
        { 'return {host = "h", port = 80, set_headers = {Host = "x"}}',
          "routing script returned set_headers naming Host, which the gateway manages" },
        { 'return {host = "h", port = 80, set_headers = "X-A: 1"}',
          'routing script returned set_headers "X-A: 1", expected a table' },
        { 'return {host = "h", port = 80, remove_headers = {"Transfer-Encoding"}}',
          "routing script returned remove_headers naming transfer-encoding, which the gateway manages" },
        { 'return {host = "h", port = 80, remove_headers = {"a:b"}}',
          'routing script returned remove_headers with a bad header name "a:b"' },
        { 'return {host = "h", port = 80, remove_headers = "x"}',
          'routing script returned remove_headers "x", expected an array' },
        { 'return {host = "h", port = 80, sandbox = 1}', "routing script returned sandbox 1, expected a string" },
      }
      for _, c in ipairs(cases) do
        assert.same({ 500, c[2] }, call(load(answering(c[1])), "GET", "/", "c", {}), c[1])
      end
    end)

    it("accepts * as the target of OPTIONS", function()
      assert.equals("*", select(4, load(answering('return {host = "h", port = 1, path = "*"}'))("OPTIONS", "*", "c", {})))
    end)
  end)
end)
