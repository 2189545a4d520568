"""Training the Caffe way: solvers, the data layers and sources, `zoo train` and `zoo finetune`."""
