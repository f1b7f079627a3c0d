-- tsip_json.lua: JSON text for the Lua helpers shipped with trio-sip (push.lua,
-- notify.lua). Only what they need: a JSON string literal, escaped per RFC 8259
-- (quote, backslash and every control character; other bytes pass as they are).
--
--   local json_string = require("tsip_json").string
--   json_string('say "hi"\n')   --> "say \"hi\"\n" (with the quotes)

local M = {}

function M.string(s)
    s = tostring(s)
    s = s:gsub('[%c"\\]', function(c)
        if c == '"' then return '\\"' end
        if c == "\\" then return "\\\\" end
        if c == "\n" then return "\\n" end
        if c == "\r" then return "\\r" end
        if c == "\t" then return "\\t" end
        return string.format("\\u%04x", string.byte(c))
    end)
    return '"' .. s .. '"'
end

return M
