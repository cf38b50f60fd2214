"""MRC reading and writing: round trips, the origin convention, and clear errors."""
import stat

import mrcfile
import numpy as np
import pytest

from fewshotpicker.errors import InputError
from fewshotpicker.io.atomic import UMASK, atomic_path, write_text_atomic
from fewshotpicker.io.mrc import open_volume, read_image, read_volume, write_mrc


def test_round_trip_keeps_values_and_pixel_size(tmp_path):
    data = np.random.default_rng(0).normal(size=(40, 60)).astype(np.float32)
    write_mrc(tmp_path / "a.mrc", data, pixel_size=1.34)
    back = read_image(tmp_path / "a.mrc")
    assert back.data.dtype == np.float32
    np.testing.assert_array_equal(back.data, data)
    assert back.pixel_size == pytest.approx(1.34, abs=1e-5)


def test_origin_is_first_array_element_x_columns_y_rows(tmp_path):
    data = np.zeros((20, 30), np.float32)
    data[3, 7] = 5.0  # row 3 = y, column 7 = x
    write_mrc(tmp_path / "o.mrc", data)
    with mrcfile.open(tmp_path / "o.mrc") as mrc:  # the file's first values are row 0
        assert mrc.header.nx == 30 and mrc.header.ny == 20
    back = read_image(tmp_path / "o.mrc").data
    y, x = np.unravel_index(np.argmax(back), back.shape)
    assert (x, y) == (7, 3)


def test_integer_modes_are_read_as_float32(tmp_path):
    with mrcfile.new(tmp_path / "i.mrc") as mrc:
        mrc.set_data(np.arange(12, dtype=np.int16).reshape(3, 4))
    back = read_image(tmp_path / "i.mrc").data
    assert back.dtype == np.float32 and back[2, 3] == 11.0


def test_single_section_volume_is_an_image(tmp_path):
    write_mrc(tmp_path / "s.mrc", np.arange(72.0).reshape(1, 8, 9))
    assert read_image(tmp_path / "s.mrc").data.shape == (8, 9)


def test_complex_values_are_refused_for_images_and_volumes(tmp_path):
    for name, shape, read in (("ft.mrc", (8, 8), read_image), ("ft3.mrc", (4, 8, 8), open_volume)):
        with mrcfile.new(tmp_path / name) as mrc:
            mrc.set_data(np.full(shape, 1 + 2j, np.complex64))
        with pytest.raises(InputError, match=rf"{name.replace('.', '[.]')}: holds complex values "
                                             r"\(MRC mode 4, a Fourier transform\)"):
            read(tmp_path / name)


def test_blank_image_is_refused(tmp_path):
    write_mrc(tmp_path / "blank.mrc", np.full((16, 16), 3.5))
    with pytest.raises(InputError, match=r"blank\.mrc: every pixel holds the same value \(3\.5\)"):
        read_image(tmp_path / "blank.mrc")


def test_image_smaller_than_a_box_is_refused_only_when_a_box_is_given(tmp_path):
    data = np.random.default_rng(0).normal(size=(30, 50))
    write_mrc(tmp_path / "tiny.mrc", data)
    assert read_image(tmp_path / "tiny.mrc").data.shape == (30, 50)
    assert read_image(tmp_path / "tiny.mrc", min_side=30).data.shape == (30, 50)
    with pytest.raises(InputError, match=r"tiny\.mrc: the micrograph is 50 x 30 px, smaller "
                                         r"than one particle box \(40 px\)"):
        read_image(tmp_path / "tiny.mrc", min_side=40)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.mrc: file not found"):
        read_image(tmp_path / "nope.mrc")


def test_truncated_file(tmp_path):
    path = tmp_path / "t.mrc"
    write_mrc(path, np.ones((64, 64)))
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(InputError, match=r"t\.mrc: truncated MRC file"):
        read_image(path)


def test_not_an_mrc_file(tmp_path):
    path = tmp_path / "notes.mrc"
    path.write_text("these are my notes, not an image\n" * 40)
    with pytest.raises(InputError, match=r"notes\.mrc: not a valid MRC file"):
        read_image(path)


def test_nan_and_inf_are_refused(tmp_path):
    for bad in (np.nan, np.inf):
        data = np.ones((16, 16), np.float32)
        data[4, 4] = bad
        write_mrc(tmp_path / "n.mrc", data)
        with pytest.raises(InputError, match=r"n\.mrc: contains NaN or infinite"):
            read_image(tmp_path / "n.mrc")


def test_stack_where_one_image_is_expected(tmp_path):
    write_mrc(tmp_path / "stack.mrc", np.ones((3, 16, 16)))
    with pytest.raises(InputError, match=r"stack\.mrc: holds a stack or volume of shape "
                                         r"\(3, 16, 16\)"):
        read_image(tmp_path / "stack.mrc")


def test_volume_is_memory_mapped_and_refuses_2d(tmp_path):
    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    write_mrc(tmp_path / "v.mrc", vol, 10.0)
    opened = open_volume(tmp_path / "v.mrc")
    assert isinstance(opened.data, np.memmap)
    assert float(opened.data[2, 3, 4]) == vol[2, 3, 4]
    np.testing.assert_array_equal(read_volume(tmp_path / "v.mrc").data, vol)
    write_mrc(tmp_path / "flat.mrc", np.ones((5, 6)))
    with pytest.raises(InputError, match="3D volume is expected"):
        open_volume(tmp_path / "flat.mrc")


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "keep.mrc"
    write_mrc(path, np.arange(64.0).reshape(8, 8) + 3.0)
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert read_image(path).data[0, 0] == 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mrc"]


def test_atomic_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = write_text_atomic(tmp_path / "picks.star", "x")
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE(written.stat().st_mode) & stat.S_IRGRP or UMASK & stat.S_IRGRP
