// Live updates: one server-sent-event stream per page; each notice becomes a body event that the htmx
// elements listen to (hx-trigger="pulse-alert from:body", ...), so they fetch their fragment again.
(function () {
  "use strict";
  function connect() {
    const source = new EventSource("/events");
    source.onopen = function () { document.body.dataset.live = "open"; };
    source.onerror = function () { document.body.dataset.live = "reconnecting"; };
    source.onmessage = function (message) {
      let notice;
      try { notice = JSON.parse(message.data); } catch (e) { return; }
      htmx.trigger(document.body, "pulse-" + notice.type, notice);
      if (notice.customer_id && notice.customer_id === document.body.dataset.customer) {
        htmx.trigger(document.body, "pulse-customer", notice);
      }
    };
  }
  if (document.body.dataset.live !== undefined) { connect(); }
})();
