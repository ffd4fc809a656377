/*
 * dunningd in-app banner. One file, no build step, no framework.
 *
 *   <script src="https://inbox.example.com/banner.js"
 *           data-customer="cus_123"
 *           data-token="<the customer's token, from your backend>"
 *           async></script>
 *
 * Shows the customer's newest unread dunning message at the top of the page,
 * with its call-to-action link, updates live (Server-Sent Events), and lets
 * the customer dismiss it. Style it with the #dunningd-banner selectors;
 * `data-unread` on #dunningd-banner says how many unread messages there are.
 *
 * What a message says comes from billing events, so from customers:
 * - Text is only ever set with textContent: nothing from a message is parsed
 *   as HTML, anywhere in this file.
 * - A link is only made clickable if it resolves to an http: or https: URL
 *   (safeLink); anything else (javascript:, data:, vbscript:, in any case,
 *   behind spaces or control characters) leaves the banner without a link,
 *   whatever the inbox answered.
 * - Shown or not is the element's `display`, set inline together with
 *   `hidden` (setShown): an inline display would otherwise override
 *   `hidden`, and so would a page's own stylesheet.
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

  var banner = document.createElement("div");
  banner.id = "dunningd-banner";
  banner.setAttribute("role", "alert");
  banner.style.cssText =
    "position:sticky;top:0;z-index:2147483000;gap:1em;align-items:center;" +
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
  action.rel = "noopener noreferrer";
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

  /* Shows or hides an element for sure: `hidden` for assistive technology,
   * an inline `display` (which wins over the page's styles) for the eye. */
  function setShown(element, shown, display) {
    element.hidden = !shown;
    element.style.setProperty("display", shown ? display : "none", "important");
  }
  setShown(banner, false, "flex");

  /* The absolute URL a message's link may open, or null: only http: and
   * https: (a relative link resolves against the page). The browser's own
   * URL parser decides the scheme, exactly as it would on a click. */
  function safeLink(raw) {
    if (typeof raw !== "string" || raw === "") return null;
    var url;
    try {
      url = new URL(raw, document.baseURI);
    } catch (e) {
      return null;
    }
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  }

  var current = null;

  function show(messages) {
    if (!Array.isArray(messages)) messages = [];
    banner.setAttribute("data-unread", String(messages.length));
    current = messages.length ? messages[0] : null;
    if (!current) {
      setShown(banner, false, "flex");
      return;
    }
    title.textContent = String(current.title == null ? "" : current.title);
    body.textContent = String(current.body == null ? "" : current.body);
    var link = safeLink(current.url);
    if (link) action.href = link;
    else action.removeAttribute("href");
    setShown(action, !!link, "inline");
    banner.setAttribute("data-message-id", String(current.id));
    setShown(banner, true, "flex");
  }

  close.addEventListener("click", function () {
    if (!current) return;
    var id = Number(current.id);
    setShown(banner, false, "flex");
    if (!Number.isSafeInteger(id)) return;
    fetch(inbox + "/messages/" + id + "/dismiss", {
      method: "POST",
      headers: { Authorization: "Bearer " + token },
    });
  });

  function attach() {
    document.body.insertBefore(banner, document.body.firstChild);
    // EventSource cannot send headers: the stream takes the token in its URL.
    var events = new EventSource(inbox + "/stream?token=" + encodeURIComponent(token));
    events.addEventListener("inbox", function (event) {
      var messages;
      try {
        messages = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      show(messages);
    });
  }

  if (document.body) attach();
  else document.addEventListener("DOMContentLoaded", attach);
})();
