// latchkey — progressive enhancements. Every page works without this file; it only
// adds what needs a script: the "Forgot your password?" dialog, Show/Hide on password
// fields, the strength meter, focusing the error summary, and the recovery-code
// buttons, and passkeys. No inline handlers anywhere (CSP script-src 'self').
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

  // Passkeys. The server speaks WebAuthn's JSON (base64url for every binary field);
  // the browser's API wants ArrayBuffers. Nothing is shown unless the browser has
  // passkeys, and every page works without them.
  function fromBase64url(value) {
    var base64 = value.replace(/-/g, "+").replace(/_/g, "/");
    while (base64.length % 4) {
      base64 += "=";
    }
    var binary = atob(base64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) {
      bytes[i] = binary.charCodeAt(i);
    }
    return bytes.buffer;
  }

  function toBase64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) {
      binary += String.fromCharCode(bytes[i]);
    }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function passkeysSupported() {
    return !!(window.PublicKeyCredential && navigator.credentials && window.fetch);
  }

  function creationOptions(options) {
    var publicKey = options.publicKey;
    publicKey.challenge = fromBase64url(publicKey.challenge);
    publicKey.user.id = fromBase64url(publicKey.user.id);
    (publicKey.excludeCredentials || []).forEach(function (c) {
      c.id = fromBase64url(c.id);
    });
    return publicKey;
  }

  function requestOptions(options) {
    var publicKey = options.publicKey;
    publicKey.challenge = fromBase64url(publicKey.challenge);
    (publicKey.allowCredentials || []).forEach(function (c) {
      c.id = fromBase64url(c.id);
    });
    return publicKey;
  }

  function registrationJSON(credential) {
    var response = credential.response;
    var results = credential.getClientExtensionResults ? credential.getClientExtensionResults() : {};
    var extensions = {};
    if (results.credProps) {
      extensions.credProps = results.credProps;
    }
    return JSON.stringify({
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      response: {
        attestationObject: toBase64url(response.attestationObject),
        clientDataJSON: toBase64url(response.clientDataJSON),
        transports: response.getTransports ? response.getTransports() : undefined,
      },
      extensions: extensions,
    });
  }

  function assertionJSON(credential) {
    var response = credential.response;
    return JSON.stringify({
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      response: {
        authenticatorData: toBase64url(response.authenticatorData),
        clientDataJSON: toBase64url(response.clientDataJSON),
        signature: toBase64url(response.signature),
        userHandle: response.userHandle ? toBase64url(response.userHandle) : null,
      },
      extensions: {},
    });
  }

  // Asks the server for a ceremony's options: {ceremony, options} or {error}.
  function fetchOptions(url, fields) {
    var body = new URLSearchParams();
    Object.keys(fields).forEach(function (name) {
      body.set(name, fields[name]);
    });
    return fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: body.toString(),
      credentials: "same-origin",
    }).then(function (response) {
      return response.json().then(function (json) {
        if (!response.ok) {
          throw new Error(json.error || "The passkey request failed. Try again.");
        }
        return json;
      });
    });
  }

  function failureText(error) {
    if (error && error.name === "NotAllowedError") {
      return "No passkey was used. Try again, or use your password.";
    }
    if (error && error.name === "InvalidStateError") {
      return "This device already has a passkey for your account.";
    }
    return (error && error.message) || "The passkey request failed. Try again.";
  }

  // Sign-in: passkeys in the email field's autofill (conditional mediation) and a
  // "Sign in with a passkey" button; either answer is posted with the form below.
  function setUpPasskeySignIn() {
    var form = document.querySelector("form[data-passkey-sign-in]");
    if (!form || !passkeysSupported()) {
      return;
    }
    var button = form.querySelector("[data-passkey-button]");
    var status = form.querySelector("[data-passkey-status]");
    var url = form.getAttribute("data-options-url");
    var token = function () {
      return form.elements.csrf_token.value;
    };
    var pending = null;
    var submitting = false;

    var finish = function (ceremony, credential) {
      if (!credential || submitting) {
        return;
      }
      submitting = true;
      form.elements.ceremony.value = ceremony;
      form.elements.credential.value = assertionJSON(credential);
      form.submit();
    };

    var ask = function (mediation) {
      return fetchOptions(url, { csrf_token: token() }).then(function (started) {
        var publicKey = requestOptions(started.options);
        var request = { publicKey: publicKey };
        if (mediation === "conditional") {
          pending = new AbortController();
          request.mediation = "conditional";
          request.signal = pending.signal;
        }
        return navigator.credentials.get(request).then(function (credential) {
          finish(started.ceremony, credential);
        });
      });
    };

    form.hidden = false;
    button.addEventListener("click", function () {
      if (pending) {
        pending.abort();
        pending = null;
      }
      status.textContent = "";
      ask("required").catch(function (error) {
        status.textContent = failureText(error);
      });
    });

    if (PublicKeyCredential.isConditionalMediationAvailable) {
      PublicKeyCredential.isConditionalMediationAvailable().then(function (available) {
        if (available) {
          ask("conditional").catch(function () {
            // Aborted for the button, or nothing chosen: the form is still there.
          });
        }
      });
    }
  }

  // Settings → Add a passkey: the page carries the options; creating the passkey
  // happens on the button, then the form posts its answer with the name.
  function setUpPasskeyCreate() {
    var form = document.querySelector("form[data-passkey-create]");
    if (!form || !passkeysSupported()) {
      return;
    }
    var status = form.querySelector("[data-passkey-status]");
    var submit = form.querySelector("[data-passkey-submit]");
    var note = form.querySelector("[data-passkey-needs-script]");
    var options = JSON.parse(form.getAttribute("data-options"));
    submit.hidden = false;
    if (note) {
      note.hidden = true;
    }
    form.addEventListener("submit", function (event) {
      if (form.elements.credential.value) {
        return;
      }
      event.preventDefault();
      status.textContent = "";
      navigator.credentials
        .create({ publicKey: creationOptions(JSON.parse(JSON.stringify(options))) })
        .then(function (credential) {
          form.elements.credential.value = registrationJSON(credential);
          form.submit();
        })
        .catch(function (error) {
          status.textContent = failureText(error);
        });
    });
  }

  // The reset form: "Confirm with a passkey" fills the form's passkey fields.
  function setUpPasskeyReset() {
    var box = document.querySelector("[data-passkey-reset]");
    if (!box || !passkeysSupported()) {
      return;
    }
    var form = box.closest("form");
    var button = box.querySelector("[data-passkey-button]");
    var status = box.querySelector("[data-passkey-status]");
    box.hidden = false;
    button.addEventListener("click", function () {
      status.textContent = "";
      fetchOptions(box.getAttribute("data-options-url"), {
        csrf_token: form.elements.csrf_token.value,
        token: form.elements.token.value,
      })
        .then(function (started) {
          return navigator.credentials
            .get({ publicKey: requestOptions(started.options) })
            .then(function (credential) {
              form.elements.passkey_ceremony.value = started.ceremony;
              form.elements.passkey_credential.value = assertionJSON(credential);
              status.textContent =
                "Passkey confirmed. Choose your new password, then select Change password.";
            });
        })
        .catch(function (error) {
          status.textContent = failureText(error);
        });
    });
  }

  function start() {
    setUpPasswordToggles();
    setUpStrengthMeters();
    setUpResetDialog();
    setUpRecoveryCodes();
    setUpPasskeySignIn();
    setUpPasskeyCreate();
    setUpPasskeyReset();
    focusErrorSummary();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
