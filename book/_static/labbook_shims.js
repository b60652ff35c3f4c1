// Small fixes for executed notebook outputs in the built pages (loaded before require.js).
//
// 1. ipywidgets 8 typesets widget labels through MathJax 2's MathJax.Hub.Queue, but the book loads
//    MathJax 3, which has no Hub: give it one that typesets with the MathJax 3 API.
(function () {
  function patch() {
    var mj = window.MathJax;
    if (!mj || !mj.version || mj.Hub) return;
    mj.Hub = {
      Queue: function (job) {
        var el = job && job[2];
        if (typeof mj.typesetPromise === "function") {
          mj.typesetPromise(el ? [el] : undefined).catch(function () {});
        }
      },
    };
  }
  document.addEventListener("DOMContentLoaded", patch);
  window.addEventListener("load", patch);
})();
// 2. The widget manager's bundle finds its Font Awesome files relative to the require.js path of
//    its own module, which defaults to the page's folder: point that path at the CDN folder the
//    bundle is loaded from (the version myst-nb's widget-manager URL names).
if (typeof window.require === "undefined") {
  window.require = {
    paths: {
      "@jupyter-widgets/html-manager/dist": "https://cdn.jsdelivr.net/npm/@jupyter-widgets/html-manager@1.0.6/dist",
    },
  };
}
