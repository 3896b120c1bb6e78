"""Image CNNs of the zoo, written out in plain torch (torchvision does not import here).

- ``resnet18`` / ``resnet50``: torchvision's v1.5 topology (7x7 stem + max-pool, basic blocks or
  bottlenecks with the stride on the 3x3, a 1x1 conv + BN downsample branch with the same
  stride, residual add + ReLU, global average pool, fc 1000);
- ``mobilenet_v2``: torchvision's MobileNetV2 at width 1.0 (inverted residuals: pointwise expand,
  depthwise 3x3, pointwise project, ReLU6; 1x1 to 1280, fc 1000);
- ``vgg11`` / ``vgg16``: the VGG 3x3 conv stacks and max-pools with BatchNorm (torchvision's
  ``_bn`` variants: without BN, seeded weights pruned to 90% shrink the activations layer after
  layer until the biases are all that reach the output). The classifier is a global average
  pool + one fc 512 -> 1000 instead of VGG's 25088 -> 4096 -> 4096 -> 1000: the real one is
  ~120M dense-ish fc weights that would make every VGG number a GEMV benchmark.

Weights are seeded (convs Kaiming-normal as torchvision initializes them), pruned by
``prune.magnitude_prune`` (stem and depthwise convs stay dense), BatchNorm given real statistics
(``prune.randomize_batchnorm``). Input ``input`` [batch, 3, image, image] float32, output
``output`` [batch, 1000]. The exporter folds each eval-mode BN into its conv, as a default
export does; the option ``fold_batchnorm=False`` keeps the ``BatchNormalization`` nodes.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from .member import ZooModel
from .prune import export_onnx, prune_and_calibrate, seeded_images

CLASSES = 1000
IMAGE = 224


def _modules():
    """The architectures, built on first use (torch is imported only then)."""
    import torch
    from torch import nn

    def conv_bn(cin, cout, k, stride=1, groups=1, act=None):
        layers = [
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(act())
        return nn.Sequential(*layers)

    # ResNet modules carry torchvision's attribute names, so the report's layer names
    # (/layer1/layer1.0/conv1/Conv) read like a torchvision export.
    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = _downsample(cin, planes, stride)

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin, planes, stride):
            super().__init__()
            out = planes * self.expansion
            self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride here
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out)
            self.downsample = _downsample(cin, out, stride)

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = torch.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

    def _downsample(cin, cout, stride):
        """1x1 conv + BN with the block's stride, where the shortcut changes shape."""
        return conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    class ResNet(nn.Module):
        def __init__(self, block, depths):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            cin = 64
            for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths, strict=True)):
                blocks = []
                for j in range(depth):
                    blocks.append(block(cin, planes, 2 if i > 0 and j == 0 else 1))
                    cin = planes * block.expansion
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, CLASSES)

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            layers = [conv_bn(cin, hidden, 1, act=nn.ReLU6)] if expand != 1 else []
            layers += [
                conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),  # depthwise
                conv_bn(hidden, cout, 1),  # linear bottleneck: no activation
            ]
            self.conv = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.conv(x) if self.residual else self.conv(x)

    class MobileNetV2(nn.Module):
        # (expand t, channels c, repeats n, first stride s), torchvision's table at width 1.0
        SETTINGS = (
            (1, 16, 1, 1),
            (6, 24, 2, 2),
            (6, 32, 3, 2),
            (6, 64, 4, 2),
            (6, 96, 3, 1),
            (6, 160, 3, 2),
            (6, 320, 1, 1),
        )

        def __init__(self):
            super().__init__()
            layers, cin = [conv_bn(3, 32, 3, 2, act=nn.ReLU6)], 32
            for t, c, n, s in self.SETTINGS:
                for j in range(n):
                    layers.append(InvertedResidual(cin, c, s if j == 0 else 1, t))
                    cin = c
            layers.append(conv_bn(cin, 1280, 1, act=nn.ReLU6))
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(1280, CLASSES)  # (torchvision's dropout is a no-op in eval)

        def forward(self, x):
            return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))

    class VGG(nn.Module):
        def __init__(self, config):
            super().__init__()
            layers, cin = [], 3
            for v in config:
                if v == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                else:
                    layers += [
                        nn.Conv2d(cin, v, 3, padding=1),
                        nn.BatchNorm2d(v),
                        nn.ReLU(),
                    ]
                    cin = v
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, CLASSES)

        def forward(self, x):
            return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))

    m = "M"
    return {
        "resnet18": lambda: ResNet(BasicBlock, (2, 2, 2, 2)),
        "resnet50": lambda: ResNet(Bottleneck, (3, 4, 6, 3)),
        "mobilenet_v2": MobileNetV2,
        "vgg11": lambda: VGG((64, m, 128, m, 256, 256, m, 512, 512, m, 512, 512, m)),
        "vgg16": lambda: VGG(
            (64, 64, m, 128, 128, m, 256, 256, 256, m, 512, 512, 512, m, 512, 512, 512, m)
        ),
    }


def build(name: str, *, sparsity: float, seed: int = 0, image: int = IMAGE, batch: int = 1):
    """The seeded, pruned torch module of zoo CNN ``name`` (eval mode), BN statistics included."""
    import torch

    torch.manual_seed(seed)
    model = _modules()[name]()
    return prune_and_calibrate(model, sparsity=sparsity, seed=seed, image=image, batch=batch)


def _exporter(name: str) -> Callable[..., str]:
    def export(
        path: str | os.PathLike,
        *,
        sparsity: float,
        batch: int,
        seed: int,
        image: int = IMAGE,
        fold_batchnorm: bool = True,
    ) -> str:
        import torch

        model = build(name, sparsity=sparsity, seed=seed, image=image, batch=batch)
        x = torch.from_numpy(seeded_images(batch, image, seed))
        return export_onnx(model, (x,), path, ["input"], ["output"], fold_batchnorm=fold_batchnorm)

    return export


def _inputs(
    *, batch: int = 1, seed: int = 0, image: int = IMAGE, fold_batchnorm: bool = True
) -> dict[str, np.ndarray]:
    """Seeded standard-normal images, [batch, 3, image, image] float32 (every export option is
    accepted, so one option dict serves both ``export`` and ``inputs``)."""
    return {"input": seeded_images(batch, image, seed)}


_DESCRIPTIONS = {
    "resnet18": "ResNet-18 (v1.5, basic blocks), BN, fc 1000",
    "resnet50": "ResNet-50 (v1.5, bottlenecks, stride on the 3x3), BN, fc 1000",
    "mobilenet_v2": "MobileNetV2 1.0 (depthwise + pointwise, ReLU6), fc 1000",
    "vgg11": "VGG-11 BN 3x3 stacks, max-pools, GAP + fc 1000",
    "vgg16": "VGG-16 BN 3x3 stacks, max-pools, GAP + fc 1000",
}

MODELS = [
    ZooModel(
        name=name,
        family="cnn",
        export=_exporter(name),
        inputs=_inputs,
        description=text,
        options={"image": IMAGE, "fold_batchnorm": True},
    )
    for name, text in _DESCRIPTIONS.items()
]
