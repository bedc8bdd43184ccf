// The mapping studio's page: edits a draft of mapping.yaml (plain JSON), validates it on the server
// as you type, previews a month and saves. No framework, no build step.
"use strict";

const STATE = JSON.parse(document.getElementById("state").textContent);
const CSRF = document.querySelector('meta[name="csrf-token"]').content;
let draft = JSON.parse(JSON.stringify(STATE.mapping));
let fileHash = STATE.file_hash;
let problems = STATE.problems || [];
let validating = null;
const accounts = Object.fromEntries(STATE.sage_accounts.map(a => [a.glacnt, a]));
const OPT = STATE.options;

const $ = (sel) => document.querySelector(sel);
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c.nodeType ? c : String(c));
  return e;
}

async function post(path, body) {
  const resp = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": CSRF},
    body: JSON.stringify(body),
  });
  let data = {};
  try { data = await resp.json(); } catch (e) { data = {ok: false, error: `HTTP ${resp.status}`}; }
  data.status = resp.status;
  return data;
}

// -- pickers ------------------------------------------------------------------------------------

function accountLabel(code) {
  const a = accounts[code];
  const name = (a && a.description) || (draft.chart_of_accounts || {})[code] || "";
  return `${code} ${name}`.trim();
}

function accountPicker(path, value, onPick) {
  const s = el("select", {"data-path": path, class: "account"});
  if (!STATE.sage_ok) s.disabled = true;
  const known = value in accounts;
  if (value !== undefined && value !== null && value !== "" && !known) {
    s.append(el("option", {value, selected: true, disabled: true}, `${value} (not in Sage)`));
  }
  if (value === undefined || value === "") s.append(el("option", {value: "", selected: true, disabled: true}, "choose an account…"));
  for (const a of STATE.sage_accounts) {
    const bad = !a.active ? " (inactive)" : (!a.postable ? " (header)" : "");
    s.append(el("option", {value: a.glacnt, selected: a.glacnt === value, disabled: !!bad},
      `${a.glacnt} ${a.description}${bad}`));
  }
  s.addEventListener("change", () => {
    const code = s.value;
    const a = accounts[code];
    if (!a || !a.active || !a.postable) return;  // belt and braces: disabled options cannot be chosen
    draft.chart_of_accounts = draft.chart_of_accounts || {};
    if (!(code in draft.chart_of_accounts)) draft.chart_of_accounts[code] = a.description;
    onPick(code);
    changed();
  });
  return s;
}

function choice(path, options, value, onPick) {
  const s = el("select", {"data-path": path});
  if (!options.includes(value)) s.append(el("option", {value, selected: true}, value === undefined ? "—" : value));
  for (const o of options) s.append(el("option", {value: o, selected: o === value}, o));
  s.addEventListener("change", () => { onPick(s.value); changed(); });
  return s;
}

function text(path, value, onInput, attrs = {}) {
  const i = el("input", {"data-path": path, value: value ?? "", ...attrs});
  i.addEventListener("input", () => { onInput(i.value); changed(false); });
  return i;
}

function removeBtn(onClick) { return el("button", {class: "link", title: "remove", onclick: () => { onClick(); changed(); }}, "✕"); }

// -- the editor ---------------------------------------------------------------------------------

function section(title, ...rows) { return el("div", {class: "section"}, el("h3", {}, title), ...rows); }

function row(key, ...controls) { return el("div", {class: "row"}, el("span", {class: "key"}, key), ...controls); }

function accountMap(obj, base, keyOptions, addLabel) {
  // A {key: account} map (categories, fees.by_category, fees.by_fee_type): one picker per key, add/remove.
  const rows = Object.keys(obj).map(k => row(k, accountPicker(`${base}.${k}`, obj[k], v => { obj[k] = v; }),
                                               removeBtn(() => { delete obj[k]; })));
  const free = keyOptions.filter(k => !(k in obj));
  if (free.length) {
    const pick = el("select", {"data-add": base}, el("option", {value: ""}, addLabel), ...free.map(k => el("option", {value: k}, k)));
    pick.addEventListener("change", () => { if (pick.value) { obj[pick.value] = ""; changed(); } });
    rows.push(row("", pick));
  }
  return rows;
}

function textMap(obj, base, placeholderKey, placeholderValue) {
  const rows = Object.keys(obj).map(k => row(k, text(`${base}.${k}`, obj[k], v => { obj[k] = v; }), removeBtn(() => { delete obj[k]; })));
  const nk = el("input", {placeholder: placeholderKey, "data-add": base});
  const nv = el("input", {placeholder: placeholderValue});
  rows.push(row("", nk, nv, el("button", {class: "link", onclick: () => {
    if (nk.value.trim()) { obj[nk.value.trim()] = nv.value; changed(); }
  }}, "add")));
  return rows;
}

function renderEditor() {
  const d = draft;
  d.posting_date = d.posting_date || {}; d.tax = d.tax || {}; d.accounts = d.accounts || {};
  d.currencies = d.currencies || {}; d.categories = d.categories || {}; d.type_fallback = d.type_fallback || {};
  d.fees = d.fees || {}; d.fees.by_category = d.fees.by_category || {}; d.fees.by_fee_type = d.fees.by_fee_type || {};
  d.value_maps = d.value_maps || {}; d.defaults = d.defaults || {}; d.conditional_fields = d.conditional_fields || [];
  d.customer_sync = d.customer_sync || {sage_owns: []}; d.chart_of_accounts = d.chart_of_accounts || {};
  const box = $("#editor");
  box.replaceChildren(
    section("Posting",
      row("posting_mode", choice("posting_mode", OPT.posting_mode, d.posting_mode, v => { d.posting_mode = v; })),
      row("revenue_mode", choice("revenue_mode", OPT.revenue_mode, d.revenue_mode, v => { d.revenue_mode = v; })),
      row("base_currency", text("base_currency", d.base_currency, v => { d.base_currency = v; }, {size: 5})),
      row("activity_date", choice("posting_date.activity_date", OPT.activity_date, d.posting_date.activity_date, v => { d.posting_date.activity_date = v; })),
      row("timezone", text("posting_date.timezone", d.posting_date.timezone, v => { d.posting_date.timezone = v; })),
    ),
    section("Tax",
      row("source", choice("tax.source", OPT.tax_source, d.tax.source, v => { d.tax.source = v; })),
      row("metadata_key", text("tax.metadata_key", d.tax.metadata_key, v => { d.tax.metadata_key = v; })),
    ),
    section("Accounts", ...["revenue", "sales_tax", "receivable", "fx_gain_loss", "suspense"].map(k =>
      row(k, accountPicker(`accounts.${k}`, d.accounts[k], v => { d.accounts[k] = v; })))),
    section("Currencies (clearing / bank)", ...Object.keys(d.currencies).map(c => row(c,
      accountPicker(`currencies.${c}.clearing`, d.currencies[c].clearing, v => { d.currencies[c].clearing = v; }),
      accountPicker(`currencies.${c}.bank`, d.currencies[c].bank, v => { d.currencies[c].bank = v; }),
      c === "default" ? null : removeBtn(() => { delete d.currencies[c]; }))),
      (() => {
        const i = el("input", {placeholder: "eur", size: 5, "data-add": "currencies"});
        return row("", i, el("button", {class: "link", onclick: () => {
          const c = i.value.trim().toLowerCase();
          if (c && !(c in d.currencies)) { d.currencies[c] = {...d.currencies.default}; changed(); }
        }}, "add currency"));
      })()),
    section("Categories (the account that takes the amount)",
      ...accountMap(d.categories, "categories", OPT.reporting_categories, "add a reporting category…")),
    section("Type fallback (balance-transaction type → category)",
      ...Object.keys(d.type_fallback).map(t => row(t,
        choice(`type_fallback.${t}`, [...OPT.built_in_categories, ...Object.keys(d.categories)].filter((v, i, a) => a.indexOf(v) === i),
               d.type_fallback[t], v => { d.type_fallback[t] = v; }),
        removeBtn(() => { delete d.type_fallback[t]; }))),
      (() => {
        const pick = el("select", {"data-add": "type_fallback"}, el("option", {value: ""}, "add a type…"),
          ...OPT.bt_types.filter(t => !(t in d.type_fallback)).map(t => el("option", {value: t}, t)));
        pick.addEventListener("change", () => { if (pick.value) { d.type_fallback[pick.value] = "charge"; changed(); } });
        return row("", pick);
      })()),
    section("Fees",
      row("default", accountPicker("fees.default", d.fees.default, v => { d.fees.default = v; })),
      el("div", {class: "muted small"}, "by category (wins):"),
      ...accountMap(d.fees.by_category, "fees.by_category", [...OPT.reporting_categories, ...OPT.built_in_categories].sort(), "add a category…"),
      el("div", {class: "muted small"}, "by fee type:"),
      ...accountMap(d.fees.by_fee_type, "fees.by_fee_type", OPT.fee_types, "add a fee type…")),
    section("Value maps (Stripe value → Sage value)", ...Object.keys(d.value_maps).map(name =>
      el("div", {}, el("div", {class: "muted small"}, name), ...textMap(d.value_maps[name], `value_maps.${name}`, "stripe value", "sage value")))),
    section("Defaults (when the Stripe field is missing)", ...textMap(d.defaults, "defaults", "field", "value")),
    section("Conditional fields", ...d.conditional_fields.map((cf, i) => row(`#${i + 1}`,
      text(`conditional_fields.${i}.sage_field`, cf.sage_field, v => { cf.sage_field = v; }, {placeholder: "sage field"}),
      text(`conditional_fields.${i}.when_present`, cf.when_present, v => { cf.when_present = v; }, {placeholder: "when present"}),
      removeBtn(() => { d.conditional_fields.splice(i, 1); }))),
      row("", el("button", {class: "link", onclick: () => { d.conditional_fields.push({sage_field: "", when_present: ""}); changed(); }}, "add a conditional field"))),
    section("Customer fields Sage owns", row("sage_owns", ...OPT.sage_owns.map(g => {
      const cb = el("input", {type: "checkbox", "data-path": `customer_sync.sage_owns.${g}`, checked: d.customer_sync.sage_owns.includes(g)});
      cb.addEventListener("change", () => {
        const set = new Set(d.customer_sync.sage_owns); cb.checked ? set.add(g) : set.delete(g);
        d.customer_sync.sage_owns = OPT.sage_owns.filter(x => set.has(x)); changed();
      });
      return el("label", {class: "check"}, cb, g);
    }))),
    section("Chart of accounts (the accounts this mapping may use)", ...Object.keys(d.chart_of_accounts).map(code =>
      row(code, el("span", {}, d.chart_of_accounts[code]), removeBtn(() => { delete d.chart_of_accounts[code]; })))),
  );
  markProblems();
}

// -- inventory ----------------------------------------------------------------------------------

const KIND = {reporting_category: "category", balance_transaction_type: "BT type", fee_type: "fee type", currency: "currency"};
let inventoryRows = STATE.inventory, inventoryMonth = STATE.month;

function renderInventory(rows, month) {
  inventoryRows = rows; inventoryMonth = month;
  $("#inventory-period").textContent = month || "";
  const body = $("#inventory tbody");
  body.replaceChildren();
  const susp = rows.filter(r => r.suspense && r.kind === "reporting_category");
  const sum = $("#suspense-summary");
  if (!rows.length) sum.replaceChildren(el("div", {class: "summary-box"}, "Nothing staged for this period (or the marts are not built yet)."));
  else if (susp.length) {
    sum.replaceChildren(el("div", {class: "summary-box bad", id: "suspense-total"},
      "Falls to suspense today: ",
      ...susp.map(r => el("span", {class: "pill bad"}, `${r.value} ${r.amount_text} ${r.currency.toUpperCase()} (${r.count})`))));
  } else sum.replaceChildren(el("div", {class: "summary-box good"}, "Nothing falls to suspense in this period."));
  for (const r of rows) {
    let mapTo = "";
    if (r.mappable) {
      mapTo = accountPicker(`categories.${r.value}`, draft.categories[r.value] ?? "", v => { draft.categories[r.value] = v; });
      mapTo.setAttribute("data-map-category", r.value);
    }
    body.append(el("tr", {class: r.suspense ? "suspense" : "", "data-kind": r.kind, "data-value": r.value, "data-currency": r.currency,
                          "data-amount": r.amount},
      el("td", {}, KIND[r.kind] || r.kind), el("td", {}, el("code", {}, r.value)), el("td", {}, r.currency.toUpperCase()),
      el("td", {class: "num"}, r.count), el("td", {class: "num"}, r.amount_text),
      el("td", {}, r.account ? `${r.account} ${r.account_name || ""}` : ""), el("td", {class: "muted"}, r.route),
      el("td", {}, mapTo)));
  }
}

$("#month").addEventListener("change", async () => {
  const m = $("#month").value;
  const resp = await fetch(`/api/inventory?month=${encodeURIComponent(m)}`, {credentials: "same-origin"});
  const data = await resp.json();
  renderInventory(data.inventory || [], m);
  $("#preview").replaceChildren();
});

// -- validation ---------------------------------------------------------------------------------

function markProblems() {
  document.querySelectorAll(".bad[data-path]").forEach(e => e.classList.remove("bad"));
  for (const p of problems) {
    document.querySelectorAll(`[data-path="${CSS.escape(p.key)}"]`).forEach(e => e.classList.add("bad"));
  }
}

function renderProblems() {
  const box = $("#problems");
  if (!problems.length) {
    box.className = "ok"; box.replaceChildren("✓ The pipeline's validator accepts this mapping; every account is active in Sage.");
  } else {
    box.className = "bad";
    box.replaceChildren(el("div", {}, `${problems.length} problem${problems.length === 1 ? "" : "s"}:`),
      el("ul", {}, ...problems.map(p => el("li", {"data-key": p.key}, el("code", {}, p.key), `: ${p.message}`,
        p.value !== null && p.value !== undefined ? ` (got ${JSON.stringify(p.value)})` : ""))));
  }
  $("#save").disabled = problems.length > 0 || !STATE.sage_ok;
  markProblems();
}

let timer = null;
function changed(rerender = true) {
  if (rerender) { renderEditor(); renderInventory(inventoryRows, inventoryMonth); }
  $("#save").disabled = true;
  clearTimeout(timer);
  timer = setTimeout(validate, 250);
}

async function validate() {
  const mine = JSON.stringify(draft);
  const p = post("/api/validate", {draft});
  validating = p;
  const res = await p;
  if (validating !== p || mine !== JSON.stringify(draft)) return;  // a newer edit is being checked
  problems = res.problems || [{key: "<server>", message: res.error || "validation failed"}];
  renderProblems();
}

// -- preview ------------------------------------------------------------------------------------

const ACTIONS = {
  reverse_and_repost: "posted: reversed and re-posted", post_changed: "not posted yet: posts as changed",
  reverse_only: "posted: reversed (no longer booked)", drop: "not posted yet: no longer booked", post_new: "new entry",
};

function signed(s) { return el("span", {class: s.startsWith("-") ? "neg" : (/^[0.]+$/.test(s) ? "" : "pos")}, s); }

function renderPreview(res) {
  const box = $("#preview");
  if (!res.ok) {
    box.replaceChildren(el("div", {class: "summary-box bad"}, "The preview needs a valid draft: ",
      ...(res.problems || []).map(p => el("div", {}, `${p.key}: ${p.message}`)), res.error || ""));
    return;
  }
  const p = res.preview;
  const changedRows = p.rows.filter(r => r.changed);
  const head = el("div", {class: `summary-box ${changedRows.length ? "bad" : "good"}`, id: "preview-summary"},
    `${p.first} … ${p.last}: `, changedRows.length ? `${changedRows.length} account line(s) move, ${p.changes_total} journal entr${p.changes_total === 1 ? "y changes" : "ies change"}. `
      : "the draft books this period exactly as today. ",
    `Entries touching suspense: today ${p.unmapped_current}, draft ${p.unmapped_draft}. `,
    p.current_mode !== p.draft_mode ? `Posting mode changes from ${p.current_mode} to ${p.draft_mode}: every entry of the period is re-booked.` : "",
    ...Object.entries(p.actions).map(([a, n]) => el("span", {class: "pill"}, `${n} × ${ACTIONS[a] || a}`)));
  const ordered = [...p.rows.filter(r => r.changed), ...p.rows.filter(r => !r.changed)];  // differences first
  const table = el("table", {class: "grid", id: "preview-table"},
    el("thead", {}, el("tr", {}, ...["Ccy", "Account", "Name", "Today", "Draft", "Difference"].map((h, i) => el("th", {class: i >= 3 ? "num" : ""}, h)))),
    el("tbody", {}, ...ordered.map(r => el("tr", {class: r.changed ? "changed" : "", "data-account": r.account, "data-currency": r.currency,
                                                  "data-difference": r.difference_minor},
      el("td", {}, r.currency.toUpperCase()), el("td", {}, r.account), el("td", {}, r.name),
      el("td", {class: "num"}, r.current), el("td", {class: "num"}, r.draft), el("td", {class: "num"}, r.changed ? signed(r.difference) : "")))));
  const parts = [head, ...p.notes.map(n => el("div", {class: "summary-box"}, n)), el("div", {class: "scroll"}, table)];
  if (p.model_gap.length) {
    parts.push(el("div", {class: "summary-box bad", id: "model-gap"}, "Warning: under today's mapping the preview's rules differ from the built marts by ",
      p.model_gap.map(g => `${g.account} ${g.amount} ${g.currency.toUpperCase()}`).join(", "), ": run the transform, then preview again."));
  }
  if (p.changes.length) {
    parts.push(el("h3", {}, `Journal entries the next load changes (${p.changes_total})`));
    parts.push(el("table", {class: "grid", id: "changes-table"},
      el("thead", {}, el("tr", {}, ...["Entry (external ref)", "Date", "What the load does", "Today", "Draft"].map(h => el("th", {}, h)))),
      el("tbody", {}, ...p.changes.map(c => el("tr", {"data-ref": c.external_ref, "data-action": c.action},
        el("td", {}, el("code", {}, c.external_ref)), el("td", {}, c.posting_date), el("td", {}, ACTIONS[c.action] || c.action),
        el("td", {class: "small"}, c.current.map(l => `${l.account} ${l.net}`).join(" · ")),
        el("td", {class: "small"}, c.draft.map(l => `${l.account} ${l.net}`).join(" · ")))))));
  }
  box.replaceChildren(...parts);
}

$("#preview-btn").addEventListener("click", async () => {
  $("#preview").replaceChildren(el("div", {class: "muted"}, "Computing…"));
  renderPreview(await post("/api/preview", {draft, month: $("#month").value}));
});

// -- save ---------------------------------------------------------------------------------------

function diffBlock(diff) {
  return el("pre", {class: "diff"}, ...diff.split("\n").map(l =>
    el("div", {class: l.startsWith("+") && !l.startsWith("+++") ? "add" : (l.startsWith("-") && !l.startsWith("---") ? "del" : "")}, l)));
}

function renderHistory(rows) {
  $("#history").replaceChildren(...(rows.length ? rows : []).map(r => el("div", {class: "entry", "data-audit-id": r.id},
    el("b", {}, `#${r.id}`), ` ${r.saved_at} by ${r.saved_by}: `,
    r.changes.map(c => `${c.key} ${JSON.stringify(c.old)} → ${JSON.stringify(c.new)}`).join("; "),
    r.transform ? el("div", {class: "muted"}, r.transform) : null)));
  if (!rows.length) $("#history").replaceChildren(el("div", {class: "muted"}, "No saves yet."));
}

$("#save").addEventListener("click", async () => {
  $("#save").disabled = true;
  const res = await post("/api/save", {draft, saved_by: $("#saved-by").value, file_hash: fileHash,
                                       start_transform: $("#start-transform").checked});
  const box = $("#save-result");
  if (!res.ok) {
    box.replaceChildren(el("div", {class: "summary-box bad"}, res.error || "", ...(res.problems || []).map(p => el("div", {}, `${p.key}: ${p.message}`))));
    $("#save").disabled = false;
    return;
  }
  if (res.unchanged) { box.replaceChildren(el("div", {class: "summary-box"}, "Nothing to save: the file already says this.")); $("#save").disabled = false; return; }
  fileHash = res.file_hash;
  $("#fingerprint").textContent = res.fingerprint;
  box.replaceChildren(el("div", {class: "summary-box good", id: "saved"}, `Saved (audit #${res.audit_id}).`),
    res.transform ? el("div", {class: `summary-box ${res.transform.started ? "good" : "bad"}`, id: "transform-result"}, res.transform.message) : null,
    diffBlock(res.diff));
  renderHistory(res.history);
  $("#save").disabled = false;
});

renderEditor();
renderInventory(STATE.inventory, STATE.month);
renderHistory(STATE.history);
renderProblems();
validate();
