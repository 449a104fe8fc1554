// Report editor autosave: post the text a few seconds after the last keystroke (and keep the claim alive).
(function () {
  "use strict";
  var form = document.getElementById("report-editor");
  if (!form) { return; }
  var status = document.getElementById("autosave-status");
  var url = form.getAttribute("data-autosave-url");
  var timer = null, dirty = false;
  function save() {
    timer = null;
    if (!dirty) { return; }
    dirty = false;
    var data = new FormData();
    ["findings", "impression", "addendum", "csrfmiddlewaretoken"].forEach(function (name) {
      var field = form.elements[name];
      if (field) { data.append(name, field.value); }
    });
    fetch(url, {method: "POST", body: data, credentials: "same-origin"})
      .then(function (r) { return r.json().then(function (j) { return {ok: r.ok, body: j}; }); })
      .then(function (res) {
        status.textContent = res.ok ? "Draft saved " + res.body.saved_at : "Not saved: " + res.body.error;
      })
      .catch(function (e) { dirty = true; status.textContent = "Not saved (" + e.message + ")"; });
  }
  form.addEventListener("input", function () {
    dirty = true;
    status.textContent = "Editing…";
    if (timer) { clearTimeout(timer); }
    timer = setTimeout(save, 2000);
  });
  window.reportEditorSave = function () { dirty = true; save(); };
  // No keep-alive timer: a claim is kept by activity (typing), so an editor left open on an
  // unattended screen lets the claim expire after READING_CLAIM_TIMEOUT_MINUTES.
})();
