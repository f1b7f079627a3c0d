-- examples/accounting/acc.lua: the central accounting server. Every ACCOUNTING request
-- (sent by proxy.lua with uac_req_send) carries one record as "name=value" lines; the
-- route stores it in SQLite with sqlops, values bound as parameters (never spliced
-- into the SQL), and answers 200. A record already stored (a retransmitted request,
-- a retransmitted 200 at the proxy) is stored once: (callid, cseq, method) is unique.
--
-- The table is created on the first request (CREATE TABLE IF NOT EXISTS).

local FIELDS = { "method", "callid", "cseq", "from_tag", "to_tag", "src_user", "dst_user",
                 "sip_code", "sip_reason", "time" }
local REQUIRED = { method = true, callid = true, cseq = true, sip_code = true, time = true }

local SCHEMA = [[CREATE TABLE IF NOT EXISTS acc (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    method TEXT NOT NULL, callid TEXT NOT NULL, cseq INTEGER NOT NULL,
    from_tag TEXT, to_tag TEXT, src_user TEXT, dst_user TEXT,
    sip_code INTEGER NOT NULL, sip_reason TEXT, time INTEGER NOT NULL,
    UNIQUE (callid, cseq, method))]]

local INSERT = "INSERT OR IGNORE INTO acc (" .. table.concat(FIELDS, ", ")
    .. ") VALUES (?" .. string.rep(", ?", #FIELDS - 1) .. ")"

-- The record in the body, or nil and what is wrong with it.
local function parse_record(body)
    local rec = {}
    for name, value in string.gmatch(body or "", "([%w_]+)=([^\r\n]*)") do
        rec[name] = value
    end
    for _, name in ipairs(FIELDS) do  -- in FIELDS order: the same answer every time
        if REQUIRED[name] and (rec[name] == nil or rec[name] == "") then
            return nil, "no " .. name
        end
    end
    for _, name in ipairs({ "cseq", "sip_code", "time" }) do
        if not string.match(rec[name], "^%d+$") then
            return nil, "bad " .. name
        end
    end
    return rec
end

function ksr_request_route()
    if KSR.pv.get("$rm") ~= "ACCOUNTING" then
        if not KSR.is_ACK() then
            KSR.hdr.append_to_reply("Allow: ACCOUNTING\r\n")
            KSR.sl.sl_send_reply(405, "Method Not Allowed")
        end
        return 1
    end
    local rec, err = parse_record(KSR.pv.get("$rb"))
    if rec == nil then
        KSR.warn("acc: bad record from " .. KSR.pv.get("$si") .. ": " .. err .. "\n")
        KSR.sl.sl_send_reply(400, "Bad Record (" .. err .. ")")
        return 1
    end
    if KSR.pv.get("$shv(acc_schema)") ~= 1 then
        if KSR.sqlops.sql_query("acc", SCHEMA) < 0 then
            KSR.sl.sl_send_reply(500, "Accounting Store Unavailable")
            return 1
        end
        KSR.pv.seti("$shv(acc_schema)", 1)
    end
    local values = {}
    for i, name in ipairs(FIELDS) do values[i] = rec[name] or "" end
    -- the values are bound to the "?" of INSERT, never spliced into the SQL text
    if KSR.sqlops.sql_query_params("acc", INSERT, "", values) < 0 then
        KSR.sl.sl_send_reply(500, "Accounting Store Unavailable")
        return 1
    end
    KSR.sl.sl_send_reply(200, "Stored")
    return 1
end
