"""Coordinate files: RELION STAR (2D, index, tomograms), EMAN .box, Topaz; round trips and errors."""
import numpy as np
import pandas as pd
import pytest
import starfile

from fewshotpicker.errors import InputError
from fewshotpicker.io.coordinates import (make_coordinates, match_micrographs, micrograph_key,
                                          read_coordinates, read_tomo_coordinates,
                                          write_autopick, write_box, write_coordinate_table,
                                          write_tomo_coordinates, write_topaz)


def _picks():
    a = make_coordinates("mics/mic_000.mrc", [[10.5, 20.25], [100.0, 50.0]], [0.9, 0.4])
    b = make_coordinates("mics/mic_001.mrc", [[7.0, 8.0]], [0.7])
    return pd.concat([a, b], ignore_index=True)


@pytest.mark.parametrize("name,key", [("a/b/mic_01.mrc", "mic_01"),
                                      ("mic_01_autopick.star", "mic_01"),
                                      ("mic_01_manualpick.star", "mic_01"), ("x.box", "x"),
                                      ("stem", "stem"), ("/p/TS_01.mrcs", "TS_01")])
def test_micrograph_key(name, key):
    assert micrograph_key(name) == key


def test_autopick_round_trip_and_relion_layout(tmp_path):
    picks = _picks()
    index = write_autopick(picks, tmp_path, ["mics/mic_000.mrc", "mics/mic_001.mrc",
                                             "mics/mic_002.mrc"])
    text = index.read_text()
    assert "data_coordinate_files" in text and "_rlnMicrographCoordinates" in text
    per_mic = starfile.read(tmp_path / "mic_000_autopick.star")
    assert list(per_mic.columns) == ["rlnCoordinateX", "rlnCoordinateY", "rlnClassNumber",
                                     "rlnAutopickFigureOfMerit", "rlnAnglePsi"]
    assert per_mic["rlnAutopickFigureOfMerit"].tolist() == [0.9, 0.4]
    back = read_coordinates(index)
    assert back["micrograph"].tolist() == picks["micrograph"].tolist()
    np.testing.assert_allclose(back[["x", "y", "score"]], picks[["x", "y", "score"]])
    # the micrograph without picks still has an (empty) file and an index entry
    assert (tmp_path / "mic_002_autopick.star").exists()
    assert len(starfile.read(index)) == 3
    # a folder is read through its index
    assert len(read_coordinates(tmp_path)) == 3
    # every pick in one table with its micrograph's name: cryoSPARC's particle meta file
    table = starfile.read(tmp_path / "picks.star", always_dict=True)
    assert list(table) == ["particles"]
    assert list(table["particles"].columns) == ["rlnMicrographName", "rlnCoordinateX",
                                                "rlnCoordinateY", "rlnClassNumber",
                                                "rlnAutopickFigureOfMerit"]
    together = read_coordinates(tmp_path / "picks.star")
    assert together["micrograph"].tolist() == picks["micrograph"].tolist()
    np.testing.assert_allclose(together[["x", "y", "score"]], picks[["x", "y", "score"]])
    # without its index the folder's per-micrograph files are read, not picks.star again
    index.unlink()
    assert len(read_coordinates(tmp_path)) == 3
    for f in tmp_path.glob("*_autopick.star"):
        f.unlink()
    assert len(read_coordinates(tmp_path)) == 3  # picks.star alone


def test_coordinate_table_round_trip(tmp_path):
    picks = _picks()
    write_coordinate_table(picks, tmp_path / "ex.star")
    df = starfile.read(tmp_path / "ex.star")
    assert {"rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"} <= set(df.columns)
    back = read_coordinates(tmp_path / "ex.star")
    np.testing.assert_allclose(back[["x", "y"]], picks[["x", "y"]])
    assert back["micrograph"].tolist() == picks["micrograph"].tolist()


def test_star_without_coordinates_is_refused(tmp_path):
    starfile.write(pd.DataFrame({"rlnMicrographName": ["a.mrc"], "rlnDefocusU": [1.0]}),
                   tmp_path / "ctf.star")
    with pytest.raises(InputError, match=r"ctf\.star: has no rlnCoordinateX/rlnCoordinateY"):
        read_coordinates(tmp_path / "ctf.star")


def test_missing_star_and_unreadable_star(tmp_path):
    with pytest.raises(InputError, match=r"gone\.star: file not found"):
        read_coordinates(tmp_path / "gone.star")
    (tmp_path / "bad.star").write_text("data_\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n"
                                       "1 2 3 4 5\n")
    with pytest.raises(InputError, match=r"bad\.star"):
        read_coordinates(tmp_path / "bad.star")
    (tmp_path / "junk.star").write_bytes(b"\x00\x01 not text at all")
    with pytest.raises(InputError, match=r"junk\.star: not a STAR file \(it holds no data_ block\)"):
        read_coordinates(tmp_path / "junk.star")
    (tmp_path / "none.star").write_text("")  # some pickers leave an empty file: no picks
    assert len(read_coordinates(tmp_path / "none.star")) == 0


def test_coordinates_that_are_not_numbers_are_refused_with_the_row(tmp_path):
    head = "data_\nloop_\n_rlnMicrographName #1\n_rlnCoordinateX #2\n_rlnCoordinateY #3\n"
    (tmp_path / "text.star").write_text(head + "m.mrc 10 20\nm.mrc 30 abc\n")
    with pytest.raises(InputError, match=r"text\.star: rlnCoordinateY holds 1 value\(s\) that "
                                         r"are not finite numbers \(first 'abc', row 2\)"):
        read_coordinates(tmp_path / "text.star")
    (tmp_path / "nan.star").write_text(head + "m.mrc nan 20\nm.mrc inf 5\nm.mrc 1 2\n")
    with pytest.raises(InputError, match=r"nan\.star: rlnCoordinateX holds 2 value\(s\).*row 1"):
        read_coordinates(tmp_path / "nan.star")
    (tmp_path / "m.box").write_text("1\t2\t20\t20\nnan\t2\t20\t20\n")
    with pytest.raises(InputError, match=r"m\.box: line 2 holds a value that is not a finite"):
        read_coordinates(tmp_path / "m.box")
    (tmp_path / "t.txt").write_text("image_name\tx_coord\ty_coord\tscore\nm\t1\t2\thigh\n")
    with pytest.raises(InputError, match=r"t\.txt: score holds 1 value"):
        read_coordinates(tmp_path / "t.txt")
    for name, content in (("junk.txt", b"\x00\x01\xff\xfe garbage"),
                          ("open.txt", b'image_name\tx_coord\n"unterminated\t1\n'),
                          ("empty.txt", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match=rf"{name.replace('.', '[.]')}: is not a Topaz"):
            read_coordinates(tmp_path / name)
    # numbers written as text by other tools still read
    (tmp_path / "ok.star").write_text(head + "m.mrc 10 20.5\nm.mrc 3e1 4\n")
    np.testing.assert_allclose(read_coordinates(tmp_path / "ok.star")[["x", "y"]],
                               [[10, 20.5], [30, 4]])


def test_box_round_trip_uses_corners(tmp_path):
    picks = make_coordinates("m.mrc", [[50.0, 60.0], [10.0, 12.0]])
    write_box(picks, tmp_path / "m.box", box=20)
    assert (tmp_path / "m.box").read_text().splitlines()[0] == "40\t50\t20\t20"
    back = read_coordinates(tmp_path / "m.box")
    np.testing.assert_allclose(back[["x", "y"]], [[50, 60], [10, 12]])
    assert back["micrograph"].tolist() == ["m", "m"]


def test_topaz_round_trip(tmp_path):
    picks = _picks()
    write_topaz(picks, tmp_path / "t.txt")
    header = (tmp_path / "t.txt").read_text().splitlines()[0].split("\t")
    assert header == ["image_name", "x_coord", "y_coord", "score"]
    back = read_coordinates(tmp_path / "t.txt")
    assert back["micrograph"].tolist() == ["mic_000", "mic_000", "mic_001"]
    np.testing.assert_allclose(back["x"], [10, 100, 7])  # Topaz stores integers
    np.testing.assert_allclose(back["score"], [0.9, 0.4, 0.7])


def test_names_that_match_no_micrograph(tmp_path):
    with pytest.raises(InputError, match=r"exemplars\.star: names 1 image\(s\) that match no "
                                         r"given micrograph \(mic_001\)"):
        match_micrographs(_picks(), ["/data/mic_000.mrc"], "exemplars.star")
    ok = match_micrographs(_picks(), ["/data/mic_000.mrc", "/data/mic_001.mrc"], "x")
    assert ok["micrograph"].iloc[-1] == "/data/mic_001.mrc"


def test_tomogram_coordinates_relion5_centred_angstrom_and_relion4(tmp_path):
    picks = make_coordinates("tomos/TS_01.mrc", [[150.0, 50.0, 32.0], [0.0, 0.0, 0.0]],
                             [0.8, 0.5], [1, 2])
    shapes = {"TS_01": (64, 100, 200)}  # (d, h, w)
    write_tomo_coordinates(picks, tmp_path / "r5.star", shapes, pixel_size=10.0)
    df = starfile.read(tmp_path / "r5.star")
    assert df["rlnTomoName"].tolist() == ["TS_01", "TS_01"]
    # (150 - 200/2) * 10 = 500 Å; (50 - 100/2) * 10 = 0; (32 - 64/2) * 10 = 0
    assert df.loc[0, ["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                      "rlnCenteredCoordinateZAngst"]].tolist() == [500.0, 0.0, 0.0]
    assert df.loc[1, "rlnCenteredCoordinateXAngst"] == -1000.0
    back = read_tomo_coordinates(tmp_path / "r5.star", shapes, 10.0)
    np.testing.assert_allclose(back[["x", "y", "z"]], picks[["x", "y", "z"]])
    assert back["class"].tolist() == [1, 2]
    write_tomo_coordinates(picks, tmp_path / "r4.star", shapes, 10.0, relion=4)
    back4 = read_tomo_coordinates(tmp_path / "r4.star")
    np.testing.assert_allclose(back4[["x", "y", "z"]], picks[["x", "y", "z"]])
    with pytest.raises(InputError, match="shapes and pixel size are needed"):
        read_tomo_coordinates(tmp_path / "r5.star")
    with pytest.raises(InputError, match="r5.star: names 1 tomogram.s. that match no given "
                                         "tomogram .TS_01.\\.$"):
        read_tomo_coordinates(tmp_path / "r5.star", {"TS_02": (64, 100, 200)}, 10.0)
    nameless = starfile.read(tmp_path / "r5.star").drop(columns="rlnTomoName")
    starfile.write(nameless, tmp_path / "nameless.star")
    with pytest.raises(InputError, match="nameless.star: holds RELION 5 centred coordinates "
                                         "without rlnTomoName"):
        read_tomo_coordinates(tmp_path / "nameless.star", shapes, 10.0)
