// The built-in dashboard: plain script, no build step. Data comes from the API on this origin;
// charts are drawn by the vendored Chart.js. Every value from the API is written as text
// (textContent), never as markup.
"use strict";

(() => {
  const TOKEN_KEY = "nexus-api-token";
  const RANGES = { "1h": 3600e3, "6h": 6 * 3600e3, "24h": 24 * 3600e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
  const DEFAULT_RANGE = "24h";
  const FILTERS = ["service", "provider", "operation"];
  const SCOPE_PARAMS = { service: "service_name", provider: "provider", operation: "operation" };
  const RECENT_ROWS = 20; // as the original design: the last 20 calls
  const TOP_CONTENT = 5;
  const REFRESH_MS = 60e3; // a full refresh besides the live feed (budgets, trends, charts)
  const AFTER_CALL_REFRESH_MS = 2e3; // totals follow new calls at most this often
  const RECONNECT_MS = 2e3;
  const COLORS = ["#03a9f4", "#8b5cf6", "#10b981", "#f59e0b", "#ef4444", "#ec4899", "#14b8a6", "#a3e635"];

  const FORECAST_BASIS = { last_hour: " at the last hour's rate", period_so_far: " at the period's rate so far" };

  const $ = (id) => document.getElementById(id);
  const needsToken = document.querySelector('meta[name="nexus-auth"]').content === "bearer";
  const charts = {};
  let socket = null;
  let socketScope = "";
  let refreshTimer = null;
  let renders = 0;

  // ---- formatting ----
  const intFormat = new Intl.NumberFormat("en-US");
  const fmtInt = (n) => intFormat.format(n);
  function fmtUsd(v) {
    if (v === null || v === undefined) return "unpriced";
    const digits = Math.abs(v) >= 1 ? 2 : 4;
    return "$" + v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }
  const fmtPct = (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(1) + "%");
  function fmtTime(iso) {
    const moment = new Date(iso);
    const time = moment.toLocaleTimeString("en-GB");
    if (moment.toDateString() === new Date().toDateString()) return time;
    return moment.toLocaleDateString("en-GB", { day: "numeric", month: "short" }) + " " + time;
  }
  const fmtMoment = (iso) => (iso ? new Date(iso).toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short" }) : "–");

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  // ---- the token: sessionStorage only, sent as a header ----
  const token = () => sessionStorage.getItem(TOKEN_KEY);

  function askForToken(message) {
    $("main").hidden = true;
    $("auth").hidden = false;
    $("auth-error").hidden = !message;
    $("auth-error").textContent = message || "";
    $("token").focus();
  }

  $("auth").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    $("auth").hidden = true;
    start();
  });

  class Unauthorized extends Error {}

  async function api(path, params) {
    const query = new URLSearchParams(params || {}).toString();
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = "Bearer " + token();
    const response = await fetch(path + (query ? "?" + query : ""), { headers });
    if (response.status === 401) throw new Unauthorized();
    if (!response.ok) {
      const body = await response.text();
      throw new Error(`${path}: HTTP ${response.status} ${body.slice(0, 200)}`);
    }
    return response.json();
  }

  // ---- filters, kept in the URL ----
  function readFilters() {
    const params = new URLSearchParams(location.search);
    const range = RANGES[params.get("range")] ? params.get("range") : DEFAULT_RANGE;
    const filters = { range };
    for (const name of FILTERS) filters[name] = params.get(name) || "";
    return filters;
  }

  function writeFilters(filters) {
    const params = new URLSearchParams();
    if (filters.range !== DEFAULT_RANGE) params.set("range", filters.range);
    for (const name of FILTERS) if (filters[name]) params.set(name, filters[name]);
    const query = params.toString();
    history.replaceState(null, "", location.pathname + (query ? "?" + query : ""));
  }

  function scopeParams(filters) {
    const scope = {};
    for (const name of FILTERS) if (filters[name]) scope[SCOPE_PARAMS[name]] = filters[name];
    return scope;
  }

  function fillSelect(select, values, chosen) {
    const options = [""].concat(values);
    if (chosen && !values.includes(chosen)) options.push(chosen);
    select.replaceChildren(...options.map((value) => {
      const option = el("option", value || "All");
      option.value = value;
      return option;
    }));
    select.value = chosen;
  }

  for (const id of ["range"].concat(FILTERS)) {
    $(id).addEventListener("change", () => {
      const filters = readFilters();
      filters[id] = $(id).value;
      writeFilters(filters);
      refresh();
    });
  }

  // ---- rendering ----
  function renderCard(id, value, text, pct) {
    const card = $(id);
    const valueNode = card.querySelector(".value");
    valueNode.textContent = text;
    valueNode.dataset.value = String(value);
    const trend = card.querySelector(".trend");
    if (pct === null || pct === undefined) {
      trend.textContent = "no calls yesterday by this time";
      trend.dataset.direction = "none";
      trend.dataset.value = "";
    } else {
      const arrow = pct > 0 ? "▲" : pct < 0 ? "▼" : "■";
      trend.textContent = `${arrow} ${pct > 0 ? "+" : ""}${pct.toFixed(1)}% vs yesterday at this time`;
      trend.dataset.direction = pct > 0 ? "up" : pct < 0 ? "down" : "flat";
      trend.dataset.value = String(pct);
    }
  }

  function renderCards(stats) {
    renderCard("card-tokens", stats.today.total_tokens, fmtInt(stats.today.total_tokens), stats.trends.total_tokens_pct);
    renderCard("card-cost", stats.today.cost_usd, fmtUsd(stats.today.cost_usd), stats.trends.cost_usd_pct);
    renderCard("card-calls", stats.today.calls, fmtInt(stats.today.calls), stats.trends.calls_pct);
  }

  function detail(label, value) {
    const span = el("span", label + " ");
    span.append(el("b", value));
    return span;
  }

  function renderBudgets(statuses) {
    const box = $("budgets");
    if (!statuses.length) {
      box.replaceChildren(el("p", "No budget set.", "muted"));
      return;
    }
    box.replaceChildren(...statuses.map((b) => {
      const item = el("div", null, "budget");
      item.dataset.id = String(b.id);
      item.dataset.state = b.state;
      const head = el("div", null, "head");
      const scope = [b.service_name, b.provider, b.model, b.operation].filter(Boolean).join(" · ");
      head.append(el("span", `${b.name} (${b.period}${scope ? ", " + scope : ""})`, "name"), el("span", b.state, "state"));
      const bar = el("div", null, "bar");
      const progress = el("progress");
      progress.max = 100;
      progress.value = Math.min(b.usage_pct, 100);
      progress.setAttribute("aria-label", `${b.name}: ${b.usage_pct.toFixed(1)}% used`);
      bar.append(progress);
      const details = el("div", null, "details");
      details.append(
        detail("Spend", fmtUsd(b.spend_usd)),
        detail("of", fmtUsd(b.amount_usd) + ` (${b.usage_pct.toFixed(1)}%)`),
        detail("Forecast", fmtUsd(b.forecast_usd) + (FORECAST_BASIS[b.forecast_method] || "")),
      );
      // An exceeded budget says when it was exceeded (when the API knows), never a run-out.
      if (b.state === "exceeded") details.append(detail("Exceeded", b.exceeded_at ? fmtMoment(b.exceeded_at) : "this period"));
      else details.append(detail("Runs out", b.projected_exhaustion_at ? fmtMoment(b.projected_exhaustion_at) : "not this period"));
      if (b.unpriced_calls) details.append(detail("Unpriced calls", fmtInt(b.unpriced_calls)));
      item.append(head, bar, details);
      return item;
    }));
  }

  function chartDefaults() {
    Chart.defaults.color = "#9ca3af";
    Chart.defaults.borderColor = "#2c2c2c";
    Chart.defaults.animation = false;
    Chart.defaults.maintainAspectRatio = false;
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  }

  function drawChart(id, config) {
    if (charts[id]) charts[id].destroy();
    charts[id] = new Chart($(id), config);
  }

  function hourLabels(startMs, endMs) {
    const hours = [];
    for (let t = Math.floor(startMs / 3600e3) * 3600e3; t < endMs; t += 3600e3) hours.push(t);
    return hours;
  }

  function renderTokenChart(hourly, startMs, endMs) {
    const hours = hourLabels(startMs, endMs);
    const index = new Map(hours.map((t, i) => [t, i]));
    const providers = [...new Set(hourly.hours.map((h) => h.provider))].sort();
    const datasets = providers.map((provider, i) => ({
      label: provider,
      data: hours.map(() => 0),
      borderColor: COLORS[i % COLORS.length],
      backgroundColor: COLORS[i % COLORS.length],
      pointRadius: hours.length > 48 ? 0 : 2,
      tension: 0.25,
    }));
    for (const point of hourly.hours) {
      const at = index.get(Date.parse(point.hour));
      if (at !== undefined) datasets[providers.indexOf(point.provider)].data[at] = point.total_tokens;
    }
    const span = endMs - startMs;
    const label = (t) => {
      const d = new Date(t);
      return span > 86400e3 ? d.toLocaleString("en-GB", { month: "short", day: "numeric", hour: "2-digit" }) : d.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
    };
    drawChart("chart-tokens", {
      type: "line",
      data: { labels: hours.map(label), datasets },
      options: { interaction: { mode: "index", intersect: false }, scales: { y: { beginAtZero: true } } },
    });
  }

  function renderCostChart(id, labels, values, horizontal) {
    drawChart(id, {
      type: "bar",
      data: { labels, datasets: [{ label: "Cost (USD)", data: values, backgroundColor: labels.map((_, i) => COLORS[i % COLORS.length]) }] },
      options: {
        indexAxis: horizontal ? "y" : "x",
        plugins: { legend: { display: false }, tooltip: { callbacks: { label: (c) => fmtUsd(c.raw) } } },
        scales: { [horizontal ? "x" : "y"]: { beginAtZero: true } },
      },
    });
  }

  // The most expensive operations, each a bar, and the rest as one: thousands of bars in one
  // chart are each thinner than a pixel.
  const OPERATION_BARS = 12;
  function topOperations(operations) {
    const shown = operations.slice(0, OPERATION_BARS);
    const labels = shown.map((o) => o.operation || "(none)");
    const values = shown.map((o) => o.cost_usd);
    const rest = operations.slice(OPERATION_BARS);
    if (rest.length) {
      labels.push(`${fmtInt(rest.length)} other operation${rest.length === 1 ? "" : "s"}`);
      values.push(rest.reduce((sum, o) => sum + o.cost_usd, 0));
    }
    return [labels, values];
  }

  function renderProviders(stats) {
    $("providers").tBodies[0].replaceChildren(...stats.providers.map((p) => {
      const row = el("tr");
      row.dataset.provider = p.provider;
      const seconds = (p.avg_duration_ms || 0) * p.calls / 1000;
      row.append(
        el("td", p.provider),
        el("td", fmtInt(p.calls), "num"),
        el("td", fmtPct(p.success_rate), "num"),
        el("td", p.avg_cost_per_call_usd === null ? "unpriced" : fmtUsd(p.avg_cost_per_call_usd), "num"),
        el("td", seconds ? (p.total_tokens / seconds).toFixed(1) : "–", "num"),
      );
      return row;
    }));
  }

  function renderUnpriced(stats) {
    const models = [];
    for (const p of stats.providers) for (const m of p.models) if (m.unpriced_calls) models.push([`${p.provider}/${m.model}`, m.unpriced_calls]);
    $("unpriced").hidden = models.length === 0;
    $("unpriced-models").replaceChildren(...models.map(([name, calls]) => {
      const code = el("code", `${name} (${fmtInt(calls)} call${calls === 1 ? "" : "s"})`);
      code.dataset.model = name;
      return code;
    }));
  }

  function callRow(call, fresh) {
    const row = el("tr", null, fresh ? "fresh" : "");
    row.dataset.spanId = call.span_id;
    const ok = call.success;
    row.append(
      el("td", fmtTime(call.timestamp)),
      el("td", call.provider),
      el("td", call.model, "mono"),
      el("td", call.operation || "–"),
      el("td", fmtInt(call.total_tokens), "num"),
      el("td", fmtUsd(call.cost_usd), "num"),
      el("td", Math.round(call.duration_ms) + " ms", "num"),
      el("td", ok ? "✓ ok" : "✗ " + (call.error_type || "failed"), ok ? "status-ok" : "status-failed"),
    );
    return row;
  }

  function renderRecent(calls) {
    $("recent").tBodies[0].replaceChildren(...calls.map((c) => callRow(c, false)));
  }

  function addLiveCall(call) {
    const body = $("recent").tBodies[0];
    if (body.querySelector(`tr[data-span-id="${CSS.escape(call.span_id)}"]`)) return;
    body.prepend(callRow(call, true));
    while (body.rows.length > RECENT_ROWS) body.deleteRow(-1);
    if (!refreshTimer) refreshTimer = setTimeout(refresh, AFTER_CALL_REFRESH_MS);
  }

  function renderContent(items) {
    $("content").tBodies[0].replaceChildren(...items.map((c) => {
      const row = el("tr");
      row.dataset.correlationId = c.correlation_id;
      row.append(
        el("td", c.title || c.correlation_id),
        el("td", c.platform),
        el("td", fmtInt(c.engagement), "num"),
        el("td", fmtUsd(c.generation_cost_usd), "num"),
        el("td", c.engagement_per_dollar === null ? "–" : c.engagement_per_dollar.toFixed(1), "num"),
      );
      return row;
    }));
  }

  // ---- the live feed ----
  function base64url(text) {
    let binary = "";
    for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function setLive(on) {
    $("live").dataset.state = on ? "on" : "off";
    $("live-text").textContent = on ? "Live" : "Reconnecting";
  }

  function connect(scope) {
    const query = new URLSearchParams(scope).toString();
    if (socket && socketScope === query) return;
    if (socket) {
      socket.onclose = null;
      socket.close();
    }
    socketScope = query;
    const protocols = ["nexus.live"];
    if (token()) protocols.push("nexus.bearer." + base64url(token()));
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/ws/metrics${query ? "?" + query : ""}`, protocols);
    socket = ws;
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "hello") setLive(message.listening);
      else if (message.type === "call") addLiveCall(message.call);
    };
    ws.onclose = () => {
      setLive(false);
      if (socket === ws) {
        socket = null;
        setTimeout(() => connect(scopeParams(readFilters())), RECONNECT_MS);
      }
    };
  }

  // ---- loading ----
  async function refresh() {
    clearTimeout(refreshTimer);
    refreshTimer = null;
    const filters = readFilters();
    $("range").value = filters.range;
    const scope = scopeParams(filters);
    const endMs = Date.now();
    const startMs = endMs - RANGES[filters.range];
    const range = { start: new Date(startMs).toISOString(), end: new Date(endMs).toISOString() };
    $("range-label").textContent = $("range").selectedOptions[0].textContent.toLowerCase();
    try {
      const [stats, budgets, hourly, providers, operations, options] = await Promise.all([
        api("/api/dashboard/stats", { ...scope, recent: RECENT_ROWS }),
        api("/api/budget/status"),
        api("/api/dashboard/hourly", { ...range, ...scope }),
        api("/api/analytics/provider-stats", { ...range, ...scope }),
        api("/api/analytics/cost-by-operation", { ...range, ...scope }),
        api("/api/dashboard/filters", range),
      ]);
      $("main").hidden = false;
      $("error").hidden = true;
      fillSelect($("service"), options.services, filters.service);
      fillSelect($("provider"), options.providers, filters.provider);
      // Calls without an operation are "(none)" in the chart; here "" would be a second "All".
      fillSelect($("operation"), options.operations.filter(Boolean), filters.operation);
      renderCards(stats);
      renderBudgets(budgets);
      renderTokenChart(hourly, startMs, endMs);
      renderCostChart("chart-cost-provider", providers.providers.map((p) => p.provider), providers.providers.map((p) => p.cost_usd), false);
      renderCostChart("chart-cost-operation", ...topOperations(operations.operations), true);
      renderProviders(providers);
      renderUnpriced(providers);
      renderRecent(stats.recent_calls);
      connect(scope);
      renders += 1;
      document.body.dataset.renders = String(renders);
      // Milliseconds from the navigation to the first render with data (read by `make bench`).
      if (renders === 1) document.body.dataset.firstRenderMs = performance.now().toFixed(0);
      // Content ROI ranks every call's item and is slow on a large table: it is asked for
      // once the rest is drawn, so the rest never waits for it (nor shares the server with it).
      renderContent(await api("/api/analytics/carousel-performance", { limit: TOP_CONTENT }));
      document.body.dataset.contentRenders = String(renders);
      if (renders === 1) document.body.dataset.contentRenderMs = performance.now().toFixed(0);
      document.body.dataset.filters = new URLSearchParams(filters).toString();
    } catch (error) {
      if (error instanceof Unauthorized) {
        sessionStorage.removeItem(TOKEN_KEY);
        if (socket) {
          socket.onclose = null;
          socket.close();
          socket = null;
        }
        askForToken("The API refused this token. Enter it again.");
        return;
      }
      $("main").hidden = false;
      $("error").hidden = false;
      $("error").textContent = "Could not load the dashboard: " + error.message;
    }
  }

  let started = false;
  function start() {
    if (!started) {
      started = true;
      chartDefaults();
      setInterval(() => {
        if (!$("main").hidden) refresh();
      }, REFRESH_MS);
    }
    refresh();
  }

  if (needsToken && !token()) askForToken("");
  else start();
})();
