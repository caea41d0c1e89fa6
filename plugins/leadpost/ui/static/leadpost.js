// Leadpost page: test execution, replay and the delivery log, in place. Vanilla JS, no build step.
// Every text from the server goes through textContent, never innerHTML.
(function () {
  "use strict";

  const ICONS = { untested: "!", active: "✓", failing: "!", disabled: "–" };
  const STATUSES = Object.keys(ICONS);
  const COUNTS = ["pending", "delivered", "retrying", "dead", "in_flight"];
  const csrfHeader = document.body.dataset.csrfHeader || "X-Leadpost-CSRF";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "class") node.className = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function fmt(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return iso;
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
      `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())} UTC`;
  }

  function detailOf(body, status) {
    const d = body && body.detail;
    if (Array.isArray(d)) return d.map((x) => (typeof x === "string" ? x : x.msg || JSON.stringify(x))).join("\n");
    return d || `HTTP ${status}`;
  }

  async function call(method, url) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers[csrfHeader] = "1";
    const resp = await fetch(url, { method, headers, credentials: "same-origin", cache: "no-store" });
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok) throw new Error(detailOf(body, resp.status));
    return body;
  }

  function apiUrl(card, verb) {
    return `api/actions/${encodeURIComponent(card.dataset.key)}/${verb}`;
  }

  function applyState(card, a) {
    card.dataset.status = a.status;
    const badge = card.querySelector("[data-badge]");
    for (const s of STATUSES) badge.classList.toggle(`badge-${s}`, s === a.status);
    badge.title = a.reason || "";
    card.querySelector("[data-badge-icon]").textContent = ICONS[a.status] || "?";
    card.querySelector("[data-badge-text]").textContent = a.status;
    card.querySelector("[data-reason]").textContent = a.reason || "";
    if (a.counts) {
      for (const name of COUNTS) {
        const cell = card.querySelector(`[data-count="${name}"]`);
        if (cell) cell.textContent = String(a.counts[name]);
      }
      card.querySelector("[data-replay]").disabled = a.counts.dead === 0;
    }
    const last = card.querySelector("[data-last-test]");
    last.replaceChildren(el("span", { class: "label" }, "Last test"));
    if (a.last_test) {
      const t = a.last_test;
      last.append(
        el("span", { class: t.ok ? "ok" : "failed", "data-last-test-verdict": "" }, t.ok ? "ok" : "failed"),
        el("span", { "data-last-test-when": "" }, fmt(t.at)),
        el("span", { class: "muted", "data-last-test-message": "" }, t.message || ""),
      );
    } else {
      last.append(el("span", { class: "muted", "data-last-test-verdict": "" }, "never"));
    }
  }

  function showResult(card, box, where = "[data-result]") {
    const result = card.querySelector(where);
    result.replaceChildren(...box.children);
    result.className = `result ${box.className}`;
    result.hidden = false;
  }

  function testResult(r) {
    const box = el("div", { class: r.ok ? "ok-box" : "fail-box" });
    const verdict = r.ok ? "Test execution passed" : "Test execution failed";
    const response = r.http_status === null || r.http_status === undefined
      ? "no response"
      : `HTTP ${r.http_status}` + (r.elapsed_ms !== null ? ` in ${Math.round(r.elapsed_ms)} ms` : "");
    box.append(
      el("h4", { "data-result-verdict": "" }, `${verdict} — ${r.message}`),
      el("p", {}, el("strong", {}, "What to do: "), r.hint),
      el("div", { class: "cols" },
        el("div", {}, el("strong", {}, "Request sent"), el("pre", { "data-result-request": "" }, r.request)),
        el("div", {}, el("strong", {}, `Response: ${response}`),
          el("pre", { "data-result-response": "" }, r.response || "(no body)"))),
    );
    return box;
  }

  function errorResult(title, message) {
    return el("div", { class: "fail-box" }, el("h4", {}, title), el("pre", {}, message));
  }

  function renderLog(card, attempts) {
    const rows = card.querySelector("[data-log-rows]");
    if (!attempts.length) {
      rows.replaceChildren(el("tr", { class: "none" }, el("td", { colspan: "7", class: "muted" }, "No deliveries yet.")));
      return;
    }
    rows.replaceChildren(...attempts.map((x) => el("tr", {},
      el("td", {}, fmt(x.at)),
      el("td", {}, String(x.lead_id)),
      el("td", {}, x.email || ""),
      el("td", {}, el("span", { class: `state state-${x.state}` }, x.state)),
      el("td", {}, x.status_code === null ? "" : String(x.status_code)),
      el("td", {}, String(x.attempts)),
      el("td", { class: "err" }, x.error || ""),
    )));
  }

  async function refreshLog(card) {
    try {
      const data = await call("GET", apiUrl(card, "attempts") + "?limit=10");
      renderLog(card, data.attempts);
    } catch (e) {
      // The log is secondary: keep the rows already shown.
    }
  }

  async function busy(button, work) {
    if (button.getAttribute("aria-busy") === "true") return;
    button.setAttribute("aria-busy", "true");
    button.disabled = true;
    try { await work(); } finally {
      button.removeAttribute("aria-busy");
      if (!button.hasAttribute("data-replay")) button.disabled = false;
    }
  }

  async function onTest(card, button) {
    await busy(button, async () => {
      try {
        const r = await call("POST", apiUrl(card, "test"));
        applyState(card, r.state);
        showResult(card, testResult(r));
      } catch (e) {
        showResult(card, errorResult("Test execution could not run", e.message));
      }
      await refreshLog(card);
    });
  }

  async function onReplay(card, button) {
    await busy(button, async () => {
      try {
        const r = await call("POST", apiUrl(card, "replay"));
        applyState(card, r.state);
        showResult(card, el("div", { class: "ok-box" },
          el("h4", { "data-result-verdict": "" }, `${r.replayed} dead letter(s) back to pending`),
          el("p", {}, "They go out on the next run of the trigger's DAG.")), "[data-notice]");
      } catch (e) {
        button.disabled = false;
        showResult(card, errorResult("Replay failed", e.message), "[data-notice]");
      }
      await refreshLog(card);
    });
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    if (button.hasAttribute("data-reload")) { window.location.reload(); return; }
    const card = button.closest("[data-key]");
    if (!card) return;
    if (button.hasAttribute("data-test")) onTest(card, button);
    else if (button.hasAttribute("data-replay")) onReplay(card, button);
  });
})();
