// edgefleet hub dashboard: live regions over Server-Sent Events, and confirmations. No build step.
// The page's own URL, asked for as text/event-stream, sends the regions that changed (cloud_hub/dashboard/live.py).
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  var body = document.body;
  var status = document.getElementById("live-status");
  if (body.getAttribute("data-live") !== "1" || !window.EventSource || !status) {
    return;
  }
  var updates = 0;

  function show(text, kind) {
    status.textContent = text;
    status.className = "live-status " + kind;
  }

  var source = new EventSource(window.location.pathname + window.location.search);
  source.addEventListener("open", function () { show("live", "on"); });
  source.addEventListener("error", function () { show("reconnecting\u2026", "off"); });
  source.addEventListener("regions", function (event) {
    var regions = JSON.parse(event.data);
    Object.keys(regions).forEach(function (id) {
      var element = document.getElementById(id);
      if (element) {
        element.innerHTML = regions[id];
      }
    });
    updates += 1;
    body.setAttribute("data-updates", String(updates));
    show("live", "on");
  });
  source.addEventListener("expired", function () {
    source.close();
    window.location.assign("/ui/login");
  });
  source.addEventListener("gone", function (event) {
    source.close();
    show(JSON.parse(event.data).error, "off");
  });
  window.addEventListener("pagehide", function () { source.close(); });
})();
