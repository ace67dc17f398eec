"""An operator in a browser: sees failed compensations made by fault injection, resolves, retries, redrives.

Each result is checked through the admin API itself (and the fake Stripe's ledger), not only on the page.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from local.demo import LocalApi
from tests.browser.conftest import Console, FailedRecords, wait_for

pytestmark = pytest.mark.browser


def page(browser: WebDriver, hash_: str, ready: str) -> None:
    """Goes to a page of the console and waits until `ready` (a CSS selector) is shown."""
    browser.get(f"{browser.current_url.split('#')[0]}#{hash_}")
    browser.refresh()
    WebDriverWait(browser, 20).until(ec.visibility_of_element_located((By.CSS_SELECTOR, ready)))


def rendered(browser: WebDriver, view: str) -> None:
    """Waits until the page shows `view` with its answers (the page sets data-view once it has rendered them)."""
    WebDriverWait(browser, 20).until(
        lambda b: b.find_element(By.ID, "page").get_attribute("data-view") == view, f"the page never showed {view}"
    )


def flash(browser: WebDriver, contains: str) -> str:
    WebDriverWait(browser, 20).until(ec.text_to_be_present_in_element((By.ID, "flash"), contains))
    return browser.find_element(By.ID, "flash").text


def shot(browser: WebDriver, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    height = browser.execute_script("return Math.max(document.body.scrollHeight, 900)")
    browser.set_window_size(1366, min(int(height) + 200, 2400))
    assert browser.save_screenshot(str(folder / f"console-{name}.png"))
    browser.set_window_size(1366, 900)


def test_the_list_shows_each_failed_compensation_oldest_first_with_counts_and_the_dlq_depth(
    browser: WebDriver, failed_records: FailedRecords, stack_api: LocalApi, screenshots: Path
):
    # Given three records whose retries ran out (made by the fake Stripe's injected 503s)
    ids = [failed_records.to_retry["id"], failed_records.to_resolve["id"], failed_records.voided_by_hand["id"]]

    # When the operator filters the list by status failed
    page(browser, "/", "#records")
    Select(browser.find_element(By.ID, "status-filter")).select_by_value("failed")
    rendered(browser, "list:failed")

    # Then each is listed, oldest first, with its operation, error and retries; counts and DLQ depth match the API
    rows = browser.find_elements(By.CSS_SELECTOR, "#records tbody tr")
    listed = [row.get_attribute("data-id") for row in rows]
    assert set(ids) <= set(listed)
    api_page = stack_api.call("GET", "/admin/compensations", params={"status": "failed", "limit": "25"}).body
    assert listed == [item["id"] for item in api_page["items"]]
    created = [item["created_at"] for item in api_page["items"]]
    assert created == sorted(created)
    first = rows[listed.index(ids[0])].text
    assert "void_authorization" in first or "order_compensation" in first
    assert "503" in first
    counts = stack_api.call("GET", "/admin/counts").body["compensations"]
    shown = browser.find_element(By.CSS_SELECTOR, '#counts li[data-status="failed"] strong').text
    assert int(shown) == counts["failed"] >= 3
    dlq = stack_api.call("GET", "/admin/dlq").body["dlq"]
    assert browser.find_element(By.ID, "dlq-depth").text.startswith(f"{dlq['visible']} waiting")
    assert browser.find_element(By.ID, "redrive").is_enabled()
    shot(browser, screenshots, "list")


def test_resolve_by_hand_needs_a_note_and_records_it_with_the_operator(
    browser: WebDriver, failed_records: FailedRecords, stack_api: LocalApi, screenshots: Path
):
    record = failed_records.to_resolve
    page(browser, f"/compensations/{record['id']}", "#resolve")
    shot(browser, screenshots, "record")

    # When the operator presses Resolve with no note (the browser holds the form back), then with only blanks
    note = browser.find_element(By.ID, "resolve-note")
    browser.find_element(By.ID, "resolve").click()
    assert browser.execute_script("return arguments[0].validity.valueMissing", note) is True
    note.send_keys("   ")
    browser.find_element(By.ID, "resolve").click()

    # Then nothing is sent, and the page says why
    assert "needs a note" in flash(browser, "needs a note")
    assert stack_api.call("GET", f"/admin/compensations/{record['id']}").body["status"] == "failed"

    # When they write what they did, and submit from the keyboard (Tab to the button, Enter)
    note.clear()
    note.send_keys("Cancelled the intent in the Stripe dashboard, ticket OPS-42")
    note.send_keys(Keys.TAB)
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    flash(browser, "Resolved")

    # Then the API shows the record resolved with the note and the operator, and the order COMPENSATED
    shown = stack_api.call("GET", f"/admin/compensations/{record['id']}").body
    assert shown["status"] == "resolved"
    assert shown["actions"][-1]["action"] == "resolve"
    assert shown["actions"][-1]["note"] == "Cancelled the intent in the Stripe dashboard, ticket OPS-42"
    assert shown["actions"][-1]["by"].startswith("arn:aws:iam::")
    assert stack_api.call("GET", f"/admin/orders/{record['order_id']}").body["saga_state"] == "COMPENSATED"
    WebDriverWait(browser, 20).until(ec.text_to_be_present_in_element((By.ID, "trail"), "OPS-42"))


def test_retry_is_disabled_and_says_why_when_stripe_already_shows_the_void_done(
    browser: WebDriver, failed_records: FailedRecords, stack_api: LocalApi
):
    # Given Stripe is healthy again and someone cancelled the intent in the Stripe dashboard
    stack_api.clear_faults()
    record = failed_records.voided_by_hand
    answer = stack_api.payment.post(
        f"/v1/payment_intents/{record['authorization_id']}/cancel",
        headers={"Authorization": "Bearer sk_test_local", "Idempotency-Key": f"dashboard:{record['id']}"},
    )
    assert answer.status_code == 200, answer.text

    # When the operator opens the record
    page(browser, f"/compensations/{record['id']}", "#provider-state #steps")

    # Then Stripe's live state shows the intent canceled, and Retry is disabled with the reason
    assert browser.find_element(By.ID, "intent-status").text == "canceled"
    assert not browser.find_element(By.ID, "retry").is_enabled()
    why = browser.find_element(By.ID, "retry-why").text
    assert "canceled" in why
    assert "resolve it with a note" in why
    state = stack_api.call("GET", f"/admin/compensations/{record['id']}/provider-state").body
    assert state["retry"]["allowed"] is False


def test_retry_requeues_the_record_and_the_processor_voids_it_once(
    browser: WebDriver, failed_records: FailedRecords, stack_api: LocalApi, screenshots: Path
):
    # Given Stripe is healthy again and the intent is still held, its capture deadline counting down
    stack_api.clear_faults()
    record = failed_records.to_retry
    page(browser, f"/compensations/{record['id']}", "#provider-state #steps")
    assert browser.find_element(By.ID, "intent-status").text == "requires_capture"
    assert "left" in browser.find_element(By.ID, "capture-countdown").text
    retry = browser.find_element(By.ID, "retry")
    assert retry.is_enabled()

    # When the operator retries it with a note
    browser.find_element(By.ID, "retry-note").send_keys("Stripe recovered")
    retry.click()
    flash(browser, "Retry queued")

    # Then the API shows the retry on the record, the processor resolves it and the order is COMPENSATED
    shown = stack_api.call("GET", f"/admin/compensations/{record['id']}").body
    assert [a["action"] for a in shown["actions"]][-1] == "retry"
    wait_for(
        lambda: stack_api.call("GET", f"/admin/compensations/{record['id']}").body["status"] == "resolved",
        "the processor resolves the retried record",
    )
    assert stack_api.call("GET", f"/admin/orders/{record['order_id']}").body["saga_state"] == "COMPENSATED"
    ledger = stack_api.provider_log("payment")["ledger"]
    assert [e["op"] for e in ledger if e.get("order_id") == record["order_id"]].count("canceled") == 1
    page(browser, f"/compensations/{record['id']}", "#timeline")
    assert "COMPENSATED" in browser.find_element(By.ID, "timeline").text
    shot(browser, screenshots, "record-resolved")


def test_redrive_moves_the_parked_messages_back_and_the_dlq_empties(
    browser: WebDriver, failed_records: FailedRecords, stack_api: LocalApi
):
    # Given the DLQ still holds the three parked messages
    stack_api.clear_faults()
    assert stack_api.call("GET", "/admin/dlq").body["dlq"]["visible"] >= 3

    # When the operator presses Redrive on the list page
    page(browser, "/", "#redrive")
    browser.find_element(By.ID, "redrive").click()
    assert "moved back" in flash(browser, "Redrive accepted")

    # Then the API shows the DLQ empty, and the record voided by hand is resolved by the redriven message
    wait_for(lambda: stack_api.call("GET", "/admin/dlq").body["dlq"]["visible"] == 0, "the DLQ is empty")
    record = failed_records.voided_by_hand
    wait_for(
        lambda: stack_api.call("GET", f"/admin/compensations/{record['id']}").body["status"] == "resolved",
        "the redriven message resolves the record whose intent was already cancelled",
    )


def test_the_kpi_page_shows_the_four_kpis_over_the_chosen_window(
    browser: WebDriver, failed_records: FailedRecords, stack_api: LocalApi, screenshots: Path
):
    page(browser, "/kpis", "#kpi-resolution")
    Select(browser.find_element(By.ID, "kpi-window")).select_by_value("1h")
    rendered(browser, "kpis:1h")
    kpis = stack_api.call("GET", "/admin/kpis", params={"window": "1h"}).body
    for card in ("kpi-saga", "kpi-compensation", "kpi-resolution", "kpi-alerts"):
        assert browser.find_element(By.ID, card).is_displayed()
    assert kpis["average_resolution_seconds"]["resolved"] >= 3
    assert (
        f"{kpis['average_resolution_seconds']['resolved']} record(s)"
        in browser.find_element(By.ID, "kpi-resolution").text
    )
    shot(browser, screenshots, "kpis")


def test_the_console_refuses_requests_without_its_session_or_from_another_host(console: Console):
    # A request with no session cookie, the used one-time link, a rebinding Host, a non-admin path
    with httpx.Client(base_url=console.origin) as client:
        assert client.get("/api/admin/compensations").status_code == 401
        assert client.get(console.start_url.removeprefix(console.origin)).status_code == 401  # used once already
        assert client.get("/", headers={"Host": f"evil.example:{console.port}"}).status_code == 403
        answer = client.get("/static/console.js")
        assert answer.status_code == 401
        assert "access-control-allow-origin" not in answer.headers
