// Bastion console: small progressive enhancements; every page works without them.
// Loaded from the console's own origin (the Content-Security-Policy allows no inline
// script), so this file is the only script a console page runs.
(function () {
  "use strict";

  // A running request's progress refreshes itself: the server renders the fragment,
  // and when the request reaches a final state the whole page reloads, so the
  // download links and the result appear.
  function poll(element) {
    var url = element.getAttribute("data-refresh");
    window.setTimeout(function () {
      fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (response) {
          if (!response.ok) { throw new Error(String(response.status)); }
          return response.text();
        })
        .then(function (html) {
          var holder = document.createElement("div");
          holder.innerHTML = html;
          var fresh = holder.querySelector("#progress");
          if (!fresh) { return; }
          if (fresh.hasAttribute("data-final")) { window.location.reload(); return; }
          element.replaceWith(fresh);
          poll(fresh);
        })
        .catch(function () { /* keep the last state; the Refresh link still works */ });
    }, 2000);
  }

  // Forms that change something for good ask first.
  function confirmations() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var progress = document.querySelector("#progress[data-refresh]");
    if (progress) { poll(progress); }
    confirmations();
  });
})();
