/* closedloop dashboard: small behaviours shared by every page (no inline script: CSP). */
(function () {
  "use strict";
  // The project switcher: choosing a project opens its overview.
  document.querySelectorAll("select[data-navigate]").forEach(function (select) {
    select.addEventListener("change", function () {
      window.location.assign(select.dataset.navigate + encodeURIComponent(select.value) + "/");
    });
  });
  // Buttons that ask before they act: <button data-confirm="Really?">.
  document.querySelectorAll("[data-confirm]").forEach(function (el) {
    var form = el.closest("form");
    if (!form) return;
    form.addEventListener("submit", function (event) {
      if (event.submitter === el && !window.confirm(el.dataset.confirm)) event.preventDefault();
    });
  });
  // Copy buttons: <button data-copy="#id">.
  document.querySelectorAll("[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var source = document.querySelector(button.dataset.copy);
      if (!source || !navigator.clipboard) return;
      navigator.clipboard.writeText(source.textContent.trim()).then(function () {
        button.textContent = "Copied";
      });
    });
  });
  // A page that answers a POST (the new key, shown once) replaces its history entry, so a
  // reload opens the given page instead of sending the POST again.
  var replace = document.querySelector("[data-replace-url]");
  if (replace && window.history && window.history.replaceState) {
    window.history.replaceState(null, "", replace.dataset.replaceUrl);
  }
  // Selects and checkboxes that submit their filter form at once: <select data-autosubmit>.
  document.querySelectorAll("[data-autosubmit]").forEach(function (el) {
    el.addEventListener("change", function () {
      if (el.form) el.form.requestSubmit();
    });
  });
})();
