"""The BatchNorm architectures of the teacher-inversion methods (INFER, CV-DD), adapted to small images.

torchvision's networks are built for 224 px: a stride-2 stem (and a max-pool) would leave a 1x1 map
from a 28 or 32 px image. As the CIFAR versions these methods train do, the stem here keeps the
resolution (stride 1, no max-pool) and takes the dataset's channels; MobileNetV2 also keeps its
second stage at stride 1 (the CIFAR MobileNetV2). Everything else is torchvision's, initialization
included, so a network is reproducible from `build_model(..., seed=s)`. Registered lazily in
`condense.models.MODELS`: this module (and torchvision) is imported on first use.

| name | network |
|---|---|
| `resnet18bn_narrow` | ResNet-18 (small-image stem, BatchNorm) with 16 channels in its first stage (CPU-sized) |
| `mobilenetv2`, `mobilenetv2_050` | MobileNetV2 (CIFAR variant), width 1 and 0.5 |
| `shufflenetv2`, `shufflenetv2_050` | ShuffleNetV2 x1.0 and x0.5 |
| `efficientnet_b0` | EfficientNet-B0 |
| `densenet121` | DenseNet-121 |
| `resnet50` | ResNet-50 (small-image stem: a 3x3 stride-1 convolution, no max-pool; CV-DD's committee) |
| `tv_resnet18`, `tv_resnet50`, `tv_mobilenet_v2`, `tv_efficientnet_b0`, `tv_shufflenet_v2_x1_0`, `tv_densenet121` | |
|   | torchvision's networks exactly as they ship (224-px stems, 3 channels), so that torchvision's |
|   | ImageNet weights load unchanged (`Torchvision`; `condense teachers --teacher-weights`) |
"""
from __future__ import annotations

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from condense.errors import CondenseError
from condense.models import MODELS, Network, ResNet18


class Adapted(Network):
    """A torchvision network as a condense `Network`: `body` maps images to a feature map whose
    spatial mean is the embedding; `classifier` maps the embedding to logits."""

    def __init__(self, body: nn.Module, classifier: nn.Module, relu: bool = False) -> None:
        super().__init__()
        self.body, self.classifier, self.relu = body, classifier, relu

    def features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        f = self.body(x)
        if self.relu:  # DenseNet ends its features with a norm; its head applies the ReLU
            f = F.relu(f)
        return [f], F.adaptive_avg_pool2d(f, 1).flatten(1)


def _stem(conv: nn.Conv2d, channels: int) -> nn.Conv2d:
    """`conv` taking `channels` inputs at stride 1 (same kernel, padding to keep the size)."""
    k = conv.kernel_size[0]
    return nn.Conv2d(channels, conv.out_channels, k, 1, k // 2, bias=conv.bias is not None)


def mobilenet_v2(channels: int, num_classes: int, size: int, width: float = 1.0) -> Network:
    setting = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
    net = torchvision.models.MobileNetV2(num_classes, width, setting)
    net.features[0][0] = _stem(net.features[0][0], channels)
    return Adapted(net.features, net.classifier)


def shufflenet_v2(channels: int, num_classes: int, size: int, width: float = 1.0) -> Network:
    outs = {0.5: [24, 48, 96, 192, 1024], 1.0: [24, 116, 232, 464, 1024]}[width]
    net = torchvision.models.ShuffleNetV2([4, 8, 4], outs, num_classes)
    net.conv1[0] = _stem(net.conv1[0], channels)
    body = nn.Sequential(net.conv1, net.stage2, net.stage3, net.stage4, net.conv5)
    return Adapted(body, net.fc)


def efficientnet_b0(channels: int, num_classes: int, size: int) -> Network:
    net = torchvision.models.efficientnet_b0(num_classes=num_classes)
    net.features[0][0] = _stem(net.features[0][0], channels)
    return Adapted(net.features, net.classifier)


def densenet121(channels: int, num_classes: int, size: int) -> Network:
    net = torchvision.models.densenet121(num_classes=num_classes)
    net.features.conv0 = nn.Conv2d(channels, net.features.conv0.out_channels, 3, 1, 1, bias=False)
    net.features.pool0 = nn.Identity()
    return Adapted(net.features, net.classifier, relu=True)


def resnet50(channels: int, num_classes: int, size: int) -> Network:
    net = torchvision.models.resnet50(num_classes=num_classes)
    net.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.layer1, net.layer2, net.layer3, net.layer4)
    return Adapted(body, net.fc)


class Torchvision(Network):
    """A torchvision network as it ships, held whole as `net` so that its state dict is torchvision's with a
    `net.` prefix (`load_torchvision` loads a torchvision checkpoint into it). `body` names the modules up
    to the last feature map; `head` the classifier."""

    def __init__(self, net: nn.Module, body: tuple[str, ...], head: str, relu: bool = False) -> None:
        super().__init__()
        self.net, self.body, self.head, self.relu = net, body, head, relu

    @property
    def classifier(self) -> nn.Module:  # type: ignore[override]
        return getattr(self.net, self.head)

    def features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        for name in self.body:
            x = getattr(self.net, name)(x)
        if self.relu:
            x = F.relu(x)
        return [x], F.adaptive_avg_pool2d(x, 1).flatten(1)


# torchvision builder, modules up to the feature map, classifier, ReLU after the features (DenseNet)
TORCHVISION = {
    "resnet18": (("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"), "fc", False),
    "resnet50": (("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"), "fc", False),
    "mobilenet_v2": (("features",), "classifier", False),
    "efficientnet_b0": (("features",), "classifier", False),
    "shufflenet_v2_x1_0": (("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"), "fc", False),
    "densenet121": (("features",), "classifier", True),
}


def torchvision_net(name: str):
    def build(channels: int, num_classes: int, size: int) -> Network:
        if channels != 3:
            raise CondenseError(f"tv_{name} is torchvision's ImageNet network and takes RGB images; this dataset has "
                                f"{channels} channel(s); its small-image variants (resnet50, mobilenetv2, ...) take "
                                f"any.")
        body, head, relu = TORCHVISION[name]
        return Torchvision(getattr(torchvision.models, name)(num_classes=num_classes), body, head, relu)
    return build


MODELS.register("resnet18bn_narrow")(
    lambda channels, num_classes, size: ResNet18(channels, num_classes, size, norm="batchnorm", width=16))
MODELS.register("mobilenetv2")(mobilenet_v2)
MODELS.register("mobilenetv2_050")(lambda channels, num_classes, size: mobilenet_v2(channels, num_classes, size, 0.5))
MODELS.register("shufflenetv2")(shufflenet_v2)
MODELS.register("shufflenetv2_050")(lambda channels, num_classes, size: shufflenet_v2(channels, num_classes, size, 0.5))
MODELS.register("efficientnet_b0")(efficientnet_b0)
MODELS.register("densenet121")(densenet121)
MODELS.register("resnet50")(resnet50)
for _name in TORCHVISION:
    MODELS.register(f"tv_{_name}")(torchvision_net(_name))
