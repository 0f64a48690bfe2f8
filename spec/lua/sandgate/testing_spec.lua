local testing = require "sandgate.testing"
local cases = require "sandgate.cases"

local DOC = {
  defaultAction = "deny",
  egress = {
    { action = "allow", target = "*.pypi.org" },
    { action = "deny", target = "bad.example" },
  },
}

local function read(path)
  local f = assert(io.open(path))
  local text = f:read("*a")
  f:close()
  return text
end

local function tmp_script(src)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  return path
end

describe("sandgate.testing", function()
  describe("egress", function()
    local p
    before_each(function()
      p = testing.egress("policies/egress/default.lua", { policy = DOC, always = { deny = { "x.pypi.org" } } })
    end)

    it("answers like GET /policy/explain", function()
      assert.same({ name = "files.pypi.org", qtype = "A", client = "127.0.0.1", transport = "udp",
                    verdict = "allow", source = "policy", rule = "egress[0] allow *.pypi.org",
                    index = 0, action = "allow", target = "*.pypi.org" },
        p:decide("Files.PyPI.org."))
      assert.same({ name = "nope.test", qtype = "TXT", client = "10.0.0.2", transport = "tcp",
                    verdict = "deny", rcode = "NXDOMAIN", source = "policy", rule = "default", default = true },
        p:decide({ name = "nope.test", qtype = "TXT", client = "10.0.0.2", transport = "tcp" }))
      local v = p:decide("x.pypi.org")
      assert.equals("deny.always", v.source)
      assert.equals("deny.always:1 x.pypi.org", v.rule)
    end)

    it("checks expectations, and says what differs", function()
      p:expect("files.pypi.org", "allow")
      p:expect("bad.example", { verdict = "deny", rule = "egress[1] deny bad.example", rcode = "NXDOMAIN" })
      p:expect("x.pypi.org", { verdict = "deny", source = "deny.always" })
      local ok, err = pcall(p.expect, p, "pypi.org", { verdict = "allow", rule = "egress[0] allow *.pypi.org" })
      assert.is_false(ok)
      assert.matches('^.-pypi.org A:\n  verdict: expected "allow", got "deny"\n'
        .. '  rule: expected "egress%[0%] allow %*%.pypi%.org", got "default"\n  actual: deny NXDOMAIN by default$', err)
    end)

    it("denies on a script error, as the proxy does, and an expectation names it", function()
      local path = tmp_script('return { decide = function(q) error("no " .. q.name) end }\n')
      local s = testing.egress(path)
      local v = s:decide("a.example")
      assert.equals("deny", v.verdict)
      assert.matches(":1: no a.example$", v.error)
      s:expect("a.example", { verdict = "deny", error = "no a.example" })
      local ok, err = pcall(s.expect, s, "a.example", "deny")
      assert.is_false(ok)
      assert.matches("unexpected script error %(the query is denied%)", err)
      os.remove(path)
    end)

    it("gives a load's error as the server reports it", function()
      local path = tmp_script("local M = {}\nfunction M.decide() end\nfunction M.load(doc)\n  return doc.x\nend\nreturn M\n")
      assert.equals(path .. ":4: in load(): attempt to index local 'doc' (a nil value)",
        testing.load_error("egress", path))
      assert.is_nil(testing.load_error("egress", path, { policy = '{"x":1}' }))
      os.remove(path)
    end)

    it("captures what a script logs", function()
      local lines = testing.capture_log()
      local audit = testing.egress("examples/egress/audit.lua", { policy = DOC })
      audit:expect("bad.example", { verdict = "allow", rule = "audit:egress[1] deny bad.example" })
      testing.release_log()
      assert.equals(1, #lines)
      assert.equals("policy.audit_would_deny", lines[1].event)
      assert.equals("egress[1] deny bad.example", lines[1].fields.rule)
    end)
  end)

  describe("ingress", function()
    local g
    before_each(function()
      g = testing.ingress("policies/ingress/uri.lua", { routes = { ["sbx-1"] = "10.0.0.5" } })
    end)

    it("answers like POST /explain, without the gateway's own rewrite", function()
      assert.same({ sandbox = "sbx-1", host = "10.0.0.5", port = 8080, path = "/api?x=1", keep_host = false,
                    set_headers = { ["X-Forwarded-Prefix"] = "/sbx-1/8080" },
                    removed = { "opensandbox-ingress-to", "open-sandbox-ingress", "opensandbox-secure-access",
                                "opensandbox-access-renew" } },
        g:route({ path = "/sbx-1/8080/api?x=1" }))
      assert.same({ status = 404, message = "sandbox not found: sbx-2" }, g:route({ path = "/sbx-2/80/" }))
    end)

    it("checks expectations, and says what differs", function()
      g:expect({ path = "/sbx-1/80/x" }, { host = "10.0.0.5", port = 80, path = "/x",
        set_headers = { ["x-forwarded-prefix"] = "/sbx-1/80" }, removed = { "OpenSandbox-Ingress-To" } })
      g:expect({ path = "/nope/80/" }, { status = 404 })
      local ok, err = pcall(g.expect, g, { path = "/nope/80/" }, { host = "10.0.0.5" })
      assert.is_false(ok)
      assert.matches('GET /nope/80/:\n  expected a forward, got 404 "sandbox not found: nope"', err, 1, true)
    end)

    it("passes the config to load()", function()
      local c = testing.ingress("examples/ingress/canary.lua", {
        routes = { ["app-1"] = "10.0.0.1", ["app-1-canary"] = "10.0.1.1" },
        config = { canaries = { ["app-1"] = { sandbox = "app-1-canary", percent = 100 } } },
      })
      c:expect({ path = "/", host = "app-1-80.gw" }, { sandbox = "app-1-canary", host = "10.0.1.1" })
      assert.matches("in load%(%): canaries%[app%-1%] must be",
        testing.load_error("ingress", "examples/ingress/canary.lua",
          { config = { canaries = { ["app-1"] = { sandbox = "x", percent = 200 } } } }))
    end)
  end)

  -- The shipped cases files, run through this module: the same expectations
  -- hold in a spec as in `sandgate test`. Cases about the gateway itself
  -- (its /status.ok answer, a second Host header) are not the script's.
  describe("agrees with sandgate test on the shipped cases", function()
    before_each(function() testing.capture_log() end)
    after_each(function() testing.release_log() end)
    local files = {
      { "egress", "policies/egress/default" }, { "egress", "examples/egress/audit" },
      { "egress", "examples/egress/qtype_hours" }, { "ingress", "policies/ingress/header" },
      { "ingress", "policies/ingress/uri" }, { "ingress", "examples/ingress/canary" },
    }
    for _, f in ipairs(files) do
      local kind, base = f[1], f[2]
      it(base, function()
        local file = cases.decode(read("spec/cases/" .. base .. ".json"), base, kind)
        if kind == "egress" then
          local always = {}
          for list, text in pairs(file.always or {}) do always[list] = text end
          local p = testing.egress(base .. ".lua", { policy = file.policy or nil, always = always })
          for _, c in ipairs(file.cases) do
            local o = p:decide({ name = c.name, qtype = c.qtype, client = c.client, transport = c.transport })
            assert.is_nil(cases.judge("egress", c.expect, o), c.label)
          end
        else
          local g = testing.ingress(base .. ".lua", { routes = file.routes, config = file.config })
          for _, c in ipairs(file.cases) do
            local gateway = c.expect.status == 200 or c.expect.message == "more than one Host header"
            if not gateway then
              local r = c.request
              local flat = {}
              for i = 1, #r.headers, 2 do flat[#flat + 1] = { r.headers[i], r.headers[i + 1] } end
              local o = g:route({ method = r.method, path = r.target, client = r.client, headers = flat })
              assert.is_nil(cases.judge("ingress", c.expect, o), c.label)
            end
          end
        end
      end)
    end
  end)
end)
