// A Worker for pages opened over file://, where browsers refuse to start one, so that the search
// works in a site read from disk: the worker's script runs in a hidden iframe of the page instead.
// (The offline plugin would load the iframe-worker package from unpkg.com, out of reach offline;
// it leaves a polyfill whose name says iframe-worker in place of its own.)
(function () {
  if (location.protocol !== "file:") return;

  class FileWorker extends EventTarget {
    constructor(url) {
      super();
      this.onmessage = null;
      this.ready = false;
      this.pending = [];
      const iframe = document.createElement("iframe");
      iframe.hidden = true;
      iframe.setAttribute("aria-hidden", "true");
      document.body.appendChild(iframe);
      const scope = iframe.contentWindow;
      this.scope = scope;
      // Inside the worker, postMessage answers the page.
      scope.postMessage = (data) => {
        const event = new MessageEvent("message", { data });
        this.dispatchEvent(event);
        if (this.onmessage) this.onmessage(event);
      };
      const script = scope.document.createElement("script");
      script.src = new URL(url, location.href).href;
      script.onload = () => {
        this.ready = true;
        for (const data of this.pending) this.deliver(data);
        this.pending = [];
      };
      scope.document.head.appendChild(script);
    }

    deliver(data) {
      setTimeout(() => this.scope.dispatchEvent(new this.scope.MessageEvent("message", { data })));
    }

    postMessage(data) {
      if (this.ready) this.deliver(data);
      else this.pending.push(data);
    }

    terminate() {}
  }

  window.Worker = FileWorker;
})();
