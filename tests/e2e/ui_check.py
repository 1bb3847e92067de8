"""`make ui-check`: the Prefect UI as a user sees it, in a real headless browser.

Starts a Prefect server (with its UI), the relay simulator and `deployments/serve.py`
(`_stack.py`, as the e2e tests do), then drives Debian's Chromium through Playwright's
Python package (never a downloaded browser build):

1. every deployment's run form, screenshotted;
2. `generate-video` started from its form (prompt typed in, Submit clicked), its run
   caught mid-wait (progress artifact), then finished: task runs submit, wait, deliver;
   `generate-videos` with two prompts from its form: the batch's progress (done of total)
   mid-wait and at the end, one wait and a deliver per generation, its one table artifact;
3. the relay's links expired (simulator fault), then the generation artifact opened: its
   thumbnail must load (our own inlined copy);
4. a generation the relay fails, and its failure artifact;
5. the credentials block: its page (example, docs link), form and catalog card, logo loaded.

This machine is offline, so the block's logo URL (the repository's docs/logo.png as GitHub
will serve it) is answered by the browser from that same file (`serve_logo`).

Screenshots land in `ui-check/` (git-ignored). Exits non-zero when a run fails, the
thumbnail or the logo does not load, or a page does not show what it should; problems that
do not stop the walk-through (a form, the block's included, offering `None` as a choice) are
listed at the end, and fail too.
Not part of `make test`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from luma_prefect.credentials import DOCUMENTATION_URL, LOGO_PATH, LOGO_URL
from tests.e2e._stack import REPO_ROOT, SIM_KEY, Processes, Stack, eventually, start_stack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OUT = REPO_ROOT / "ui-check"
PAGE_TIMEOUT_MS = 60_000
PROMPT = "a red fox running through fresh snow at golden hour"
DOOMED = "a doomed paper boat in a storm"
BATCH = ("a lighthouse beam sweeping over night waves", "a hummingbird sipping from a red flower")


# Whether an <img> shows: waits for it to finish loading, then asks for its decoded width.
IMAGE_LOADED = """img => img.complete ? img.naturalWidth > 0 : new Promise(done => {
    img.addEventListener("load", () => done(img.naturalWidth > 0));
    img.addEventListener("error", () => done(false));
})"""


# Scrolls the nearest scrollable box around a table to its right end; whether it scrolled.
SCROLL_RIGHT = """table => {
    for (let box = table; box; box = box.parentElement) {
        if (box.scrollWidth > box.clientWidth + 1) {
            box.scrollLeft = box.scrollWidth;
            return true;
        }
    }
    return false;
}"""


class CheckFailed(Exception):
    """What the check saw go wrong, in one line."""


async def serve_logo(route: Any) -> None:
    """The block's logo URL answered from the repository's file: this machine is offline, and
    the URL is where GitHub serves that file once the repository is published."""
    await route.fulfill(path=str(REPO_ROOT / LOGO_PATH), content_type="image/png")


async def image_loads(page: Any, selector: str, what: str) -> str:
    """The first image matching `selector` loaded (else CheckFailed); its src."""
    image = page.locator(selector).first
    await image.wait_for()
    source = await image.get_attribute("src") or ""
    if not await image.evaluate(IMAGE_LOADED):
        raise CheckFailed(f"{what} did not load (src {source[:60]})")
    return source


def ensure_chromium() -> None:
    """Debian's chromium, installed with apt-get when missing (the script's setup step)."""
    if Path(CHROMIUM).exists():
        return
    if os.geteuid() != 0:
        raise CheckFailed(f"{CHROMIUM} is missing: run `apt-get install -y chromium` as root.")
    print("Installing Debian's chromium (apt-get) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)


async def shot(page: Any, name: str) -> Path:
    path = OUT / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    print(f"  screenshot {path.relative_to(REPO_ROOT)}", flush=True)
    return path


async def none_toggles(page: Any, what: str, problems: list[str]) -> None:
    """A `None` choice in a form (Prefect's toggle for an `X | None` field), whichever side is
    selected: a form should offer a value or leave it empty, never make the user pick None."""
    main = page.locator("main")
    if 'Property is type "None"' in await main.inner_text():
        problems.append(f"the {what} shows a None toggle ('Property is type \"None\"')")
    elif await main.get_by_text("None", exact=True).count():
        problems.append(f"the {what} offers None as a choice (a `None` toggle)")


async def deployment_ids(stack: Stack) -> dict[str, str]:
    async with stack.client() as client:
        return {d.name: str(d.id) for d in await client.read_deployments()}


async def newest_run_of(stack: Stack, deployment_id: str, after: float) -> Any:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    async def probe() -> Any:
        async with stack.client() as client:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=1,
            )
        return runs[0] if runs and runs[0].created.timestamp() >= after else None

    return await eventually(probe, "the flow run started from the form", 60.0, 0.5)


async def artifacts_of(stack: Stack, flow_run_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with stack.client() as client:
        return await client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


async def check_forms(page: Any, ui: str, deployments: dict[str, str], problems: list[str]) -> None:
    """Every deployment's run form: text fields and choices, no `None` toggles."""
    for number, name in enumerate(
        ("generate-video", "generate-videos", "collect-generations", "collect-pending"), start=1
    ):
        await page.goto(f"{ui}/deployments/deployment/{deployments[name]}/run")
        await page.get_by_text("Parameters").first.wait_for()
        await page.get_by_role("button", name="Submit").wait_for()
        await page.wait_for_timeout(1500)  # the schema form renders after the deployment loads
        if name == "generate-video":
            text = await page.locator("main").inner_text()
            for expected in ("known values", "other value", "relay's default"):
                if expected not in text:
                    raise CheckFailed(f"the generate-video form does not show {expected!r}")
        if name == "generate-videos":
            # One request added, to show what an item starts with.
            with contextlib.suppress(Exception):
                await page.get_by_role("button", name=re.compile("add item", re.I)).first.click()
                await page.wait_for_timeout(800)
        await shot(page, f"01-form-{number}-{name}")
        await none_toggles(page, f"{name} form", problems)
        if name == "generate-video":
            # The first choice list is the model's: open it to show the known values.
            await page.get_by_role("button", name="Select known values").first.click()
            options = await page.get_by_role("option").all_inner_texts()
            if not {"ray-v2", "ray-v1", "ray-2"} <= set(options):
                raise CheckFailed(f"the model's choices are {options}, not the known models")
            await shot(page, "01-form-1-generate-video-model-choices")
            await page.keyboard.press("Escape")


async def submit_form(
    page: Any, stack: Stack, deployment_id: str, started: float, name: str
) -> Any:
    """Leave the field being edited, screenshot the filled form, Submit, and return the run
    it created; a screenshot of the form when no run starts.

    A Submit clicked while a field still had the focus once started no run (the form takes a
    field's value when it is left), on both the single and the batch form.
    """
    await page.keyboard.press("Tab")
    await page.wait_for_timeout(500)
    await shot(page, f"{name}-filled")
    # The API's refusals, if any: the UI shows them in a toast gone before a screenshot.
    refused: list[Any] = []

    def on_response(response: Any) -> None:
        if response.request.method == "POST" and "/api/" in response.url and response.status >= 400:
            refused.append(response)

    page.on("response", on_response)
    await page.get_by_role("button", name="Submit").click()
    try:
        return await newest_run_of(stack, deployment_id, started)
    except BaseException:
        await shot(page, f"{name}-after-submit")  # what the form said instead
        for response in refused:
            body = await response.text()
            print(f"  the API refused: {response.status} {response.url}: {body[:500]}")
        raise
    finally:
        page.remove_listener("response", on_response)


async def run_from_form(page: Any, stack: Stack, ui: str, deployments: dict[str, str]) -> Any:
    """Start generate-video from its form, catch it mid-wait, let it finish."""
    started = time.time() - 1
    await page.goto(f"{ui}/deployments/deployment/{deployments['generate-video']}/run")
    prompt = page.get_by_label(re.compile(r"^prompt"))
    await prompt.wait_for()
    await prompt.fill(PROMPT)
    created = await submit_form(page, stack, deployments["generate-video"], started, "02-run-form")

    # The form gives the run a random name; the flow renames it after its prompt.
    async def renamed() -> Any:
        run = await stack.read_run(created.id)
        return run if run.name.startswith(PROMPT[:20]) else None

    run = await eventually(renamed, "the run named after its prompt", 120.0, 0.5, stack.report)
    print(f"  flow run {run.id} named {run.name!r}", flush=True)

    # Mid-wait: the wait's progress artifact exists and says what the relay said.
    async def waiting() -> bool:
        found = await artifacts_of(stack, run.id)
        return any(a.type == "progress" and "is processing" in (a.description or "") for a in found)

    await eventually(waiting, "the wait's progress artifact", 120.0, 0.5, stack.report)
    await page.goto(f"{ui}/runs/flow-run/{run.id}")
    await page.get_by_text(run.name).first.wait_for()
    await page.wait_for_timeout(2500)
    await shot(page, "03-run-waiting")
    with contextlib.suppress(Exception):
        await page.get_by_role("tab", name=re.compile("artifacts", re.I)).first.click()
        await page.wait_for_timeout(1500)
        await shot(page, "03-run-waiting-artifacts")
    progress = next(
        a
        for a in await artifacts_of(stack, run.id)
        if a.type == "progress" and "is processing" in (a.description or "")
    )
    await page.goto(f"{ui}/artifacts/artifact/{progress.id}")
    await page.get_by_text("is processing").first.wait_for()
    await page.wait_for_timeout(1000)
    await shot(page, "03-progress-artifact")

    stack.advance()
    final = await stack.wait_for_final(run.id)
    if final.state.type.value != "COMPLETED":
        raise CheckFailed(
            f"the generate-video run ended {final.state.type.value}\n{stack.report()}"
        )
    await page.goto(f"{ui}/runs/flow-run/{run.id}")
    await page.get_by_text(run.name).first.wait_for()
    await page.wait_for_timeout(2500)
    await shot(page, "04-run-finished")
    await check_task_runs(stack, run.id)
    with contextlib.suppress(Exception):
        await page.get_by_role("tab", name=re.compile("task runs", re.I)).first.click()
        await page.wait_for_timeout(2000)
        await shot(page, "04-run-finished-task-runs")
    return final


async def check_task_runs(stack: Stack, flow_run_id: Any, generations: int = 1) -> None:
    """Short readable names; every task run tagged `luma` and with the relay's name; per
    generation a submit and a deliver (download + publish), and one wait for them all."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with stack.client() as client:
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    relay_tag = "luma-relay:" + stack.sim_url.split("://", 1)[1]
    for task_run in task_runs:
        if len(task_run.name) > 40 or not {"luma", relay_tag} <= set(task_run.tags):
            raise CheckFailed(f"task run {task_run.name!r} has tags {task_run.tags}")
    names = sorted(t.name for t in task_runs)
    verbs = sorted(name.split(" ", 1)[0] for name in names)
    expected = sorted(["submit", "deliver"] * generations + ["wait"])
    if verbs != expected:
        raise CheckFailed(f"the task runs are {names}, not {generations} submit/deliver + 1 wait")
    print(f"  task runs: {names}, tagged luma, {relay_tag}", flush=True)


async def check_artifact(page: Any, stack: Stack, ui: str, run: Any) -> None:
    """Expire the relay's links, then open the run's generation artifact: its image loads."""
    markdown = [a for a in await artifacts_of(stack, run.id) if a.type == "markdown"]
    if not markdown:
        raise CheckFailed("the finished run has no generation artifact")
    artifact = markdown[0]
    (record,) = [
        r
        for r in stack.ledger_records(stack.destination)
        if (r.get("request") or {}).get("prompt") == PROMPT
    ]
    answer = httpx.get(
        f"{stack.sim_url}/luma/generations/{record['generation_id']}",
        headers={"Authorization": f"Bearer {SIM_KEY}"},
    ).json()
    relay_link = answer["thumbnail"]["url"]
    if httpx.get(relay_link).status_code != 200:
        raise CheckFailed("the relay's thumbnail link did not work before it expired")
    stack.add_fault(kind="expired_link")
    if httpx.get(relay_link).status_code != 403:
        raise CheckFailed("the simulator did not expire the relay's links")
    await page.goto(f"{ui}/artifacts/artifact/{artifact.id}")
    await page.locator("img[alt=thumbnail]").first.wait_for()
    await page.wait_for_timeout(1000)
    await shot(page, "05-artifact")
    source = await image_loads(page, "img[alt=thumbnail]", "the artifact's thumbnail")
    if not source.startswith("data:image/"):
        raise CheckFailed(f"the artifact's thumbnail is not our own copy: {source[:80]}")
    print(f"  thumbnail loaded ({source[:23]}...) after the relay's links expired", flush=True)
    await page.goto(f"{ui}/artifacts/key/{artifact.key}")
    await page.wait_for_timeout(2500)
    await shot(page, "06-artifact-key")


async def check_failure(page: Any, stack: Stack, ui: str, deployments: dict[str, str]) -> None:
    """A generation the relay fails: the run fails, and its artifact says why and what next."""
    stack.add_fault(kind="fail_generation", prompt_contains="doomed")
    run_id = await stack.run_deployment("generate-video/generate-video", prompt=DOOMED)

    async def submitted() -> bool:
        return any(
            (r.get("request") or {}).get("prompt") == DOOMED
            for r in stack.ledger_records(stack.destination)
        )

    await eventually(submitted, "the doomed generation's submit", 120.0, 0.5, stack.report)
    stack.advance()
    final = await stack.wait_for_final(run_id)
    if final.state.type.value != "FAILED":
        raise CheckFailed(f"the doomed run ended {final.state.type.value}, not FAILED")
    failures = [
        a
        for a in await artifacts_of(stack, run_id)
        if a.type == "markdown" and "What to do next" in str(a.data)
    ]
    if not failures:
        raise CheckFailed("the failed run left no failure artifact")
    await page.goto(f"{ui}/artifacts/artifact/{failures[0].id}")
    await page.get_by_text("What to do next").first.wait_for()
    await page.wait_for_timeout(1000)
    await shot(page, "07-failure-artifact")
    await page.goto(f"{ui}/runs/flow-run/{run_id}")
    await page.wait_for_timeout(2500)
    await shot(page, "08-failed-run")


async def run_batch_from_form(
    page: Any, stack: Stack, ui: str, deployments: dict[str, str]
) -> None:
    """generate-videos with two prompts typed into its form: the batch's progress (done of
    total) caught mid-wait and at the end, its task runs, and its one table artifact."""
    started = time.time() - 1
    await page.goto(f"{ui}/deployments/deployment/{deployments['generate-videos']}/run")
    await page.get_by_role("button", name="Submit").wait_for()
    await page.wait_for_timeout(1500)  # the schema form renders after the deployment loads
    add_item = page.get_by_role("button", name=re.compile("add item", re.I)).first
    prompts = page.get_by_label(re.compile(r"^Prompt"))
    for number, text in enumerate(BATCH):
        await add_item.click()
        await prompts.nth(number).wait_for()
        await prompts.nth(number).fill(text)
    # Polls 1-2 s apart instead of 5-30 s: the batch ends seconds after the relay does.
    await page.get_by_label(re.compile(r"^poll_interval_seconds")).fill("1")
    await page.get_by_label(re.compile(r"^max_poll_interval_seconds")).fill("2")
    created = await submit_form(
        page, stack, deployments["generate-videos"], started, "12-batch-form"
    )

    async def named() -> Any:
        run = await stack.read_run(created.id)
        return run if run.name.startswith(f"{len(BATCH)} videos: ") else None

    run = await eventually(named, "the batch named after its prompts", 120.0, 0.5, stack.report)
    print(f"  flow run {run.id} named {run.name!r}", flush=True)

    async def batch_progress() -> Any:
        found = await artifacts_of(stack, run.id)
        return next(
            (
                a
                for a in found
                if a.type == "progress"
                and f"of {len(BATCH)} generations done" in str(a.description)
            ),
            None,
        )

    for prompt in BATCH:
        await stack.submitted(stack.destination, prompt)
    progress = await eventually(batch_progress, "the batch's progress", 120.0, 0.5, stack.report)
    await page.goto(f"{ui}/runs/flow-run/{run.id}")
    await page.get_by_text(run.name).first.wait_for()
    with contextlib.suppress(Exception):
        await page.get_by_role("tab", name=re.compile("artifacts", re.I)).first.click()
    await page.wait_for_timeout(2500)
    await shot(page, "13-batch-waiting-artifacts")
    await page.goto(f"{ui}/artifacts/artifact/{progress.id}")
    await page.get_by_text("generations done").first.wait_for()
    await page.wait_for_timeout(1000)
    await shot(page, "13-batch-progress")

    stack.advance()
    final = await stack.wait_for_final(run.id)
    if final.state.type.value != "COMPLETED":
        raise CheckFailed(
            f"the generate-videos run ended {final.state.type.value}\n{stack.report()}"
        )
    done = await batch_progress()
    if f"{len(BATCH)} of {len(BATCH)} generations done" not in str(done.description):
        raise CheckFailed(f"the finished batch's progress reads {done.description!r}")
    await check_task_runs(stack, run.id, generations=len(BATCH))
    await page.goto(f"{ui}/artifacts/artifact/{done.id}")
    await page.get_by_text(f"{len(BATCH)} of {len(BATCH)} generations done").first.wait_for()
    await page.wait_for_timeout(1000)
    await shot(page, "14-batch-progress-done")
    await page.goto(f"{ui}/runs/flow-run/{run.id}")
    await page.get_by_text(run.name).first.wait_for()
    with contextlib.suppress(Exception):
        await page.get_by_role("tab", name=re.compile("task runs", re.I)).first.click()
    await page.wait_for_timeout(2500)
    await shot(page, "14-batch-finished-task-runs")

    tables = [a for a in await artifacts_of(stack, run.id) if a.type == "table"]
    if len(tables) != 1:
        raise CheckFailed(f"the batch left {len(tables)} table artifacts, not one")
    await page.goto(f"{ui}/artifacts/artifact/{tables[0].id}")
    for prompt in BATCH:
        await page.get_by_text(prompt).first.wait_for()
    await page.wait_for_timeout(1000)
    await shot(page, "15-batch-table")
    # The table is wider than the page: scrolled to its right end, the times show.
    scrolled = await page.locator("main table").first.evaluate(SCROLL_RIGHT)
    await page.wait_for_timeout(500)
    await shot(page, "15-batch-table-times")
    if not scrolled:
        print("  (the batch table fits the page: no scrolling needed)", flush=True)
    table = await page.locator("main").inner_text()
    for column in ("submitted", "completed", "downloaded", "published", "failed"):
        if column not in table:
            raise CheckFailed(f"the batch's table has no {column!r} column")
    print(f"  batch progress {done.description!r}; one table artifact {tables[0].key}", flush=True)


async def check_block(page: Any, stack: Stack, ui: str, problems: list[str]) -> None:
    """The block's page, form and catalog card: logo loaded, docs link, a sound example."""
    async with stack.client() as client:
        block = await client.read_block_document_by_name(
            "luma-relay", block_type_slug="luma-relay-credentials"
        )
    logo = f'img[src="{LOGO_URL}"]'
    await page.goto(f"{ui}/blocks/block/{block.id}")
    await page.get_by_text("Paste this snippet").first.wait_for()
    await page.wait_for_timeout(1500)
    await shot(page, "09-block")
    await image_loads(page, logo, "the block's logo")
    snippet = await page.locator("main").inner_text()
    for expected in (
        'LumaRelayCredentials.load("luma-relay")',
        "await LumaRelayCredentials.aload(",
    ):
        if expected not in snippet:
            raise CheckFailed(f"the block page's example lacks {expected!r}")
    if "BLOCK_NAME" in snippet or "&gt;" in snippet:
        raise CheckFailed("the block page's example shows a placeholder or an escaped character")
    docs = await page.get_by_role("link", name="View Docs").first.get_attribute("href")
    if docs != DOCUMENTATION_URL:
        raise CheckFailed(f"the block page's docs link is {docs}, not {DOCUMENTATION_URL}")

    await page.goto(f"{ui}/blocks/block/{block.id}/edit")
    await page.get_by_text("Base URL").first.wait_for()
    await page.wait_for_timeout(1500)
    await shot(page, "10-block-form")
    await image_loads(page, logo, "the block form's logo")
    await none_toggles(page, "block form", problems)
    form = await page.locator("main").inner_text()
    for title in ("Base URL", "API key", "API style"):
        if title not in form:
            raise CheckFailed(f"the block form has no field titled {title!r}")

    await page.goto(f"{ui}/blocks/catalog/luma-relay-credentials")
    await page.get_by_text("Example").first.wait_for()
    await page.wait_for_timeout(1500)
    await shot(page, "11-block-catalog")
    await image_loads(page, logo, "the catalog card's logo")
    docs = await page.get_by_role("link", name="Documentation").first.get_attribute("href")
    if docs != DOCUMENTATION_URL:
        raise CheckFailed(f"the catalog card's docs link is {docs}, not {DOCUMENTATION_URL}")
    print(f"  logo loaded ({LOGO_URL}, served from {LOGO_PATH}); docs link {docs}", flush=True)


async def run_check(tmp: Path) -> None:
    from playwright.async_api import async_playwright

    processes = Processes(logs=tmp)
    try:
        print("Starting the Prefect server (UI on), the simulator and serve.py ...", flush=True)
        stack = await start_stack(processes, tmp, ui=True)
        ui = stack.api_url.removesuffix("/api") + "/v2"
        print(f"  UI at {ui}", flush=True)
        deployments = await deployment_ids(stack)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(PAGE_TIMEOUT_MS)
                # Offline here: the logo's published URL is answered from the repository.
                await page.route(LOGO_URL, serve_logo)
                problems: list[str] = []
                print("Deployment forms ...", flush=True)
                await check_forms(page, ui, deployments, problems)
                print("generate-video from its form ...", flush=True)
                run = await run_from_form(page, stack, ui, deployments)
                # Before the relay's links expire (check_artifact): the batch downloads.
                print("generate-videos from its form ...", flush=True)
                await run_batch_from_form(page, stack, ui, deployments)
                print("The artifact after the relay's links expired ...", flush=True)
                await check_artifact(page, stack, ui, run)
                print("A failed generation ...", flush=True)
                await check_failure(page, stack, ui, deployments)
                print("The credentials block ...", flush=True)
                await check_block(page, stack, ui, problems)
                if problems:
                    raise CheckFailed("; ".join(problems))
            finally:
                await browser.close()
    finally:
        processes.stop_all()
        for proc in processes.ours():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def main() -> int:
    from playwright.async_api import Error as PlaywrightError

    try:
        ensure_chromium()
    except (CheckFailed, subprocess.CalledProcessError) as exc:
        print(f"ui-check: {exc}", file=sys.stderr)
        return 2
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    tmp = Path(tempfile.mkdtemp(prefix="luma-ui-check-"))
    try:
        asyncio.run(run_check(tmp))
    except (CheckFailed, AssertionError, PlaywrightError) as exc:
        print(f"ui-check FAILED: {exc}\n(logs and screenshots: {tmp}, {OUT})", file=sys.stderr)
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"ui-check passed: screenshots in {OUT.relative_to(REPO_ROOT)}/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
