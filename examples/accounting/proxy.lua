-- examples/accounting/proxy.lua: a stateful proxy that reports every answered call to
-- a central accounting server (Kamailio's "central accounting" recipe).
--
-- On each 200 OK to an INVITE (call start) or to a BYE (call end), the onreply route
-- sends an ACCOUNTING request with KSR.uac.uac_req_send() to the accounting server
-- (acc.lua) and goes on at once: the request is a local UAC transaction of its own,
-- with tm's retransmissions and timeout, so a slow or dead accounting server never
-- delays a call. The outcome comes back to ksr_uac_event() ([modparams.uac]
-- event_callback), which logs a record that was not stored.
--
-- The accounting server's address: $ACC_SERVER in the environment (a SIP URI),
-- default sip:acc@127.0.0.1:5070.

ACC_SERVER = os.getenv("ACC_SERVER") or "sip:acc@127.0.0.1:5070"

function ksr_request_route()
    if KSR.maxfwd.process_maxfwd(10) < 0 then
        KSR.sl.sl_send_reply(483, "Too Many Hops")
        return 1
    end
    if KSR.is_CANCEL() then
        if KSR.tm.t_check_trans() > 0 then
            KSR.tm.t_relay()
        end
        return 1
    end
    if KSR.siputils.has_totag() > 0 then
        -- in-dialog: ACK and BYE follow the Record-Route we put in the INVITE
        if KSR.rr.loose_route() > 0 then
            if KSR.is_BYE() then
                KSR.tm.t_on_reply("acc_on_reply")
            end
            KSR.tm.t_relay()
            return 1
        end
        if KSR.is_ACK() and KSR.tm.t_check_trans() > 0 then
            KSR.tm.t_relay()
            return 1
        end
        KSR.sl.sl_send_reply(404, "Not here")
        return 1
    end
    if KSR.is_INVITE() then
        KSR.rr.record_route()
        KSR.tm.t_on_reply("acc_on_reply")
    end
    if KSR.tm.t_relay() < 0 then
        KSR.sl.sl_reply_error()
    end
    return 1
end

-- Field "name=value" lines of the ACCOUNTING body (Kamailio acc's column names).
local function acc_line(name, pv)
    local v = KSR.pv.get(pv)
    if v == nil then v = "" end
    return name .. "=" .. tostring(v) .. "\r\n"
end

-- Runs for every reply of an INVITE or BYE relayed above.
function acc_on_reply()
    if KSR.pv.get("$rs") ~= 200 then
        return 1
    end
    local method = KSR.pv.get("$rm")  -- in a reply: the CSeq method
    if method ~= "INVITE" and method ~= "BYE" then
        return 1
    end
    local body = acc_line("method", "$rm") .. acc_line("callid", "$ci")
        .. acc_line("cseq", "$cs") .. acc_line("from_tag", "$ft")
        .. acc_line("to_tag", "$tt") .. acc_line("src_user", "$fU")
        .. acc_line("dst_user", "$tU") .. acc_line("sip_code", "$rs")
        .. acc_line("sip_reason", "$rr") .. "time=" .. os.time() .. "\r\n"
    KSR.pv.unset("$uac_req(all)")
    KSR.pv.sets("$uac_req(method)", "ACCOUNTING")
    KSR.pv.sets("$uac_req(ruri)", ACC_SERVER)
    KSR.pv.sets("$uac_req(furi)", "sip:proxy@trio-sip.invalid")
    -- one ACCOUNTING per reply: a retransmitted 200 reuses the Call-ID, and the server
    -- stores each (callid, cseq, method) once
    KSR.pv.sets("$uac_req(callid)", "acc-" .. KSR.pv.get("$ci") .. "-"
        .. KSR.pv.get("$cs") .. "-" .. method)
    KSR.pv.sets("$uac_req(hdrs)", "Content-Type: text/plain\r\n")
    KSR.pv.sets("$uac_req(body)", body)
    KSR.pv.seti("$uac_req(evroute)", 1)
    KSR.pv.sets("$uac_req(evparam)", method .. " " .. KSR.pv.get("$ci"))
    if KSR.uac.uac_req_send() < 0 then
        KSR.err("accounting: cannot send the record of " .. method .. " "
            .. KSR.pv.get("$ci") .. "\n")
    end
    return 1
end

-- The outcome of each ACCOUNTING request ([modparams.uac] event_callback).
function ksr_uac_event(evname)
    local code = KSR.pv.get("$uac_req(evcode)")
    if code ~= 200 then
        KSR.err("accounting: record " .. tostring(KSR.pv.get("$uac_req(evparam)"))
            .. " not stored: " .. code .. (KSR.pv.get("$uac_req(evtype)") == 2
            and " (local: no answer)" or "") .. "\n")
    end
    return 1
end
