-- Structured logging for policies and routing scripts.
--
-- log.info("event.name", { key = value, ... }) writes one JSON line. Inside
-- the server the host points the sink at the server's own logger, so script
-- lines interleave with the C core's lines on stderr; outside it (busted,
-- `luajit` by hand) lines go to io.stderr. Tests replace the sink with
-- log.set_sink(fn) to capture what a script logs.
local cjson = require "cjson.safe"

local M = {}

local function stderr_sink(level, event, fields)
  local line = { level = level, event = event }
  if fields then
    for k, v in pairs(fields) do
      if line[k] == nil then line[k] = v end
    end
  end
  io.stderr:write((cjson.encode(line) or '{"event":"log.unencodable"}'), "\n")
end

local sink = stderr_sink

function M.set_sink(fn)
  sink = fn or stderr_sink
end

local function emit(level)
  return function(event, fields)
    if type(event) ~= "string" then
      error("log." .. level .. ": event name must be a string", 2)
    end
    if fields ~= nil and type(fields) ~= "table" then
      error("log." .. level .. ": fields must be a table", 2)
    end
    sink(level, event, fields)
  end
end

M.debug = emit("debug")
M.info = emit("info")
M.warn = emit("warn")
M.error = emit("error")

return M
