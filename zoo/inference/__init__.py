"""Inference: onnxruntime sessions and the card's Caffe preprocessing."""
