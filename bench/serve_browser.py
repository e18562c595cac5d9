"""agefuse-serve's page in a real headless Chromium: upload a photo, wait for the drawing,
save a screenshot.

    python bench/serve_browser.py [--photo PHOTO] [--out bench/out/serve_page.png]

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium
chromium-driver``) and ``pip install selenium``: benchmark-only, not package dependencies.
Starts ``agefuse-serve`` on a free loopback port, opens ``/``, gives the page's file input the
photo (what a drop or a click does), waits for the answer to be drawn and checks the table
lists the faces.
"""
import argparse
import sys
import time
from pathlib import Path

from serve_load import serving

ROOT = Path(__file__).resolve().parents[1]


def main(args) -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if args.photo is None:  # three sample faces side by side
        import cv2
        import numpy as np
        chips = [cv2.imread(str(p)) for p in sorted((ROOT / "sample" / "utkface").glob("*.jpg"))[60:240:60]]
        canvas = np.full((260, 40 + 220 * len(chips), 3), 225, np.uint8)
        for i, chip in enumerate(chips):
            canvas[30:230, 20 + 220 * i:220 + 220 * i] = chip
        args.photo = str(Path(args.out).with_name("serve_photo.jpg"))
        Path(args.photo).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(args.photo, canvas)
    options = webdriver.ChromeOptions()
    options.binary_location = args.chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,1000"):
        options.add_argument(flag)
    with serving() as url:
        browser = webdriver.Chrome(service=Service(args.chromedriver), options=options)
        try:
            browser.get(url)
            start = time.perf_counter()
            browser.find_element(By.ID, "file").send_keys(str(Path(args.photo).resolve()))
            WebDriverWait(browser, 60).until(lambda b: "face" in b.find_element(By.ID, "status").text
                                             and "estimating" not in b.find_element(By.ID, "status").text)
            seconds = time.perf_counter() - start
            status = browser.find_element(By.ID, "status").text
            rows = browser.find_elements(By.CSS_SELECTOR, "#faces tr")[1:]
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(args.out)
            print(f"Chromium {browser.capabilities.get('browserVersion')} headless: '{status}' in {seconds:.2f} s; "
                  f"{len(rows)} face row(s): " + "; ".join(r.text for r in rows) + f"; screenshot {args.out}")
        finally:
            browser.quit()
    return 0 if rows else 1

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", default=None, help="default: three sample faces side by side")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "serve_page.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    sys.exit(main(parser.parse_args()))
