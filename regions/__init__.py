"""regions: face photos in, region crops cached by age group out.

Commands: ``agefuse-regions SOURCE --cache CACHE`` (``regions.cli``), ``agefuse-report``,
``agefuse-regions-merge``. Writes ``CACHE/<age_group>/<region>/<id>.<ext>`` and
``CACHE/manifest.jsonl`` (see docs/formats.md); later stages read them through
``regions.manifest.load(cache)``.
"""
