"""Classic image CNNs of the zoo, after torchvision's topologies, for conformance with plain TVM.

The architectures ``cnn.py`` does not have, each with what makes it a different compile:

- ``alexnet``: 11x11 stride-4 stem, 5x5 conv, max-pools 3/2, ``AdaptiveAvgPool2d((6, 6))``,
  dropout (a no-op in eval), three fc layers (9216 -> 4096 -> 4096 -> 1000);
- ``vgg19``: VGG-19 with BatchNorm (torchvision's ``vgg19_bn``), ``AdaptiveAvgPool2d((7, 7))``,
  classifier 25088 -> 4096 -> 4096 -> 1000 (the real one, unlike ``cnn.py``'s VGGs);
- ``squeezenet1_1``: Fire modules (squeeze 1x1, expand 1x1 and 3x3 concatenated), ceil-mode
  max-pools, a 1x1 conv classifier + ReLU + global average pool;
- ``googlenet``: Inception v1 with BatchNorm (eps 1e-3), four concatenated branches (torchvision's
  3x3 in the "5x5" branch, a ceil-mode 3/1 max-pool in the pool branch), ceil-mode pools
  (the last 2/2), no auxiliary heads;
- ``inception_v3``: reduced depth, blocks as torchvision's: the stem, InceptionA x2 (5x5 and
  double 3x3, avg-pool branch), InceptionB (grid reduction), InceptionC x2 (1x7 / 7x1
  factorized, double branch of four), InceptionD (grid reduction with 1x7 / 7x1), InceptionE x2
  (1x3 and 3x1 side by side, concatenated inside the branch); BN eps 1e-3, no aux head;
- ``densenet121``: dense blocks (6, 12, 24, 16) of BN-ReLU-conv layers, each reading the
  concatenation of all the features before it (one ``Concat`` of k inputs at layer k, as
  torchvision's list form exports), transitions BN-ReLU-1x1-avgpool: BN before a conv and after a
  concat, so not foldable into a conv before it;
- ``shufflenet_v2``: x1.0, channel split (``chunk``), channel shuffle (view + transpose + view),
  depthwise 3x3 convs without activation, concat, ``mean([2, 3])`` head;
- ``efficientnet_b0``: MBConv with SiLU, squeeze-excitation (SiLU, sigmoid gate), depthwise 3x3
  and 5x5, residual add (stochastic depth is the identity in eval);
- ``resnext50_32x4d``: ResNet-50 bottlenecks with 32-group 3x3 convs (group width 4);
- ``regnet_y_400mf``: RegNetY-400MF (widths 48/104/208/440, depths 1/3/6/6, group width 8,
  squeeze-excitation with ReLU and sigmoid, stride-2 first block of each stage).

Options: ``image`` (default 224, 299 for ``inception_v3``) and ``width``, a channel multiplier
(default 1.0; below 1 each channel count becomes a multiple of 8, grouped convs keep their group
width and lose groups) so tests can build small versions; ``fold_batchnorm`` as in ``cnn.py``.
Smallest images: ``alexnet`` and ``vgg19`` export only where their adaptive pool divides its input
(the ONNX exporter refuses otherwise): image 224 (or 448...); ``inception_v3`` 75; the others 32.

Weights are seeded (convs Kaiming-normal), magnitude-pruned by ``prune.magnitude_prune`` (stem
and depthwise convs stay dense), BatchNorm given real statistics (``prune.randomize_batchnorm``).
Input ``input`` [batch, 3, image, image] float32, output ``output`` [batch, 1000].
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from .member import ZooModel
from .prune import export_onnx, prune_and_calibrate, seeded_images

CLASSES = 1000
IMAGE = 224
_IMAGE = {"inception_v3": 299}


def _modules(width: float) -> dict[str, Callable[[], object]]:
    """The architectures at channel multiplier ``width`` (torch is imported only here)."""
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812 - torch's own spelling

    def ch(c: int) -> int:
        """``c`` channels scaled by ``width``: exact at 1.0, else a multiple of 8."""
        return c if width == 1.0 else max(8, int(round(c * width / 8)) * 8)

    def conv_bn(cin, cout, k, stride=1, padding=None, groups=1, act=nn.ReLU, eps=1e-5):
        """Conv (no bias) + BN (+ activation): torchvision's Conv2dNormActivation / BasicConv2d."""
        if padding is None:
            padding = (k - 1) // 2 if isinstance(k, int) else tuple((i - 1) // 2 for i in k)
        layers = [
            nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=eps),
        ]
        return nn.Sequential(*layers, *([act()] if act is not None else []))

    # -- AlexNet -------------------------------------------------------------------------------
    class AlexNet(nn.Module):
        def __init__(self):
            super().__init__()
            c1, c2, c3, c4, hidden = ch(64), ch(192), ch(384), ch(256), ch(4096)
            self.features = nn.Sequential(
                nn.Conv2d(3, c1, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
                nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
                nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(c4, c4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            )  # fmt: skip
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(0.5), nn.Linear(c4 * 36, hidden), nn.ReLU(inplace=True),
                nn.Dropout(0.5), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
                nn.Linear(hidden, CLASSES),
            )  # fmt: skip

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    # -- VGG-19 with BatchNorm -----------------------------------------------------------------
    class VGG(nn.Module):
        def __init__(self, config):
            super().__init__()
            layers, cin = [], 3
            for v in config:
                if v == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                else:
                    cout = ch(v)
                    layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                               nn.ReLU(inplace=True)]  # fmt: skip
                    cin = cout
            hidden = ch(4096)
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(cin * 49, hidden), nn.ReLU(True), nn.Dropout(0.5),
                nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(0.5),
                nn.Linear(hidden, CLASSES),
            )  # fmt: skip

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    # -- SqueezeNet 1.1 ------------------------------------------------------------------------
    class Fire(nn.Module):
        def __init__(self, cin, squeeze, expand1x1, expand3x3):
            super().__init__()
            self.squeeze = nn.Conv2d(cin, squeeze, 1)
            self.squeeze_activation = nn.ReLU(inplace=True)
            self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
            self.expand1x1_activation = nn.ReLU(inplace=True)
            self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
            self.expand3x3_activation = nn.ReLU(inplace=True)
            self.out = expand1x1 + expand3x3

        def forward(self, x):
            x = self.squeeze_activation(self.squeeze(x))
            return torch.cat(
                [self.expand1x1_activation(self.expand1x1(x)),
                 self.expand3x3_activation(self.expand3x3(x))], 1,
            )  # fmt: skip

    class SqueezeNet(nn.Module):
        def __init__(self):
            super().__init__()
            layers, cin = [nn.Conv2d(3, ch(64), 3, 2), nn.ReLU(inplace=True)], ch(64)
            for v in ("M", (16, 64), (16, 64), "M", (32, 128), (32, 128), "M",
                      (48, 192), (48, 192), (64, 256), (64, 256)):  # fmt: skip
                if v == "M":
                    layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
                else:
                    fire = Fire(cin, ch(v[0]), ch(v[1]), ch(v[1]))
                    layers.append(fire)
                    cin = fire.out
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(
                nn.Dropout(0.5), nn.Conv2d(cin, CLASSES, 1), nn.ReLU(inplace=True),
                nn.AdaptiveAvgPool2d((1, 1)),
            )  # fmt: skip

        def forward(self, x):
            return torch.flatten(self.classifier(self.features(x)), 1)

    # -- GoogLeNet (Inception v1, torchvision's BN variant, no aux heads) ----------------------
    def basic(cin, cout, k, stride=1, padding=0):
        return conv_bn(cin, cout, k, stride, padding, eps=1e-3)

    class InceptionV1(nn.Module):
        def __init__(self, cin, c1, c3r, c3, c5r, c5, pool):
            super().__init__()
            self.branch1 = basic(cin, c1, 1)
            self.branch2 = nn.Sequential(basic(cin, c3r, 1), basic(c3r, c3, 3, padding=1))
            # torchvision's "5x5" branch is a 3x3 (a known slip kept for its weights)
            self.branch3 = nn.Sequential(basic(cin, c5r, 1), basic(c5r, c5, 3, padding=1))
            self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), basic(cin, pool, 1))
            self.out = c1 + c3 + c5 + pool

        def forward(self, x):
            branches = (self.branch1, self.branch2, self.branch3, self.branch4)
            return torch.cat([branch(x) for branch in branches], 1)

    class GoogLeNet(nn.Module):
        SPEC = (
            (64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "M3",
            (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
            (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128), "M2",
            (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128),
        )  # fmt: skip

        def __init__(self):
            super().__init__()
            self.conv1 = basic(3, ch(64), 7, 2, 3)
            self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2 = basic(ch(64), ch(64), 1)
            self.conv3 = basic(ch(64), ch(192), 3, padding=1)
            self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            blocks, cin = [], ch(192)
            for s in self.SPEC:
                if s == "M3":  # maxpool3
                    blocks.append(nn.MaxPool2d(3, 2, ceil_mode=True))
                elif s == "M2":  # maxpool4
                    blocks.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                else:
                    block = InceptionV1(cin, *(ch(c) for c in s))
                    blocks.append(block)
                    cin = block.out
            self.inception = nn.Sequential(*blocks)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.dropout = nn.Dropout(0.2)
            self.fc = nn.Linear(cin, CLASSES)

        def forward(self, x):
            x = self.maxpool1(self.conv1(x))
            x = self.maxpool2(self.conv3(self.conv2(x)))
            x = torch.flatten(self.avgpool(self.inception(x)), 1)
            return self.fc(self.dropout(x))

    # -- Inception v3 (reduced depth: A x2, B, C x2, D, E x2) -----------------------------------
    class InceptionA(nn.Module):
        def __init__(self, cin, pool_features):
            super().__init__()
            self.branch1x1 = basic(cin, ch(64), 1)
            self.branch5x5 = nn.Sequential(basic(cin, ch(48), 1), basic(ch(48), ch(64), 5, 1, 2))
            self.branch3x3dbl = nn.Sequential(
                basic(cin, ch(64), 1), basic(ch(64), ch(96), 3, 1, 1),
                basic(ch(96), ch(96), 3, 1, 1),
            )  # fmt: skip
            self.branch_pool = basic(cin, pool_features, 1)
            self.out = ch(64) + ch(64) + ch(96) + pool_features

        def forward(self, x):
            pool = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
            return torch.cat([self.branch1x1(x), self.branch5x5(x), self.branch3x3dbl(x), pool], 1)

    class InceptionB(nn.Module):  # grid reduction 35 -> 17
        def __init__(self, cin):
            super().__init__()
            self.branch3x3 = basic(cin, ch(384), 3, 2)
            self.branch3x3dbl = nn.Sequential(
                basic(cin, ch(64), 1), basic(ch(64), ch(96), 3, 1, 1), basic(ch(96), ch(96), 3, 2)
            )
            self.out = ch(384) + ch(96) + cin

        def forward(self, x):
            return torch.cat([self.branch3x3(x), self.branch3x3dbl(x), F.max_pool2d(x, 3, 2)], 1)

    class InceptionC(nn.Module):  # factorized 7x7: 1x7 and 7x1
        def __init__(self, cin, c7):
            super().__init__()
            c192 = ch(192)
            self.branch1x1 = basic(cin, c192, 1)
            self.branch7x7 = nn.Sequential(
                basic(cin, c7, 1), basic(c7, c7, (1, 7), 1, (0, 3)),
                basic(c7, c192, (7, 1), 1, (3, 0)),
            )  # fmt: skip
            self.branch7x7dbl = nn.Sequential(
                basic(cin, c7, 1), basic(c7, c7, (7, 1), 1, (3, 0)),
                basic(c7, c7, (1, 7), 1, (0, 3)), basic(c7, c7, (7, 1), 1, (3, 0)),
                basic(c7, c192, (1, 7), 1, (0, 3)),
            )  # fmt: skip
            self.branch_pool = basic(cin, c192, 1)
            self.out = 4 * c192

        def forward(self, x):
            pool = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
            return torch.cat([self.branch1x1(x), self.branch7x7(x), self.branch7x7dbl(x), pool], 1)

    class InceptionD(nn.Module):  # grid reduction 17 -> 8
        def __init__(self, cin):
            super().__init__()
            c192 = ch(192)
            self.branch3x3 = nn.Sequential(basic(cin, c192, 1), basic(c192, ch(320), 3, 2))
            self.branch7x7x3 = nn.Sequential(
                basic(cin, c192, 1), basic(c192, c192, (1, 7), 1, (0, 3)),
                basic(c192, c192, (7, 1), 1, (3, 0)), basic(c192, c192, 3, 2),
            )  # fmt: skip
            self.out = ch(320) + c192 + cin

        def forward(self, x):
            return torch.cat([self.branch3x3(x), self.branch7x7x3(x), F.max_pool2d(x, 3, 2)], 1)

    class InceptionE(nn.Module):  # expanded filter bank: 1x3 and 3x1 side by side
        def __init__(self, cin):
            super().__init__()
            c384 = ch(384)
            self.branch1x1 = basic(cin, ch(320), 1)
            self.branch3x3_1 = basic(cin, c384, 1)
            self.branch3x3_2a = basic(c384, c384, (1, 3), 1, (0, 1))
            self.branch3x3_2b = basic(c384, c384, (3, 1), 1, (1, 0))
            self.branch3x3dbl_1 = basic(cin, ch(448), 1)
            self.branch3x3dbl_2 = basic(ch(448), c384, 3, 1, 1)
            self.branch3x3dbl_3a = basic(c384, c384, (1, 3), 1, (0, 1))
            self.branch3x3dbl_3b = basic(c384, c384, (3, 1), 1, (1, 0))
            self.branch_pool = basic(cin, ch(192), 1)
            self.out = ch(320) + 4 * c384 + ch(192)

        def forward(self, x):
            a = self.branch3x3_1(x)
            a = torch.cat([self.branch3x3_2a(a), self.branch3x3_2b(a)], 1)
            b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            b = torch.cat([self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b)], 1)
            pool = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
            return torch.cat([self.branch1x1(x), a, b, pool], 1)

    class InceptionV3(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(
                basic(3, ch(32), 3, 2), basic(ch(32), ch(32), 3), basic(ch(32), ch(64), 3, 1, 1),
                nn.MaxPool2d(3, 2), basic(ch(64), ch(80), 1), basic(ch(80), ch(192), 3),
                nn.MaxPool2d(3, 2),
            )  # fmt: skip
            blocks, cin = [], ch(192)
            for kind, arg in (("A", ch(32)), ("A", ch(64)), ("B", None), ("C", ch(128)),
                              ("C", ch(192)), ("D", None), ("E", None), ("E", None)):  # fmt: skip
                if kind == "A":
                    block = InceptionA(cin, arg)
                elif kind == "C":
                    block = InceptionC(cin, arg)
                else:
                    block = {"B": InceptionB, "D": InceptionD, "E": InceptionE}[kind](cin)
                blocks.append(block)
                cin = block.out
            self.blocks = nn.Sequential(*blocks)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.dropout = nn.Dropout(0.5)
            self.fc = nn.Linear(cin, CLASSES)

        def forward(self, x):
            x = torch.flatten(self.avgpool(self.blocks(self.stem(x))), 1)
            return self.fc(self.dropout(x))

    # -- DenseNet-121 --------------------------------------------------------------------------
    class DenseLayer(nn.Module):
        def __init__(self, cin, growth, bn_size=4):
            super().__init__()
            self.norm1 = nn.BatchNorm2d(cin)
            self.relu1 = nn.ReLU(inplace=True)
            self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
            self.norm2 = nn.BatchNorm2d(bn_size * growth)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

        def forward(self, features: list):
            x = torch.cat(features, 1)  # torchvision's bn_function: every feature so far
            x = self.conv1(self.relu1(self.norm1(x)))
            return self.conv2(self.relu2(self.norm2(x)))

    class DenseBlock(nn.ModuleList):
        def forward(self, x):
            features = [x]
            for layer in self:
                features.append(layer(features))
            return torch.cat(features, 1)

    class DenseNet(nn.Module):
        def __init__(self, growth=32, blocks=(6, 12, 24, 16), init=64):
            super().__init__()
            growth, cin = ch(growth), ch(init)
            layers = [nn.Conv2d(3, cin, 7, 2, 3, bias=False), nn.BatchNorm2d(cin),
                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]  # fmt: skip
            for i, count in enumerate(blocks):
                dense = (DenseLayer(cin + j * growth, growth) for j in range(count))
                layers.append(DenseBlock(dense))
                cin += count * growth
                if i < len(blocks) - 1:  # transition
                    layers += [
                        nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                        nn.Conv2d(cin, cin // 2, 1, bias=False), nn.AvgPool2d(2, 2),
                    ]  # fmt: skip
                    cin //= 2
            layers.append(nn.BatchNorm2d(cin))  # norm5
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(cin, CLASSES)

        def forward(self, x):
            x = F.adaptive_avg_pool2d(F.relu(self.features(x)), (1, 1))
            return self.classifier(torch.flatten(x, 1))

    # -- ShuffleNetV2 x1.0 ---------------------------------------------------------------------
    def channel_shuffle(x, groups: int):
        batch, channels, height, w = x.size()
        x = x.view(batch, groups, channels // groups, height, w)
        return torch.transpose(x, 1, 2).contiguous().view(batch, -1, height, w)

    class ShuffleUnit(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            half = cout // 2
            self.stride = stride
            if stride > 1:
                self.branch1 = nn.Sequential(
                    conv_bn(cin, cin, 3, stride, 1, groups=cin, act=None),
                    conv_bn(cin, half, 1, padding=0),
                )
            self.branch2 = nn.Sequential(
                conv_bn(cin if stride > 1 else half, half, 1, padding=0),
                conv_bn(half, half, 3, stride, 1, groups=half, act=None),
                conv_bn(half, half, 1, padding=0),
            )

        def forward(self, x):
            if self.stride == 1:
                x1, x2 = x.chunk(2, dim=1)
                out = torch.cat((x1, self.branch2(x2)), dim=1)
            else:
                out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
            return channel_shuffle(out, 2)

    class ShuffleNetV2(nn.Module):
        def __init__(self, repeats=(4, 8, 4), channels=(24, 116, 232, 464, 1024)):
            super().__init__()
            channels = [ch(c) for c in channels]
            self.conv1 = conv_bn(3, channels[0], 3, 2, 1)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin, stages = channels[0], []
            for r, cout in zip(repeats, channels[1:4]):
                stages.append(ShuffleUnit(cin, cout, 2))
                stages += [ShuffleUnit(cout, cout, 1) for _ in range(r - 1)]
                cin = cout
            self.stages = nn.Sequential(*stages)
            self.conv5 = conv_bn(cin, channels[4], 1, padding=0)
            self.fc = nn.Linear(channels[4], CLASSES)

        def forward(self, x):
            x = self.conv5(self.stages(self.maxpool(self.conv1(x))))
            return self.fc(x.mean([2, 3]))  # globalpool

    # -- Squeeze-excitation (EfficientNet: SiLU; RegNet: ReLU) ---------------------------------
    class SqueezeExcitation(nn.Module):
        def __init__(self, channels, squeeze, activation):
            super().__init__()
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(channels, squeeze, 1)
            self.fc2 = nn.Conv2d(squeeze, channels, 1)
            self.activation = activation()
            self.scale_activation = nn.Sigmoid()

        def forward(self, x):
            scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
            return self.scale_activation(scale) * x

    # -- EfficientNet-B0 -----------------------------------------------------------------------
    class MBConv(nn.Module):
        def __init__(self, cin, cout, expand, k, stride):
            super().__init__()
            expanded = cin * expand  # (multiples of 8 already: make_divisible is the identity)
            layers = [conv_bn(cin, expanded, 1, act=nn.SiLU)] if expanded != cin else []
            layers += [
                conv_bn(expanded, expanded, k, stride, groups=expanded, act=nn.SiLU),
                SqueezeExcitation(expanded, max(1, cin // 4), nn.SiLU),
                conv_bn(expanded, cout, 1, act=None),
            ]
            self.block = nn.Sequential(*layers)
            self.use_res_connect = stride == 1 and cin == cout

        def forward(self, x):
            y = self.block(x)
            return y + x if self.use_res_connect else y  # stochastic depth: identity in eval

    class EfficientNet(nn.Module):
        # (expand, kernel, stride, out channels, layers), torchvision's B0 table
        SETTINGS = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                    (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))  # fmt: skip

        def __init__(self):
            super().__init__()
            layers, cin = [conv_bn(3, ch(32), 3, 2, act=nn.SiLU)], ch(32)
            for expand, k, stride, cout, n in self.SETTINGS:
                for i in range(n):
                    layers.append(MBConv(cin, ch(cout), expand, k, stride if i == 0 else 1))
                    cin = ch(cout)
            last = 4 * cin
            layers.append(conv_bn(cin, last, 1, act=nn.SiLU))
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, CLASSES))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    # -- ResNeXt-50 32x4d ----------------------------------------------------------------------
    class Bottleneck(nn.Module):
        def __init__(self, cin, planes, stride, groups, mid):
            super().__init__()
            out = planes * 4
            self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(mid)
            self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=groups, bias=False)
            self.bn2 = nn.BatchNorm2d(mid)
            self.conv3 = nn.Conv2d(mid, out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out)
            self.downsample = (
                conv_bn(cin, out, 1, stride, act=None) if stride != 1 or cin != out else None
            )

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = torch.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNeXt(nn.Module):
        def __init__(self, depths=(3, 4, 6, 3), groups=32, group_width=4):
            super().__init__()
            self.conv1 = nn.Conv2d(3, ch(64), 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(ch(64))
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            cin = ch(64)
            for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths)):
                # torchvision: int(planes * group_width / 64) * groups; scaled, the groups go
                mid = ch(planes * group_width * groups // 64)
                g = groups if width == 1.0 else max(1, mid // group_width)
                blocks = []
                for j in range(depth):
                    blocks.append(Bottleneck(cin, ch(planes), 2 if i > 0 and j == 0 else 1, g, mid))
                    cin = ch(planes) * 4
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(cin, CLASSES)

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    # -- RegNetY-400MF -------------------------------------------------------------------------
    class ResBottleneckBlock(nn.Module):
        def __init__(self, cin, cout, stride, group_width=8, se_ratio=0.25):
            super().__init__()
            self.proj = (
                conv_bn(cin, cout, 1, stride, act=None) if cin != cout or stride != 1 else None
            )
            # bottleneck multiplier 1.0: w_b = width_out; groups = w_b // group_width
            self.f = nn.Sequential(
                conv_bn(cin, cout, 1),
                conv_bn(cout, cout, 3, stride, groups=cout // group_width),
                SqueezeExcitation(cout, int(round(se_ratio * cin)), nn.ReLU),
                conv_bn(cout, cout, 1, act=None),
            )
            self.activation = nn.ReLU(inplace=True)

        def forward(self, x):
            shortcut = x if self.proj is None else self.proj(x)
            return self.activation(shortcut + self.f(x))

    class RegNet(nn.Module):
        def __init__(self, depths=(1, 3, 6, 6), widths=(48, 104, 208, 440)):
            super().__init__()
            self.stem = conv_bn(3, ch(32), 3, 2)
            blocks, cin = [], ch(32)
            for depth, w in zip(depths, widths):
                for j in range(depth):
                    blocks.append(ResBottleneckBlock(cin, ch(w), 2 if j == 0 else 1))
                    cin = ch(w)
            self.trunk_output = nn.Sequential(*blocks)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(cin, CLASSES)

        def forward(self, x):
            x = self.avgpool(self.trunk_output(self.stem(x)))
            return self.fc(torch.flatten(x, 1))

    m = "M"
    vgg19 = (64, 64, m, 128, 128, m, 256, 256, 256, 256, m,
             512, 512, 512, 512, m, 512, 512, 512, 512, m)  # fmt: skip
    return {
        "alexnet": AlexNet,
        "vgg19": lambda: VGG(vgg19),
        "squeezenet1_1": SqueezeNet,
        "googlenet": GoogLeNet,
        "inception_v3": InceptionV3,
        "densenet121": DenseNet,
        "shufflenet_v2": ShuffleNetV2,
        "efficientnet_b0": EfficientNet,
        "resnext50_32x4d": ResNeXt,
        "regnet_y_400mf": RegNet,
    }


def build(
    name: str,
    *,
    sparsity: float,
    seed: int = 0,
    image: int | None = None,
    width: float = 1.0,
    batch: int = 1,
):
    """The seeded, pruned torch module of classic CNN ``name`` (eval mode), BN statistics set."""
    import torch

    if width <= 0:
        raise ValueError(f"zoo: width must be positive, got {width}")
    image = image or _IMAGE.get(name, IMAGE)
    torch.manual_seed(seed)
    model = _modules(float(width))[name]()
    return prune_and_calibrate(model, sparsity=sparsity, seed=seed, image=image, batch=batch)


def _exporter(name: str) -> Callable[..., str]:
    def export(
        path: str | os.PathLike,
        *,
        sparsity: float,
        batch: int,
        seed: int,
        image: int | None = None,
        width: float = 1.0,
        fold_batchnorm: bool = True,
    ) -> str:
        import torch

        image = image or _IMAGE.get(name, IMAGE)
        model = build(name, sparsity=sparsity, seed=seed, image=image, width=width, batch=batch)
        x = torch.from_numpy(seeded_images(batch, image, seed))
        return export_onnx(model, (x,), path, ["input"], ["output"], fold_batchnorm=fold_batchnorm)

    return export


def _inputs_for(name: str) -> Callable[..., dict[str, np.ndarray]]:
    def inputs(
        *,
        batch: int = 1,
        seed: int = 0,
        image: int | None = None,
        width: float = 1.0,
        fold_batchnorm: bool = True,
    ) -> dict[str, np.ndarray]:
        """Seeded standard-normal images, [batch, 3, image, image] float32 (every export option
        is accepted, so one option dict serves both ``export`` and ``inputs``)."""
        return {"input": seeded_images(batch, image or _IMAGE.get(name, IMAGE), seed)}

    return inputs


_DESCRIPTIONS = {
    "alexnet": "AlexNet: 11x11 stride-4 stem, 5x5, max-pools, adaptive 6x6 pool, fc 4096-4096-1000",
    "vgg19": "VGG-19 BN: 16 3x3 convs, max-pools, adaptive 7x7 pool, fc 4096-4096-1000",
    "squeezenet1_1": "SqueezeNet 1.1: Fire modules (concat), ceil-mode pools, 1x1 conv classifier",
    "googlenet": "GoogLeNet (Inception v1, BN): four concatenated branches, ceil-mode pools",
    "inception_v3": "Inception v3 cut to A2 B C2 D E2: 1x7/7x1, 1x3/3x1, avg-pool branches",
    "densenet121": "DenseNet-121: BN-ReLU-conv dense layers over concats, avg-pool transitions",
    "shufflenet_v2": "ShuffleNetV2 x1.0: channel split, depthwise 3x3, channel shuffle, concat",
    "efficientnet_b0": "EfficientNet-B0: MBConv, SiLU, squeeze-excitation, depthwise 3x3 and 5x5",
    "resnext50_32x4d": "ResNeXt-50 32x4d: bottlenecks with 32-group 3x3 convs",
    "regnet_y_400mf": "RegNetY-400MF: group-width-8 convs, squeeze-excitation (ReLU, sigmoid)",
}

MODELS = [
    ZooModel(
        name=name,
        family="classic",
        export=_exporter(name),
        inputs=_inputs_for(name),
        description=text,
        options={"image": _IMAGE.get(name, IMAGE), "width": 1.0, "fold_batchnorm": True},
    )
    for name, text in _DESCRIPTIONS.items()
]
