"""Deploy nets of the built-in zoo models, defined as code: `build("bvlc_alexnet")` -> NetParameter.

One module per family writes its nets layer by layer through `Net` (_net.py); `register` binds each
card's architecture name to a family function plus the options that make it one published net. Layer
names, types, bottoms, tops and parameters are the publisher's, so the published .caffemodel loads by
name; tests/zoo/test_arch.py compares every net with its deploy prototxt in the shared corpus. Left
out on purpose: `param` learning-rate multipliers and fillers (training details; a deploy net never
trains). Input batch sizes are the publishers' (10 for the BVLC-era nets, 1 for most later ones).
"""
from ._registry import UnknownArchitecture, build, names, register, write_prototxt
# importing a family registers its nets
from . import (alexnet, densenet, enet, faster_rcnn, googlenet, inception_v3, mobilenet, mtcnn,  # noqa: F401,E402
               nin, pspnet, resnet, segnet, senet, shufflenet, squeezenet, ssd, ultraface, vgg)

__all__ = ["UnknownArchitecture", "build", "names", "register", "write_prototxt"]
