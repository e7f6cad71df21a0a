// sensorium's page: search the collection, and drop a file to search by example, tag, caption or ask.
"use strict";

const $ = (id) => document.getElementById(id);
let dropped = null; // {name, type, dataUrl}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value || localStorage.getItem("sensorium-key");
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function post(path, body) {
  const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (response.status === 401) $("key-box").hidden = false;
  const data = await response.json().catch(() => ({ error: { message: response.statusText } }));
  if (!response.ok) throw new Error((data.error && data.error.message) || response.statusText);
  return data;
}

function seconds(t) {
  if (t === null || t === undefined) return "";
  const m = Math.floor(t / 60), s = (t - 60 * m).toFixed(1).padStart(4, "0");
  return `${m}:${s}`;
}

function mediaUrl(path) {
  return "/v1/media?path=" + encodeURIComponent(path);
}

function showResults(results) {
  const box = $("results");
  box.innerHTML = "";
  if (!results.length) { status("no results"); return; }
  status(`${results.length} results`);
  for (const hit of results) {
    const card = document.createElement("article");
    card.className = "hit";
    card.dataset.path = hit.path;
    const start = hit.start || 0;
    let player;
    if (hit.modality === "image" || hit.modality === "video") {
      // the frame at the matching moment, made by the server (any codec); a video plays from there on a click
      player = document.createElement("img");
      player.src = "/v1/thumbnail?path=" + encodeURIComponent(hit.path) + "&t=" + start;
      player.alt = hit.path;
      if (hit.modality === "video") {
        player.title = "play from " + seconds(start);
        player.className = "thumb";
        player.addEventListener("click", () => {
          const video = document.createElement("video");
          video.src = mediaUrl(hit.path) + "#t=" + start;
          video.controls = true;
          video.autoplay = true;
          player.replaceWith(video);
        });
      }
    } else {
      player = document.createElement("audio");
      player.src = mediaUrl(hit.path) + "#t=" + start;
      player.controls = true;
      player.preload = "metadata";
    }
    player.classList.add("media");
    card.appendChild(player);
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = hit.path.split("/").pop();
    name.title = hit.path;
    const meta = document.createElement("div");
    meta.className = "meta";
    const span = hit.start === null || hit.start === undefined ? "" : `${seconds(hit.start)}–${seconds(hit.end)} · `;
    meta.textContent = `${hit.modality} · ${span}score ${Number(hit.score).toFixed(3)}`;
    card.append(name, meta);
    box.appendChild(card);
  }
}

async function search(event) {
  event.preventDefault();
  const query = $("query").value.trim();
  if (!query) return;
  status("searching…");
  try {
    const body = { query, top_k: 24 };
    if ($("modality").value) body.modality = $("modality").value;
    showResults((await post("/v1/search", body)).results);
  } catch (err) { status(err.message, true); }
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve({ name: file.name, type: file.type, dataUrl: reader.result });
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function takeFile(file) {
  if (!file) return;
  dropped = await readFile(file);
  $("file-name").textContent = file.name;
  $("actions").hidden = false;
  status(`${file.name} ready`);
}

function kindOf(file) {
  if (file.type.startsWith("image/")) return "image";
  if (file.type.startsWith("video/")) return "video";
  return "audio";
}

function part(file) {
  const kind = kindOf(file);
  if (kind === "audio") {
    const format = (file.name.split(".").pop() || "wav").toLowerCase();
    return { type: "input_audio", input_audio: { data: file.dataUrl.split(",")[1], format } };
  }
  return kind === "image" ? { type: "image_url", image_url: { url: file.dataUrl } }
                          : { type: "video_url", video_url: { url: file.dataUrl } };
}

async function act(action) {
  if (!dropped) return;
  $("answer").hidden = true;
  $("tags").hidden = true;
  try {
    if (action === "like") {
      status("searching by example…");
      showResults((await post("/v1/search", { like: part(dropped), top_k: 24 })).results);
    } else if (action === "tag") {
      status("tagging…");
      const data = await post("/v1/tag", { inputs: [part(dropped)] });
      const list = $("tags");
      list.innerHTML = "";
      for (const t of data.results[0].labels) {
        const li = document.createElement("li");
        li.textContent = `${t.label} ${t.score.toFixed(2)}`;
        list.appendChild(li);
      }
      list.hidden = false;
      status("tags");
    } else if (action === "caption") {
      status("captioning…");
      const data = await post("/v1/caption", { inputs: [part(dropped)] });
      $("answer").textContent = data.results[0].caption;
      $("answer").hidden = false;
      status("caption");
    } else if (action === "ask") {
      await ask();
    }
  } catch (err) { status(err.message, true); }
}

async function ask() {
  const question = $("question").value.trim() || "Describe this.";
  const models = (await (await fetch("/v1/models", { headers: headers() })).json()).data;
  const wantsAudio = kindOf(dropped) === "audio";
  const chat = models.find((m) => (m.tasks || []).includes(wantsAudio ? "transcribe" : "caption"))
            || models.find((m) => (m.tasks || []).includes("ask"));
  if (!chat) throw new Error("no chat model is served here");
  status("answering…");
  const answer = $("answer");
  answer.textContent = "";
  answer.hidden = false;
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(),
    body: JSON.stringify({ model: chat.id, stream: true, max_tokens: 256,
                           messages: [{ role: "user", content: [part(dropped), { type: "text", text: question }] }] }),
  });
  if (!response.ok) {
    const data = await response.json().catch(() => ({}));
    throw new Error((data.error && data.error.message) || response.statusText);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end).replace(/^data: /, "");
      buffer = buffer.slice(end + 2);
      if (event === "[DONE]") { status("answered"); return; }
      const chunk = JSON.parse(event);
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) answer.textContent += delta.content;
    }
  }
  status("answered");
}

$("search-form").addEventListener("submit", search);
$("file").addEventListener("change", (e) => takeFile(e.target.files[0]));
$("api-key").addEventListener("change", (e) => localStorage.setItem("sensorium-key", e.target.value));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  takeFile(e.dataTransfer.files[0]);
});
for (const button of document.querySelectorAll("#actions button")) {
  button.addEventListener("click", () => act(button.dataset.action));
}
