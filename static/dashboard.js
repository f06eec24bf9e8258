// The dashboard's only script: delete a run after a confirmation, and submit filter menus on change
// (at once when chosen with the pointer; on Enter when changed with the keyboard).
// Served from 'self' so the Content-Security-Policy needs no inline script.
"use strict";

async function deleteRun(button) {
  const status = document.getElementById("delete-status");
  const runId = button.dataset.runId;
  // Isolated (U+2068 ... U+2069): a dialog's plain text has no CSS to keep a U+202E in the id
  // from reversing the words after it. The id's own direction controls go first, as in
  // ui.isolated: a U+2069 among them would end the isolate.
  const shown = runId.replace(/[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, "");
  if (!window.confirm(`Delete run “\u2068${shown}\u2069”?\n\nIts file is removed from the store. This cannot be undone.`)) {
    return;
  }
  button.disabled = true;
  status.textContent = "Deleting…";
  try {
    // Same-origin fetch: the browser sends this page's Origin, which the API accepts.
    const response = await fetch(button.dataset.deleteUrl, {
      method: "DELETE",
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    if (response.ok) {
      window.location.assign(button.dataset.doneUrl);
      return;
    }
    let message = `HTTP ${response.status}`;
    try {
      message = (await response.json()).error || message;
    } catch (ignored) {
      // not JSON: keep the status line
    }
    status.textContent = `Not deleted: ${message}`;
  } catch (error) {
    status.textContent = `Not deleted: ${error.message}`;
  }
  button.disabled = false;
}

document.addEventListener("DOMContentLoaded", () => {
  const button = document.getElementById("delete-run");
  if (button) {
    button.addEventListener("click", () => deleteRun(button));
    button.hidden = false; // hidden in the HTML: without this script it could do nothing
    document.getElementById("delete-without-script").hidden = true;
  }
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    // A choice made with the pointer is sent at once. Arrow keys change a closed menu's value
    // step by step: sending each step reloaded the page, so a keyboard user could never pass
    // the first option. Such a change waits for Enter (or the Filter button).
    let byKeyboard = false;
    select.addEventListener("pointerdown", () => { byKeyboard = false; });
    select.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        select.form.requestSubmit();
      } else {
        byKeyboard = true;
      }
    });
    select.addEventListener("change", () => {
      if (!byKeyboard) {
        select.form.requestSubmit();
      }
    });
  }
});
