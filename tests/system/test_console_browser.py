"""The console in a real browser (Debian's Chromium driven by Playwright) against real
processes: log in, create a policy and a group following it, enroll an agent with the command
the console shows, add a backup set and edit it, run Backup Now and watch the job page follow it
to 100 %, restore one file through the wizard, see the event, log out. Screenshots of
each page go to artifacts/screenshots (at 1280 and 390 pixels wide)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.conftest import REKINDLE, Product, installation

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"
)


@pytest.fixture(scope="module")
def product() -> Iterator[Product]:
    with installation() as prod:
        yield prod


def test_enroll_from_the_console_back_up_now_and_watch_it_finish(product: Product) -> None:
    from playwright.sync_api import expect, sync_playwright

    src = product.root / "src-web"
    src.mkdir()
    for i in range(20):
        (src / f"file-{i}.txt").write_text(f"console {i}\n" * 1000)
    (src / "notes.skip").write_text("excluded by the backup set\n")
    password = (product.root / "cloud" / "initial-admin-password").read_text().strip()
    SHOTS.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        # The cloud's certificate comes from the installation's own CA, which this throwaway
        # browser profile does not know; TLS itself is tested without a browser.
        ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800})
        page = ctx.new_page()
        page.goto(f"{product.cloud_url}/")
        expect(page).to_have_url(f"{product.cloud_url}/ui/login")
        page.screenshot(path=str(SHOTS / "login.png"))
        page.get_by_label("Email").fill("admin@localhost")
        page.get_by_label("Password").fill("wrong")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("alert")).to_contain_text("wrong email or password")
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
        nav = page.get_by_role("navigation", name="Main")

        # a policy, its plain-words line following the form as it is filled in
        nav.get_by_role("link", name="Policies").click()
        page.get_by_label("Name").fill("weeknights")
        for day in ("Sat", "Sun"):
            page.get_by_label(day, exact=True).uncheck()
        page.get_by_label("Start time (UTC)").fill("23:30")
        page.get_by_label("Window, hours").fill("6")
        expect(page.locator("#preview")).to_contain_text(
            "Runs Mon-Fri at 23:30 UTC for up to 6 hours"
        )
        page.screenshot(path=str(SHOTS / "policies.png"), full_page=True)
        page.get_by_role("button", name="Create policy").click()
        expect(page.get_by_role("status")).to_contain_text("Policy 'weeknights' created")

        # a group following it, and the enrollment command the console shows for the group
        nav.get_by_role("link", name="Groups").click()
        page.get_by_label("Name").fill("web servers")
        page.get_by_label("Backup policy").select_option(label="weeknights")
        page.get_by_role("button", name="Create group").click()
        expect(page.get_by_role("status")).to_contain_text("Group 'web servers' created")
        page.screenshot(path=str(SHOTS / "groups.png"), full_page=True)
        page.get_by_role("button", name="Activation token for web servers").click()
        command = page.locator("#enroll-command").inner_text().split()
        page.screenshot(path=str(SHOTS / "activation.png"), full_page=True)
        assert command[:3] == ["rekindle", "agent", "enroll"], command
        agent_dir = product.agent_dir("webhost")
        subprocess.run(
            [REKINDLE, *command[1:], "--data-dir", str(agent_dir), "--hostname", "webhost"],
            env=product.env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        product.servers["webhost"] = int(
            json.loads((agent_dir / "agent.json").read_text())["server_id"]
        )
        product.start_agent("webhost")
        product.wait_connected("webhost")

        nav.get_by_role("link", name="Servers").click()
        row = page.get_by_role("row", name="webhost")
        expect(row).to_contain_text("connected")
        page.screenshot(path=str(SHOTS / "servers.png"), full_page=True)
        row.get_by_role("link", name="webhost").click()
        page.get_by_text("Add a backup set").click()
        page.get_by_label("Name").fill("files")
        page.get_by_label("Paths to back up").fill(str(src))
        page.get_by_role("button", name="Add backup set").click()
        expect(page.get_by_role("status")).to_contain_text("Backup set 'files' added")
        page.get_by_text("Edit or remove files").click()
        page.locator("ul.sets").get_by_label("Exclude").fill("*.skip")
        page.get_by_role("button", name="Save backup set").click()
        expect(page.get_by_role("status")).to_contain_text("Backup set 'files' saved")
        expect(page.get_by_role("listitem").filter(has_text="excluding *.skip")).to_be_visible()
        page.screenshot(path=str(SHOTS / "server.png"), full_page=True)
        page.get_by_role("button", name="Backup Now").click()

        expect(page.get_by_role("heading", name="Job")).to_be_visible()
        # htmx refreshes the job every second until it ends
        expect(page.locator("#job-state")).to_have_text("succeeded", timeout=60_000)
        expect(page.locator("#job-percent")).to_have_text("100%")
        page.screenshot(path=str(SHOTS / "job.png"), full_page=True)

        nav.get_by_role("link", name="Jobs").click()
        expect(page.get_by_role("row", name="succeeded").first).to_be_visible()
        page.screenshot(path=str(SHOTS / "jobs.png"), full_page=True)

        # the restore wizard: server, restore point, browse to one file, another directory
        nav.get_by_role("link", name="Restore").click()
        page.get_by_role("link", name="webhost").click()
        expect(page.locator(".timeline-chart circle")).to_have_count(1)
        page.screenshot(path=str(SHOTS / "restore-points.png"), full_page=True)
        page.locator("ol.timeline").get_by_role("link").first.click()
        for part in src.parts[1:]:
            page.get_by_role("link", name=f"{part}/").click()
        expect(page.get_by_label("Restore file-19.txt")).to_be_visible()
        expect(page.get_by_text("notes.skip")).to_have_count(0)  # the edited set excluded it
        page.get_by_label("Restore file-3.txt").check()
        page.screenshot(path=str(SHOTS / "restore-browse.png"), full_page=True)
        page.get_by_role("button", name="Next: where to restore").click()
        expect(page.locator("#restore-size")).to_have_text("1 file, 9.8 KiB")
        page.get_by_label("Another directory on webhost").check()
        dest = product.root / "restored-web"
        page.get_by_role("textbox", name="Directory").fill(str(dest))
        page.screenshot(path=str(SHOTS / "restore-destination.png"), full_page=True)
        page.get_by_role("button", name="Restore").click()
        expect(page.locator("#job-state")).to_have_text("succeeded", timeout=60_000)
        restored = dest / str(src).lstrip("/")
        assert sorted(p.name for p in restored.iterdir()) == ["file-3.txt"]
        assert (restored / "file-3.txt").read_bytes() == (src / "file-3.txt").read_bytes()
        restore_job = page.url.rsplit("/", 1)[1]

        # a second restore point, then a retention that keeps only the newest: the policy
        # page lists what saving removes, and saving needs the tick
        nav.get_by_role("link", name="Servers").click()
        page.get_by_role("link", name="webhost").click()
        page.get_by_role("button", name="Backup Now").click()
        expect(page.locator("#job-state")).to_have_text("succeeded", timeout=60_000)
        nav.get_by_role("link", name="Policies").click()
        page.get_by_role("link", name="weeknights").click()
        page.get_by_label("Keep every restore point for, days").fill("0")
        page.get_by_label("then daily ones").fill("1")
        for label in ("weekly ones", "monthly ones", "yearly ones"):
            page.get_by_label(label).fill("0")
        expect(page.locator("#preview")).to_contain_text("keeps one a day for 1 day")
        expect(page.get_by_role("alert")).to_contain_text("Saving removes 1 restore point")
        page.get_by_label("Remove them when I save").check()
        expect(page.get_by_label("Remove them when I save")).to_be_checked()
        page.screenshot(path=str(SHOTS / "policy-retention.png"), full_page=True)
        page.get_by_role("button", name="Save policy").click()
        expect(page.get_by_role("status")).to_contain_text("Retention runs now")
        nav.get_by_role("link", name="Retention").click()
        (queued,) = [r for r in product.admin_json("retention-runs") if r["trigger"] == "policy"]
        run = page.locator(f"#run-{queued['id']}")
        for _ in range(60):
            if run.locator(".state").inner_text() not in ("queued", "running"):
                break
            page.wait_for_timeout(1000)
            page.reload()
        expect(run).to_contain_text("succeeded")
        page.screenshot(path=str(SHOTS / "retention.png"), full_page=True)
        assert len(product.admin_json("restore-points")) == 1

        nav.get_by_role("link", name="Events").click()
        expect(
            page.get_by_role("row", name=f"restore job {restore_job} on webhost: succeeded")
        ).to_be_visible()
        page.screenshot(path=str(SHOTS / "events.png"), full_page=True)
        nav.get_by_role("link", name="Alerts").click()
        expect(page.get_by_text("No open alerts.")).to_be_visible()
        page.screenshot(path=str(SHOTS / "alerts.png"), full_page=True)
        nav.get_by_role("link", name="Audit").click()
        expect(page.get_by_role("row", name="job.restore").first).to_be_visible()
        nav.get_by_role("link", name="Admins").click()
        expect(page.get_by_role("row", name="admin@localhost")).to_be_visible()

        nav.get_by_role("link", name="Dashboard").click()
        expect(page.get_by_role("row", name="webhost")).to_contain_text("succeeded")
        expect(page.get_by_text("1 of 1 servers protected")).to_be_visible()
        page.screenshot(path=str(SHOTS / "dashboard.png"), full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(SHOTS / "dashboard-390.png"), full_page=True)
        # nothing wider than the phone's screen but the tables, which scroll on their own
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, width

        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(f"{product.cloud_url}/ui/login")
        page.goto(f"{product.cloud_url}/ui/jobs")
        expect(page).to_have_url(f"{product.cloud_url}/ui/login")
        browser.close()
