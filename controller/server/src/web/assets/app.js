// molt web UI: the only script. Pages work without it; with it, live parts refresh
// and Abort asks for confirmation in place.
"use strict";

// Every element with data-live="URL" is replaced by a fresh copy of that fragment
// every two seconds (not while the tab is hidden). A redirect means the session
// ended: reload, which lands on the login page.
for (const el of document.querySelectorAll("[data-live]")) {
  const url = el.dataset.live;
  let busy = false;
  setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const res = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (res.redirected) {
        location.reload();
      } else if (res.ok) {
        el.innerHTML = await res.text();
      }
    } catch (e) {
      // The controller is restarting or the network is down: try again next tick.
    } finally {
      busy = false;
    }
  }, 2000);
}

// Forms with data-confirm="question" ask first; once confirmed they tell the server
// so (confirmed=yes), which otherwise answers with its own confirmation page.
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.dataset && form.dataset.confirm;
  if (!question) return;
  if (!window.confirm(question)) {
    event.preventDefault();
    return;
  }
  if (!form.querySelector("input[name=confirmed]")) {
    const yes = document.createElement("input");
    yes.type = "hidden";
    yes.name = "confirmed";
    yes.value = "yes";
    form.appendChild(yes);
  }
});
