import pytest

from agefuse.regions import labels


def test_utkface_name_gives_age_gender_race():
    item = labels.parse_utkface_name("/x/26_1_2_20170116184044516.jpg.chip.jpg")
    assert (item.age, item.gender, item.race, item.id) == (26, 1, 2, "26_1_2_20170116184044516")


@pytest.mark.parametrize("name, reason", [
    ("39_1_20170116174525125.jpg.chip.jpg", "malformed UTKFace name"),   # real: a field missing
    ("61_1_20170109142408075.jpg.chip.jpg", "malformed UTKFace name"),
    ("130_0_0_20170116174525125.jpg.chip.jpg", "age 130 is outside"),
    ("30_2_0_20170116174525125.jpg.chip.jpg", "gender 2 is not"),
    ("30_0_7_20170116174525125.jpg.chip.jpg", "race 7 is not"),
    ("holiday.jpg", "malformed UTKFace name"),
])
def test_bad_utkface_names_are_refused_with_the_reason(name, reason):
    with pytest.raises(labels.LabelError, match=reason):
        labels.parse_utkface_name(name)


def test_odd_but_complete_public_names_are_read():
    # two public UTKFace files carry a stray space / a missing dot in the date field
    assert labels.parse_utkface_name("24_0_1_20170116220224657 .jpg.chip.jpg").age == 24
    assert labels.parse_utkface_name("55_0_0_20170116232725357jpg.chip.jpg").race == 0


def test_folder_listing_skips_and_reports_bad_names(tmp_path):
    for name in ("1_0_0_2017.jpg.chip.jpg", "2_1_0_2017.jpg.chip.jpg", "39_1_2017.jpg.chip.jpg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    items, problems = labels.utkface_items(tmp_path)
    assert [i.age for i in items] == [1, 2]
    assert len(problems) == 1 and "39_1_2017" in problems[0].path
    assert "malformed" in problems[0].reason


def test_csv_labels_with_problems_reported_per_row(tmp_path):
    (tmp_path / "labels.csv").write_text(
        "path,age,gender\n"
        "a.jpg,31,0\n"
        "sub/b.png,4,\n"
        "c.jpg,abc,1\n"
        "d.jpg,200,1\n"
        "e.jpg,40,5\n"
        "f.jpg,12.5,1\n")
    items, problems = labels.csv_items(tmp_path / "labels.csv")
    assert [(i.id, i.age, i.gender) for i in items] == [("a", 31, 0), ("b", 4, None)]
    assert items[1].path == str(tmp_path / "sub" / "b.png")
    reasons = {p.path.split(":")[-1].split(" ")[0]: p.reason for p in problems}
    assert reasons == {"4": "age 'abc' is not a number", "5": "age 200 is outside 0..120",
                       "6": "gender 5 is not 0 (male) or 1 (female)",
                       "7": "age '12.5' is not a whole number"}


def test_csv_without_the_needed_columns_is_refused(tmp_path):
    (tmp_path / "labels.csv").write_text("file,years\na.jpg,3\n")
    with pytest.raises(labels.LabelError, match="path,age"):
        labels.csv_items(tmp_path / "labels.csv")


def test_two_images_with_one_id_are_not_merged(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    (tmp_path / "labels.csv").write_text("path,age\nx/face.jpg,3\ny/face.jpg,4\n")
    items, problems = labels.csv_items(tmp_path / "labels.csv")
    assert len(items) == 1 and len(problems) == 1 and "same image id" in problems[0].reason


def test_a_link_back_up_is_walked_once_and_a_stray_cache_json_hides_nothing(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "30_0_0_20170101000000000.jpg.chip.jpg").write_bytes(b"x")
    (tmp_path / "a" / "up").symlink_to("..")                 # would loop without a check
    (tmp_path / "b").symlink_to(tmp_path / "a")               # the same folder by a second name
    (tmp_path / "a" / "cache.json").write_text('{"note": "a user\'s own file"}')
    assert [p.name for p in labels.image_files(tmp_path)] == ["30_0_0_20170101000000000.jpg.chip.jpg"]


def test_a_labels_file_that_is_not_utf8_is_one_error_naming_it(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("path,age\ncaf\xe9.jpg,30\n".encode("cp1252"))
    with pytest.raises(labels.LabelError, match=r"excel.csv: not UTF-8 text"):
        labels.collect(tmp_path, path)
