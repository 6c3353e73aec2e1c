"""The results browser: per-image IoU by hand, then the page of a tiny run in a real headless Chromium
(Debian's, installed by `make test`), driven through Selenium as a person would use it."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from stages.data.index import DatasetIndex
from stages.reporting.browser import CamSource, LabelSource, build_browser, image_iou, palette_hex

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", REPO / "results" / "test-artifacts"))
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def test_image_iou_by_hand() -> None:
    gt = np.array([[0, 0], [1, 1]], dtype=np.uint8)
    labels = np.array([[0, 1], [1, 1]], dtype=np.uint8)
    assert image_iou(gt, labels, 3) == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-4)  # class 2: in neither
    abstaining = np.array([[255, 1], [1, 1]], dtype=np.uint8)
    assert image_iou(gt, abstaining, 3, abstains=True) == image_iou(gt, labels, 3)  # 255 counts as background
    assert image_iou(np.full((2, 2), 255, np.uint8), labels, 3) is None  # nothing to score


def test_palette_names_every_class_and_ignore() -> None:
    colours = palette_hex(3)
    assert list(colours) == ["0", "1", "2", "255"]
    assert colours["0"] == "#000000" and colours["1"] == "#800000"  # the VOC palette


def test_rows_drawn_in_two_processes_are_those_of_one(tiny_run, tmp_path) -> None:
    """The pipeline draws the page with --workers {threads}: the same data and the same pictures,
    byte for byte, in the same row order as one process."""
    results = tiny_run[0] / "results"
    index = DatasetIndex.load(results / "dataset" / "index.checked.json")
    cam_file = next((results / "cam").glob("cams_*.h5"))
    split = cam_file.stem.removeprefix("cams_")
    labels = [LabelSource(f"pseudo_{d.parent.name}", d.parent.name, split, d, abstains=True)
              for d in sorted((results / "pseudo_labels").glob(f"*/{split}"))]
    labels += [LabelSource(f"pred_{d.parent.name}", d.parent.name, "val", d)
               for d in sorted((results / "eval").glob("*/predictions"))]
    folders = {}
    for workers in (1, 2):
        folders[workers] = tmp_path / str(workers)
        counts = build_browser(index, folders[workers], cams=CamSource(cam_file, 0.3, split), labels=labels,
                               val_split="val", max_images=6, progress=False, workers=workers)
        assert counts["rows"] == 12 and counts["pictures"] > 24
    one, two = (sorted(p.relative_to(f) for p in f.rglob("*") if p.is_file()) for f in folders.values())
    assert one == two
    assert all((folders[1] / p).read_bytes() == (folders[2] / p).read_bytes() for p in one)


def browse_data(folder: Path) -> dict:
    text = (folder / "data.js").read_text(encoding="utf-8")
    return json.loads(text.removeprefix("window.BROWSE_DATA = ").rstrip().removesuffix(";"))


@pytest.fixture(scope="module")
def page(tiny_run):
    if not (CHROMIUM and CHROMEDRIVER):
        message = "chromium and chromedriver not installed (`make test` installs them: apt-get install chromium " \
                  "chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    folder = tiny_run[0] / "results" / "browse"
    driver.get((folder / "index.html").as_uri())
    yield driver, browse_data(folder)
    driver.quit()


def shown_rows(driver) -> list:
    return driver.find_elements("css selector", "tr.row")


def choose(driver, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select_id)).select_by_value(value)


def column_values(driver, key: str, attribute: str = "data-value") -> list[float | None]:
    values = []
    for row in shown_rows(driver):
        found = row.find_elements("css selector", f"[data-col='{key}'].iou" if attribute == "data-value"
                                  else "[data-diff]")
        text = found[0].get_attribute(attribute) if found else ""
        values.append(float(text) if text else None)
    return values


def expected_order(data: dict, value) -> list[str]:
    """Row ids as the page must order them: by ``value`` (rows without one last), ties in data order."""
    rows = list(enumerate(data["rows"]))
    keyed = sorted(rows, key=lambda nr: (value(nr[1]) is None, value(nr[1]) or 0, nr[0]))
    return [r["id"] + "/" + r["split"] for _, r in keyed]


def shown_ids(driver) -> list[str]:
    return [r.get_attribute("data-id") + "/" + r.get_attribute("data-split") for r in shown_rows(driver)]


def test_page_renders_every_row_and_every_thumbnail_loads(page) -> None:
    driver, data = page
    assert len(shown_rows(driver)) == min(50, len(data["rows"])) > 0
    assert {r["split"] for r in data["rows"]} == {"train", "val"}
    images = driver.find_elements("css selector", "img.thumb")
    for image in images:  # lazy: each loads once scrolled into sight
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", image)
    from selenium.webdriver.support.ui import WebDriverWait

    broken = "return [...document.images].filter(i => i.classList.contains('thumb') && " \
             "!(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    WebDriverWait(driver, 20).until(lambda d: not d.execute_script(broken))
    columns = {c["key"] for c in data["columns"]}
    assert {"image", "gt", "cam", "pseudo_none", "pseudo_plmix", "pred_ce", "pred_eil"} <= columns
    # a thumbnail per picture of every shown row: image, ground truth, one CAM per class, labels
    expected = sum(len(r["parts"]) - ("cam" in r["parts"]) + len(r.get("cams", [])) for r in data["rows"][:50])
    assert len(images) == expected


def test_sorting_by_a_column_orders_rows_as_its_numbers_say(page) -> None:
    driver, data = page
    choose(driver, "sort-key", "iou:pseudo_plmix")
    choose(driver, "sort-dir", "asc")
    values = column_values(driver, "pseudo_plmix")
    numbers = [v for v in values if v is not None]
    assert len(numbers) >= 4 and numbers == sorted(numbers)
    assert values[:len(numbers)] == numbers  # rows without the column come last
    assert shown_ids(driver) == expected_order(data, lambda r: r["iou"].get("pseudo_plmix"))
    assert shown_ids(driver) != expected_order(data, lambda r: None)  # the order changed
    choose(driver, "sort-dir", "desc")
    numbers = [v for v in column_values(driver, "pseudo_plmix") if v is not None]
    assert len(numbers) >= 4 and numbers == sorted(numbers, reverse=True)


def test_sorting_by_disagreement_of_two_columns(page) -> None:
    driver, data = page
    choose(driver, "sort-key", "diff")
    choose(driver, "sort-dir", "asc")
    choose(driver, "diff-a", "pseudo_plmix")
    choose(driver, "diff-b", "pseudo_none")
    differences = [v for v in column_values(driver, "", attribute="data-diff") if v is not None]
    truth = [r["iou"]["pseudo_plmix"] - r["iou"]["pseudo_none"] for r in data["rows"]
             if r["iou"].get("pseudo_plmix") is not None and r["iou"].get("pseudo_none") is not None]
    assert differences == pytest.approx(sorted(truth))


def test_class_filter_hides_rows_without_that_class(page) -> None:
    driver, data = page
    choose(driver, "sort-key", "")
    for value, name in enumerate(data["classes"][1:], 1):
        choose(driver, "class-filter", str(value))
        rows = shown_rows(driver)
        assert all(str(value) in r.get_attribute("data-classes").split() for r in rows), name
        assert len(rows) == min(50, sum(value in r["classes"] for r in data["rows"]))
    choose(driver, "class-filter", "")
    assert len(shown_rows(driver)) == min(50, len(data["rows"]))


def test_a_thumbnail_opens_large_with_an_opacity_slider(page) -> None:
    driver, _ = page
    from selenium.webdriver.support.ui import WebDriverWait

    thumb = driver.find_element("css selector", "td[data-col='pseudo_plmix'] img.thumb")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", thumb)
    thumb.click()
    assert driver.find_element("id", "viewer").is_displayed()
    overlay = driver.find_element("id", "view-overlay")
    WebDriverWait(driver, 10).until(lambda d: d.execute_script(
        "const o = document.getElementById('view-overlay'), b = document.getElementById('view-base');"
        "return o.complete && o.naturalWidth > 0 && b.complete && b.naturalWidth > 0"))
    assert overlay.get_attribute("src").endswith(".png")
    driver.execute_script("const s = document.getElementById('opacity'); s.value = 20;"
                          "s.dispatchEvent(new Event('input'))")
    assert float(overlay.value_of_css_property("opacity")) == pytest.approx(0.2)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "browse_viewer.png"))
    driver.find_element("id", "close").click()
    assert not driver.find_element("id", "viewer").is_displayed()
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(ARTIFACTS / "browse.png"))
    assert (ARTIFACTS / "browse.png").stat().st_size > 10_000


def test_console_shows_no_error(page) -> None:
    driver, _ = page
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
