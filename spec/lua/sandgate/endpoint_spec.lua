-- sandgate.endpoint against spec/endpoint_cases.txt, the cases it shares
-- with `sandgate endpoint` (see the file's header for the format), plus the
-- Lua-only forms of its arguments.
local endpoint = require "sandgate.endpoint"

local CASES = "spec/endpoint_cases.txt"

-- Each case: { line = n, text = "...", opts = {...}, want = "..." | nil,
-- err = "..." | nil }.
local function load_cases()
  local f = assert(io.open(CASES, "r"))
  local cases, n = {}, 0
  for line in f:lines() do
    n = n + 1
    if line:match("%S") and not line:match("^%s*#") then
      local inputs, expected = line:match("^(.-)%s+%->%s+(.-)%s*$")
      assert(inputs, CASES .. ":" .. n .. ": no \" -> \" in the line")
      local opts = {}
      for tok in inputs:gmatch("%S+") do
        local k, v = tok:match("^([^=]+)=(.*)$")
        assert(k, CASES .. ":" .. n .. ": bad token " .. tok)
        if k == "map" then
          opts.mappings = opts.mappings or {}
          opts.mappings[#opts.mappings + 1] = v
        else
          assert(k == "public_host" or k == "proxy_port" or k == "port",
            CASES .. ":" .. n .. ": unknown key " .. k)
          assert(opts[k] == nil, CASES .. ":" .. n .. ": " .. k .. " given twice")
          opts[k] = v
        end
      end
      local err = expected:match("^error: (.*)$")
      cases[#cases + 1] = { line = n, text = line, opts = opts,
        want = not err and expected or nil, err = err }
    end
  end
  f:close()
  return cases
end

describe("sandgate.endpoint", function()
  local cases = load_cases()

  it("has cases to run", function()
    assert.is_true(#cases >= 30)
  end)

  for _, c in ipairs(cases) do
    it(CASES .. ":" .. c.line .. ": " .. c.text, function()
      local got, err = endpoint.get(c.opts)
      if c.err then
        assert.is_nil(got)
        assert.equals(c.err, err)
      else
        assert.is_nil(err)
        assert.equals(c.want, got)
      end
    end)
  end

  it("takes numbers and [PORT] = HOSTPORT mappings", function()
    assert.equals("10.0.0.5:32080", endpoint.get {
      public_host = "10.0.0.5", proxy_port = 40001, port = 8080, mappings = { [8080] = 32080 } })
    assert.equals("10.0.0.5:40001/proxy/3000", endpoint.get {
      public_host = "10.0.0.5", proxy_port = 40001, port = 3000, mappings = { [8080] = 32080 } })
    assert.equals("h:33000", endpoint.get {
      public_host = "h", port = 3000, mappings = { ["3000"] = "33000" } })
  end)

  it("mixes both forms of mappings; [PORT] entries win over strings", function()
    assert.equals("h:32081", endpoint.get {
      public_host = "h", port = 8080, mappings = { "8080=32080", [8080] = 32081 } })
    assert.equals("h:33000", endpoint.get {
      public_host = "h", port = 3000, mappings = { "8080=32080", [3000] = 33000 } })
  end)

  it("refuses ports that are not integers", function()
    local msg = "Port must be between 1 and 65535."
    for _, p in ipairs({ 3000.5, -3000, 0, 65536, 1 / 0, 0 / 0, true, {}, " 3000", "3000 " }) do
      local got, err = endpoint.get { public_host = "h", proxy_port = 40001, port = p }
      assert.is_nil(got)
      assert.equals(msg, err)
    end
  end)

  it("names a malformed mapping of either form", function()
    local _, err = endpoint.get { public_host = "h", port = 8080, mappings = { [8080] = 0 } }
    assert.equals('invalid mapping "8080=0": expected PORT=HOSTPORT, each 1-65535', err)
    _, err = endpoint.get { public_host = "h", port = 8080, mappings = { http = 80 } }
    assert.equals('invalid mapping "http=80": expected PORT=HOSTPORT, each 1-65535', err)
    _, err = endpoint.get { public_host = "h", port = 8080, mappings = { 8080 } }
    assert.equals('invalid mapping "8080": expected PORT=HOSTPORT, each 1-65535', err)
    _, err = endpoint.get { public_host = "h", port = 8080, mappings = "8080=32080" }
    assert.equals("mappings must be a table, got string", err)
  end)

  it("needs no mappings at all", function()
    assert.equals("h:44772/proxy/3000",
      endpoint.get { public_host = "h", proxy_port = "44772", port = "3000" })
    local got, err = endpoint.get()
    assert.is_nil(got)
    assert.equals("Port must be between 1 and 65535.", err)
  end)
end)
