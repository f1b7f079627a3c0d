-- routes/stateful.lua: a stateful proxy in Kamailio KEMI style.
--
-- The structure of Kamailio's misc/examples/kemi/kamailio-basic-kemi-lua.lua,
-- without registrar and authentication: the same file runs on Kamailio 5.6 with
-- app_lua and on trio-sip (bench/ runs both side by side). Requests are relayed
-- statefully (t_relay): retransmissions are absorbed, INVITEs get 100 Trying,
-- replies are chosen and forwarded per RFC 3261 §16.7, failures reach
-- ksr_failure_manage().

FLT_FAILURE_ROUTE_DONE = 1  -- an example of a message flag

function ksr_request_route()
    ksr_route_reqinit()

    -- CANCEL processing
    if KSR.is_CANCEL() then
        if KSR.tm.t_check_trans() > 0 then
            ksr_route_relay()
        end
        return 1
    end

    ksr_route_withindlg()

    -- retransmissions (trio-sip absorbs them before the route runs; Kamailio needs this)
    if KSR.is_ACK() == false then
        if KSR.tmx.t_precheck_trans() > 0 then
            KSR.tm.t_check_trans()
            return 1
        end
        if KSR.tm.t_check_trans() == 0 then
            return 1
        end
    end

    if KSR.is_OPTIONS() and KSR.is_myself_ruri() and KSR.corex.has_ruri_user() < 0 then
        KSR.sl.sl_send_reply(200, "Keepalive")
        return 1
    end

    -- record routing for dialog-forming requests
    KSR.hdr.remove("Route")
    if KSR.is_method_in("IS") then
        KSR.rr.record_route()
    end

    if KSR.corex.has_ruri_user() < 0 then
        KSR.sl.sl_send_reply(484, "Address Incomplete")
        return 1
    end
    ksr_route_relay()
    return 1
end

-- Relay statefully, with the transaction routes armed.
function ksr_route_relay()
    if KSR.is_method_in("IBSCUM") then
        if KSR.tm.t_is_set("branch_route") < 0 then
            KSR.tm.t_on_branch("ksr_branch_manage")
        end
    end
    if KSR.is_method_in("ISU") then
        if KSR.tm.t_is_set("onreply_route") < 0 then
            KSR.tm.t_on_reply("ksr_onreply_manage")
        end
    end
    if KSR.is_INVITE() then
        if KSR.tm.t_is_set("failure_route") < 0 then
            KSR.tm.t_on_failure("ksr_failure_manage")
        end
    end
    if KSR.tm.t_relay() < 0 then
        KSR.sl.sl_reply_error()
    end
    KSR.x.exit()
end

-- Per-request checks.
function ksr_route_reqinit()
    if KSR.maxfwd.process_maxfwd(10) < 0 then
        KSR.sl.sl_send_reply(483, "Too Many Hops")
        KSR.x.exit()
    end
    if KSR.sanity.sanity_check(17895, 7) < 0 then
        KSR.err("malformed SIP message from " .. KSR.pv.get("$si") .. ":" .. KSR.pv.get("$sp"))
        KSR.x.exit()
    end
end

-- Requests within a dialog.
function ksr_route_withindlg()
    if KSR.siputils.has_totag() < 0 then
        return 1
    end
    if KSR.rr.loose_route() > 0 then
        if KSR.is_ACK() then
            -- an ACK for a 2xx is its own transaction: relay it (statelessly)
            ksr_route_relay()
            KSR.x.exit()
        end
        ksr_route_relay()
        KSR.x.exit()
    end
    if KSR.is_ACK() then
        if KSR.tm.t_check_trans() > 0 then
            -- no loose route, but stateful ACK: relay it
            ksr_route_relay()
            KSR.x.exit()
        end
        KSR.x.exit()
    end
    KSR.sl.sl_send_reply(404, "Not here")
    KSR.x.exit()
end

-- Manage outgoing branches.
function ksr_branch_manage()
    KSR.dbg("new branch [" .. KSR.pv.get("$T_branch_idx") .. "] to " .. KSR.pv.get("$ru"))
    return 1
end

-- Manage incoming replies in the transaction.
function ksr_onreply_manage()
    local scode = KSR.pv.get("$rs")
    if scode > 100 and scode < 299 then
        KSR.dbg("reply " .. scode .. " for " .. KSR.pv.get("$ci"))
    end
    return 1
end

-- Manage failure of a transaction (all branches answered negatively or timed out).
function ksr_failure_manage()
    if KSR.tm.t_is_canceled() > 0 then
        return 1
    end
    return 1
end
