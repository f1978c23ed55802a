"""The web console in a real browser (Debian's Chromium, driven by Playwright).

Run by tests/e2e/console.rs, which starts `host serve`, issues the tokens,
deploys the flows and passes them in the environment:

  KH_BASE             the server, http://127.0.0.1:PORT
  KH_RUNNER, KH_MANAGER, KH_APPROVER, KH_AUDITOR, KH_BUILDER   tokens (role @ finance; auditor @ root)
  KH_ADMIN            an admin token (root)
                      (flow `broken` has revision 2 pending review: it touches protected OTHER)
  KH_FAILED, KH_GATED execution ids: a failed one, one waiting at its gate
  KH_VALUES           secret values that must never appear (comma separated)
  KH_SHOTS            where to write screenshots (optional)

Each step prints what it checked; any failure raises (exit status 1).
"""

import json
import os
import re
import sys

from playwright.sync_api import expect, sync_playwright

BASE = os.environ["KH_BASE"]
TOK = {k: os.environ["KH_" + k.upper()] for k in ("runner", "manager", "approver", "auditor", "admin", "builder")}
VALUES = [v for v in os.environ["KH_VALUES"].split(",") if v]
SHOTS = os.environ.get("KH_SHOTS")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-features=Translate,OptimizationHints,MediaRouter"]

seen = []  # every response body the browser received, to scan


def step(text):
    print("console:", text, flush=True)


def shot(page, name):
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, name + ".png"), full_page=False)


def scan(page, where):
    html = page.content()
    for v in VALUES:
        assert v not in html, f"{where}: the page shows a secret value"


def sign_in(page, who):
    page.goto(BASE + "/#/signin")
    page.get_by_label("Token").fill(TOK[who])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def sign_out(page):
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()


def collect(resp):
    try:
        if resp.url.startswith(BASE) and "/follow" not in resp.url:
            seen.append((resp.url, resp.text()))
    except Exception:
        pass


def main():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        ctx = browser.new_context(viewport={"width": 1280, "height": 860})
        page = ctx.new_page()
        page.on("response", collect)
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

        # Security headers on the page itself.
        resp = page.goto(BASE + "/")
        csp = resp.headers["content-security-policy"]
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp, csp
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["referrer-policy"] == "no-referrer"
        step("security headers on / (CSP without unsafe-inline, frame-ancestors 'none', nosniff, no-referrer)")

        # A wrong token is refused, with a message.
        page.goto(BASE + "/#/signin")
        page.get_by_label("Token").fill("kh_" + "A" * 43)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("not accepted")
        shot(page, "signin")
        step("a wrong token is refused at sign-in")

        # The runner: sees flows and executions, no secrets page, no tokens.
        sign_in(page, "runner")
        cookie = [c for c in ctx.cookies() if c["name"] == "keyhole_session"][0]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
        assert page.evaluate("document.cookie") == "", "the session cookie is readable by scripts"
        nav = page.get_by_role("navigation", name="Main")
        expect(nav.get_by_role("link", name="Flows")).to_be_visible()
        expect(nav.get_by_role("link", name="Tokens")).to_have_count(0)
        expect(nav.get_by_role("link", name="Audit trail")).to_have_count(0)
        step("runner signed in: HttpOnly SameSite=Strict cookie; Tokens and Audit absent from the menu")

        # Trigger a flow with inputs and watch it finish live.
        page.goto(BASE + "/#/flows/finance/report")
        expect(page.get_by_role("heading", name="Flow report")).to_be_visible()
        expect(page.locator("pre code.yaml .k").first).to_be_visible()
        shot(page, "flow")
        page.get_by_label("day (required)").fill("2026-12-01 <script>window.__pwned=2</script>")
        page.get_by_label("count").fill("7")
        page.get_by_label("loud").check()
        page.get_by_role("button", name="Run").click()
        expect(page.get_by_role("heading", name=re.compile("^Execution "))).to_be_visible()
        expect(page.get_by_text("Live: updates as it runs.")).to_be_visible()
        expect(page.locator(".badge", has_text="running").first).to_be_visible(timeout=20000)
        expect(page.get_by_text("Ended: succeeded.")).to_be_visible(timeout=60000)
        log = page.locator("pre[data-log]").inner_text()
        assert "<img src=x onerror=window.__pwned=1>" in log, log
        assert "<script>window.__pwned=2</script>" in page.locator("main").inner_text()
        assert page.evaluate("window.__pwned === undefined"), "markup from a task ran in the page"
        main_text = page.locator("main").inner_text()
        assert '"value": "***"' in main_text, main_text
        lanes = page.locator("svg.timeline g[data-task]")
        expect(lanes).to_have_count(3)
        expect(page.locator("svg.timeline")).to_have_attribute("aria-label", re.compile(r"3 task\(s\) in 2 lane\(s\)"))
        expect(page.get_by_role("cell", name="PW").first).to_be_visible()
        scan(page, "a finished execution")
        shot(page, "execution")
        step("ran report with inputs from the generated form; it went live to succeeded; markup in inputs, "
             "outputs and logs stayed text; two lanes; secrets read listed; value masked")

        # A failed execution's masked log.
        page.goto(BASE + "/#/executions?status=failed")
        expect(page.get_by_role("heading", name="Executions", exact=True)).to_be_visible()
        expect(page.locator("tbody tr")).to_have_count(1)
        shot(page, "executions")
        page.locator("tbody tr a").first.click()
        expect(page.get_by_text("Ended: failed.")).to_be_visible(timeout=20000)
        log = page.locator("pre[data-log]").inner_text()
        main_text = page.locator("main").inner_text()
        assert "boom <script>window.__pwned=3</script>" in main_text, main_text
        assert '"value": "***"' in main_text, main_text
        assert page.evaluate("window.__pwned === undefined")
        scan(page, "a failed execution")
        step("filtered executions by state and read the failed one's masked log")

        # The runner is refused rotation: no form, and the API says no.
        page.goto(BASE + "/#/secrets/finance/PW")
        expect(page.get_by_role("alert")).to_contain_text("secret:list")
        expect(page.get_by_role("button", name="Rotate with a generated value")).to_have_count(0)
        status = page.evaluate("""async () => {
            const s = await (await fetch('/api/v1/session')).json();
            const r = await fetch('/api/v1/secrets/finance/PW', {method: 'PUT', headers: {'Content-Type': 'application/json',
                'X-CSRF-Token': s.csrf}, body: JSON.stringify({generate: {length: 20}, rotate: true})});
            return r.status; }""")
        assert status == 403, status
        csrf = page.evaluate("""async () => (await fetch('/api/v1/executions/finance/report', {method: 'POST',
            headers: {'Content-Type': 'application/json'}, body: '{"day": "x"}'})).status""")
        assert csrf == 403, csrf
        step("runner: the secret page is refused (secret:list), the API refuses the rotation (403); "
             "a change without the CSRF token is refused (403)")
        sign_out(page)

        # The secret manager rotates with the generator.
        sign_in(page, "manager")
        page.goto(BASE + "/#/secrets")
        expect(page.get_by_role("link", name="PW")).to_be_visible()
        shot(page, "secrets")
        page.get_by_role("link", name="PW").click()
        before = page.locator("dl.meta").inner_text()
        page.get_by_label("Length").fill("40")
        page.get_by_label("Characters").select_option("hex")
        page.get_by_role("button", name="Rotate with a generated value").click()
        expect(page.get_by_text(re.compile("rotated: version 2"))).to_be_visible()
        expect(page.locator("dl.meta dt:has-text('Current version') + dd")).to_have_text("2")
        assert before != page.locator("dl.meta").inner_text()
        scan(page, "the secret after rotation")
        shot(page, "secret")
        step("secret manager rotated PW with a generated value (version 2); no value reached the page")
        sign_out(page)

        # The approver approves the gated task.
        sign_in(page, "approver")
        page.goto(BASE + "/#/executions/" + os.environ["KH_GATED"])
        expect(page.get_by_role("heading", name="Execution " + os.environ["KH_GATED"])).to_be_visible()
        expect(page.get_by_text("Live: updates as it runs.")).to_be_visible()
        expect(page.locator(".badge", has_text="paused").first).to_be_visible()
        page.get_by_label("Comment for deploy").fill("ship it")
        shot(page, "approval")
        with page.expect_request(lambda r: r.url.endswith("/approve")) as req:
            page.get_by_role("button", name="Approve").click()
        assert json.loads(req.value.post_data) == {"task": "deploy", "comment": "ship it"}, req.value.post_data
        expect(page.get_by_text("Ended: succeeded.")).to_be_visible(timeout=60000)
        step("approver approved the gated task; the execution went on to succeed, live")
        sign_out(page)

        # The auditor filters the trail and checks the chain.
        sign_in(page, "auditor")
        page.goto(BASE + "/#/audit")
        expect(page.locator(".badge", has_text="intact")).to_be_visible(timeout=20000)
        page.get_by_label("Action").fill("secret.rotate")
        page.get_by_role("button", name="Filter").click()
        rows = page.locator("tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("manager")
        page.get_by_label("Action").fill("secret.read")
        page.get_by_label("Outcome").fill("granted")
        page.get_by_role("button", name="Filter").click()
        expect(rows.first).to_contain_text("secret.read")
        scan(page, "the audit trail")
        shot(page, "audit")
        with page.expect_download() as dl:
            page.get_by_role("button", name="Export (JSON Lines)").click()
        lines = open(dl.value.path()).read().splitlines()
        assert lines and all(json.loads(l)["action"] == "secret.read" for l in lines), lines[:2]
        step("auditor: chain intact, filtered by action and outcome, exported what the filter shows")
        sign_out(page)

        # A second person reviews a revision that touches a protected secret:
        # the diff against the revision serving now, then Approve.
        sign_in(page, "builder")
        page.goto(BASE + "/#/flows")
        expect(page.locator(".badge", has_text="pending review")).to_be_visible()
        page.goto(BASE + "/#/flows/finance/broken")
        expect(page.get_by_text("Revision 2 is pending review")).to_be_visible()
        page.get_by_role("link", name="review revision 2").click()
        expect(page.get_by_role("heading", name="Changes since revision 1 (serving now)")).to_be_visible()
        expect(page.locator("code.diff .add").first).to_contain_text("reviewed-change")
        expect(page.locator("code.diff .del").first).not_to_contain_text("reviewed-change")
        expect(page.get_by_text("It touches protected OTHER")).to_be_visible()
        shot(page, "review")
        page.get_by_label("Review comment").fill("diff read")
        with page.expect_request(lambda r: r.url.endswith("/revisions/2/approve")) as req:
            page.get_by_role("button", name="Approve").click()
        assert json.loads(req.value.post_data) == {"comment": "diff read"}, req.value.post_data
        expect(page.locator("dd .badge", has_text="active")).to_be_visible()
        expect(page.get_by_text("approved by reviewer-rob")).to_be_visible()
        scan(page, "the revision page")
        step("builder reviewed revision 2 of broken (touches protected OTHER): read its diff against "
             "revision 1, approved it; it is active")
        sign_out(page)

        # An admin: every page, a token issued and shown once.
        sign_in(page, "admin")
        for path, heading in [("#/flows", "Flows"), ("#/secrets?expiring=1", "Secrets expiring soon"),
                              ("#/secrets", "Secrets"), ("#/executions", "Executions"), ("#/audit", "Audit trail")]:
            page.goto(BASE + "/" + path)
            expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
            expect(page.locator("main table, main p.hint").first).to_be_visible()
            scan(page, path)
        page.goto(BASE + "/#/tokens")
        page.get_by_label("Name", exact=True).fill("ci-bot")
        page.get_by_label("Role", exact=True).select_option("runner")
        page.get_by_label("Namespace", exact=True).fill("finance")
        page.get_by_role("button", name="Issue").click()
        expect(page.locator(".token-once code")).to_contain_text("kh_")
        expect(page.get_by_role("cell", name="ci-bot")).to_have_count(0)  # the list is as it was when the page loaded
        shot(page, "tokens")
        page.reload()
        expect(page.get_by_role("cell", name="ci-bot")).to_be_visible()
        expect(page.locator(".token-once")).to_have_count(0)
        scan(page, "#/tokens")
        step("admin: flows, secrets (and expiring soon), executions, audit rendered and scanned; "
             "a token issued from the page, shown once")

        # A narrow screen.
        page.set_viewport_size({"width": 390, "height": 800})
        page.goto(BASE + "/#/executions")
        expect(page.locator("tbody tr").first).to_be_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        assert overflow, "the page is wider than a phone's screen"
        shot(page, "narrow")
        step("a 390-pixel screen: no horizontal overflow")

        for url, body in seen:
            for v in VALUES:
                assert v not in body, f"a response carries a secret value: {url}"
        step(f"scanned {len(seen)} responses: no secret value")
        bad = [e for e in errors if "401" not in e and "403" not in e]
        assert not bad, bad
        browser.close()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the Rust test shows this
        print(f"console: FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise
