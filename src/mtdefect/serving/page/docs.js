// Swagger UI for /docs.json, offline and without third-party requests:
// - validatorUrl null: the default sends the document's URL to validator.swagger.io;
// - images in the document's Markdown that live on another origin are dropped before rendering
//   (BentoML's default description embeds badges from img.shields.io, readthedocs.org, badgen.net).
"use strict";

const FOREIGN_IMAGE = /!\[[^\]]*\]\(\s*<?(?:[a-z][a-z0-9+.-]*:)?\/\/[^)]*\)/gi;
const FOREIGN_IMG_TAG = /<img\b[^>]*\bsrc\s*=\s*["']?(?:[a-z][a-z0-9+.-]*:)?\/\/[^>]*>/gi;
const EMPTY_LINK = /\[\s*\]\([^)]*\)/g;

function withoutForeignImages(node) {
  if (typeof node === "string") {
    return node.replace(FOREIGN_IMAGE, "").replace(FOREIGN_IMG_TAG, "").replace(EMPTY_LINK, "");
  }
  if (Array.isArray(node)) return node.map(withoutForeignImages);
  if (node && typeof node === "object") {
    const out = {};
    for (const [key, value] of Object.entries(node)) {
      out[key] = key === "description" || typeof value === "object" ? withoutForeignImages(value) : value;
    }
    return out;
  }
  return node;
}

window.addEventListener("load", async function () {
  const target = document.getElementById("swagger-ui");
  let spec;
  try {
    const response = await fetch("/docs.json", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    spec = withoutForeignImages(await response.json());
  } catch (err) {
    target.textContent = "Could not load /docs.json: " + err;
    return;
  }
  window.ui = SwaggerUIBundle({
    spec: spec,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
  });
});
