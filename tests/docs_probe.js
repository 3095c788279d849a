// tests/test_docs_site.py writes this script into a copy of each page of the built site and opens
// the page in headless Chromium, over file://. Once the page has loaded (and the search has had
// time to answer a query), the script leaves its findings as JSON in <pre id="cropcore-probe">,
// which --dump-dom prints.
window.addEventListener("load", () => {
  const found = { links: [], brokenCode: [], overflowingFormulas: [], covered: [], search: null };
  for (const a of document.querySelectorAll("a[href]")) {
    if (a.href.startsWith("file:")) found.links.push(a.href.split("#")[0]);
  }
  // An identifier (code without spaces) in a table, laid out on more than one line.
  for (const code of document.querySelectorAll(".md-typeset table code")) {
    if (/\s/.test(code.textContent.trim())) continue;
    const lines = new Set([...code.getClientRects()].map((r) => Math.round(r.top)));
    if (lines.size > 1) found.brokenCode.push(code.textContent);
  }
  for (const pre of document.querySelectorAll(".md-typeset pre")) {
    const code = pre.querySelector("code") || pre;
    if (pre.closest(".language-text") && code.scrollWidth > code.clientWidth + 1) {
      found.overflowingFormulas.push(code.textContent.slice(0, 60));
    }
    // A character of code under the copy button.
    const button = pre.querySelector(".md-clipboard");
    if (!button) continue;
    const b = button.getBoundingClientRect();
    const walker = document.createTreeWalker(code, NodeFilter.SHOW_TEXT);
    const range = document.createRange();
    let hit = null;
    while (!hit && walker.nextNode()) {
      const node = walker.currentNode;
      for (let i = 0; i < node.length && !hit; i++) {
        if (/\s/.test(node.data[i])) continue;
        range.setStart(node, i);
        range.setEnd(node, i + 1);
        for (const r of range.getClientRects()) {
          if (r.left < b.right && r.right > b.left && r.top < b.bottom && r.bottom > b.top) {
            hit = code.textContent.slice(0, 60);
          }
        }
      }
    }
    if (hit) found.covered.push(hit);
  }
  const input = document.querySelector("input.md-search__input");
  const report = () => {
    found.search = document.querySelectorAll(".md-search-result__item").length;
    const pre = document.createElement("pre");
    pre.id = "cropcore-probe";
    pre.textContent = JSON.stringify(found);
    document.body.appendChild(pre);
  };
  if (!input) return report();
  input.focus();
  input.value = "crop_and_resize";
  input.dispatchEvent(new Event("input", { bubbles: true }));
  input.dispatchEvent(new KeyboardEvent("keyup", { bubbles: true, key: "e" }));
  setTimeout(report, 3000);
});
