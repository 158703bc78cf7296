// The dashboard's own behaviour: the one-click sign-in link, and workflow graphs drawn with
// Cytoscape (dagre layout) whenever a page or a live part of it is rendered.
"use strict";

const STATUS_COLOURS = {
  "not started": "#d0d5dd",
  pending: "#b2ccff",
  queued: "#fec84b",
  assigned: "#fdb022",
  running: "#53b1fd",
  succeeded: "#32d583",
  failed: "#f97066",
  timed_out: "#f97066",
  cancelled: "#98a2b3",
  skipped: "#e4e7ec",
};

function signInFromLink() {
  const form = document.getElementById("sign-in");
  const token = decodeURIComponent(window.location.hash.slice(1));
  if (!form || !token) return;
  // The token came in the link's fragment, which no server saw; keep it out of the history too.
  history.replaceState(null, "", window.location.pathname + window.location.search);
  form.elements.token.value = token;
  form.submit();
}

function drawGraphs(root) {
  if (typeof cytoscape === "undefined") return;
  for (const box of root.querySelectorAll(".dag[data-graph]")) {
    const graph = JSON.parse(box.dataset.graph);
    const elements = [
      ...graph.nodes.map((node) => ({ data: { ...node, label: `${node.id}\n${node.status}` } })),
      ...graph.edges.map((edge) => ({ data: { id: `${edge.source}->${edge.target}`, ...edge } })),
    ];
    const cy = cytoscape({
      container: box,
      elements,
      autoungrabify: true,
      userZoomingEnabled: false,
      maxZoom: 1.2,
      layout: { name: "dagre", rankDir: "LR", nodeSep: 24, rankSep: 60 },
      style: [
        {
          selector: "node",
          style: {
            label: "data(label)",
            "text-wrap": "wrap",
            "text-valign": "center",
            "font-size": 12,
            shape: "round-rectangle",
            width: 130,
            height: 44,
            "border-width": 1,
            "border-color": "#667085",
            "background-color": (node) => STATUS_COLOURS[node.data("status")] || "#ffffff",
          },
        },
        { selector: "node[href]", style: { cursor: "pointer" } },
        {
          selector: "edge",
          style: {
            width: 2,
            "line-color": "#98a2b3",
            "target-arrow-color": "#98a2b3",
            "target-arrow-shape": "triangle",
            "curve-style": "bezier",
          },
        },
      ],
    });
    cy.on("tap", "node", (event) => {
      const href = event.target.data("href");
      if (href) window.location.assign(href);
    });
    box.dataset.drawn = graph.nodes.map((node) => `${node.id}:${node.status}`).join(",");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  signInFromLink();
  drawGraphs(document);
});
document.addEventListener("htmx:afterSwap", (event) => drawGraphs(event.target));

// A live refresh would untick what the user ticked: the runs table holds still while any run
// is ticked.
document.addEventListener("htmx:beforeRequest", (event) => {
  if (event.detail.elt.id === "runs" && document.querySelector("input[name=run_id]:checked")) {
    event.preventDefault();
  }
});
// Changing every run a filter matches asks first.
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-confirm]");
  if (button && !window.confirm(button.dataset.confirm)) event.preventDefault();
});
document.addEventListener("change", (event) => {
  if (event.target.id !== "tick-all") return;
  for (const box of document.querySelectorAll("input[name=run_id]")) {
    box.checked = event.target.checked;
  }
});
