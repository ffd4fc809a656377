/*
 * dunningd in-app banner. One file, no build step, no framework.
 *
 *   <script src="https://inbox.example.com/banner.js"
 *           data-customer="cus_123"
 *           data-token="<hex HMAC-SHA256(secret, customer id), from your backend>"
 *           async></script>
 *
 * Shows the customer's newest unread dunning message at the top of the page,
 * with its call-to-action link, updates live (Server-Sent Events), and lets
 * the customer dismiss it. Style it with the #dunningd-banner selectors.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) return;
  var base = new URL(script.src).origin;
  var customer = script.getAttribute("data-customer");
  var token = script.getAttribute("data-token");
  if (!customer || !token) {
    console.warn("dunningd banner: data-customer and data-token are required");
    return;
  }
  var inbox = base + "/v1/customers/" + encodeURIComponent(customer);
  var auth = "token=" + encodeURIComponent(token);

  var banner = document.createElement("div");
  banner.id = "dunningd-banner";
  banner.setAttribute("role", "alert");
  banner.hidden = true;
  banner.style.cssText =
    "position:sticky;top:0;z-index:2147483000;display:flex;gap:1em;align-items:center;" +
    "padding:.75em 1em;background:#fff4e5;color:#4a2b00;border-bottom:1px solid #f0c36d;" +
    "font:15px/1.4 system-ui,sans-serif";
  var text = document.createElement("div");
  text.style.flex = "1";
  var title = document.createElement("strong");
  title.className = "dunningd-title";
  var body = document.createElement("span");
  body.className = "dunningd-body";
  body.style.marginLeft = ".5em";
  text.appendChild(title);
  text.appendChild(body);
  var action = document.createElement("a");
  action.className = "dunningd-action";
  action.textContent = "Update payment method";
  action.style.cssText = "font-weight:600;color:#8a4b00";
  var close = document.createElement("button");
  close.className = "dunningd-dismiss";
  close.type = "button";
  close.setAttribute("aria-label", "Dismiss");
  close.textContent = "\u00d7";
  close.style.cssText = "border:0;background:none;font-size:1.4em;cursor:pointer;color:inherit";
  banner.appendChild(text);
  banner.appendChild(action);
  banner.appendChild(close);

  var current = null;

  function show(messages) {
    current = messages.length ? messages[0] : null;
    if (!current) {
      banner.hidden = true;
      return;
    }
    title.textContent = current.title;
    body.textContent = current.body;
    action.hidden = !current.url;
    if (current.url) action.href = current.url;
    banner.setAttribute("data-message-id", String(current.id));
    banner.hidden = false;
  }

  close.addEventListener("click", function () {
    if (!current) return;
    var id = current.id;
    banner.hidden = true;
    fetch(inbox + "/messages/" + id + "/dismiss?" + auth, { method: "POST" });
  });

  function attach() {
    document.body.insertBefore(banner, document.body.firstChild);
    var events = new EventSource(inbox + "/stream?" + auth);
    events.addEventListener("inbox", function (event) {
      show(JSON.parse(event.data));
    });
  }

  if (document.body) attach();
  else document.addEventListener("DOMContentLoaded", attach);
})();
