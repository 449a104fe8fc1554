// Reading worklist self-refresh: re-fetch the same page (same filters, same cursor) every
// N seconds and replace only the table body, so the scroll position and the page are kept.
// Marked as a background refresh: it does not count as activity for the idle sign-out (accounts.sessions).
(function () {
  "use strict";
  var table = document.getElementById("reading-worklist");
  var body = document.getElementById("reading-rows");
  var status = document.getElementById("refresh-status");
  if (!table || !body) { return; }
  var seconds = parseInt(table.getAttribute("data-refresh-seconds"), 10) || 30;
  function refresh() {
    if (document.hidden) { return; }
    var params = new URLSearchParams(window.location.search);
    params.set("partial", "1");
    fetch(window.location.pathname + "?" + params.toString(), {credentials: "same-origin", headers: {"X-Requested-With": "fetch", "X-Background-Refresh": "1"}})
      .then(function (r) {
        // Session ended: the answer is the login page; reload so that the browser shows it.
        if (r.redirected && r.url.indexOf("/accounts/login/") !== -1) { window.location.reload(); throw new Error("logged out"); }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (html) {
        body.innerHTML = html;
        status.textContent = "Updated " + new Date().toLocaleTimeString();
      })
      .catch(function (e) { status.textContent = "Refresh failed (" + e.message + "); retrying"; });
  }
  window.readingWorklistRefresh = refresh;
  setInterval(refresh, seconds * 1000);
})();
