"""Running models in ONNX Runtime: sessions, verification, timing and statistics, benchmarks, evaluation,
labelled data sets, plots. Imports the layers below (`ir`, `passes`), never `training` or `cli`."""
