"""Datasets: tiny fixtures in each real on-disk format, read through the real code paths; error
messages for missing and corrupted data; the embedded stand-ins; the registry helpers."""
import math
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from repro.datasets import (DATASETS, EMBEDDED, CorruptFileError, DatasetNotFoundError, create_dataset, modality_of,
                            to_model_input)
from repro.datasets import cifar10_dvs
from repro.datasets.nd_digits import SENSOR_SIZE, saccade_events
from repro.datasets.seg_classes import voc_colour_map
from repro.datasets.shapes_seg import shape_mask
from repro.datasets.transforms import Cutout, FlipRoll, JointTransform, events_to_frames

C10_MEAN, C10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
EVENT_DTYPE = np.dtype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("p", "?")])


def normalise(array_hwc_uint8, mean, std):
    x = torch.from_numpy(np.array(array_hwc_uint8)).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


# ------------------------------------------------------------------------------------------ CIFAR

def write_cifar(root, name="cifar10", per_file=3, seed=0):
    """Official python-pickle layout with random pixels; returns {file: (data [n, 3072], labels)}."""
    rng = np.random.default_rng(seed)
    folder, files, key = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
                                      "labels"),
                          "cifar100": ("cifar-100-python", ["train", "test"], "fine_labels")}[name]
    (root / folder).mkdir(parents=True)
    written = {}
    for file in files:
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10 if name == "cifar10" else 100, per_file).tolist()
        entry = {"data": data, key: labels, "filenames": [f"{i}.png" for i in range(per_file)]}
        if name == "cifar100":
            entry["coarse_labels"] = [label // 5 for label in labels]
        with open(root / folder / file, "wb") as handle:
            pickle.dump(entry, handle, protocol=2)
        written[file] = (data, labels)
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_pickles_with_labels_and_normalisation(tmp_path, name):
    written = write_cifar(tmp_path, name)
    train = create_dataset(name, "train", root=str(tmp_path))
    test = create_dataset(name, "test", root=str(tmp_path))
    train_files = [f for f in written if f not in ("test_batch", "test")]
    assert len(train) == 3 * len(train_files) and len(test) == 3
    assert train.targets == [label for f in train_files for label in written[f][1]]
    assert (train.num_classes, train.in_channels, train.modality) == ((10 if name == "cifar10" else 100), 3, "static")
    data, labels = written["test_batch" if name == "cifar10" else "test"]
    mean, std = (C10_MEAN, C10_STD) if name == "cifar10" else ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    for i in range(3):
        image, label = test[i]
        expected = normalise(data[i].reshape(3, 32, 32).transpose(1, 2, 0), mean, std)
        assert label == labels[i] and image.dtype == torch.float32
        torch.testing.assert_close(image, expected)
    image, _ = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32


def test_cifar_train_augmentation_is_crop_and_flip(tmp_path):
    written = write_cifar(tmp_path)
    train = create_dataset("cifar10", "train", root=str(tmp_path), auto_augment="none")
    raw = torch.from_numpy(written["data_batch_1"][0][0].reshape(3, 32, 32)).float() / 255
    padded = torch.nn.functional.pad(raw, (4, 4, 4, 4))  # RandomCrop pads with black before Normalize
    crops = [padded[:, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
    mean, std = torch.tensor(C10_MEAN)[:, None, None], torch.tensor(C10_STD)[:, None, None]
    candidates = [(crop - mean) / std for crop in crops + [crop.flip(-1) for crop in crops]]
    torch.manual_seed(0)
    for _ in range(5):
        image, _ = train[0]
        assert min(float((image - c).abs().max()) for c in candidates) < 1e-5


def test_cutout_zeroes_one_clipped_square():
    torch.manual_seed(3)
    for _ in range(20):
        out = Cutout(16)(torch.ones(3, 32, 32))
        rows, cols = torch.where(out[0] == 0)
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert (out == 0).sum() == 3 * height * width and 8 <= height <= 16 and 8 <= width <= 16
        assert torch.equal(out[1], out[0])


def test_cifar_missing_partial_and_corrupt_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"(?s)cifar10.*root.*cifar-10-batches-py/data_batch_1.*download=True"):
        create_dataset("cifar10", "train", root=str(tmp_path))
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_5"):
        create_dataset("cifar10", "train", root=str(tmp_path))
    create_dataset("cifar10", "test", root=str(tmp_path))  # the test split is complete
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match="test_batch"):
        create_dataset("cifar10", "test", root=str(tmp_path))


def test_bad_options_raise_value_errors(tmp_path):
    write_cifar(tmp_path)
    with pytest.raises(ValueError, match="auto_augment"):
        create_dataset("cifar10", "train", root=str(tmp_path), auto_augment="cifar11")
    with pytest.raises(ValueError, match="split"):
        create_dataset("cifar10", "val", root=str(tmp_path))
    with pytest.raises(ValueError, match="unknown option"):
        create_dataset("cifar10", "train", root=str(tmp_path), cut_out=True)
    with pytest.raises(ValueError, match="multiple of 32"):
        create_dataset("shapes_seg", "train", image_size=48)


# ------------------------------------------------------------------------------------ CIFAR10-DVS

def aedat4_bytes(events, width=128, height=128):
    """A genuine AEDAT 4.0 file (uncompressed): magic, size-prefixed IOHeader flatbuffer whose XML
    description declares one EVTS stream, then two size-prefixed EventPacket flatbuffers."""
    description = (f'<dv version="2.0"><node name="outInfo"><node name="0"><attr key="typeIdentifier" '
                   f'type="string">EVTS</attr><node name="info"><attr key="sizeX" type="int">{width}</attr>'
                   f'<attr key="sizeY" type="int">{height}</attr></node></node></node></dv>').encode()
    # IOHeader table: root offset, identifier, vtable (3 fields: only description set), table, string
    header = struct.pack("<I4s5H2x", 20, b"IOHE", 10, 8, 0, 0, 4) + struct.pack("<iII", 12, 4, len(description))
    header += description + b"\0"
    header += b"\0" * (-len(header) % 4)

    def packet(chunk):
        structs = np.zeros(len(chunk), [("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("on", "u1"), ("pad", "V3")])
        structs["t"], structs["x"], structs["y"], structs["on"] = chunk["t"], chunk["x"], chunk["y"], chunk["p"]
        body = struct.pack("<I4s3H2xiII", 16, b"EVTS", 6, 8, 4, 8, 4, len(chunk)) + structs.tobytes()
        return struct.pack("<iII", 0, len(body) + 4, len(body)) + body

    half = len(events) // 2
    return (b"#!AER-DAT4.0\r\n" + struct.pack("<I", len(header)) + header
            + packet(events[:half]) + packet(events[half:]))


def random_events(rng, count):
    events = np.zeros(count, EVENT_DTYPE)
    events["t"] = np.sort(rng.integers(0, 10**6, count))
    events["x"], events["y"] = rng.integers(0, 128, count), rng.integers(0, 128, count)
    events["p"] = rng.random(count) < 0.5
    return events


def write_cifar10_dvs(root, per_class=10, seed=0):
    """tonic's extracted layout <root>/CIFAR10DVS/<class>/cifar10_<class>_<i>.aedat4; returns the events."""
    rng = np.random.default_rng(seed)
    written = {}
    for name in DVS_CLASSES:
        folder = root / "CIFAR10DVS" / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            events = random_events(rng, int(rng.integers(300, 600)))
            path = folder / f"cifar10_{name}_{i}.aedat4"
            path.write_bytes(aedat4_bytes(events))
            written[path] = events
    return written


def reference_frames(events, num_frames):
    """Independent equal-count framing: floor(N / T) events per frame (tonic drops the remainder),
    per-polarity counts [T, 2, 128, 128], each frame divided by its max."""
    per = len(events) // num_frames
    frames = np.zeros((num_frames, 2, 128, 128), np.float32)
    for t in range(num_frames):
        chunk = events[t * per:(t + 1) * per]
        np.add.at(frames[t], (chunk["p"].astype(int), chunk["y"].astype(int), chunk["x"].astype(int)), 1)
        frames[t] /= max(frames[t].max(), 1)
    return torch.from_numpy(frames)


def test_aedat4_fixture_decodes_with_tonic_reader(tmp_path):
    events = random_events(np.random.default_rng(1), 50)
    (tmp_path / "a.aedat4").write_bytes(aedat4_bytes(events))
    decoded = cifar10_dvs.read_events(tmp_path / "a.aedat4")
    assert decoded.dtype.names == ("t", "x", "y", "p")
    for field in ("t", "x", "y", "p"):
        np.testing.assert_array_equal(decoded[field], events[field])


@pytest.fixture(scope="module")
def dvs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dvs")
    return root, write_cifar10_dvs(root)


def test_cifar10_dvs_split_order_labels_and_frames(dvs_root, tmp_path):
    root, written = dvs_root
    train = create_dataset("cifar10_dvs", "train", root=str(root), cache=False)
    test = create_dataset("cifar10_dvs", "test", root=str(root), size=None, cache=False)
    assert (len(train), len(test)) == (90, 10)
    assert (train.num_classes, train.in_channels, train.modality) == (10, 2, "event")
    # ordered per-class split on the sorted file list: names sort as 0, 1, 2, ..., 9 -> test holds "_9"
    assert [p.name for p in train.files[:9]] == [f"cifar10_airplane_{i}.aedat4" for i in range(9)]
    assert [p.name for p in test.files] == [f"cifar10_{name}_9.aedat4" for name in DVS_CLASSES]
    assert train.targets == [label for label in range(10) for _ in range(9)] and test.targets == list(range(10))
    frames, label = test[3]
    assert label == 3 and frames.shape == (10, 2, 128, 128) and frames.dtype == torch.float32
    torch.testing.assert_close(frames, reference_frames(written[test.files[3]], 10))
    # 48x48 through the reference path of TET: ToPILImage -> Resize((48, 48)) -> ToTensor per frame
    from torchvision import transforms as T
    unaugmented = create_dataset("cifar10_dvs", "train", root=str(root), augment=False, cache=False)
    reference = reference_frames(written[unaugmented.files[0]], 10)
    tet = torch.stack([T.ToTensor()(T.Resize((48, 48))(T.ToPILImage()(frame))) for frame in reference])
    torch.testing.assert_close(unaugmented[0][0], tet)
    bilinear = create_dataset("cifar10_dvs", "test", root=str(root), resize="bilinear", num_frames=4, cache=False)
    assert bilinear[0][0].shape == (4, 2, 48, 48)


def test_cifar10_dvs_random_split_is_seeded(dvs_root):
    root, _ = dvs_root
    first = create_dataset("cifar10_dvs", "test", root=str(root), split_mode="random", split_seed=1, cache=False)
    again = create_dataset("cifar10_dvs", "test", root=str(root), split_mode="random", split_seed=1, cache=False)
    train = create_dataset("cifar10_dvs", "train", root=str(root), split_mode="random", split_seed=1, cache=False)
    assert first.files == again.files and len(first) == 10 and not set(first.files) & set(train.files)
    assert first.targets == list(range(10)) and "random" in first.split_description


def test_flip_roll_is_a_flip_and_cyclic_shift():
    frames = torch.rand(3, 2, 12, 12)
    candidates = [torch.roll(f, (dy, dx), dims=(-2, -1)) for f in (frames, frames.flip(-1))
                  for dy in range(-5, 6) for dx in range(-5, 6)]
    torch.manual_seed(0)
    outputs = [FlipRoll()(frames) for _ in range(40)]
    assert all(any(torch.equal(out, c) for c in candidates) for out in outputs)
    assert len({tuple(out.flatten()[:20].tolist()) for out in outputs}) > 10


def test_cifar10_dvs_cache_avoids_rereading_events(dvs_root, tmp_path, monkeypatch):
    root, _ = dvs_root
    local = tmp_path / "data"
    local.mkdir()
    (local / "CIFAR10DVS").symlink_to(root / "CIFAR10DVS")
    dataset = create_dataset("cifar10_dvs", "test", root=str(local), augment=False, num_frames=5)
    first = [dataset[i][0] for i in range(len(dataset))]
    assert len(list((local / "CIFAR10DVS_frames").rglob("*.npy"))) == 10

    def no_reading(path):
        raise AssertionError(f"events re-read from {path}")

    monkeypatch.setattr(cifar10_dvs, "read_events", no_reading)
    again = create_dataset("cifar10_dvs", "test", root=str(local), augment=False, num_frames=5)
    for i in range(len(again)):
        assert torch.equal(again[i][0], first[i])
    cached = next((local / "CIFAR10DVS_frames").rglob("*.npy"))
    cached.write_bytes(cached.read_bytes()[:50])
    with pytest.raises(CorruptFileError, match=cached.name):
        for i in range(len(again)):
            again[i]


def test_cifar10_dvs_missing_partial_corrupt_and_no_download(tmp_path, monkeypatch):
    import tonic.datasets

    def no_network(self):
        raise AssertionError("download attempted")

    monkeypatch.setattr(tonic.datasets.CIFAR10DVS, "download", no_network)
    with pytest.raises(DatasetNotFoundError, match=r"(?s)root.*CIFAR10DVS/<class>/\*\.aedat4.*download=True"):
        create_dataset("cifar10_dvs", "train", root=str(tmp_path))
    written = write_cifar10_dvs(tmp_path, per_class=2)
    for path in (tmp_path / "CIFAR10DVS" / "truck").iterdir():
        path.unlink()
    with pytest.raises(DatasetNotFoundError, match="truck"):
        create_dataset("cifar10_dvs", "train", root=str(tmp_path))
    (tmp_path / "CIFAR10DVS" / "truck" / "cifar10_truck_0.aedat4").write_bytes(
        aedat4_bytes(random_events(np.random.default_rng(0), 100)))
    broken = sorted(written)[0]
    broken.write_bytes(broken.read_bytes()[:-40])
    dataset = create_dataset("cifar10_dvs", "train", root=str(tmp_path), cache=False)
    with pytest.raises(CorruptFileError, match=broken.name):
        dataset[dataset.files.index(broken)]


# -------------------------------------------------------------------------- Tiny-ImageNet / ImageNet

def write_jpeg(path, rng, size=(64, 64)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=95)


def write_tiny_imagenet(root):
    rng = np.random.default_rng(0)
    base = root / "tiny-imagenet-200"
    wnids = ["n03", "n01", "n02"]  # deliberately unsorted
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for wnid in wnids:
        for i in range(2):
            write_jpeg(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", rng)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    annotations = [("val_0.JPEG", "n02"), ("val_1.JPEG", "n03"), ("val_2.JPEG", "n01")]
    for name, _ in annotations:
        write_jpeg(base / "val" / "images" / name, rng)
    (base / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{wnid}\t0\t0\t63\t63\n" for name, wnid in annotations))
    return base


def test_tiny_imagenet_folders_labels_and_transforms(tmp_path):
    base = write_tiny_imagenet(tmp_path)
    train = create_dataset("tiny_imagenet", "train", root=str(tmp_path))
    test = create_dataset("tiny_imagenet", "test", root=str(tmp_path))
    assert train.classes == ["n01", "n02", "n03"] and train.num_classes == 3
    assert train.targets == [0, 0, 1, 1, 2, 2] and test.targets == [1, 2, 0]
    image, label = test[0]
    expected = normalise(np.asarray(Image.open(base / "val" / "images" / "val_0.JPEG").convert("RGB")),
                         IMAGENET_MEAN, IMAGENET_STD)
    assert label == 1 and image.shape == (3, 64, 64)
    torch.testing.assert_close(image, expected)
    assert train[0][0].shape == (3, 64, 64)
    augmented = create_dataset("tiny_imagenet", "train", root=str(tmp_path), auto_augment="imagenet")
    assert augmented[1][0].shape == (3, 64, 64)


def test_tiny_imagenet_missing_and_corrupt(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"(?s)tiny_imagenet.*val_annotations.txt.*tiny-imagenet-200.zip"):
        create_dataset("tiny_imagenet", "train", root=str(tmp_path))
    base = write_tiny_imagenet(tmp_path)
    broken = base / "val" / "images" / "val_1.JPEG"
    broken.write_bytes(broken.read_bytes()[:300])
    test = create_dataset("tiny_imagenet", "test", root=str(tmp_path))
    with pytest.raises(CorruptFileError, match="val_1.JPEG"):
        test[1]
    for path in (base / "train" / "n02" / "images").iterdir():
        path.unlink()
    with pytest.raises(DatasetNotFoundError, match="n02"):
        create_dataset("tiny_imagenet", "train", root=str(tmp_path))


def test_imagenet_folder_transforms_and_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"(?s)imagenet/train.*image-net.org"):
        create_dataset("imagenet", "train", root=str(tmp_path))
    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("val", 1)):
        for wnid in ("n02", "n01"):
            for i in range(count):
                write_jpeg(tmp_path / "imagenet" / split / wnid / f"{i}.JPEG", rng, size=(300, 260))
    train = create_dataset("imagenet", "train", root=str(tmp_path))
    test = create_dataset("imagenet", "test", root=str(tmp_path))
    assert train.targets == [0, 0, 1, 1] and test.targets == [0, 1] and train.num_classes == 2
    assert train[0][0].shape == (3, 224, 224) and test[1][0].shape == (3, 224, 224)
    from torchvision import transforms as T
    reference = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    torch.testing.assert_close(test[0][0], reference(Image.open(tmp_path / "imagenet" / "val" / "n01" / "0.JPEG")))
    # --data_root naming the ImageNet folder itself (train/ and val/ directly under it) reads the same files
    direct = create_dataset("imagenet", "test", root=str(tmp_path / "imagenet"))
    assert direct.targets == test.targets and torch.equal(direct[1][0], test[1][0])


# -------------------------------------------------------------------------------------- segmentation

CLASS_COLOURS = np.array([[0, 0, 0], [250, 10, 10], [10, 250, 10], [10, 10, 250], [250, 250, 10]], np.uint8)


def block_scene(height, width, rng, classes=5, block=16):
    """Labels constant on block x block tiles; the image shows each label's colour."""
    tiles = rng.integers(0, classes, (math.ceil(height / block), math.ceil(width / block)))
    labels = np.kron(tiles, np.ones((block, block), np.int64))[:height, :width].astype(np.uint8)
    return CLASS_COLOURS[labels], labels


def nearest_class(image, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Undo Normalize and map each pixel to the nearest class colour."""
    pixels = (image * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]) * 255
    distance = ((pixels.permute(1, 2, 0)[..., None, :] - torch.tensor(CLASS_COLOURS).float()) ** 2).sum(-1)
    return distance.argmin(-1)


def test_joint_transform_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(0)
    image, labels = block_scene(40, 56, rng)
    torch.manual_seed(0)
    exact = JointTransform(True, 64, scale_range=(1.0, 1.0))  # pad + crop + flip only: no resampling
    for _ in range(5):
        out_image, out_mask = exact(image, labels)
        assert out_image.shape == (3, 64, 64) and out_mask.dtype == torch.int64
        valid = out_mask != 255
        assert 0 < valid.sum() < 64 * 64  # the crop covers padding (mask 255) and content
        assert torch.equal(nearest_class(out_image)[valid], out_mask[valid])
        torch.testing.assert_close(out_image[:, ~valid], ((0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(
            IMAGENET_STD))[:, None].expand(3, int((~valid).sum())))
    scaled = JointTransform(True, 48, scale_range=(0.5, 2.0))
    for _ in range(5):
        out_image, out_mask = scaled(image, labels)
        valid = out_mask != 255
        agreement = (nearest_class(out_image)[valid] == out_mask[valid]).float().mean()
        assert agreement > 0.9  # only block edges may differ (bilinear image vs nearest mask)
    torch.manual_seed(5)
    first = scaled(image, labels)
    torch.manual_seed(5)
    assert all(torch.equal(a, b) for a, b in zip(first, scaled(image, labels)))  # albumentations follows torch's seed
    evaluation = JointTransform(False, 112)  # longer side 56 -> 112 (x2), then bottom padding
    out_image, out_mask = evaluation(image, labels)
    assert torch.equal(out_mask[:80], torch.from_numpy(np.kron(labels, np.ones((2, 2), np.uint8))).long())
    assert bool((out_mask[80:] == 255).all())


VOC_PALETTE = sum(([(i * 10) % 256, (255 - i * 10) % 256, (i * 37) % 256] for i in range(256)), [])


def write_voc(root, rng):
    base = root / "VOCdevkit" / "VOC2012"
    written = {}
    for split, ids in (("train", ["2007_000032", "2007_000033"]), ("val", ["2007_000039"])):
        (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            image, labels = block_scene(48, 64, rng, classes=4)
            labels[0, :] = 255  # VOC boundary pixels
            (base / "JPEGImages").mkdir(exist_ok=True)
            (base / "SegmentationClass").mkdir(exist_ok=True)
            Image.fromarray(image).save(base / "JPEGImages" / f"{i}.jpg", quality=95)
            mask = Image.fromarray(labels, mode="P")
            mask.putpalette(VOC_PALETTE)
            mask.save(base / "SegmentationClass" / f"{i}.png")
            written[i] = labels
    return base, written


def test_voc2012_layout_palette_labels_and_alignment(tmp_path):
    base, written = write_voc(tmp_path, np.random.default_rng(0))
    train = create_dataset("voc2012", "train", root=str(tmp_path), crop_size=64)
    test = create_dataset("voc2012", "test", root=str(tmp_path), crop_size=64)
    assert (len(train), len(test), train.num_classes, train.modality, train.ignore_index) == (2, 1, 21, "segmentation", 255)
    image, mask = test[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and mask.dtype == torch.int64
    assert torch.equal(mask[:48], torch.from_numpy(written["2007_000039"]).long())  # palette indices, not colours
    assert bool((mask[48:] == 255).all())
    valid = mask != 255
    assert (nearest_class(image)[valid] == mask[valid]).float().mean() > 0.97  # JPEG noise only
    torch.manual_seed(0)
    for _ in range(3):
        image, mask = train[1]
        valid = mask != 255
        assert image.shape == (3, 64, 64) and (nearest_class(image)[valid] == mask[valid]).float().mean() > 0.9


def test_voc2012_missing_and_partial(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"(?s)voc2012.*ImageSets/Segmentation/train.txt.*download=True"):
        create_dataset("voc2012", "train", root=str(tmp_path))
    base, _ = write_voc(tmp_path, np.random.default_rng(0))
    (base / "SegmentationClass" / "2007_000033.png").unlink()
    with pytest.raises(DatasetNotFoundError, match="2007_000033.png"):
        create_dataset("voc2012", "train", root=str(tmp_path))


def test_ade20k_label_mapping_layout_and_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"(?s)ade20k.*ADEChallengeData2016.*download=True"):
        create_dataset("ade20k", "train", root=str(tmp_path))
    base = tmp_path / "ADEChallengeData2016"
    raw = np.arange(48 * 64).reshape(48, 64) % 151  # every ADE label 0..150
    for folder, stem in (("training", "ADE_train_00000001"), ("training", "ADE_train_00000002"),
                         ("validation", "ADE_val_00000001")):
        (base / "images" / folder).mkdir(parents=True, exist_ok=True)
        (base / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(base / "images" / folder / f"{stem}.jpg")
        Image.fromarray(raw.astype(np.uint8), mode="L").save(base / "annotations" / folder / f"{stem}.png")
    train = create_dataset("ade20k", "train", root=str(tmp_path), crop_size=64)
    test = create_dataset("ade20k", "test", root=str(tmp_path), crop_size=64)
    assert (len(train), len(test), test.num_classes) == (2, 1, 150)
    _, mask = test[0]
    expected = np.where(raw == 0, 255, raw - 1)
    assert torch.equal(mask[:48], torch.from_numpy(expected).long()) and bool((mask[48:] == 255).all())
    assert int(mask[mask != 255].max()) == 149 and int(mask[mask != 255].min()) == 0
    (base / "annotations" / "training" / "ADE_train_00000002.png").unlink()
    with pytest.raises(DatasetNotFoundError, match="ADE_train_00000002.png"):
        create_dataset("ade20k", "train", root=str(tmp_path))
    broken = base / "images" / "validation" / "ADE_val_00000001.jpg"
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(CorruptFileError, match="ADE_val_00000001.jpg"):
        test[0]


def test_segmentation_class_names_and_palettes_follow_the_loaders_label_ids(tmp_path):
    voc = DATASETS.get("voc2012")
    assert len(voc.classes) == voc.num_classes == 21 and voc.palette.shape == (21, 3) and voc.palette.dtype == np.uint8
    # the devkit's colour map: 1 aeroplane, 15 person, 20 tvmonitor; 255 is the colour of VOC's boundary band
    assert (voc.classes[1], *voc.palette[1]) == ("aeroplane", 128, 0, 0)
    assert (voc.classes[15], *voc.palette[15]) == ("person", 192, 128, 128)
    assert (voc.classes[20], *voc.palette[20]) == ("tvmonitor", 0, 64, 128)
    assert voc.classes[0] == "background" and voc_colour_map(256)[255].tolist() == [224, 224, 192]
    shapes = create_dataset("shapes_seg", "test", num_scenes=1)
    assert shapes.classes == ("background", "circle", "square", "triangle")
    assert np.array_equal(shapes.palette, voc.palette[:4])

    # ADE20K: raw annotation j in 1..150 is label j - 1, whose name and colour are SceneParse150's class j
    ade = DATASETS.get("ade20k")
    assert len(ade.classes) == len(set(ade.classes)) == ade.num_classes == 150 and ade.palette.shape == (150, 3)
    known = {1: ("wall", (120, 120, 120)), 3: ("sky", (6, 230, 230)), 13: ("person", (150, 5, 61)),
             21: ("car", (0, 102, 200)), 150: ("flag", (92, 0, 255))}
    raw = np.zeros((32, 32), np.uint8)  # 0 = "other" outside the stripes
    for column, j in enumerate(known):
        raw[:, 4 * column:4 * column + 4] = j
    base = tmp_path / "ADEChallengeData2016"
    for folder in ("images", "annotations"):
        (base / folder / "validation").mkdir(parents=True)
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(base / "images/validation/ADE_val_00000001.jpg")
    Image.fromarray(raw).save(base / "annotations/validation/ADE_val_00000001.png")
    _, mask = create_dataset("ade20k", "test", root=str(tmp_path), crop_size=32)[0]
    for column, (name, colour) in enumerate(known.values()):
        label = int(mask[0, 4 * column])
        assert (ade.classes[label], tuple(ade.palette[label])) == (name, colour)
    assert bool((mask[:, 4 * len(known):] == 255).all())


# --------------------------------------------------------------------------------- embedded stand-ins

def test_digits_at_any_size_are_normalised_grey_images_with_the_same_labels():
    test, small = create_dataset("digits", "test"), create_dataset("digits", "test", size=16)
    assert (len(test), test.modality, test.in_channels, test.num_classes) == (360, "static", 3, 10)
    assert test[0][0].shape == (3, 32, 32) and small[0][0].shape == (3, 16, 16)
    assert torch.equal(small.targets, test.targets)
    for size in (32, 16, 8):
        images = create_dataset("digits", "train", size=size).images
        assert images.shape == (1437, 3, size, size)
        assert torch.equal(images[:, 1], images[:, 0]) and torch.equal(images[:, 2], images[:, 0])
        torch.testing.assert_close((images.mean().item(), images.std().item()), (0.0, 1.0), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="digits size must be an integer >= 8"):
        create_dataset("digits", "train", size=4)


def test_nd_digits_frames_splits_and_event_streams():
    train, test = create_dataset("nd_digits", "train"), create_dataset("nd_digits", "test")
    assert (len(train), len(test)) == (1437, 360) and train.in_memory and train.modality == "event"
    assert (train.num_classes, train.in_channels) == (10, 2)
    frames, label = test[0]
    assert frames.shape == (10, 2, 48, 48) and frames.dtype == torch.float32 and 0 <= label < 10
    assert test.targets == create_dataset("digits", "test").targets.tolist()
    events = test.events[0]
    assert events.dtype.names == ("t", "x", "y", "p") and np.all(np.diff(events["t"].astype(np.int64)) >= 0)
    assert 500 < len(events) and events["x"].max() < 32 and events["y"].max() < 32
    shared_path = events_to_frames(events, SENSOR_SIZE, 10, size=48)  # the framing of cifar10_dvs
    torch.testing.assert_close(frames, shared_path, atol=1e-3, rtol=0)  # held in float16
    assert torch.equal(test[0][0], frames)  # test split: no augmentation
    assert create_dataset("nd_digits", "test", num_frames=4, size=None)[0][0].shape == (4, 2, 32, 32)


def test_nd_digits_closed_saccade_path_balances_polarities_and_is_deterministic():
    rng = np.random.default_rng(0)
    images = np.zeros((4, 32, 32), np.float32)
    images[:, 8:24, 8:24] = rng.random((4, 16, 16))
    first, second = saccade_events(images), saccade_events(images.copy())
    for a, b in zip(first, second):
        assert np.array_equal(a, b)
    # the path returns to its start, so every pixel's ON and OFF counts cancel exactly
    for events in first:
        net = np.zeros((32, 32), int)
        np.add.at(net, (events["y"], events["x"]), np.where(events["p"], 1, -1))
        assert len(events) > 0 and not net.any()
    assert all(len(e) == 0 for e in saccade_events(np.full((2, 32, 32), 0.7, np.float32)))  # nothing moves


def test_nd_digits_labels_are_learnable_from_event_counts():
    """Nearest class centroid (cosine) of per-pixel event counts: far above chance (10%)."""
    train, test = create_dataset("nd_digits", "train"), create_dataset("nd_digits", "test")
    features = [torch.nn.functional.normalize(d.frames.sum((1, 2)).flatten(1), dim=1) for d in (train, test)]
    labels = torch.tensor(train.targets)
    centroids = torch.stack([features[0][labels == k].mean(0) for k in range(10)])
    accuracy = ((features[1] @ centroids.T).argmax(1) == torch.tensor(test.targets)).float().mean()
    assert accuracy > 0.7  # measured 0.78


def test_shapes_seg_scenes_masks_and_determinism():
    train, test = create_dataset("shapes_seg", "train"), create_dataset("shapes_seg", "test")
    assert (len(train), len(test), train.num_classes, train.modality, train.in_memory) == (320, 96, 4, "segmentation", True)
    again = create_dataset("shapes_seg", "test")
    assert np.array_equal(again.images, test.images) and np.array_equal(again.masks, test.masks)
    assert set(np.unique(train.masks)) == {0, 1, 2, 3, 255}
    image, mask = test[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and mask.shape == (64, 64)
    assert torch.equal(mask, torch.from_numpy(test.masks[0]).long())  # eval geometry is the identity
    torch.testing.assert_close(image, normalise(test.images[0], IMAGENET_MEAN, IMAGENET_STD))


@pytest.mark.parametrize("kind,area", [("circle", math.pi), ("square", 2.0), ("triangle", 3 * math.sqrt(3) / 4)])
def test_shape_masks_have_closed_form_areas(kind, area):
    radius = 40.0
    mask = shape_mask(kind, 128, (64.0, 64.0), radius, 0.3)
    assert abs(mask.sum() / (area * radius**2) - 1) < 0.02


# ------------------------------------------------------------------------------------------ registry

def test_registry_modalities_and_model_input():
    assert set(EMBEDDED) == {"static", "event", "segmentation", "text"}
    for modality, name in EMBEDDED.items():
        assert modality_of(name) == modality
    expected = {"cifar10": "static", "cifar100": "static", "tiny_imagenet": "static", "imagenet": "static",
                "cifar10_dvs": "event", "voc2012": "segmentation", "ade20k": "segmentation", "sst2": "text",
                "sst5": "text", "mr": "text", "subj": "text"}
    assert {name: modality_of(name) for name in expected} == expected and set(expected) <= set(DATASETS.names())
    loader = DataLoader(create_dataset("nd_digits", "test", num_frames=3, size=None), batch_size=4)
    frames, _ = next(iter(loader))
    timed = to_model_input(frames, "event")
    assert frames.shape == (4, 3, 2, 32, 32) and timed.shape == (3, 4, 2, 32, 32)
    assert torch.equal(timed[:, 1], frames[1])
    static = torch.rand(4, 3, 32, 32)
    assert to_model_input(static, "static") is static and to_model_input(static, "segmentation") is static
    with pytest.raises(ValueError, match="modality"):
        to_model_input(static, "audio")
    with pytest.raises(ValueError, match="unknown dataset"):
        modality_of("mnist")
