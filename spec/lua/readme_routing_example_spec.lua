-- The README's custom routing rule is examples/ingress/ab_version.lua word
-- for word (its cases file runs it: spec/cases/examples/ingress/).
describe("README's custom routing rule", function()
  it("is examples/ingress/ab_version.lua", function()
    local readme = assert(io.open("README.md")):read("*a")
    local at = assert(readme:find("**A custom routing rule**", 1, true))
    local block = readme:match("```lua\n(.-)```", at)
    local file = assert(io.open("examples/ingress/ab_version.lua")):read("*a")
    assert.equals(file, block)
  end)
end)
