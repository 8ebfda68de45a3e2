// latchkey — progressive enhancements. Every page works without this file; it only
// adds what needs a script: the "Forgot your password?" dialog, Show/Hide on password
// fields, the strength meter, focusing the error summary, and the recovery-code
// buttons. No inline handlers anywhere (CSP script-src 'self').
"use strict";

(function () {
  // The error summary takes focus, so a screen reader reads the problem first.
  function focusErrorSummary() {
    var summary = document.querySelector("[data-error-summary]");
    if (summary) {
      summary.focus();
    }
  }

  // "Forgot your password?" opens a modal dialog where <dialog> is supported; the
  // link itself leads to /forgot-password, which shows the same text.
  function setUpResetDialog() {
    var link = document.getElementById("forgot-password-link");
    var dialog = document.getElementById("reset-dialog");
    if (!link || !dialog || typeof dialog.showModal !== "function") {
      return;
    }
    link.addEventListener("click", function (event) {
      if (event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) {
        return; // a new tab or window: let the link work as a link
      }
      event.preventDefault();
      dialog.showModal();
      var heading = document.getElementById("reset-dialog-title");
      if (heading) {
        heading.focus(); // reading starts at the top of the dialog
      }
    });
    dialog.addEventListener("close", function () {
      link.focus();
    });
  }

  // Show/Hide buttons: hidden in the markup, shown here, one per password field.
  function setUpPasswordToggles() {
    var buttons = document.querySelectorAll(".toggle-password[aria-controls]");
    Array.prototype.forEach.call(buttons, function (button) {
      var input = document.getElementById(button.getAttribute("aria-controls"));
      if (!input) {
        return;
      }
      // The button reads "Show" or "Hide"; a visually hidden span after the word
      // keeps the field's name in its accessible name ("Show new password").
      var render = function (shown) {
        button.firstChild.nodeValue = shown ? "Hide " : "Show ";
      };
      button.hidden = false;
      render(false);
      button.addEventListener("click", function () {
        var shown = input.type === "password";
        input.type = shown ? "text" : "password";
        render(shown);
      });
      // Never submit (or let a password manager see) a field left visible.
      if (input.form) {
        input.form.addEventListener("submit", function () {
          input.type = "password";
          render(false);
        });
      }
    });
  }

  // Strength meter: after a pause in typing, ask the server for the same rating its
  // policy applies (so the meter never calls a refused password strong). Guidance
  // only: it never blocks the form.
  function setUpStrengthMeters() {
    var inputs = document.querySelectorAll("input[data-strength-meter]");
    Array.prototype.forEach.call(inputs, function (input) {
      var box = document.getElementById(input.id + "-strength");
      var form = input.form;
      if (!box || !form || !window.fetch || !window.URLSearchParams) {
        return;
      }
      var meter = box.querySelector("meter");
      var text = box.querySelector(".strength-text");
      var timer = null;
      var latest = 0;

      var show = function (result) {
        meter.value = result.score;
        meter.setAttribute("aria-valuetext", result.label);
        text.textContent = "";
        var word = document.createElement("span");
        word.className = "strength-label";
        word.textContent = "Strength: " + result.label + ".";
        text.appendChild(word);
        if (result.tip) {
          text.appendChild(document.createTextNode(" " + result.tip));
        }
        box.hidden = false;
      };

      var rate = function () {
        var password = input.value;
        if (password === "") {
          box.hidden = true;
          return;
        }
        var mine = ++latest;
        var body = new URLSearchParams();
        body.set("csrf_token", form.elements.csrf_token ? form.elements.csrf_token.value : "");
        body.set("password", password);
        var who = form.elements.username || form.elements.email;
        if (who) {
          body.set("email", who.value);
        }
        if (form.dataset.twoFactor === "true") {
          body.set("two_factor", "true");
        }
        fetch("/password-strength", {
          method: "POST",
          headers: { "Content-Type": "application/x-www-form-urlencoded" },
          body: body.toString(),
          credentials: "same-origin",
        })
          .then(function (response) {
            return response.ok ? response.json() : null;
          })
          .then(function (result) {
            if (result && mine === latest) {
              show(result);
            }
          })
          .catch(function () {
            // Offline or refused: the meter is guidance only, so say nothing.
          });
      };

      input.addEventListener("input", function () {
        window.clearTimeout(timer);
        timer = window.setTimeout(rate, 400);
      });
    });
  }

  // Recovery codes: Copy, Download and Print.
  function setUpRecoveryCodes() {
    var list = document.getElementById("recovery-codes");
    var actions = document.querySelector("[data-recovery-actions]");
    if (!list || !actions) {
      return;
    }
    var codes = Array.prototype.map.call(list.querySelectorAll("code"), function (code) {
      return code.textContent.trim();
    });
    var text = "latchkey recovery codes\nEach code works once.\n\n" + codes.join("\n") + "\n";
    var status = document.createElement("p");
    status.className = "copy-status";
    status.setAttribute("role", "status");
    actions.insertAdjacentElement("afterend", status);

    var copy = actions.querySelector("[data-copy-codes]");
    if (copy && navigator.clipboard && navigator.clipboard.writeText) {
      copy.addEventListener("click", function () {
        navigator.clipboard.writeText(text).then(
          function () {
            status.textContent = "Copied the recovery codes.";
          },
          function () {
            status.textContent = "Copying did not work: select the codes and copy them.";
          }
        );
      });
    } else if (copy) {
      copy.hidden = true;
    }

    var download = actions.querySelector("[data-download-codes]");
    if (download) {
      download.addEventListener("click", function () {
        var blob = new Blob([text], { type: "text/plain" });
        var url = URL.createObjectURL(blob);
        var a = document.createElement("a");
        a.href = url;
        a.download = "latchkey-recovery-codes.txt";
        document.body.appendChild(a);
        a.click();
        a.remove();
        window.setTimeout(function () {
          URL.revokeObjectURL(url);
        }, 1000);
      });
    }

    var print = actions.querySelector("[data-print]");
    if (print) {
      print.addEventListener("click", function () {
        window.print();
      });
    }
    actions.hidden = false;
  }

  function start() {
    setUpPasswordToggles();
    setUpStrengthMeters();
    setUpResetDialog();
    setUpRecoveryCodes();
    focusErrorSummary();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
