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

// A live refresh must not undo what the user is typing. The customer page's action forms are inside the fragment
// that a notice re-fetches (htmx GET), and a notice follows every action: the user's own, seconds later, or a
// colleague's. Without this, an outcome picked or a note typed in that moment was reset to the defaults, and
// "Resolve" then sent the default outcome. Each field is matched by its form's target (the same alert) and its name;
// a form for another alert starts empty. The user's own submissions (POST) replace the fragment as they are.
(function () {
  "use strict";
  const kept = new WeakMap();
  const FIELDS = "form[hx-post] input[name], form[hx-post] select[name], form[hx-post] textarea[name]";
  function key(field) {
    const form = field.closest("form[hx-post]");
    return form && field.name ? form.getAttribute("hx-post") + " " + field.name : null;
  }
  function isRefresh(detail) {
    return detail.requestConfig && detail.requestConfig.verb === "get";
  }
  document.addEventListener("htmx:beforeSwap", function (event) {
    const detail = event.detail;
    if (!isRefresh(detail)) { return; }
    const values = new Map();
    detail.target.querySelectorAll(FIELDS)
      .forEach(function (field) {
        const k = key(field);
        if (k) { values.set(k, field.value); }
      });
    if (values.size === 0) { return; }
    const active = document.activeElement;
    const focused = active && detail.target.contains(active) ? key(active) : null;
    const selection = focused && typeof active.selectionStart === "number"
      ? [active.selectionStart, active.selectionEnd] : null;
    kept.set(detail.target, { values: values, focused: focused, selection: selection });
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    const target = event.detail.target;
    const saved = kept.get(target);
    if (!saved) { return; }
    kept.delete(target);
    target.querySelectorAll(FIELDS)
      .forEach(function (field) {
        const k = key(field);
        if (k && saved.values.has(k)) { field.value = saved.values.get(k); }
        if (k && k === saved.focused) {
          field.focus();
          if (saved.selection && typeof field.setSelectionRange === "function") {
            try { field.setSelectionRange(saved.selection[0], saved.selection[1]); } catch (e) { /* no caret */ }
          }
        }
      });
  });
})();
