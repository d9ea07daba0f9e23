// scratchllm's web page: chat, compare & rate, results and the attention view.
// Plain JavaScript against the server's own routes; no libraries, so it works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, models: [], history: [], chatAbort: null, compare: null };

// ------------------------------------------------------------------ requests
function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method, headers: headers(), body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(errorText(response, data));
  return data;
}

function errorText(response, data) {
  const message = data && data.error ? data.error.message : response.statusText;
  if (response.status === 401) return "the server wants an API key: " + message;
  return `HTTP ${response.status}: ${message}`;
}

// POST /v1/chat/completions with stream: true; onText gets each piece of text as it arrives.
async function streamChat(body, onText, signal) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(), signal,
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
  });
  if (!response.ok) {
    throw new Error(errorText(response, await response.json().catch(() => ({}))));
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", finish = null, usage = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const payload = line.slice(6);
        if (payload === "[DONE]") return { finish, usage };
        const chunk = JSON.parse(payload);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) onText(choice.delta.content);
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
  }
  return { finish, usage };
}

function number(id, fallback) {
  const value = parseFloat($(id).value);
  return Number.isFinite(value) ? value : fallback;
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

// ------------------------------------------------------------------ tabs
function showTab(name) {
  for (const tab of document.querySelectorAll("nav [role=tab]")) {
    const selected = tab.dataset.tab === name;
    tab.setAttribute("aria-selected", String(selected));
    $("panel-" + tab.dataset.tab).hidden = !selected;
  }
  if (name === "results") loadResults();
  if (name === "attention") loadAttentionShape();
}

// ------------------------------------------------------------------ chat
function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("chat-log").appendChild(div);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
  return div;
}

async function sendChat(event) {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text || state.chatAbort) return;
  $("chat-input").value = "";
  addMessage("user", text);
  state.history.push({ role: "user", content: text });
  const messages = [];
  const system = $("chat-system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history);
  const bubble = addMessage("assistant", "");
  bubble.dataset.chunks = "0";
  let reply = "";
  state.chatAbort = new AbortController();
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  try {
    const { finish, usage } = await streamChat({
      model: state.model, messages, temperature: number("chat-temperature", 0.7),
      top_p: number("chat-top-p", 1), max_tokens: Math.max(1, Math.round(number("chat-max-tokens", 128))),
    }, (piece) => {
      reply += piece;
      bubble.textContent = reply;
      bubble.dataset.chunks = String(Number(bubble.dataset.chunks) + 1);
      $("chat-log").scrollTop = $("chat-log").scrollHeight;
    }, state.chatAbort.signal);
    state.history.push({ role: "assistant", content: reply });
    if (finish === "length") addMessage("note", "(stopped at max tokens)");
    if (usage) status(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} generated tokens`);
  } catch (err) {
    if (err.name === "AbortError") {
      state.history.push({ role: "assistant", content: reply });
      addMessage("note", "(stopped)");
    } else {
      state.history.pop();  // the question stays visible but is not sent again
      bubble.remove();
      addMessage("error", String(err.message || err));
    }
  } finally {
    bubble.dataset.done = "true";
    state.chatAbort = null;
    $("chat-send").disabled = false;
    $("chat-stop").disabled = true;
  }
}

function resetChat() {
  if (state.chatAbort) state.chatAbort.abort();
  state.history = [];
  $("chat-log").replaceChildren();
  addMessage("note", "New conversation.");
}

// ------------------------------------------------------------------ compare & rate
function sampleSettings(n) {
  const seedText = $(`cmp${n}-seed`).value.trim();
  const seed = seedText === "" ? Math.floor(Math.random() * 2 ** 31) : parseInt(seedText, 10);
  return { model: $(`cmp${n}-model`).value || state.model,
           temperature: number(`cmp${n}-temperature`, 1), top_p: number(`cmp${n}-top-p`, 1),
           seed, max_tokens: Math.max(1, Math.round(number("cmp-max-tokens", 128))) };
}

function label(settings) {
  return `${settings.model} · temperature ${settings.temperature}, top-p ${settings.top_p}`;
}

function setRating(enabled) {
  for (const id of ["rate-a", "rate-tie", "rate-b"]) $(id).disabled = !enabled;
}

async function runCompare() {
  const prompt = $("cmp-prompt").value.trim();
  if (!prompt) { $("cmp-status").textContent = "Write a prompt first."; return; }
  const samples = [sampleSettings(1), sampleSettings(2)];
  if (Math.random() < 0.5) samples.reverse();  // blind: which side got which setting is hidden
  state.compare = { prompt, sides: { a: samples[0], b: samples[1] }, answers: { a: "", b: "" } };
  setRating(false);
  $("cmp-run").disabled = true;
  $("cmp-status").textContent = "Generating both answers…";
  for (const side of ["a", "b"]) {
    $(`cmp-${side}-text`).textContent = "";
    $(`cmp-${side}-label`).textContent = "";
  }
  const current = state.compare;
  try {
    await Promise.all(["a", "b"].map((side) => {
      const { max_tokens, ...sampling } = current.sides[side];
      return streamChat({ messages: [{ role: "user", content: prompt }], max_tokens,
                          ...sampling }, (piece) => {
        current.answers[side] += piece;
        $(`cmp-${side}-text`).textContent = current.answers[side];
      });
    }));
    const empty = ["a", "b"].filter((side) => !current.answers[side].trim());
    if (empty.length) {
      $("cmp-status").textContent = "An answer came back empty; generate again to rate.";
    } else {
      $("cmp-status").textContent = "Which answer is better?";
      setRating(true);
    }
  } catch (err) {
    $("cmp-status").textContent = String(err.message || err);
  } finally {
    $("cmp-run").disabled = false;
  }
}

async function rate(winner) {
  const current = state.compare;
  if (!current) return;
  setRating(false);
  try {
    const saved = await api("POST", "/v1/ratings", {
      prompt: current.prompt, input: "", winner,
      answer_a: current.answers.a, answer_b: current.answers.b,
      model_a: label(current.sides.a), model_b: label(current.sides.b),
      settings_a: current.sides.a, settings_b: current.sides.b,
    });
    for (const side of ["a", "b"]) $(`cmp-${side}-label`).textContent = "— " + label(current.sides[side]);
    const verdict = winner === "tie" ? "a tie" : `${winner.toUpperCase()} is better`;
    $("cmp-status").textContent = `Saved (${verdict}) to ${saved.file}`;
    state.compare = null;
  } catch (err) {
    $("cmp-status").textContent = String(err.message || err);
    setRating(true);
  }
}

// ------------------------------------------------------------------ results
async function loadResults() {
  const body = $("results-table").querySelector("tbody");
  try {
    const summary = await api("GET", "/v1/ratings/summary");
    body.replaceChildren();
    for (const row of summary.models) {
      const tr = document.createElement("tr");
      const cells = [row.model, row.games, row.wins, row.losses, row.ties];
      cells.forEach((value, i) => {
        const td = document.createElement("td");
        td.textContent = String(value);
        if (i) td.className = "num";
        tr.appendChild(td);
      });
      const rateCell = document.createElement("td");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.round(row.win_rate * 100)}px`;
      rateCell.append(bar, `${(row.win_rate * 100).toFixed(1)}%`);
      tr.appendChild(rateCell);
      body.appendChild(tr);
    }
    if (!summary.models.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 6;
      td.textContent = "No ratings yet: rate some answers in the Compare tab.";
      tr.appendChild(td);
      body.appendChild(tr);
    }
    const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
    $("results-files").textContent = `${plural(summary.pairs, "preference pair")} in ` +
      `${summary.file}; ${plural(summary.ties, "tie")} in ${summary.ties_file}`;
    $("results-dpo").textContent =
      `scratchllm finetune dpo --model DIR --data ${summary.file} --out runs/dpo`;
  } catch (err) {
    $("results-files").textContent = String(err.message || err);
  }
}

// ------------------------------------------------------------------ attention
async function loadAttentionShape() {
  if ($("att-layer").options.length) return;
  try {
    const shape = await api("GET", "/v1/attention");
    for (const [id, count] of [["att-layer", shape.n_layers], ["att-head", shape.n_heads]]) {
      for (let i = 0; i < count; i++) $(id).add(new Option(String(i), String(i)));
    }
    $("att-info").textContent = `${shape.n_layers} layers × ${shape.n_heads} heads; ` +
      `prompts up to ${shape.max_tokens} tokens`;
  } catch (err) {
    $("att-info").textContent = String(err.message || err);
  }
}

async function showAttention() {
  await loadAttentionShape();
  try {
    const result = await api("POST", "/v1/attention", {
      prompt: $("att-prompt").value, layer: parseInt($("att-layer").value || "0", 10),
      head: parseInt($("att-head").value || "0", 10),
    });
    drawHeatmap(result);
    $("att-info").textContent = `layer ${result.layer}, head ${result.head}: ` +
      `${result.tokens.length} tokens (rows attend to columns; darker = more attention)`;
  } catch (err) {
    $("att-info").textContent = String(err.message || err);
  }
}

function shown(token) {  // spaces as "·", newlines as "\n": a token's edges stay visible
  return JSON.stringify(token).slice(1, -1).replace(/\\"/g, '"').replace(/ /g, "·");
}

function drawHeatmap({ tokens, weights }) {
  const canvas = $("att-canvas");
  const ctx = canvas.getContext("2d");
  const n = tokens.length;
  const cell = Math.max(10, Math.min(34, Math.floor(640 / n)));
  ctx.font = "12px system-ui, sans-serif";
  const labels = tokens.map((t, i) => `${i} ${shown(t)}`.slice(0, 18));
  const margin = Math.ceil(Math.max(...labels.map((l) => ctx.measureText(l).width))) + 8;
  canvas.width = margin + n * cell + 2;
  canvas.height = margin + n * cell + 2;
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = "#1d2330";
  ctx.textBaseline = "middle";
  labels.forEach((text, i) => {
    ctx.textAlign = "right";
    ctx.fillText(text, margin - 4, margin + i * cell + cell / 2);  // rows: queries
    ctx.save();
    ctx.translate(margin + i * cell + cell / 2, margin - 4);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left";
    ctx.fillText(text, 0, 0);  // columns: keys
    ctx.restore();
  });
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const w = j <= i ? weights[i][j] : null;
      ctx.fillStyle = w === null ? "#eef1f5" : heat(w);
      ctx.fillRect(margin + j * cell, margin + i * cell, cell - 1, cell - 1);
    }
  }
  canvas.dataset.tokens = String(n);
  canvas.onmousemove = (event) => {
    const rect = canvas.getBoundingClientRect();
    const j = Math.floor((event.clientX - rect.left - margin) / cell);
    const i = Math.floor((event.clientY - rect.top - margin) / cell);
    if (i >= 0 && i < n && j >= 0 && j <= i) {
      canvas.title = `"${shown(tokens[i])}" → "${shown(tokens[j])}": ${weights[i][j].toFixed(3)}`;
    }
  };
}

function heat(w) {  // 0 -> white, 1 -> deep blue
  const t = Math.sqrt(Math.min(1, Math.max(0, w)));
  const mix = (a, b) => Math.round(a + (b - a) * t);
  return `rgb(${mix(255, 20)}, ${mix(255, 60)}, ${mix(255, 170)})`;
}

// ------------------------------------------------------------------ start
async function loadModel() {
  try {
    const models = await api("GET", "/v1/models");
    state.models = models.data.map((m) => m.id);
    state.model = state.models[0];
    $("model-name").textContent = state.models.join(" and ");
    state.models.forEach((id, i) => {  // a second model (--compare-model) is sample 2's default
      for (const n of [1, 2]) {
        const select = $(`cmp${n}-model`);
        if (![...select.options].some((o) => o.value === id)) select.add(new Option(id, id));
        if (n === 2 && i === 1) select.value = id;
      }
    });
    status("ready");
  } catch (err) {
    status(String(err.message || err), true);
  }
}

$("api-key").value = sessionStorage.getItem("scratchllm-key") || "";
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem("scratchllm-key", $("api-key").value.trim());
  loadModel();
});
for (const tab of document.querySelectorAll("nav [role=tab]")) {
  tab.addEventListener("click", () => showTab(tab.dataset.tab));
}
$("chat-form").addEventListener("submit", sendChat);
$("chat-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("chat-send").click(); }
});
$("chat-stop").addEventListener("click", () => state.chatAbort && state.chatAbort.abort());
$("chat-reset").addEventListener("click", resetChat);
$("cmp-run").addEventListener("click", runCompare);
for (const winner of ["a", "b", "tie"]) $("rate-" + winner).addEventListener("click", () => rate(winner));
$("results-refresh").addEventListener("click", loadResults);
$("att-run").addEventListener("click", showAttention);
loadModel();
