import pytest
from PIL import Image

from vidrop.config.errors import InputError
from vidrop.pipeline.images import fit_image, load_image


def test_exif_rotation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    image.save(path, exif=exif)
    assert load_image(path, max_pixels=10**6).size == (20, 40)


@pytest.mark.parametrize(
    "mode,color",
    [("CMYK", (0, 255, 255, 0)), ("P", 3), ("RGBA", (255, 0, 0, 0)), ("LA", (10, 128)), ("I;16", 65535), ("L", 7)],
)
def test_design_tool_colour_modes_become_rgb(tmp_path, mode, color):
    path = tmp_path / ("image.tif" if mode == "CMYK" else "image.png")
    Image.new(mode, (8, 8), color).save(path)
    loaded = load_image(path, max_pixels=10**6)
    assert loaded.mode == "RGB" and loaded.size == (8, 8)


def test_transparent_pixels_become_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(path)
    assert load_image(path, max_pixels=100).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_white_stays_white(tmp_path):
    path = tmp_path / "deep.png"
    Image.new("I;16", (4, 4), 65535).save(path)
    assert load_image(path, max_pixels=100).getpixel((0, 0)) == (255, 255, 255)


def test_a_text_file_with_an_image_name_is_an_input_error(tmp_path):
    path = tmp_path / "fake.png"
    path.write_text("hello")
    with pytest.raises(InputError, match="not an image"):
        load_image(path, max_pixels=100)


def test_a_truncated_image_is_an_input_error(tmp_path):
    path = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path)
    path.write_bytes(path.read_bytes()[:80])
    with pytest.raises(InputError):
        load_image(path, max_pixels=10**6)


def test_too_many_pixels_is_refused(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("RGB", (100, 100)).save(path)
    with pytest.raises(InputError, match="too large"):
        load_image(path, max_pixels=5000)


def test_fit_keeps_aspect_ratio_by_cropping_or_padding():
    wide = Image.new("RGB", (200, 100), (0, 0, 255))
    assert fit_image(wide, 64, 64, "crop").getpixel((0, 32)) == (0, 0, 255)
    padded = fit_image(wide, 64, 64, "pad")
    assert padded.size == (64, 64) and padded.getpixel((32, 0)) == (0, 0, 0)


def test_an_image_is_decoded_from_the_bytes_the_runner_hashed(tmp_path):
    path = tmp_path / "shot.PNG"
    Image.new("RGB", (32, 16), (9, 8, 7)).save(path, format="PNG")
    image = load_image(path.read_bytes(), name="folder/shot.PNG", max_pixels=10**6)
    assert image.size == (32, 16) and image.getpixel((0, 0)) == (9, 8, 7)
    with pytest.raises(InputError, match="cannot use"):  # the name still decides what vidrop takes
        load_image(path.read_bytes(), name="shot.psd", max_pixels=10**6)
    with pytest.raises(InputError, match="not an image"):
        load_image(path.read_bytes()[:40], name="shot.png", max_pixels=10**6)
