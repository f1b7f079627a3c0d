-- routes/registrar.lua: a registrar and stateful proxy in Kamailio KEMI style.
--
--   trio-sip run --routes routes/registrar.lua
--
-- The structure of Kamailio's misc/examples/kemi/kamailio-basic-kemi-lua.lua without
-- authentication, accounting and NAT traversal:
--   * REGISTER for this server: KSR.registrar.save("location") stores the bindings and
--     answers (200 with the bindings, 423 Interval Too Brief, 400, 503 ...). The
--     bindings are in SQLite (core.data_dir/location.sqlite) before the answer leaves,
--     so they survive a restart;
--   * a request for a user of this server: KSR.registrar.lookup("location") rewrites the
--     R-URI to the user's best binding and appends the others as branches, so t_relay()
--     forks to every registered device; 404 when the user has no binding;
--   * other requests are relayed statefully to their R-URI;
--   * in-dialog requests follow their Route set (record-routed INVITE/SUBSCRIBE).
--
-- Knobs, in the config ([modparams.registrar] / [modparams.usrloc]): min_expires,
-- max_expires, default_expires, max_contacts, use_domain (AoR user@domain), db_url
-- ("none" keeps the bindings in memory only).

function ksr_request_route()
    ksr_route_reqinit()

    -- CANCEL goes where its INVITE went
    if KSR.is_CANCEL() then
        if KSR.tm.t_check_trans() > 0 then
            ksr_route_relay()
        end
        return 1
    end

    ksr_route_withindlg()

    if KSR.is_OPTIONS() and KSR.is_myself_ruri() and KSR.corex.has_ruri_user() < 0 then
        KSR.sl.sl_send_reply(200, "Keepalive")
        return 1
    end

    -- record routing for dialog-forming requests
    KSR.hdr.remove("Route")
    if KSR.is_method_in("IS") then
        KSR.rr.record_route()
    end

    ksr_route_registrar()

    if KSR.corex.has_ruri_user() < 0 then
        KSR.sl.sl_send_reply(484, "Address Incomplete")
        return 1
    end

    ksr_route_location()
    ksr_route_relay()
    return 1
end

-- REGISTER for this server: store the bindings; save() sends the reply itself
-- (also on errors), so there is nothing left to answer here.
function ksr_route_registrar()
    if not KSR.is_REGISTER() then
        return 1
    end
    if not KSR.is_myself_ruri() then
        return 1  -- a REGISTER for another registrar: relay it
    end
    local rc = KSR.registrar.save("location", 0)
    if rc < 0 then
        KSR.notice("REGISTER for " .. KSR.pv.getw("$tu") .. " refused (" .. rc .. ")")
    end
    KSR.x.exit()
end

-- A request for a user of this server: where is the user?
function ksr_route_location()
    if not KSR.is_myself_ruri() then
        return 1
    end
    local rc = KSR.registrar.lookup("location")
    if rc < 0 then
        KSR.tm.t_newtran()
        if rc == -2 then
            KSR.sl.send_reply(405, "Method Not Allowed")
        else
            KSR.sl.send_reply(404, "Not Found")
        end
        KSR.x.exit()
    end
    return 1
end

-- Relay statefully, with the transaction routes armed.
function ksr_route_relay()
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
        ksr_route_relay()
        KSR.x.exit()
    end
    if KSR.is_ACK() then
        if KSR.tm.t_check_trans() > 0 then
            ksr_route_relay()
        end
        KSR.x.exit()
    end
    KSR.sl.sl_send_reply(404, "Not here")
    KSR.x.exit()
end

-- Every branch failed: nothing more to try in this simple setup.
function ksr_failure_manage()
    if KSR.tm.t_is_canceled() > 0 then
        return 1
    end
    return 1
end
