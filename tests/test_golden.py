"""What the installed model predicts must not change by accident: ten sample photos against
the JSON tools/make_golden.py wrote before the last refactoring (ages within 0.01 years)."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("make_golden", ROOT / "tools" / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_installed_models_branches_are_its_recipes_each_on_the_original_crop():
    from agefuse import recipe as recipes
    from agefuse.fusion import load_fused
    model, state = load_fused(None)
    recipe = recipes.load(ROOT / "fusion" / "default" / "recipe.toml")
    assert list(state["branch_args"]) == model.regions == list(recipe.branches)
    assert model.crops == {name: "original" for name in recipe.branches}  # predict skips the 68 landmarks


def test_installed_model_predicts_the_golden_ages():
    from agefuse.fusion import load_fused
    golden = json.loads((ROOT / "tests" / "golden" / "installed_model.json").read_text())
    generator = _generator()
    model, _ = load_fused(None)
    now = generator.predictions(model, generator.golden_photos())
    assert [r["photo"] for r in now] == [r["photo"] for r in golden["photos"]]
    for then, record in zip(golden["photos"], now):
        assert len(record["faces"]) == len(then["faces"]), record["photo"]
        for old, new in zip(then["faces"], record["faces"]):
            assert new["box"] == old["box"], record["photo"]
            assert new["age"] == pytest.approx(old["age"], abs=0.01), record["photo"]
            assert new["gender_female"] == pytest.approx(old["gender_female"], abs=1e-3), record["photo"]
            assert (new["age_low"], new["age_high"]) == pytest.approx((old["age_low"], old["age_high"]), abs=0.01)
