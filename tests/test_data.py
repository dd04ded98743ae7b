"""Datasets: attribute schema, the synthetic shapes (pixels agree with labels), IDX/CIFAR/CelebA/image-folder
readers on tiny on-disk fixtures, 2-D toys, and the registry's errors. Nothing touches the network."""

import gzip
import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import latentdiff.data.mnist as mnist_module
from latentdiff.data import UNSPECIFIED, AttributeSchema, build_dataset, dataset_names, read_idx

# ----------------------------------------------------------------------------------------------- schema


def small_schema():
    return AttributeSchema(["color", "smiling"], [["red", "green"], None])


def test_schema_parse_gives_indices_and_unspecified_for_missing_attributes():
    s = small_schema()
    assert s.parse({"color": "green"}).tolist() == [1, UNSPECIFIED]
    assert s.parse({"smiling": "true", "color": "red"}).tolist() == [0, 1]
    assert s.parse({"smiling": 0}).tolist() == [UNSPECIFIED, 0]
    assert s.parse({}).dtype == torch.long
    assert [s.num_values(i) for i in range(2)] == [2, 2]
    assert s.index("color", "green") == 1


def test_schema_rejects_unknown_names_and_values_listing_the_valid_ones():
    s = small_schema()
    with pytest.raises(ValueError, match="did you mean 'color'\\? valid attributes: color, smiling"):
        s.parse({"colour": "red"})
    with pytest.raises(ValueError, match="valid values: red, green"):
        s.parse({"color": "blue"})
    with pytest.raises(ValueError, match="did you mean 'green'"):
        s.parse({"color": "gren"})
    with pytest.raises(ValueError, match="binary"):
        s.parse({"smiling": "maybe"})


def test_schema_round_trips_through_a_weights_only_checkpoint(tmp_path):
    s = small_schema()
    torch.save({"schema": s.to_dict()}, tmp_path / "c.pt")
    back = AttributeSchema.from_dict(torch.load(tmp_path / "c.pt", weights_only=True)["schema"])
    assert back == s


def test_schema_describe_reads_values_in_order_and_skips_unspecified():
    s = small_schema()
    assert s.describe(torch.tensor([0, 1])) == "red smiling"
    assert s.describe([1, 0]) == "green no smiling"
    assert s.describe([UNSPECIFIED, UNSPECIFIED]) == "unconditional"


# ----------------------------------------------------------------------------------------------- shapes

RGB = {"red": (1, -1, -1), "green": (-1, 1, -1), "blue": (-1, -1, 1), "yellow": (1, 1, -1),
       "magenta": (1, -1, 1), "cyan": (-1, 1, 1)}


@pytest.fixture(scope="module")
def shapes_train():
    return build_dataset("shapes", "train"), None


def test_shapes_default_train_split_is_50k_of_the_documented_layout(shapes_train):
    # (no wall-clock bound here: a test's verdict must not depend on how busy the machine is)
    data, _ = shapes_train
    assert len(data) == 50_000 and data.sample_shape == (3, 32, 32)
    x, attrs = data[0]
    assert x.dtype == torch.float32 and x.min() == -1 and x.max() == 1
    assert attrs.shape == (3,) and attrs.dtype == torch.long
    assert data.schema.names == ["color", "size", "shape"]
    # every value of every attribute occurs with about its uniform share
    for i in range(3):
        share = torch.bincount(data.attributes[:, i]).float() / len(data)
        assert torch.allclose(share, torch.full_like(share, 1 / data.schema.num_values(i)), atol=0.01)


def test_shapes_pixels_have_the_labelled_saturated_colour_on_black(shapes_train):
    data, _ = shapes_train
    for i in range(200):
        x, attrs = data[i]
        lit = (x > -1).any(0)  # non-black pixels
        assert lit.any()
        assert set(x.unique().tolist()) <= {-1.0, 1.0}  # crisp default: saturated or black
        colour = x[:, lit].mean(1)
        assert colour.tolist() == list(RGB[data.schema.values[0][attrs[0]]])


def test_shapes_areas_match_closed_forms_for_each_shape_and_size():
    """Coverage (antialias 4) summed per image vs 4h², πh², 2h² for square, circle, triangle;
    a shape clipped by the frame would fall short, so this also checks 'fully inside'."""
    s = 64
    data = build_dataset("shapes", "train", size=1200, image_size=s, antialias=4, seed=3)
    area = ((data.images.float() / 255).amax(1)).sum((1, 2))  # any lit channel: coverage fraction
    color, size, shape = data.attributes.T
    for size_idx, frac in ((0, 0.125), (1, 0.25)):
        h = frac * s
        for shape_idx, closed_form in ((0, 4 * h * h), (1, math.pi * h * h), (2, 2 * h * h)):
            group = area[(size == size_idx) & (shape == shape_idx)]
            assert len(group) > 100
            assert (group - closed_form).abs().max() / closed_form < 0.05, (size_idx, shape_idx)
    for shape_idx in range(3):  # twice the half-extent: four times the area, whatever the shape
        small = area[(size == 0) & (shape == shape_idx)].mean()
        large = area[(size == 1) & (shape == shape_idx)].mean()
        assert abs(large / small - 4) < 0.1


def test_shapes_positions_cover_the_frame_uniformly():
    s = 32
    data = build_dataset("shapes", "train", size=4000, seed=1)
    x = data.centres[:, 0]
    half = torch.where(data.attributes[:, 1] == 0, 0.125, 0.25) * s
    lo, hi = half, s - half
    assert ((x >= lo) & (x <= hi)).all()
    u = (x - lo) / (hi - lo)  # uniform on [0, 1] if positions are uniform
    assert abs(u.mean() - 0.5) < 0.02 and abs(u.var() - 1 / 12) < 0.01
    # the pixel centroid of each image agrees with the stored centre for squares and circles
    lit = (data.images > 0).any(1).float()
    cols = (lit.sum(1) * (torch.arange(s) + 0.5)).sum(1) / lit.sum((1, 2))
    sym = data.attributes[:, 2] < 2
    assert (cols[sym] - x[sym]).abs().max() < 0.75


def test_shapes_are_deterministic_by_seed_and_splits_differ():
    a = build_dataset("shapes", "test", size=300, seed=5)
    b = build_dataset("shapes", "test", size=300, seed=5)
    c = build_dataset("shapes", "test", size=300, seed=6)
    t = build_dataset("shapes", "train", size=300, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.attributes, b.attributes)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.images, t.images)
    assert len(build_dataset("shapes", "test", size=None, image_size=8, seed=0)) == 10_000


# ----------------------------------------------------------------------------------------------- IDX


def write_idx(path, array, gz=False):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + np.array(array.shape, ">u4").tobytes()
    body = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(body)


def idx_fixture(folder, n=5, gz=True, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    for prefix in ("train", "t10k"):
        ext = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels, gz)
    return images, labels


@pytest.fixture
def no_system_copies(monkeypatch, tmp_path):
    """Point the system search locations at an empty folder, so the host's packages cannot leak in."""
    for spec in mnist_module.FLAVOURS.values():
        monkeypatch.setitem(spec, "system", [str(tmp_path / "nowhere")])


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_round_trips_raw_and_gzip(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4) - 7
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, a, gz)
    assert np.array_equal(read_idx(path), a)


def test_idx_reader_rejects_bad_magic_truncation_and_corrupt_gzip(tmp_path):
    (tmp_path / "magic").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(tmp_path / "magic")
    write_idx(tmp_path / "t", np.zeros((4, 5), np.uint8))
    (tmp_path / "t").write_bytes((tmp_path / "t").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "t")
    write_idx(tmp_path / "g.gz", np.zeros((40, 50), np.uint8), gz=True)
    (tmp_path / "g.gz").write_bytes((tmp_path / "g.gz").read_bytes()[:20])
    with pytest.raises(ValueError, match="cannot read IDX"):
        read_idx(tmp_path / "g.gz")


def test_fashion_mnist_from_root_is_padded_with_black_and_labelled(tmp_path, no_system_copies):
    images, labels = idx_fixture(tmp_path / "FashionMNIST" / "raw")  # torchvision's layout under root
    data = build_dataset("fashion_mnist", "train", root=str(tmp_path))
    assert len(data) == 5 and data.sample_shape == (1, 32, 32)
    x, attrs = data[3]
    assert torch.equal(x[0, 2:30, 2:30], torch.from_numpy(images[3]).float() / 127.5 - 1)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (x[0][border] == -1).all()
    assert attrs.tolist() == [3] and data.schema.describe(attrs) == "dress"
    assert data.schema.index("class", "ankle_boot") == 9
    assert data.attributes[:, 0].tolist() == labels.tolist()


def test_mnist_raw_files_native_size_and_subset(tmp_path, no_system_copies):
    images, _ = idx_fixture(tmp_path, n=7, gz=False)
    data = build_dataset("mnist", "test", root=str(tmp_path), image_size=28, size=4)
    assert len(data) == 4 and data.sample_shape == (1, 28, 28)
    assert torch.equal(data.images[:, 0], torch.from_numpy(images[:4]))
    assert data.schema.values[0] == [str(d) for d in range(10)]
    with pytest.raises(ValueError, match="only 7 examples"):
        build_dataset("mnist", "test", root=str(tmp_path), size=8)


def test_missing_idx_files_name_every_place_searched(tmp_path, no_system_copies):
    with pytest.raises(FileNotFoundError) as err:
        build_dataset("fashion_mnist", "train", root=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"data.root: {tmp_path} holds none of the 4 fashion_mnist")
    for place in (tmp_path, tmp_path / "FashionMNIST" / "raw", tmp_path / "nowhere"):
        assert str(place) in msg  # the folders searched, and the system copy data.root: null would read
    assert "download" in msg
    with pytest.raises(FileNotFoundError) as err:
        build_dataset("fashion_mnist", "train")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "nowhere") in msg and str(tmp_path) + "," not in msg
    assert "dataset-fashion-mnist" in msg and "download" in msg


def test_the_system_copy_is_read_only_when_data_root_is_unset(tmp_path, monkeypatch):
    images, _ = idx_fixture(tmp_path / "system", n=3)
    monkeypatch.setitem(mnist_module.FLAVOURS["fashion_mnist"], "system", [str(tmp_path / "system")])
    data = build_dataset("fashion_mnist", "train", root=None)
    assert torch.equal(data.images[:, 0, 2:30, 2:30], torch.from_numpy(images))
    (tmp_path / "empty").mkdir()  # a data.root without the files is refused, not replaced by the system copy
    with pytest.raises(FileNotFoundError, match=f"data.root: {tmp_path / 'empty'} holds none of the 4 "):
        build_dataset("fashion_mnist", "train", root=str(tmp_path / "empty"))


def test_download_uses_torchvision_into_root(tmp_path, monkeypatch, no_system_copies):
    import torchvision

    calls = []

    def fake_fashion_mnist(root, train, download):  # stands in for the network fetch
        calls.append((root, train, download))
        idx_fixture(tmp_path / "dl" / "FashionMNIST" / "raw", n=2)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_fashion_mnist)
    data = build_dataset("fashion_mnist", "test", root=str(tmp_path / "dl"), download=True)
    assert calls == [(str(tmp_path / "dl"), False, True)] and len(data) == 2


def test_failed_download_is_one_line_naming_the_target(tmp_path, monkeypatch, no_system_copies):
    import torchvision

    def offline(root, train, download):  # what torchvision raises without a network: several lines
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://example, URLError")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(FileNotFoundError) as err:
        build_dataset("fashion_mnist", "train", root=str(tmp_path / "dl"), download=True)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "dl") in msg and "Error downloading" in msg


# ----------------------------------------------------------------------------------------------- CIFAR-10


def test_cifar10_reads_torchvision_batches_in_rgb_plane_order(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [k, 9 - k]}, f)
    train = build_dataset("cifar10", "train", root=str(tmp_path))
    test = build_dataset("cifar10", "test", root=str(tmp_path))
    assert len(train) == 10 and len(test) == 2 and train.sample_shape == (3, 32, 32)
    assert train.attributes[:, 0].tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5]
    with open(folder / "test_batch", "rb") as f:
        row = pickle.load(f)[b"data"][1]
    x, attrs = test[1]
    green = ((x + 1) * 127.5).round().to(torch.uint8)[1].flatten()
    assert torch.equal(green, torch.from_numpy(row[1024:2048]))
    assert test.schema.describe(attrs) == "deer"  # test_batch is the 6th file: labels [5, 4]
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        build_dataset("cifar10", "train", root=str(tmp_path / "elsewhere"))


# ----------------------------------------------------------------------------------------------- CelebA


def celeba_fixture(root):
    """Four 178×218 faces: inside the centre 148 crop one colour, outside it another."""
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    names = ["5_o_Clock_Shadow", "Smiling", "Male"]
    inner = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    files = [f"{i:06d}.jpg" for i in range(1, 5)]
    for f, colour in zip(files, inner):
        a = np.full((218, 178, 3), 255, np.uint8)
        top, left = (218 - 148) // 2, (178 - 148) // 2
        a[top:top + 148, left:left + 148] = colour
        Image.fromarray(a).save(folder / "img_align_celeba" / f, quality=95)
    rows = ["1 -1 -1", "-1 1 1", "1 1 -1", "-1 -1 1"]
    (folder / "list_attr_celeba.txt").write_text(
        "4\n" + " ".join(names) + "\n" + "\n".join(f"{f} {r}" for f, r in zip(files, rows)) + "\n")
    partitions = [0, 2, 0, 1]  # train, test, train, valid
    (folder / "list_eval_partition.txt").write_text("\n".join(f"{f} {p}" for f, p in zip(files, partitions)))
    return inner


def test_celeba_splits_binary_attributes_and_centre_crop(tmp_path):
    inner = celeba_fixture(tmp_path)
    train = build_dataset("celeba", "train", root=str(tmp_path), image_size=16)
    test = build_dataset("celeba", "test", root=str(tmp_path / "celeba"))
    assert len(train) == 2 and len(test) == 1
    assert train.schema.names == ["5_o_clock_shadow", "smiling", "male"] and train.schema.num_values(1) == 2
    assert train.attributes.tolist() == [[1, 0, 0], [1, 1, 0]]
    assert test.sample_shape == (3, 64, 64) and test.attributes.tolist() == [[0, 1, 1]]
    x, attrs = train[1]
    assert x.shape == (3, 16, 16) and attrs.tolist() == [1, 1, 0]
    # the crop holds only the inner colour: no white border survives
    expected = torch.tensor(inner[2]).float()[:, None, None] / 127.5 - 1
    assert (x - expected).abs().max() < 0.1
    assert train.schema.describe(attrs) == "5_o_clock_shadow smiling no male"


def test_celeba_missing_folder_lists_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build_dataset("celeba", "train", root=str(tmp_path))
    assert str(tmp_path / "celeba") in str(err.value) and "list_attr_celeba.txt" in str(err.value)


# ----------------------------------------------------------------------------------------------- image folder


def image_folder_fixture(root):
    (root / "sub").mkdir(parents=True)
    colours = {"a.png": (255, 0, 0), "sub/b.jpg": (0, 0, 255), "sub/c.bmp": (0, 255, 0)}
    for name, c in colours.items():
        Image.new("RGB", (40, 30), c).save(root / name)
    (root / "broken.png").write_bytes(b"definitely not a png")
    (root / "notes.txt").write_text("not an image, ignored")
    (root / "labels.csv").write_text("filename,kind,flag\na.png,dog,1\nsub/b.jpg,cat,0\nc.bmp,dog,\n"
                                     "broken.png,cat,1\n")


def test_image_folder_reads_recursively_with_csv_attributes_and_skips_corrupt_files(tmp_path):
    image_folder_fixture(tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        data = build_dataset("image_folder", "train", root=str(tmp_path), image_size=8,
                             attributes_csv="labels.csv")
    assert len(data) == 3 and data.sample_shape == (3, 8, 8)
    assert [p.name for p in data.files] == ["a.png", "b.jpg", "c.bmp"]
    assert data.schema.names == ["kind", "flag"]
    assert data.schema.values == [["cat", "dog"], None]  # categorical sorted; 0/1 column binary
    assert data.attributes.tolist() == [[1, 1], [0, 0], [1, UNSPECIFIED]]
    x, _ = data[0]
    assert torch.equal(x, torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 8, 8))
    assert (data[1][0][2] > 0.9).all() and (data[1][0][:2] < -0.9).all()  # the blue jpg, lossy


def test_image_folder_error_mode_greyscale_and_missing_csv_rows(tmp_path):
    image_folder_fixture(tmp_path)
    with pytest.raises(ValueError, match="broken.png"):
        build_dataset("image_folder", "train", root=str(tmp_path), on_bad_file="error")
    (tmp_path / "broken.png").unlink()
    grey = build_dataset("image_folder", "train", root=str(tmp_path), image_size=4, channels=1)
    assert grey.sample_shape == (1, 4, 4) and len(grey.schema) == 0 and grey[0][1].shape == (0,)
    red_luma = 0.299 * 255  # PIL's ITU-R 601-2 luma of pure red
    assert abs(float(grey[0][0].mean()) - (red_luma / 127.5 - 1)) < 0.01
    (tmp_path / "labels.csv").write_text("filename,kind\na.png,dog\n")
    with pytest.raises(ValueError, match="has no row"):
        build_dataset("image_folder", "train", root=str(tmp_path), attributes_csv="labels.csv")


@pytest.mark.parametrize("row, cells", [("b.png", 1), ("b.png,2,extra", 3)])
def test_image_folder_csv_row_of_another_length_than_the_header_names_file_and_line(tmp_path, row, cells):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text(f'filename,age\n"a\n.png",10\n{row}\n')  # a quoted newline: line 4
    with pytest.raises(ValueError) as err:
        build_dataset("image_folder", "train", root=str(tmp_path), attributes_csv="labels.csv")
    assert str(err.value) == (f"{tmp_path / 'labels.csv'}:4: {cells} cells where the header has 2; give every row "
                              f"one cell per column (an empty cell is unspecified)")


def test_image_folder_csv_numeric_categories_sort_by_value_and_header_only_csv_is_empty(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text("filename,age\na.png,10\nb.png,2\nc.png,1\n")
    data = build_dataset("image_folder", "train", root=str(tmp_path), image_size=4,
                         attributes_csv="labels.csv")
    assert data.schema.values == [["1", "2", "10"]]  # by value, not "1" < "10" < "2"
    assert data.attributes[:, 0].tolist() == [2, 1, 0]
    (tmp_path / "labels.csv").write_text("filename,age\n")
    with pytest.raises(ValueError, match="has no row"):
        build_dataset("image_folder", "train", root=str(tmp_path), attributes_csv="labels.csv")


# ----------------------------------------------------------------------------------------------- 2-D toys


@pytest.mark.parametrize("name", ["swissroll", "moons", "gaussian_mixture"])
def test_toys_are_standardised_deterministic_and_seeded(name):
    a = build_dataset(name, "train", size=20_000, seed=0)
    assert a.sample_shape == (2,) and a[0][0].dtype == torch.float32
    # constants come from the distribution, so a large sample has mean ~0 and overall std ~1
    assert a.points.mean(0).abs().max() < 0.05
    assert abs(float(a.points.pow(2).mean(0).mean().sqrt()) - 1) < 0.03
    assert torch.equal(a.points, build_dataset(name, "train", size=20_000, seed=0).points)
    assert not torch.equal(a.points[:100], build_dataset(name, "train", size=100, seed=1).points)
    assert not torch.equal(a.points[:100], build_dataset(name, "test", size=100, seed=0).points)


def test_gaussian_mixture_and_moons_labels_say_where_points_came_from():
    g = build_dataset("gaussian_mixture", "train", size=2000, num_components=6, radius=5.0, std=0.2)
    angle = torch.atan2(g.points[:, 1], g.points[:, 0])
    nearest = torch.round(angle / (2 * math.pi / 6)).long() % 6  # means sit at angles 2πk/6
    assert (nearest == g.attributes[:, 0]).float().mean() > 0.99
    assert g.schema.parse({"component": "5"}).tolist() == [5]
    m = build_dataset("moons", "train", size=2000, noise=0.0)
    upper = m.attributes[:, 0] == 0
    # noiseless: the upper moon is a half circle around its own centre, the lower one around another
    assert m.points[upper, 1].mean() > m.points[~upper, 1].mean()


# ----------------------------------------------------------------------------------------------- registry


def test_registry_errors_are_one_clear_line():
    with pytest.raises(ValueError, match="did you mean 'fashion_mnist'"):
        build_dataset("fashion-mnist", "train")
    with pytest.raises(ValueError, match="did you mean 'antialias'"):
        build_dataset("shapes", "train", size=2, antialiasing=2)
    with pytest.raises(ValueError, match="'train' or 'test'"):
        build_dataset("shapes", "validation", size=2)
    with pytest.raises(ValueError, match="no image_size"):
        build_dataset("moons", "train", image_size=32)
    assert {"shapes", "mnist", "fashion_mnist", "cifar10", "celeba", "image_folder", "swissroll", "moons",
            "gaussian_mixture"} <= set(dataset_names())


def test_items_agree_with_the_attributes_table_for_every_in_memory_dataset():
    for name in ("shapes", "moons", "gaussian_mixture", "swissroll"):
        data = build_dataset(name, "test", size=16)
        for i in (0, 7, 15):
            x, attrs = data[i]
            assert tuple(x.shape) == data.sample_shape
            assert torch.equal(attrs, data.attributes[i]) and attrs.shape == (len(data.schema),)
