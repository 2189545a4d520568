"""One module per Caffe layer family; each registers its implementations on import."""
