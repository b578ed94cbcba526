// Zoom and pan for the communication map: the server draws the whole SVG, this only
// moves its viewBox. Without this script the map is a plain scrollable picture.
// No inline styles or HTML from the server: the page's CSP holds.
"use strict";
(function () {
  const MIN_SCALE = 0.04;
  const MAX_SCALE = 4;
  const STEP = 1.25;
  const READABLE = 0.6; // the smallest first scale: 12 px text at 7 px
  const DRAG_PX = 4; // a press that moves less than this is a click

  function setup(box, tools) {
    const svg = box.querySelector("svg.commap");
    if (!svg || !svg.viewBox || !svg.viewBox.baseVal) { return; }
    const W = svg.viewBox.baseVal.width;
    const H = svg.viewBox.baseVal.height;
    box.classList.add("interactive");
    tools.hidden = false;
    svg.setAttribute("width", "100%");
    svg.setAttribute("height", "100%");
    svg.setAttribute("preserveAspectRatio", "xMinYMin meet");
    const view = { x: 0, y: 0, s: 1 }; // top-left in map units, screen px per map unit

    function screen() { return { w: box.clientWidth || 1, h: box.clientHeight || 1 }; }

    function apply() {
      const sc = screen();
      const w = sc.w / view.s;
      const h = sc.h / view.s;
      // keep some of the map in sight whatever the drag
      view.x = Math.min(Math.max(view.x, Math.min(0, W - w) - w / 2), Math.max(0, W - w) + w / 2);
      view.y = Math.min(Math.max(view.y, Math.min(0, H - h) - h / 2), Math.max(0, H - h) + h / 2);
      svg.setAttribute("viewBox", [view.x, view.y, w, h].map(function (v) {
        return v.toFixed(2);
      }).join(" "));
      svg.dataset.scale = view.s.toFixed(4);
    }

    function zoomAt(factor, mx, my) { // (mx, my): the map point that stays put
      const s = Math.min(MAX_SCALE, Math.max(MIN_SCALE, view.s * factor));
      view.x = mx - (mx - view.x) * view.s / s;
      view.y = my - (my - view.y) * view.s / s;
      view.s = s;
      apply();
    }

    function centre() {
      const sc = screen();
      return [view.x + sc.w / view.s / 2, view.y + sc.h / view.s / 2];
    }

    function fit() {
      const sc = screen();
      view.s = Math.min(MAX_SCALE, Math.max(MIN_SCALE, Math.min(sc.w / W, sc.h / H)));
      view.x = (W - sc.w / view.s) / 2;
      view.y = 0;
      apply();
    }

    const actions = {
      in: function () { const c = centre(); zoomAt(STEP, c[0], c[1]); },
      out: function () { const c = centre(); zoomAt(1 / STEP, c[0], c[1]); },
      fit: fit,
      actual: function () { const c = centre(); zoomAt(1 / view.s, c[0], c[1]); },
    };
    for (const button of tools.querySelectorAll("button[data-zoom]")) {
      button.addEventListener("click", function () { actions[button.dataset.zoom](); });
    }

    function mapPoint(ev) {
      const r = box.getBoundingClientRect();
      return [view.x + (ev.clientX - r.left) / view.s, view.y + (ev.clientY - r.top) / view.s];
    }

    box.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      const p = mapPoint(ev);
      zoomAt(Math.exp(-ev.deltaY * 0.0015), p[0], p[1]);
    }, { passive: false });

    let drag = null;
    let dragged = false;
    box.addEventListener("pointerdown", function (ev) {
      if (ev.button !== 0 || ev.target.closest("a")) { return; }
      drag = { id: ev.pointerId, x: ev.clientX, y: ev.clientY, vx: view.x, vy: view.y };
      dragged = false;
    });
    box.addEventListener("pointermove", function (ev) {
      if (!drag || ev.pointerId !== drag.id) { return; }
      const dx = ev.clientX - drag.x;
      const dy = ev.clientY - drag.y;
      if (!dragged && Math.abs(dx) + Math.abs(dy) < DRAG_PX) { return; }
      if (!dragged) { box.setPointerCapture(ev.pointerId); box.classList.add("dragging"); }
      dragged = true;
      view.x = drag.vx - dx / view.s;
      view.y = drag.vy - dy / view.s;
      apply();
    });
    function release(ev) {
      if (drag && ev.pointerId === drag.id) {
        drag = null;
        box.classList.remove("dragging");
      }
    }
    box.addEventListener("pointerup", release);
    box.addEventListener("pointercancel", release);

    // Click a node: only its edges and peers stay bright. Click it again, or the
    // background, or press Escape: everything again.
    let focused = null;
    function unfocus() {
      focused = null;
      svg.classList.remove("focus");
      for (const el of svg.querySelectorAll(".on")) { el.classList.remove("on"); }
    }
    function focus(ip) {
      unfocus();
      focused = ip;
      svg.classList.add("focus");
      const peers = new Set([ip]);
      for (const edge of svg.querySelectorAll("g.edge, .edge-line")) {
        if (edge.dataset.master === ip || edge.dataset.outstation === ip) {
          edge.classList.add("on");
          peers.add(edge.dataset.master);
          peers.add(edge.dataset.outstation);
        }
      }
      for (const node of svg.querySelectorAll("g.node")) {
        if (peers.has(node.dataset.ip)) { node.classList.add("on"); }
      }
    }
    box.addEventListener("click", function (ev) {
      if (dragged) { dragged = false; return; }
      const node = ev.target.closest("g.node");
      if (node && node.dataset.ip !== focused) { focus(node.dataset.ip); } else { unfocus(); }
    });

    box.addEventListener("keydown", function (ev) {
      const sc = screen();
      const pan = 0.2 * sc.w / view.s;
      const keys = {
        "+": actions.in, "=": actions.in, "-": actions.out, "0": fit, "1": actions.actual,
        Escape: unfocus,
        ArrowLeft: function () { view.x -= pan; apply(); },
        ArrowRight: function () { view.x += pan; apply(); },
        ArrowUp: function () { view.y -= pan; apply(); },
        ArrowDown: function () { view.y += pan; apply(); },
      };
      if (keys[ev.key]) { ev.preventDefault(); keys[ev.key](); }
    });

    window.addEventListener("resize", apply);
    // First view: the whole width, never larger than life, and never so small that
    // the labels cannot be read (a wide map starts at its top left; "whole map" shows all).
    view.s = Math.min(1, Math.max(READABLE, screen().w / W));
    // A small map gets a box its size, not an empty screenful (CSSOM: CSP allows it).
    const tall = Math.ceil(H * view.s) + 8;
    if (tall < box.clientHeight) { box.style.height = Math.max(tall, 240) + "px"; }
    apply();
  }

  document.addEventListener("DOMContentLoaded", function () {
    const box = document.getElementById("map");
    const tools = document.getElementById("map-tools");
    if (box && tools) { setup(box, tools); }
  });
})();
