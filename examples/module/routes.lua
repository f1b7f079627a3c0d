-- Routes using the third-party module KSR.example (examples/module/).
--   pip install -e examples/module
--   trio-sip check --routes examples/module/routes.lua

function ksr_request_route()
  if KSR.is_OPTIONS() then
    local text = KSR.example.greet(KSR.pv.get("$fU") or "stranger")
    KSR.hdr.append_to_reply("X-Greeting: " .. text .. "\r\n")
    KSR.hdr.append_to_reply("X-Greeted: " .. KSR.example.greeted() .. "\r\n")
    KSR.sl.sl_send_reply(200, "OK")
    return
  end
  KSR.sl.sl_send_reply(501, "Not Implemented")
end
