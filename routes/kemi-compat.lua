-- routes/kemi-compat.lua: a stateless proxy written only with KSR functions that
-- trio-sip and Kamailio 5.6 (app_lua, Lua 5.1) both have, so the same file runs
-- unchanged on both servers. tests/e2e/test_kamailio_parity.py runs it on each and
-- compares what callers and callees see; bench/kamailio/ runs it on Kamailio by hand.
--
-- What it does with a request:
--   * Max-Forwards and sanity checks (483, or sanity's own 4xx);
--   * in-dialog requests (To-tag) follow their Route set (loose routing), else 404;
--   * OPTIONS to the server itself (no user): 200;
--   * R-URI user "busy": 486 from the route itself;
--   * other requests to the server itself: 404;
--   * a R-URI user with a "00" international prefix is rewritten to "+" ($ru);
--   * INVITEs are record-routed (with ;kc=1 in our Record-Route) and get exactly one
--     "X-Route: kemi-compat" header (one the caller put in is replaced);
--   * everything is then forwarded statelessly to $du (= the R-URI).
--
-- Portability notes (both servers):
--   * KSR.hdr.append() takes the whole header line with its trailing "\r\n"
--     (Kamailio inserts the text as is; trio-sip adds a missing CRLF, Kamailio would not);
--   * KSR.hdr.is_present()/get() and $hdr() read the headers as received: an appended
--     header is not seen by them in the same route;
--   * KSR.x.exit() ends the route from any depth of function calls;
--   * not in Kamailio 5.6: KSR.drop (use KSR.set_drop or KSR.x.drop), KSR.revert_uri,
--     KSR.sl.send_reply_error, KSR.hdr.count (a trio-sip addition).

local FLT_INITIAL_INVITE = 1   -- message flag: an initial INVITE we record-route

-- Main request route: called for every request received.
function ksr_request_route()
    ksr_route_reqinit()
    ksr_route_withindlg()

    if KSR.is_OPTIONS() and KSR.is_myself_ruri() and KSR.corex.has_ruri_user() < 0 then
        KSR.sl.sl_send_reply(200, "OK")
        KSR.x.exit()
    end

    if KSR.kx.gete_ruser() == "busy" then
        KSR.sl.sl_send_reply(486, "Busy Here")
        KSR.x.exit()
    end

    if KSR.is_myself_ruri() then
        KSR.sl.sl_send_reply(404, "Not Found")
        KSR.x.exit()
    end

    ksr_route_normalize()

    if KSR.is_INVITE() then
        KSR.setflag(FLT_INITIAL_INVITE)
    end
    if KSR.isflagset(FLT_INITIAL_INVITE) then
        KSR.rr.record_route()
        KSR.rr.add_rr_param(";kc=1")
        if KSR.hdr.is_present("X-Route") > 0 then
            KSR.info("replacing X-Route: " .. KSR.pv.getw("$hdr(X-Route)"))
            KSR.hdr.remove("X-Route")
        end
        KSR.hdr.append("X-Route: kemi-compat\r\n")
    end
    ksr_route_relay()
end

-- Per-request checks.
function ksr_route_reqinit()
    -- $var() lives as long as the worker process: give it its value for this request.
    KSR.pv.seti("$var(rewrites)", 0)
    if KSR.maxfwd.process_maxfwd(10) < 0 then
        KSR.sl.sl_send_reply(483, "Too Many Hops")
        KSR.x.exit()
    end
    -- 3047: Kamailio's default message checks; 7: parse R-URI, From and To.
    if KSR.sanity.sanity_check(3047, 7) < 0 then
        KSR.err("malformed request from " .. KSR.kx.get_srcip() .. ":"
            .. KSR.pv.get("$sp"))
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
    end
    if KSR.is_ACK() then
        -- ACK of a negative reply, or one that took another path: nothing to do.
        KSR.x.exit()
    end
    KSR.sl.sl_send_reply(404, "Not here")
    KSR.x.exit()
end

-- "00" international prefix to "+" in the R-URI user (a one-line dial plan).
function ksr_route_normalize()
    local ru = KSR.pv.get("$ru")
    local rewritten, n = string.gsub(ru, "^(sips?:)00(%d+@)", "%1+%2", 1)
    if n > 0 then
        KSR.pv.seti("$var(rewrites)", 1)
        KSR.pv.sets("$ru", rewritten)
        KSR.info("R-URI " .. ru .. " -> " .. KSR.kx.get_ruri())
    end
end

-- Send the request on (stateless) to $du, or explain why not.
function ksr_route_relay()
    if not KSR.isdsturiset() then
        KSR.pv.sets("$du", KSR.pv.get("$ru"))
    end
    KSR.dbg(KSR.kx.get_method() .. " " .. KSR.kx.get_ruri() .. " via " .. KSR.kx.getw_duri()
        .. " (rewrites: " .. KSR.pv.get("$var(rewrites)") .. ")")
    if KSR.forward() < 0 then
        if not KSR.is_ACK() then
            KSR.sl.sl_reply_error()
        end
    end
    KSR.x.exit()
end

-- Replies forwarded statelessly pass through here (both servers call it).
function ksr_reply_route()
    KSR.dbg("reply " .. tostring(KSR.kx.get_status()) .. " to " .. KSR.pv.getw("$rm"))
end
