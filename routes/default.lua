-- routes/default.lua: the routes `trio-sip run` uses when no config names others.
--
-- A small, safe proxy in Kamailio KEMI style (the same file runs on Kamailio
-- 5.6 with app_lua, see docs/kemi.md). It:
--   * checks every request (Max-Forwards, sanity) and answers what is broken;
--   * routes in-dialog requests by their Route set (loose routing);
--   * answers OPTIONS sent to the server itself (keepalives, monitoring);
--   * record-routes dialog-creating requests and relays everything else to
--     its Request-URI (or $du).
-- It relays statelessly; once the transaction layer and the registrar are
-- in use (routes/stateful.lua, examples/), replace forward() by t_relay().
--
-- Every function returns early with KSR.x.exit() once the request is handled.

-- Main request route: called for every request received.
function ksr_request_route()
    ksr_route_reqinit()

    -- CANCEL and ACK of a stateless proxy go where the INVITE went.
    ksr_route_withindlg()

    if KSR.is_OPTIONS() and KSR.is_myself_ruri() and KSR.corex.has_ruri_user() < 0 then
        KSR.siputils.options_reply()
        KSR.x.exit()
    end

    if KSR.is_myself_ruri() then
        -- Nobody is registered here (the registrar comes with routes/registrar.lua).
        KSR.sl.sl_send_reply(404, "Not Found")
        KSR.x.exit()
    end

    -- Initial requests: drop any preloaded Route we did not put there,
    -- and stay on the path of dialogs.
    if KSR.is_method_in("IS") then
        KSR.rr.record_route()
    end
    ksr_route_relay()
end

-- Per-request checks.
function ksr_route_reqinit()
    local mf = KSR.maxfwd.process_maxfwd(10)
    if mf < 0 then
        KSR.sl.sl_send_reply(483, "Too Many Hops")
        KSR.x.exit()
    end
    if KSR.sanity.sanity_check_defaults() < 0 then
        KSR.err("malformed SIP request from " .. KSR.pv.get("$si") .. ":" .. KSR.pv.get("$sp"))
        KSR.x.exit()
    end
end

-- In-dialog requests (they carry a To-tag).
function ksr_route_withindlg()
    if KSR.siputils.has_totag() < 0 then
        return
    end
    if KSR.rr.loose_route() > 0 then
        ksr_route_relay()
        KSR.x.exit()
    end
    if KSR.is_ACK() then
        -- An ACK for a negative reply that took another path: nothing to do.
        KSR.x.exit()
    end
    KSR.sl.sl_send_reply(404, "Not here")
    KSR.x.exit()
end

-- Send the request on (stateless), or explain why not.
function ksr_route_relay()
    if KSR.forward() < 0 then
        if not KSR.is_ACK() then
            KSR.sl.sl_reply_error()
        end
    end
    KSR.x.exit()
end
