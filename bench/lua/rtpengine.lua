-- bench/lua/rtpengine.lua: examples/rtpengine/routes.lua for bench/rtpengine_bench.py, with
-- one switch: calls whose To user is "nomedia" skip every KSR.rtpengine.* call (the same
-- route minus rtpengine, to measure what the rtpengine calls cost); every other call is
-- anchored exactly as in the example.
--
-- The example's own header follows.
--
-- examples/rtpengine/routes.lua: a stateful proxy that anchors media on rtpengine.
--
-- Kamailio KEMI style (the skeleton of routes/stateful.lua). Every SDP offer goes to
-- rtpengine from the request route (INVITE with SDP, in or out of dialog), every SDP
-- answer from the onreply route (1xx/2xx with SDP), and the call is deleted on
-- rtpengine on BYE, CANCEL and when the INVITE transaction fails.
--
-- Each KSR.rtpengine.* call waits for rtpengine's answer without blocking the server:
-- the route goes on at the next line with its locals, while other calls are served.

RTP_FLAGS = "replace-origin trust-address"

-- bench switch: false for the calls to "nomedia" (requests and their replies alike)
function ksr_media_on()
    return KSR.pv.getw("$tU") ~= "nomedia"
end

function ksr_request_route()
    ksr_route_reqinit()

    -- CANCEL: the call will not be set up, free its media
    if KSR.is_CANCEL() then
        if KSR.tm.t_check_trans() > 0 then
            if ksr_media_on() then
                KSR.rtpengine.rtpengine_delete0()
            end
            ksr_route_relay()
        end
        return 1
    end

    ksr_route_withindlg()

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

-- True when the current message carries an SDP body.
function ksr_has_sdp()
    local ct = KSR.pv.get("$cT")
    return ct ~= nil and string.find(string.lower(ct), "application/sdp", 1, true) ~= nil
end

-- Media anchoring for requests: offer on INVITE with SDP, delete on BYE.
function ksr_route_media()
    if not ksr_media_on() then
        return 1
    end
    if KSR.is_INVITE() and ksr_has_sdp() then
        if KSR.rtpengine.rtpengine_offer(RTP_FLAGS) < 0 then
            KSR.sl.sl_send_reply(503, "Media Relay Unavailable")
            KSR.x.exit()
        end
    elseif KSR.is_BYE() then
        KSR.rtpengine.rtpengine_delete0()
    end
end

-- Relay statefully, with the transaction routes armed.
function ksr_route_relay()
    ksr_route_media()
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

-- Requests within a dialog (re-INVITE, ACK, BYE, ...).
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

function ksr_branch_manage()
    KSR.dbg("new branch [" .. KSR.pv.get("$T_branch_idx") .. "] to " .. KSR.pv.get("$ru"))
    return 1
end

-- Replies: the SDP answer of an INVITE (183 or 200) goes to rtpengine.
function ksr_onreply_manage()
    local scode = KSR.pv.get("$rs")
    if scode > 100 and scode < 300 and KSR.pv.get("$rm") == "INVITE" and ksr_has_sdp()
            and ksr_media_on() then
        KSR.rtpengine.rtpengine_answer(RTP_FLAGS)
    end
    return 1
end

-- The INVITE failed (every branch answered >= 300 or timed out): free the media.
function ksr_failure_manage()
    if ksr_media_on() then
        KSR.rtpengine.rtpengine_delete0()
    end
    return 1
end
