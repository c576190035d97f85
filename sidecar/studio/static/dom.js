// Small DOM helpers: h() builds elements (text is always set as text, never parsed as HTML).
import { explain } from "./messages.js";

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "ratio") el.style.aspectRatio = value;
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// A passing note; an error (anything with a code) is said as messages.js says it, with its fix.
export function toast(message, kind = "info") {
  if (message && message.code === "daemon_offline") return; // the offline banner says it, once
  const box = document.getElementById("toasts");
  const item = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" },
    typeof message === "object" && message !== null && !(message instanceof Node) ? problem(message, "span") : message);
  box.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
}

// An error in the artist's words, with the button that fixes it when there is one.
export function problem(err, tag = "p") {
  const { code, text, fix } = explain(err);
  return h(tag, { class: "error problem", dataset: { code } }, text,
    fix ? [" ", h("a", { class: "button small fix", href: fix.href }, fix.label)] : null);
}

// "12 s ago" that stays true: app.js ticks every <time class="ago"> on the page.
export function timeAgo(iso) {
  return iso ? h("time", { class: "ago", datetime: iso, title: new Date(iso).toLocaleString() }, ago(iso)) : null;
}

export function tickTimes(root = document) {
  for (const el of root.querySelectorAll("time.ago[datetime]")) el.textContent = ago(el.getAttribute("datetime"));
}

export function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

export function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 60) return `${Math.round(value)} s`;
  if (value < 3600) return `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
  return `${Math.floor(value / 3600)} h ${Math.round((value % 3600) / 60)} min`;
}

// An image in a box of fixed aspect ratio: the layout does not move while it loads.
export function picture(src, width, height, alt = "", extra = {}) {
  const box = h("div", { class: "pic", ratio: `${width || 2} / ${height || 3}`, ...extra });
  if (src) {
    const img = h("img", { src, alt, loading: "lazy", decoding: "async" });
    img.addEventListener("load", () => box.classList.add("loaded"));
    box.append(img);
  }
  return box;
}

export function field(label, control, hint) {
  return h("label", { class: "field" }, h("span", { class: "label" }, label), control,
    hint ? h("small", { class: "hint" }, hint) : null);
}
