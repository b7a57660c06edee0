/* closedloop review queue: answer tasks from the keyboard (no inline script: CSP). */
(function () {
  "use strict";
  var form = document.getElementById("answer-form");
  if (!form) return;
  var skip = document.getElementById("skip-form");
  var label = document.getElementById("answer-label");
  var correction = document.getElementById("answer-correction");
  var comment = document.getElementById("answer-comment");
  var help = document.getElementById("key-help");
  var chips = Array.prototype.slice.call(document.querySelectorAll("[data-label]"));
  var sending = false;

  function typing(el) {
    if (!el || !el.tagName) return false;
    var tag = el.tagName.toLowerCase();
    if (tag === "textarea" || tag === "select" || el.isContentEditable) return true;
    return tag === "input" && !/^(radio|checkbox|button|submit|hidden)$/i.test(el.type);
  }
  function mark() {
    chips.forEach(function (chip) {
      chip.classList.toggle("selected", chip.dataset.label === label.value.trim());
    });
  }
  function setLabel(value) {
    label.value = label.value.trim() === value ? "" : value; // the same key again clears it
    mark();
  }
  function rate(n) {
    var radio = document.getElementById("rating-" + n);
    if (radio) radio.checked = true;
  }
  function send(which) {
    if (sending) return;
    sending = true;
    which.requestSubmit();
  }

  chips.forEach(function (chip) {
    chip.addEventListener("click", function () {
      setLabel(chip.dataset.label);
      label.focus();
    });
  });
  label.addEventListener("input", mark);
  var original = form.querySelector("input[name=original]");
  var empty = document.getElementById("answer-empty");
  function blank() {
    var rated = form.querySelector("input[name=rating]:checked");
    var fixed = correction.value.trim() && correction.value.trim() !== original.value.trim();
    return !label.value.trim() && !rated && !fixed;
  }
  form.addEventListener("submit", function (event) {
    if (blank()) {
      event.preventDefault();
      sending = false;
      if (empty) empty.hidden = false;
      return;
    }
    sending = true;
  });
  if (skip) skip.addEventListener("submit", function () { sending = true; });

  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.isComposing) return;
    var target = event.target;
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      send(form);
      return;
    }
    if (event.key === "Escape") {
      if (help && !help.hidden) {
        help.hidden = true;
      } else if (typing(target)) {
        target.blur();
      }
      return;
    }
    if (typing(target) || event.ctrlKey || event.metaKey || event.altKey) return;
    if (target && target.tagName && target.tagName.toLowerCase() === "button" && event.key === "Enter") return;
    var key = event.key;
    if (/^[1-5]$/.test(key)) {
      rate(key);
    } else if (key === "g" && chips[0]) {
      setLabel(chips[0].dataset.label);
    } else if (key === "b" && chips[1]) {
      setLabel(chips[1].dataset.label);
    } else if (key === "c") {
      correction.focus();
    } else if (key === "m") {
      comment.focus();
    } else if (key === "Enter") {
      send(form);
    } else if ((key === "s" || key === "n") && skip) {
      send(skip);
    } else if (key === "?") {
      if (help) {
        help.hidden = !help.hidden;
      }
    } else {
      return;
    }
    event.preventDefault();
  });
})();
