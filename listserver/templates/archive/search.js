/* The search box: Pagefind's UI over this list's static index. The only script of the
   archive; everything else works without it. */
(function () {
  "use strict";
  var box = document.getElementById("search");
  var me = document.currentScript;
  if (!box || !me) { return; }
  var base = new URL(".", me.src);
  var css = document.createElement("link");
  css.rel = "stylesheet";
  css.href = new URL("pagefind/pagefind-ui.css", base).href;
  document.head.appendChild(css);
  var ui = document.createElement("script");
  ui.src = new URL("pagefind/pagefind-ui.js", base).href;
  ui.onload = function () {
    /* global PagefindUI */
    new PagefindUI({
      element: "#search",
      baseUrl: base.pathname,
      bundlePath: new URL("pagefind/", base).pathname,
      showImages: false,
      showSubResults: true,
      resetStyles: false
    });
  };
  document.head.appendChild(ui);
})();
