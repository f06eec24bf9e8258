// The dashboard's only script: delete a run after a confirmation, and submit filter menus on change.
// Served from 'self' so the Content-Security-Policy needs no inline script.
"use strict";

async function deleteRun(button) {
  const status = document.getElementById("delete-status");
  const runId = button.dataset.runId;
  if (!window.confirm(`Delete run “${runId}”?\n\nIts file is removed from the store. This cannot be undone.`)) {
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
  }
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", () => select.form.requestSubmit());
  }
});
