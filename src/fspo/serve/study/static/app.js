// The study page. Model text is untrusted: it is only ever assigned with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const VIEWS = ["view-loading", "view-join", "view-task", "view-wait", "view-done", "view-error"];
let current = null; // {phase, position}
let pollTimer = null;

function show(view) {
  for (const v of VIEWS) $(v).hidden = v !== view;
}

function setText(el, text, emptyText) {
  const value = (text || "").trim();
  el.textContent = value || emptyText || "";
  el.classList.toggle("empty", !value && !!emptyText);
}

function setProgress(progress) {
  const box = $("progress");
  if (!progress) { box.hidden = true; return; }
  box.hidden = false;
  const pct = progress.total ? Math.round((100 * progress.done) / progress.total) : 0;
  $("progress-fill").style.width = pct + "%";
  $("progress-text").textContent = `${Math.min(progress.done + 1, progress.total)} of ${progress.total}`;
}

function setBusy(busy) {
  for (const id of ["opt-left", "opt-right", "opt-tie"]) $(id).disabled = busy;
}

function render(state) {
  clearTimeout(pollTimer);
  if (state.title) { $("title").textContent = state.title; document.title = state.title; }
  if (state.phase === "label" || state.phase === "compare") {
    const compare = state.phase === "compare";
    current = { phase: state.phase, position: state.item.position };
    setProgress(state.progress);
    setText($("phase-label"), compare ? "Part 2 · Compare" : "Part 1 · Your preferences");
    setText($("intro"), compare ? "" : state.intro);
    $("intro").hidden = compare || !state.intro;
    setText($("question"), state.item.question);
    setText($("hint"), compare ? "Which answer suits you better?" : "Which answer do you prefer?");
    setText($("text-left"), state.item.left, "(empty answer)");
    setText($("text-right"), state.item.right, "(empty answer)");
    $("opt-tie").hidden = !compare;
    $("error").hidden = true;
    setBusy(false);
    show("view-task");
    window.scrollTo(0, 0);
  } else if (state.phase === "generating") {
    setProgress(null);
    $("wait-delayed").hidden = !state.delayed;
    show("view-wait");
    pollTimer = setTimeout(load, state.delayed ? 5000 : 1000);
  } else if (state.phase === "done") {
    setProgress(null);
    show("view-done");
  } else {
    setProgress(null);
    setText($("error-message"), state.message || "Something went wrong.");
    show("view-error");
  }
}

async function load() {
  try {
    const res = await fetch("/api/state", { credentials: "same-origin", cache: "no-store" });
    if (res.status === 401) { setProgress(null); show("view-join"); return; }
    if (!res.ok) throw new Error(`server answered ${res.status}`);
    render(await res.json());
  } catch (err) {
    setText($("error-message"), "Cannot reach the study server. Please check your connection and reload.");
    show("view-error");
  }
}

async function answer(choice) {
  if (!current) return;
  setBusy(true);
  const url = current.phase === "compare" ? "/api/compare" : "/api/label";
  try {
    const res = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ position: current.position, choice }),
    });
    if (!res.ok && res.status !== 409) {
      let message = `server answered ${res.status}`;
      try { message = (await res.json()).error || message; } catch (_) { /* keep default */ }
      throw new Error(message);
    }
    await load(); // 409 (already answered, e.g. a double tap) also just moves on
  } catch (err) {
    setText($("error"), "Your answer was not saved: " + err.message + ". Please try again.");
    $("error").hidden = false;
    setBusy(false);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const id of ["opt-left", "opt-right", "opt-tie"]) {
    $(id).addEventListener("click", (ev) => answer(ev.currentTarget.dataset.choice));
  }
  load();
});
