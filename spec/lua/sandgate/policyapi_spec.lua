local api = require "sandgate.policyapi"
local rules = require "sandgate.rules"
local cjson = require "cjson"

-- A document with the given default action and "action target" rules.
local function doc(default, list)
  local egress = {}
  for i, spec in ipairs(list or {}) do
    local action, target = spec:match("^(%S*) (.*)$")
    egress[i] = '{"action":' .. api.encode_string(action) .. ',"target":' .. api.encode_string(target) .. "}"
  end
  return '{"defaultAction":"' .. default .. '","egress":[' .. table.concat(egress, ",") .. "]}"
end

-- The rules of a canonical document as "action target" strings.
local function rule_list(doc_text)
  local out = {}
  for i, r in ipairs(cjson.decode(doc_text).egress or {}) do
    out[i] = r.action .. " " .. r.target
  end
  return out
end

-- The verdict of the policy VM's rule compiler for name under doc_text.
local function verdict(doc_text, name)
  return rules.compile(cjson.decode(doc_text)):match(name).action
end

-- A JSON array of n allow rules h1.example.com ... hn.example.com.
local function many_rules(n, prefix)
  local parts = {}
  for i = 1, n do
    parts[i] = '{"action":"allow","target":"' .. (prefix or "h") .. i .. '.example.com"}'
  end
  return "[" .. table.concat(parts, ",") .. "]"
end

-- GET's body, after checking that the status is 200 and that nothing changes.
local function get(...)
  local status, body, new = api.get(...)
  assert.equals(200, status)
  assert.is_nil(new)
  return body
end

local OK_DNS = '{"status":"ok","mode":"enforcing","enforcementMode":"dns"}\n'

describe("sandgate.policyapi", function()
  describe("get", function()
    it("shows a deny-all document with egress null, in Go's field order", function()
      assert.equals(
        '{"status":"ok","mode":"deny_all","enforcementMode":"dns","policy":{"egress":null,"defaultAction":"deny"}}\n',
        get('{"defaultAction":"deny"}', "dns"))
      for _, text in ipairs({ "", " \n", "null", "{}", '{"egress":null}' }) do
        assert.equals(
          '{"status":"ok","mode":"deny_all","enforcementMode":"dns+nft","policy":{"egress":null,"defaultAction":"deny"}}\n',
          get(text, "dns+nft"))
      end
      assert.equals(
        '{"status":"ok","mode":"deny_all","enforcementMode":"dns","policy":{"egress":null,"defaultAction":"deny"}}\n',
        get(nil, "dns"))
    end)

    it("shows an empty egress list as []", function()
      assert.equals(
        '{"status":"ok","mode":"allow_all","enforcementMode":"dns","policy":{"egress":[],"defaultAction":"allow"}}\n',
        get('{"defaultAction":"allow","egress":[]}', "dns"))
      assert.equals(
        '{"status":"ok","mode":"deny_all","enforcementMode":"dns","policy":{"egress":[],"defaultAction":"deny"}}\n',
        get('{"egress":[]}', "dns"))
    end)

    it("normalizes actions but shows targets as given (trimmed)", function()
      local text = '{"defaultAction":" DENY ","egress":[{"action":" ALLOW","target":" Example.COM. "},'
        .. '{"target":"*.Pypi.org"},{"action":"","target":"10.1.2.3/8"},{"action":null,"target":"2001:DB8::1"}]}'
      assert.equals('{"status":"ok","mode":"enforcing","enforcementMode":"dns","policy":{"egress":['
        .. '{"action":"allow","target":"Example.COM."},{"action":"deny","target":"*.Pypi.org"},'
        .. '{"action":"deny","target":"10.1.2.3/8"},{"action":"deny","target":"2001:DB8::1"}],'
        .. '"defaultAction":"deny"}}\n', get(text, "dns"))
    end)

    it("matches field names case-insensitively and drops unknown fields", function()
      assert.equals('{"status":"ok","mode":"enforcing","enforcementMode":"dns","policy":{"egress":['
        .. '{"action":"deny","target":"a.com"}],"defaultAction":"allow"}}\n',
        get('{"DefaultAction":"ALLOW","EGRESS":[{"Action":"deny","TARGET":"a.com","comment":1}],"x":[]}', "dns"))
      -- The exact spelling wins over another case variant.
      assert.equals("allow_all", api.mode('{"defaultaction":"deny","defaultAction":"allow"}'))
    end)

    it("leaves enforcementMode out when it is not given (omitempty)", function()
      assert.equals('{"status":"ok","mode":"deny_all","policy":{"egress":null,"defaultAction":"deny"}}\n',
        get("{}"))
      assert.equals('{"status":"ok","mode":"deny_all","policy":{"egress":null,"defaultAction":"deny"}}\n',
        get("{}", ""))
    end)

    it("answers 500 for a current document that is not valid", function()
      local status, body, new = api.get('{"defaultAction":"block"}', "dns")
      assert.equals(500, status)
      assert.equals('internal error: current policy: invalid policy: defaultAction: "block" is not allow or deny', body)
      assert.is_nil(new)
      status, body = api.get("{", "dns")
      assert.equals(500, status)
      assert.matches("^internal error: current policy: invalid policy: invalid JSON: ", body)
    end)
  end)

  describe("mode", function()
    it("is allow_all, deny_all or enforcing", function()
      assert.equals("allow_all", api.mode('{"defaultAction":"allow"}'))
      assert.equals("allow_all", api.mode('{"defaultAction":"ALLOW","egress":[]}'))
      assert.equals("deny_all", api.mode('{"defaultAction":"deny","egress":[]}'))
      assert.equals("deny_all", api.mode('{"egress":null}'))
      assert.equals("deny_all", api.mode("{}"))
      assert.equals("deny_all", api.mode(""))
      assert.equals("deny_all", api.mode(nil))
      assert.equals("enforcing", api.mode(doc("deny", { "allow a.com" })))
      -- Default allow with rules is enforcing too.
      assert.equals("enforcing", api.mode(doc("allow", { "deny a.com" })))
      assert.equals("enforcing", api.mode(doc("allow", { "allow a.com" })))
    end)

    it("accepts decoded tables", function()
      assert.equals("allow_all", api.mode({ defaultAction = "allow" }))
      assert.equals("allow_all", api.mode({ defaultAction = " Allow ", egress = {} }))
      assert.equals("deny_all", api.mode({}))
      assert.equals("deny_all", api.mode(cjson.null))
      assert.equals("deny_all", api.mode(cjson.decode('{"defaultAction":"deny","egress":null}')))
      assert.equals("enforcing", api.mode({ defaultAction = "allow", egress = { { action = "deny", target = "a.com" } } }))
    end)

    it("returns nil and the message for invalid text", function()
      local m, err = api.mode("[1]")
      assert.is_nil(m)
      assert.equals("invalid policy: document: expected an object, got array", err)
    end)
  end)

  describe("replace (POST, PUT)", function()
    it("resets to deny-all on an empty or blank body", function()
      for _, body in ipairs({ "", " ", "\r\n\t ", "\194\160\226\128\128", false }) do
        local status, resp, new = api.replace(body or nil, 4096, "dns")
        assert.equals(200, status)
        assert.equals('{"status":"ok","mode":"deny_all","reason":"policy reset to default deny-all"}\n', resp)
        assert.equals('{"defaultAction":"deny"}', new)
      end
    end)

    it("takes null and {} as a deny-all document", function()
      for _, body in ipairs({ "null", "{}", " {} ", "{ }", '{"egress":null}', '{"defaultAction":""}' }) do
        local status, resp, new = api.replace(body, 4096, "dns")
        assert.equals(200, status)
        assert.equals('{"status":"ok","mode":"deny_all","enforcementMode":"dns"}\n', resp)
        assert.equals('{"defaultAction":"deny"}', new)
      end
    end)

    it("answers allow_all, deny_all and enforcing", function()
      local status, resp, new = api.replace('{"defaultAction":"allow"}', 4096, "dns+nft")
      assert.equals(200, status)
      assert.equals('{"status":"ok","mode":"allow_all","enforcementMode":"dns+nft"}\n', resp)
      assert.equals('{"defaultAction":"allow"}', new)

      status, resp, new = api.replace('{"defaultAction":"allow","egress":[]}', 4096, "dns+nft")
      assert.equals('{"status":"ok","mode":"allow_all","enforcementMode":"dns+nft"}\n', resp)
      assert.equals('{"defaultAction":"allow","egress":[]}', new)

      status, resp = api.replace('{"defaultAction":"deny","egress":[]}', 4096, "dns")
      assert.equals('{"status":"ok","mode":"deny_all","enforcementMode":"dns"}\n', resp)

      status, resp = api.replace(doc("allow", { "deny evil.com" }), 4096, "dns")
      assert.equals(200, status)
      assert.equals(OK_DNS, resp)
    end)

    it("writes the canonical document: normalized, fixed field order, unknown fields dropped", function()
      local status, _, new = api.replace(
        '\n{"egress":[{"target":" Example.COM ","action":" ALLOW ","note":"x"},{"target":"10.0.0.0/8"}],'
          .. '"defaultAction":"Deny","extra":{"a":[1,2]}}\n', 4096, "dns")
      assert.equals(200, status)
      assert.equals('{"defaultAction":"deny","egress":[{"action":"allow","target":"Example.COM"},'
        .. '{"action":"deny","target":"10.0.0.0/8"}]}', new)
      assert.equals("allow", verdict(new, "example.com"))
      assert.equals("deny", verdict(new, "other.com"))
    end)

    it("is stable: same input, same bytes; the canonical text is a fixed point", function()
      local body = '{"defaultAction":"allow","egress":[{"action":"deny","target":"a.com"},'
        .. '{"action":"allow","target":"*.b.com"},{"action":"deny","target":"192.0.2.0/24"}]}'
      local _, r1, d1 = api.replace(body, 4096, "dns")
      local _, r2, d2 = api.replace(body, 4096, "dns")
      assert.equals(r1, r2)
      assert.equals(d1, d2)
      local _, _, d3 = api.replace(d1, 4096, "dns")
      assert.equals(d1, d3)
      assert.equals(d1, api.normalize(d1))
      -- Key order and white space in the input do not matter.
      local reordered = '{ "egress" : [ {"target":"a.com","action":"deny"}, {"target":"*.b.com","action":"allow"},'
        .. ' {"target":"192.0.2.0/24","action":"deny"} ], "defaultAction" : "allow" }'
      local _, _, d4 = api.replace(reordered, 4096, "dns")
      assert.equals(d1, d4)
      assert.equals(body, d1)
    end)

    it("rejects invalid JSON with 400 invalid policy", function()
      for _, body in ipairs({ "{", "not-json", '{"defaultAction":"deny",}', '{"a":0x10}', '{"a":NaN}',
        '{"defaultAction":"deny"} x', "[1,]" }) do
        local status, resp, new = api.replace(body, 4096, "dns")
        assert.equals(400, status)
        assert.matches("^invalid policy: invalid JSON: .*[^\n]$", resp)
        assert.is_nil(new)
      end
    end)

    it("rejects documents that are not objects", function()
      local cases = {
        ["[]"] = "array", ['[{"defaultAction":"allow"}]'] = "array", ['"allow"'] = "string",
        ["1"] = "number", ["true"] = "boolean",
      }
      for body, what in pairs(cases) do
        local status, resp, new = api.replace(body, 4096, "dns")
        assert.equals(400, status)
        assert.equals("invalid policy: document: expected an object, got " .. what, resp)
        assert.is_nil(new)
      end
    end)

    it("rejects invalid documents with the rule compiler's message", function()
      local cases = {
        ['{"defaultAction":"block"}'] = 'invalid policy: defaultAction: "block" is not allow or deny',
        ['{"defaultAction":1}'] = "invalid policy: defaultAction: expected a string, got number",
        ['{"egress":[{"action":"block","target":"a.com"}]}'] = 'invalid policy: egress[0].action: "block" is not allow or deny',
        ['{"egress":[{"action":"allow","target":"a.com"},{"action":"allow"}]}'] = "invalid policy: egress[1].target: missing (expected a string)",
        ['{"egress":[{"action":"allow","target":"  "}]}'] = 'invalid policy: egress[0].target: "" is not a domain name, wildcard (*.suffix), IP address or CIDR',
        ['{"egress":[{"action":"allow","target":"a..com"}]}'] = 'invalid policy: egress[0].target: "a..com" is not a domain name, wildcard (*.suffix), IP address or CIDR',
        ['{"egress":[{"action":"allow","target":5}]}'] = "invalid policy: egress[0].target: expected a string, got number",
        ['{"egress":"a.com"}'] = "invalid policy: egress: expected an array, got string",
        ['{"egress":{"a":1}}'] = "invalid policy: egress: expected an array, got object",
        ['{"egress":[5]}'] = "invalid policy: egress[0]: expected an object, got number",
        ['{"egress":[["a"]]}'] = "invalid policy: egress[0]: expected an object, got array",
      }
      for body, msg in pairs(cases) do
        local status, resp, new = api.replace(body, 4096, "dns")
        assert.equals(400, status)
        assert.equals(msg, resp)
        assert.is_nil(new)
      end
    end)

    it("enforces the rule limit after validation", function()
      local function policy_of(n) return '{"defaultAction":"deny","egress":' .. many_rules(n) .. "}" end
      local status, resp, new = api.replace(policy_of(4096), 4096, "dns")
      assert.equals(200, status)
      assert.equals(OK_DNS, resp)
      assert.equals(4096, #cjson.decode(new).egress)

      status, resp, new = api.replace(policy_of(4097), 4096, "dns")
      assert.equals(413, status)
      assert.equals("egress rule total count 4097 exceeds limit 4096", resp)
      assert.is_nil(new)

      -- 0 (and nil) is unlimited.
      assert.equals(200, (api.replace(policy_of(4097), 0, "dns")))
      assert.equals(200, (api.replace(policy_of(4097), nil, "dns")))
      assert.equals(413, (api.replace(policy_of(3), 2, "dns")))
      -- An invalid document is a 400 even when it is also too long.
      local bad = '{"egress":[{"action":"x","target":"a.com"},{"target":"b.com"},{"target":"c.com"}]}'
      status, resp = api.replace(bad, 2, "dns")
      assert.equals(400, status)
      assert.matches("^invalid policy: egress%[0%]%.action", resp)
    end)
  end)

  describe("patch", function()
    local BASE = doc("deny", { "allow example.com", "deny *.example.com" })

    it("rejects an empty body", function()
      for _, body in ipairs({ "", "  \n", false }) do
        local status, resp, new = api.patch(BASE, body or nil, 4096, "dns")
        assert.equals(400, status)
        assert.equals("empty body", resp)
        assert.is_nil(new)
      end
    end)

    it("rejects an empty array and null", function()
      for _, body in ipairs({ "[]", " [ ] ", "null" }) do
        local status, resp, new = api.patch(BASE, body, 4096, "dns")
        assert.equals(400, status)
        assert.equals("invalid patch rules: empty array", resp)
        assert.is_nil(new)
      end
    end)

    it("rejects bodies that are not arrays of rules", function()
      local cases = {
        ["{}"] = "invalid patch rules: expected an array, got object",
        ['{"egress":[{"action":"allow","target":"a.com"}]}'] = "invalid patch rules: expected an array, got object",
        ['"a.com"'] = "invalid patch rules: expected an array, got string",
        ["[5]"] = "invalid patch rules: [0]: expected an object, got number",
        ['[{"action":"allow","target":"a.com"},"b.com"]'] = "invalid patch rules: [1]: expected an object, got string",
        ['[["a.com"]]'] = "invalid patch rules: [0]: expected an object, got array",
        ['[{"action":true,"target":"a.com"}]'] = "invalid patch rules: [0].action: expected a string, got boolean",
        ['[{"action":"allow","target":["a.com"]}]'] = "invalid patch rules: [0].target: expected a string, got array",
      }
      for body, msg in pairs(cases) do
        local status, resp, new = api.patch(BASE, body, 4096, "dns")
        assert.equals(400, status)
        assert.equals(msg, resp)
        assert.is_nil(new)
      end
      local status, resp = api.patch(BASE, "[{", 4096, "dns")
      assert.equals(400, status)
      assert.matches("^invalid patch rules: invalid JSON: .*[^\n]$", resp)
    end)

    it("rejects invalid rules as an invalid merged policy", function()
      local cases = {
        ['[{"action":"block","target":"a.com"}]'] = 'invalid merged policy: egress[0].action: "block" is not allow or deny',
        ['[{"action":"allow","target":"a.com"},{"action":"allow","target":"a b"}]'] = 'invalid merged policy: egress[1].target: "a b" is not a domain name, wildcard (*.suffix), IP address or CIDR',
        ['[{"action":"allow"}]'] = 'invalid merged policy: egress[0].target: "" is not a domain name, wildcard (*.suffix), IP address or CIDR',
        ["[null]"] = 'invalid merged policy: egress[0].target: "" is not a domain name, wildcard (*.suffix), IP address or CIDR',
      }
      for body, msg in pairs(cases) do
        local status, resp, new = api.patch(BASE, body, 4096, "dns")
        assert.equals(400, status)
        assert.equals(msg, resp)
        assert.is_nil(new)
      end
    end)

    it("puts the patch first, so a later PATCH overrides an earlier one (worked example)", function()
      local cur = '{"defaultAction":"deny","egress":[]}'
      local status, resp, new = api.patch(cur, '[{"action":"allow","target":"*.example.com"}]', 4096, "dns")
      assert.equals(200, status)
      assert.equals(OK_DNS, resp)
      assert.equals('{"defaultAction":"deny","egress":[{"action":"allow","target":"*.example.com"}]}', new)

      status, resp, new = api.patch(new, '[{"action":"deny","target":"api.example.com"}]', 4096, "dns")
      assert.equals(200, status)
      assert.equals(OK_DNS, resp)
      assert.same({ "deny api.example.com", "allow *.example.com" }, rule_list(new))
      assert.equals("deny", verdict(new, "api.example.com"))
      assert.equals("allow", verdict(new, "www.example.com"))
      assert.equals("deny", verdict(new, "example.com"))
    end)

    it("merges as OpenSandbox's handler test does", function()
      local status, resp, new = api.patch(BASE,
        '[{"action":"deny","target":"blocked.com"},{"action":"allow","target":"example.com"}]', 4096, "dns+nft")
      assert.equals(200, status)
      assert.equals('{"status":"ok","mode":"enforcing","enforcementMode":"dns+nft"}\n', resp)
      assert.same({ "deny blocked.com", "allow example.com", "deny *.example.com" }, rule_list(new))
      assert.equals("deny", cjson.decode(new).defaultAction)
    end)

    it("keeps the first of duplicate targets within a patch", function()
      local _, _, new = api.patch(BASE,
        '[{"action":"deny","target":"a.com"},{"action":"allow","target":"A.COM"},{"action":"allow","target":"a.com"}]',
        4096, "dns")
      assert.same({ "deny a.com", "allow example.com", "deny *.example.com" }, rule_list(new))
    end)

    it("keys rules by lower-cased target", function()
      local _, _, new = api.patch(doc("deny", { "allow example.com", "allow keep.com" }),
        '[{"action":"deny","target":"Example.COM"}]', 4096, "dns")
      assert.same({ "deny Example.COM", "allow keep.com" }, rule_list(new))
      assert.equals("deny", verdict(new, "example.com"))
      -- And the other way round (OpenSandbox's TestHandlePatch_DomainCaseOverride).
      _, _, new = api.patch(doc("deny", { "deny Example.COM" }), '[{"action":"allow","target":"example.com"}]', 4096, "dns")
      assert.same({ "allow example.com" }, rule_list(new))
    end)

    it("does not trim the merge key (as OpenSandbox), but stores the target trimmed", function()
      local _, _, new = api.patch(doc("deny", { "allow example.com" }),
        '[{"action":"deny","target":" example.com "}]', 4096, "dns")
      assert.same({ "deny example.com", "allow example.com" }, rule_list(new))
      assert.equals("deny", verdict(new, "example.com"))
    end)

    it("drops later duplicates among the current rules too", function()
      local _, _, new = api.patch(doc("deny", { "allow a.com", "deny A.com", "allow b.com" }),
        '[{"action":"allow","target":"c.com"}]', 4096, "dns")
      assert.same({ "allow c.com", "allow a.com", "allow b.com" }, rule_list(new))
    end)

    it("keeps defaultAction and normalizes the patch rules", function()
      local status, resp, new = api.patch('{"defaultAction":"allow"}',
        '[{"Action":" DENY ","Target":" evil.com "},{"target":"10.0.0.0/8"}]', 4096, "dns")
      assert.equals(200, status)
      assert.equals(OK_DNS, resp)
      assert.equals('{"defaultAction":"allow","egress":[{"action":"deny","target":"evil.com"},'
        .. '{"action":"deny","target":"10.0.0.0/8"}]}', new)
    end)

    it("patches a missing current document as deny-all", function()
      for _, cur in ipairs({ false, "", "{}", "null" }) do
        local status, _, new = api.patch(cur or nil, '[{"action":"allow","target":"a.com"}]', 4096, "dns")
        assert.equals(200, status)
        assert.equals('{"defaultAction":"deny","egress":[{"action":"allow","target":"a.com"}]}', new)
      end
    end)

    it("answers 500 when the current document is broken", function()
      local status, resp, new = api.patch("{", '[{"action":"allow","target":"a.com"}]', 4096, "dns")
      assert.equals(500, status)
      assert.matches("^internal error: current policy: invalid policy: invalid JSON", resp)
      assert.is_nil(new)
    end)

    it("enforces the rule limit on the merged document", function()
      local cur4095 = '{"defaultAction":"deny","egress":' .. many_rules(4095) .. "}"
      local status, resp, new = api.patch(cur4095, '[{"action":"allow","target":"new.example.com"}]', 4096, "dns")
      assert.equals(200, status)
      assert.equals(OK_DNS, resp)
      assert.equals(4096, #cjson.decode(new).egress)
      local cur4096 = new

      status, resp, new = api.patch(cur4096, '[{"action":"allow","target":"new2.example.com"}]', 4096, "dns")
      assert.equals(413, status)
      assert.equals("egress rule total count 4097 exceeds limit 4096", resp)
      assert.is_nil(new)

      -- Replacing an existing rule does not add one.
      status, _, new = api.patch(cur4096, '[{"action":"deny","target":"H1.example.com"}]', 4096, "dns")
      assert.equals(200, status)
      assert.equals(4096, #cjson.decode(new).egress)
      assert.equals("deny H1.example.com", rule_list(new)[1])

      -- 0 is unlimited.
      assert.equals(200, (api.patch(cur4096, '[{"action":"allow","target":"new2.example.com"}]', 0, "dns")))
      -- OpenSandbox's TestHandlePatch_RejectsWhenOverMaxEgressRules.
      status, resp = api.patch(doc("deny", { "allow a.example.com", "allow b.example.com" }),
        '[{"action":"allow","target":"c.example.com"}]', 2, "dns")
      assert.equals(413, status)
      assert.equals("egress rule total count 3 exceeds limit 2", resp)
    end)
  end)

  describe("delete", function()
    local BASE = doc("deny", { "allow example.com", "deny blocked.com", "allow keep.com" })

    it("rejects an empty body", function()
      for _, body in ipairs({ "", " \t", false }) do
        local status, resp, new = api.delete(BASE, body or nil, "dns")
        assert.equals(400, status)
        assert.equals("empty body", resp)
        assert.is_nil(new)
      end
    end)

    it("rejects an empty array and null", function()
      for _, body in ipairs({ "[]", "null" }) do
        local status, resp, new = api.delete(BASE, body, "dns")
        assert.equals(400, status)
        assert.equals("invalid delete targets: empty array", resp)
        assert.is_nil(new)
      end
    end)

    it("rejects bodies that are not arrays of strings", function()
      local cases = {
        ["{}"] = "invalid delete targets: expected an array, got object",
        ['"example.com"'] = "invalid delete targets: expected an array, got string",
        ['["a.com",1]'] = "invalid delete targets: [1]: expected a string, got number",
        ['[{"target":"a.com"}]'] = "invalid delete targets: [0]: expected a string, got object",
      }
      for body, msg in pairs(cases) do
        local status, resp, new = api.delete(BASE, body, "dns")
        assert.equals(400, status)
        assert.equals(msg, resp)
        assert.is_nil(new)
      end
      local status, resp = api.delete(BASE, "not-json", "dns")
      assert.equals(400, status)
      assert.matches("^invalid delete targets: invalid JSON: .*[^\n]$", resp)
    end)

    it("removes matching targets and ignores the others", function()
      local status, resp, new = api.delete(BASE, '["blocked.com","nonexistent.com"]', "dns+nft")
      assert.equals(200, status)
      assert.equals('{"status":"ok","mode":"enforcing","enforcementMode":"dns+nft"}\n', resp)
      assert.equals('{"defaultAction":"deny","egress":[{"action":"allow","target":"example.com"},'
        .. '{"action":"allow","target":"keep.com"}]}', new)
    end)

    it("matches case-insensitively and trims the given targets", function()
      local cur = doc("deny", { "allow Example.COM", "deny Blocked.COM" })
      local _, _, new = api.delete(cur, '["example.com"]', "dns")
      assert.same({ "deny Blocked.COM" }, rule_list(new))
      _, _, new = api.delete(cur, '[" BLOCKED.com\\t"]', "dns")
      assert.same({ "allow Example.COM" }, rule_list(new))
    end)

    it("removes every rule with the target", function()
      local _, _, new = api.delete(doc("allow", { "deny a.com", "allow b.com", "allow A.com" }), '["a.com"]', "dns")
      assert.same({ "allow b.com" }, rule_list(new))
    end)

    it("does not fold trailing dots or canonicalize addresses", function()
      local cur = doc("deny", { "allow example.com", "allow 10.0.0.0/8", "allow 2001:DB8::1" })
      local status, resp, new = api.delete(cur, '["example.com.","10.1.2.3/8","2001:db8:0::1"]', "dns")
      assert.equals(200, status)
      assert.equals('{"status":"ok","mode":"enforcing","enforcementMode":"dns","reason":"no matching targets found"}\n', resp)
      assert.is_nil(new)
      _, _, new = api.delete(cur, '["2001:db8::1"]', "dns")
      assert.same({ "allow example.com", "allow 10.0.0.0/8" }, rule_list(new))
    end)

    it("answers 200 with a reason and no new document when nothing matches", function()
      for _, body in ipairs({ '["nonexistent.com"]', '[""]', '["  "]', "[null]" }) do
        local status, resp, new = api.delete(BASE, body, "dns")
        assert.equals(200, status)
        assert.equals('{"status":"ok","mode":"enforcing","enforcementMode":"dns","reason":"no matching targets found"}\n', resp)
        assert.is_nil(new)
      end
      -- The mode is the current one.
      local status, resp, new = api.delete('{"defaultAction":"allow"}', '["a.com"]', "dns")
      assert.equals(200, status)
      assert.equals('{"status":"ok","mode":"allow_all","enforcementMode":"dns","reason":"no matching targets found"}\n', resp)
      assert.is_nil(new)
      status, resp = api.delete(nil, '["a.com"]')
      assert.equals('{"status":"ok","mode":"deny_all","reason":"no matching targets found"}\n', resp)
    end)

    it("leaves an empty list (shown as []) when the last rules go", function()
      local status, resp, new = api.delete(doc("allow", { "deny a.com" }), '["A.com"]', "dns")
      assert.equals(200, status)
      assert.equals('{"status":"ok","mode":"allow_all","enforcementMode":"dns"}\n', resp)
      assert.equals('{"defaultAction":"allow","egress":[]}', new)
      assert.equals(
        '{"status":"ok","mode":"allow_all","enforcementMode":"dns","policy":{"egress":[],"defaultAction":"allow"}}\n',
        get(new, "dns"))
    end)

    it("has no rule limit", function()
      local cur = '{"defaultAction":"deny","egress":' .. many_rules(10) .. "}"
      local status, _, new = api.delete(cur, '["h1.example.com"]', "dns")
      assert.equals(200, status)
      assert.equals(9, #cjson.decode(new).egress)
    end)
  end)

  describe("JSON strings", function()
    it("are escaped as Go's encoding/json escapes them", function()
      assert.equals('"plain.example.com"', api.encode_string("plain.example.com"))
      assert.equals('"\\u003ca\\u003e\\u0026\\"\\\\"', api.encode_string('<a>&"\\'))
      assert.equals('"\\n\\r\\t\\b\\f\\u0000\\u001f\127"', api.encode_string("\n\r\t\b\f\0\31\127"))
      assert.equals('"é\\u2028\\u2029€"', api.encode_string("é\226\128\168\226\128\169€"))
      -- Invalid UTF-8 (a stray byte, an overlong form, a surrogate) becomes U+FFFD.
      assert.equals('"a\\ufffdb\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd"', api.encode_string("a\255b\192\175\237\160\128"))
    end)

    it("round-trip through cjson", function()
      local s = "x<y>&\"\\\1\n\226\128\168é"
      assert.equals(s, cjson.decode(api.encode_string(s)))
    end)
  end)

  describe("trim", function()
    it("trims what Go's strings.TrimSpace trims", function()
      assert.equals("a b", api.trim(" \t\n\v\f\ra b\r\n "))
      assert.equals("x", api.trim("\194\133\194\160\225\154\128\226\128\128\226\128\138x\226\128\168\226\128\169\226\128\175\226\129\159\227\128\128"))
      assert.equals("", api.trim(" \194\160 "))
      -- Not white space: U+200B, U+FEFF, and a lone lead byte.
      assert.equals("\226\128\139x\239\187\191", api.trim("\226\128\139x\239\187\191"))
      assert.equals("\194", api.trim(" \194"))
    end)
  end)
  it("counts the rules of a document for the metrics gauge", function()
    assert.equals(0, api.count(""))
    assert.equals(0, api.count("not json"))
    assert.equals(2, api.count('{"egress":[{"target":"a.com"},{"action":"deny","target":"b.com"}]}'))
  end)
  it("dispatches a request by method, and refuses other methods", function()
    local st, body, doc = api.handle("PUT", "", '{"defaultAction":"allow"}', 10, "dns")
    assert.equals(200, st)
    assert.equals('{"status":"ok","mode":"allow_all","enforcementMode":"dns"}\n', body)
    assert.is_string(doc)
    st, body, doc = api.handle("GET", doc, "", 10, "dns")
    assert.equals(200, st)
    assert.is_nil(doc)
    st = api.handle("PATCH", "", "[]", 10, "dns")
    assert.equals(400, st)
    assert.is_nil(api.handle("OPTIONS", "", "", 10, "dns"))
  end)
  describe("explain_args", function()
    it("reads name, qtype, client and transport, percent-decoded", function()
      assert.same({ "a.pypi.org", "AAAA", "10.0.0.2", "tcp" },
        { api.explain_args("name=a.pypi.org&qtype=AAAA&client=10.0.0.2&transport=tcp") })
      assert.same({ "a\\.b.example", nil, nil, nil },
        { api.explain_args("name=a%5C.b.example") })
      assert.equals("x y", (api.explain_args("name=x+y")))
      assert.equals("", (api.explain_args("name=")))
      assert.equals("a.b", (api.explain_args("name=a.b&")))
    end)
    it("names what is wrong with the query", function()
      local function refused(q) local n, msg = api.explain_args(q); assert.is_nil(n); return msg end
      assert.matches("^missing name ", refused(nil))
      assert.matches("^missing name ", refused("qtype=A"))
      assert.matches('^unknown parameter "nmae" ', refused("nmae=x"))
      assert.equals("parameter name given twice", refused("name=a&name=b"))
    end)
  end)
end)
